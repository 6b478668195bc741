"""The real server for the client tests: one ``streamtts serve`` subprocess per pytest process.

How to call (from a test module)::

    from test_client_support import API_KEY, live_server

    @pytest.fixture(scope="module")
    def server(pack):
        return live_server()          # Server(base="http://127.0.0.1:PORT", ws=".../v1/stream")

The server runs ``python -m streamtts serve --host 127.0.0.1 --port PORT --api-key API_KEY
--cache-mb 0`` (a free port picked here; no phrase cache, so every test measures real synthesis),
is polled on ``/ready`` until the engine is loaded, and is terminated when pytest exits.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
API_KEY = "test-key-123"
READY_TIMEOUT_S = 600.0  # a cold machine may export the ONNX graphs first


@dataclass(frozen=True)
class Server:
    base: str  # http://127.0.0.1:PORT
    ws: str  # ws://127.0.0.1:PORT/v1/stream
    port: int
    log: Path


_server: Optional[Server] = None
_proc: Optional[subprocess.Popen] = None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/ready", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _stop() -> None:
    if _proc is not None and _proc.poll() is None:
        _proc.terminate()
        try:
            _proc.wait(10)
        except subprocess.TimeoutExpired:
            _proc.kill()


def live_server() -> Server:
    """Start the server once (skips when streamtts.server is missing); later calls reuse it."""
    global _server, _proc
    pytest.importorskip("streamtts.server", reason="the server (streamtts.server) is not in this tree")
    if _server is not None and _proc is not None and _proc.poll() is None:
        return _server
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="streamtts-test-")) / "server.log"
    cmd = [sys.executable, "-m", "streamtts", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--api-key", API_KEY, "--cache-mb", "0"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "wb") as out:
        _proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    atexit.register(_stop)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not _ready(base):
        if _proc.poll() is not None:
            raise RuntimeError(f"the server exited with {_proc.returncode}:\n{log.read_text(errors='replace')}")
        if time.monotonic() > deadline:
            _stop()
            raise RuntimeError(f"the server was not ready in {READY_TIMEOUT_S:g} s:\n{log.read_text(errors='replace')}")
        time.sleep(0.5)
    _server = Server(base, f"ws://127.0.0.1:{port}/v1/stream", port, log)
    return _server
