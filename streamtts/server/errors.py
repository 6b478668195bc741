"""Error answers of the server's transports, built from the error table (streamtts/errors.py).

    http_error("server_busy", "...", metrics=m, headers={"Retry-After": "2"})   # 503, OpenAI's shape
    http_error("unauthorized", "...", shape="stream", metrics=m)                 # 401, a refused upgrade
    wyoming_error("no_stream", "...")                                            # Wyoming's error event

The HTTP status comes from the table; ``status`` overrides it where one path answers otherwise
(426 for a plain request to the WebSocket endpoint). ``metrics``: count the error in
``streamtts_errors_total{code}`` (None: the caller counted it, or it is not counted).
"""

from __future__ import annotations

from typing import Literal, Optional

from aiohttp import web
from wyoming.error import Error
from wyoming.event import Event

from streamtts.errors import error_message, http_status
from streamtts.server.metrics import Metrics

__all__ = ["http_error", "wyoming_error", "count_error"]


def count_error(metrics: Optional[Metrics], code: str) -> None:
    if metrics is not None:
        metrics.errors.labels(code=code).inc()


def http_error(code: str, message: str, *, shape: Literal["openai", "stream"] = "openai",
               metrics: Optional[Metrics] = None, headers: Optional[dict] = None, param: Optional[str] = None,
               status: Optional[int] = None) -> web.Response:
    """An HTTP error answer. ``shape`` "openai": ``{"error": {"message", "type", "param", "code"}}``
    (``type`` ``invalid_request_error`` below 500, else ``server_error``; ``param`` the field at
    fault); "stream": the WebSocket protocol's error message, fatal (the upgrade is refused)."""
    status = http_status(code) if status is None else status
    count_error(metrics, code)
    if shape == "stream":
        body = error_message(code, message, fatal=True)
    elif shape == "openai":
        kind = "invalid_request_error" if status < 500 else "server_error"
        body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    else:
        raise ValueError(f"unknown error shape {shape!r}")
    return web.json_response(body, status=status, headers=headers)


def wyoming_error(code: str, message: str) -> Event:
    """Wyoming's ``error`` event (``text``, ``code``); whether the connection goes on is the
    caller's (the table's ``wyoming`` column says which)."""
    return Error(text=message, code=code).event()
