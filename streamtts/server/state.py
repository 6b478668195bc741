"""What the handlers of one app share (``request.app[STATE]``). Error answers: streamtts/server/errors.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from aiohttp import web

from streamtts.core.cache import PhraseCache
from streamtts.engine_client.base import EngineClient
from streamtts.server.config import ServerConfig
from streamtts.server.limits import Guard
from streamtts.server.metrics import Metrics


@dataclass
class ServerState:
    config: ServerConfig
    metrics: Metrics
    cache: Optional[PhraseCache]
    engine: EngineClient  # the only way to the engine: utterances, admission, health
    guard: Guard
    sockets: set = field(default_factory=set)  # open WebSockets, closed at shutdown
    connections: set = field(default_factory=set)  # their ws.Connection objects (for the drain)
    http_tasks: set = field(default_factory=set)  # tasks of HTTP speech streams in flight
    draining: bool = False  # SIGTERM/SIGINT: refusing new work, letting active utterances finish


STATE = web.AppKey("streamtts_state", ServerState)


def engine_unavailable(state: ServerState) -> str:
    return f"the engine is unavailable: {state.engine.failure}"


def admission_metrics(state: ServerState) -> None:
    state.metrics.admitted.set(state.engine.admission.admitted)
    state.metrics.queued.set(state.engine.admission.queued)

