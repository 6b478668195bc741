"""Real servers on loopback for the tests: one way to start each kind.

``ThreadServer(config, engine)``: ``create_app(config, engine)`` (streamtts/server/app.py) served by
an aiohttp AppRunner on 127.0.0.1 (a port the kernel picks), in a background thread with its own
event loop. The test process can reach into it (``srv.app``, ``srv.state``) and share an engine
already loaded (``shared_engine(pack)``)::

    with ThreadServer(ServerConfig(port=0, static_dir=None, capacity=4), shared_engine(pack)) as srv:
        srv.url, srv.ws_url, srv.port, srv.get("/ready"), srv.metrics(), srv.state

``ProcessServer(*args)``: ``streamtts serve --host 127.0.0.1 --port <free port> ...`` as a real
child process (signals, exit codes, its own sockets and threads); ``args`` are passed through::

    with ProcessServer("--capacity", "4", "--max-lead", "1") as srv:      # onnx-int8 + melgan
        srv.url, srv.ws_url, srv.get("/ready"), srv.output()
        rc, took = srv.terminate()        # SIGTERM; (exit code, seconds until it exited)

Both wait for ``/ready`` to answer 200 (a state, with a generous deadline that only a broken
server reaches: a process that exits or a ``/ready`` that says ``failed`` fails at once), and both
stop cleanly when the block ends (the thread server's runner is cleaned up; the process gets
SIGTERM, then SIGKILL if it does not exit).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[2]  # the checkout
HOST = "127.0.0.1"  # servers and clients of the tests use loopback only
READY_S = 600.0  # a cold machine may export the ONNX graphs before the first /ready 200
STOP_S = 30.0  # SIGTERM with nothing under way exits in about a second; then SIGKILL


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (bound to 0 and released)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


_METRIC = re.compile(r"^([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) ([-+\w.]+)$")



def http(url: str, body: Optional[dict] = None, headers=None, timeout: float = 60.0,
         check: bool = False) -> tuple[int, bytes]:
    """(status, body) of a GET, or of a JSON POST when ``body`` is given. HTTP errors are answers
    too; a connection error raises when ``check``, else is (0, b"")."""
    data = json.dumps(body).encode() if body is not None else None
    head = dict(headers or {})
    if data is not None:
        head.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(url, data=data, headers=head)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except OSError:
        if check:
            raise
        return 0, b""

class _Server:
    """What both kinds answer: addresses, GET, /metrics, the wait for /ready."""

    port: int
    get_raises = True  # get(): a connection error raises (else (0, b""))

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}/v1/stream"

    def get(self, path: str, headers=None, check: Optional[bool] = None,
            timeout: float = 30.0) -> tuple[int, bytes]:
        """(status, body) of ``GET path``; HTTP errors are answers too. A connection error raises
        when ``check`` (default: ``get_raises``), else is (0, b"")."""
        return http(self.url + path, headers=headers, timeout=timeout,
                    check=self.get_raises if check is None else check)

    def metrics(self) -> dict[str, float]:
        """``/metrics`` as {name with labels: value}."""
        out = {}
        for line in self.get("/metrics")[1].decode().splitlines():
            m = _METRIC.match(line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out

    def _alive(self) -> Optional[str]:
        """None while the server can still get ready, else why it cannot."""
        return None

    def wait_ready(self, timeout: float = READY_S) -> dict:
        """Poll ``/ready`` until it answers 200 (returns its JSON). Fails at once when the server
        is gone or ``/ready`` says ``failed``; at the deadline otherwise."""
        deadline = time.monotonic() + timeout
        while True:
            status, body = self.get("/ready", check=False, timeout=10.0)
            if status == 200:
                return json.loads(body)
            if status == 503:
                try:
                    answer = json.loads(body)
                except ValueError:
                    answer = {}
                if answer.get("status") == "failed":
                    raise AssertionError(f"the server failed to get ready: {answer}{self._log_tail()}")
            gone = self._alive()
            if gone is not None:
                raise AssertionError(f"{gone}{self._log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the server was not ready after {timeout:g} s (/ready answered {status})"
                                     + self._log_tail())
            time.sleep(0.1)

    def _log_tail(self) -> str:
        return ""


# ---- create_app in a thread of this process ---------------------------------------------------

_engine = None


def shared_engine(pack):
    """The torch engine (torch acoustic model + MelGAN), loaded once per test process."""
    global _engine
    if _engine is None:
        from engines.base import ModelPair
        from engines.torch_backend import TorchTacotron, TorchVocoder

        _engine = ModelPair(TorchTacotron(pack), TorchVocoder(pack.load_vocoder(), "melgan"))
    return _engine


class ThreadServer(_Server):
    """``create_app(config, engine)`` served on 127.0.0.1:<a port the kernel picks> by a real
    AppRunner, in a daemon thread running its own event loop. ``wait_ready=False`` returns as soon
    as the socket listens (for a server that is never ready). ``config.port`` is not used."""

    def __init__(self, config, engine, wait_ready: bool = True, ready_s: float = READY_S):
        self.config, self.engine, self._wait_ready, self.ready_s = config, engine, wait_ready, ready_s
        self.app = self.runner = None
        self.port = 0
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name="test-server", daemon=True)

    def __enter__(self) -> "ThreadServer":
        import torch

        self._threads = torch.get_num_threads()  # the server sets them (process-wide): restored after
        self._thread.start()
        try:
            if not self._started.wait(self.ready_s):
                raise AssertionError(f"the server did not listen within {self.ready_s:g} s")
            if self._error is not None:
                raise self._error
            if self._wait_ready:
                self.wait_ready(self.ready_s)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.runner is not None and self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(STOP_S)
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(STOP_S)
        if not self._thread.is_alive():
            self.loop.close()
        import torch

        torch.set_num_threads(self._threads)

    def _run(self) -> None:
        from aiohttp import web

        from streamtts.server import create_app

        asyncio.set_event_loop(self.loop)
        try:
            self.app = create_app(self.config, self.engine)
            runner = web.AppRunner(self.app, access_log=None)
            self.loop.run_until_complete(runner.setup())
            self.runner = runner
            self.loop.run_until_complete(web.TCPSite(runner, HOST, 0).start())
            self.port = runner.addresses[0][1]
        except BaseException as e:  # noqa: BLE001 - raised again in the test's thread
            self._error = e
            self._started.set()
            if self.runner is not None:
                self.loop.run_until_complete(self.runner.cleanup())
                self.runner = None
            return
        self._started.set()
        self.loop.run_forever()

    def _alive(self) -> Optional[str]:
        return None if self._thread.is_alive() else "the server thread ended"

    @property
    def state(self):
        from streamtts.server.state import STATE

        return self.app[STATE]


# ---- `streamtts serve` as a child process ------------------------------------------------------

STREAMTTS = (str(Path(sys.executable).with_name("streamtts")),)  # the console script of this venv


class ProcessServer(_Server):
    """``streamtts serve --host 127.0.0.1 --port <free port> [--engine E] [--vocoder V] *args``
    in a child process, its stdout and stderr in a temporary file (:meth:`output`).

    ``engine``/``vocoder`` None leave the server's defaults; ``command`` is the program
    (default: this venv's ``streamtts``); ``cwd``/``env`` for it (env: os.environ).
    Leaving the block stops it: SIGTERM, then SIGKILL after ``STOP_S``."""

    get_raises = False

    def __init__(self, *args: str, engine: Optional[str] = "onnx-int8", vocoder: Optional[str] = "melgan",
                 command: Sequence = STREAMTTS, cwd=None, env: Optional[dict] = None, ready_s: float = READY_S):
        self.extra = [*(["--engine", engine] if engine is not None else []),
                      *(["--vocoder", vocoder] if vocoder is not None else []), *map(str, args)]
        self.command = [str(c) for c in command]
        self.cwd = cwd if cwd is not None else ROOT
        self.env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
        self.ready_s = ready_s
        self.proc: Optional[subprocess.Popen] = None
        self.port = 0
        self.ready: Optional[dict] = None  # the JSON of the /ready that answered 200
        self._log = tempfile.TemporaryFile()
        self._final = ""

    @property
    def args(self) -> list[str]:
        return [*self.command, "serve", "--host", HOST, "--port", str(self.port), *self.extra]

    def __enter__(self) -> "ProcessServer":
        try:
            for _ in range(3):
                self.port = free_port()
                self._log.seek(0)
                self._log.truncate()
                self.proc = subprocess.Popen(self.args, cwd=self.cwd, env=self.env, stdout=self._log,
                                             stderr=subprocess.STDOUT)
                try:
                    self.ready = self.wait_ready(self.ready_s)
                    return self
                except AssertionError:
                    # the free port was taken between free_port() and the bind: another port
                    if self.proc.poll() is not None and "address already in use" in self.output().lower():
                        continue
                    raise
            raise AssertionError(f"no free port in 3 tries:{self._log_tail()}")
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        finally:
            self._final = self.output()  # still readable after the block (assertion messages)
            self._log.close()

    def _alive(self) -> Optional[str]:
        if self.proc.poll() is None:
            return None
        return f"`{' '.join(self.args)}` exited with {self.proc.returncode}"

    def _log_tail(self) -> str:
        return "\n" + self.output()[-6000:]

    # -- the process

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 60.0) -> int:
        return self.proc.wait(timeout)

    def terminate(self, timeout: float = 60.0) -> tuple[int, float]:
        """SIGTERM, then wait for the exit: (exit code, seconds from the signal to the exit)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        return rc, time.monotonic() - t0

    def stop(self, timeout: float = STOP_S) -> Optional[int]:
        """SIGTERM, wait up to ``timeout``, then SIGKILL. The exit code (None: never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_S)
        return self.proc.returncode

    def output(self) -> str:
        """Everything the server wrote so far (stdout and stderr)."""
        if self._log.closed:
            return self._final
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")
