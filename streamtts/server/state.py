"""What the handlers of one app share (``request.app[STATE]``), and small response helpers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from aiohttp import web

from streamtts.core.cache import PhraseCache
from streamtts.core.scheduler import Scheduler
from streamtts.server.admission import Admission
from streamtts.server.config import ServerConfig
from streamtts.server.limits import Guard
from streamtts.server.metrics import Metrics
from streamtts.server.worker import Worker


@dataclass
class ServerState:
    config: ServerConfig
    metrics: Metrics
    cache: Optional[PhraseCache]
    scheduler: Scheduler
    worker: Worker
    guard: Guard
    admission: Admission
    sockets: set = field(default_factory=set)  # open WebSockets, closed at shutdown
    connections: set = field(default_factory=set)  # their ws.Connection objects (for the drain)
    http_tasks: set = field(default_factory=set)  # tasks of HTTP speech streams in flight
    draining: bool = False  # SIGTERM/SIGINT: refusing new work, letting active utterances finish


STATE = web.AppKey("streamtts_state", ServerState)


def engine_unavailable(state: ServerState) -> str:
    return f"the engine is unavailable: {state.worker.failure}"


def admission_metrics(state: ServerState) -> None:
    state.metrics.admitted.set(state.admission.admitted)
    state.metrics.queued.set(state.admission.queued)


def openai_error(status: int, code: str, message: str, metrics: Optional[Metrics] = None,
                 headers: Optional[dict] = None) -> web.Response:
    """An HTTP error in OpenAI's shape: {"error": {"message", "type", "code"}}."""
    if metrics is not None:
        metrics.errors.labels(code=code).inc()
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response({"error": {"message": message, "type": kind, "code": code, "param": None}},
                             status=status, headers=headers)
