"""A real ``streamtts serve`` process on a free loopback port, for tests that need the whole
program: signals, exit codes, its own sockets and threads.

    with ServeProcess("--capacity", "4", "--max-lead", "1") as srv:
        srv.url, srv.ws_url, srv.get("/ready")
        rc, took = srv.terminate()        # SIGTERM; (exit code, seconds until it exited)
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

STREAMTTS = Path(sys.executable).with_name("streamtts")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServeProcess:
    def __init__(self, *args: str, engine: str = "onnx-int8", vocoder: str = "melgan", ready_s: float = 180.0):
        self.port = free_port()
        self.args = [str(STREAMTTS), "serve", "--port", str(self.port), "--engine", engine, "--vocoder", vocoder,
                     *args]
        self.ready_s = ready_s
        self.proc: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    def __enter__(self) -> "ServeProcess":
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + self.ready_s
        while self.get("/ready")[0] != 200:
            if self.proc.poll() is not None:
                raise AssertionError(f"streamtts serve exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"streamtts serve not ready after {self.ready_s:g} s:\n{self.output()}")
            time.sleep(0.2)
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except OSError:
            return 0, b""

    def terminate(self, timeout: float = 60.0) -> tuple[int, float]:
        """SIGTERM, then wait: (exit code, seconds from the signal to the exit)."""
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(timeout)
        return rc, time.monotonic() - t0

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")
