"""WebSocket clients of a test server (``ThreadServer`` or ``ProcessServer``): connect, send JSON,
read everything until the server closes."""

from __future__ import annotations

import json
import time

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


def ws_connect(server, query: str = "", **kw):
    """A sync WebSocket to ``server``'s /v1/stream (``query``: e.g. "?api_key=..."), no proxy."""
    return connect(server.ws_url + query, proxy=None, open_timeout=30, **kw)


def collect(ws, timeout: float = 60.0) -> tuple[list, int | None]:
    """Every message until the server closes: (messages: dict or bytes, close code)."""
    items = []
    try:
        while True:
            m = ws.recv(timeout=timeout)
            items.append(m if isinstance(m, bytes) else json.loads(m))
    except ConnectionClosed as e:
        return items, (e.rcvd.code if e.rcvd else None)


def jsend(ws, **msg) -> None:
    ws.send(json.dumps(msg, ensure_ascii=False))


def events(items, kind=None) -> list[dict]:
    return [m for m in items if isinstance(m, dict) and (kind is None or m["type"] == kind)]


def audio_bytes(items) -> int:
    return sum(len(m) for m in items if isinstance(m, bytes))


def read_until(ws, stop, timeout: float = 120.0) -> list:
    """Messages (dict or bytes) until ``stop(items)`` holds (the deadline is generous: a busy
    machine may stretch any wait)."""
    items: list = []
    deadline = time.monotonic() + timeout
    while not stop(items):
        assert time.monotonic() < deadline, f"waited {timeout:g} s; got {events(items)}"
        m = ws.recv(timeout=timeout)
        items.append(m if isinstance(m, bytes) else json.loads(m))
    return items
