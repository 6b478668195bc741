"""The aiohttp application: routes, start-up and shut-down of the worker.

    app = create_app(ServerConfig(port=8000), engine=None)   # engine None: loaded per config.engine
    web.run_app(app, host=..., port=...)                      # or serve(config)

Routes: ``GET /v1/stream`` (WebSocket), ``POST /v1/audio/speech``, ``GET /v1/voices``,
``GET /health``, ``GET /ready``, ``GET /metrics``, and the files of ``config.static_dir`` at
``/`` (``/`` is its index.html). See docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path
from typing import Callable, Optional

from aiohttp import WSCloseCode, web

from engines.base import ModelPair
from streamtts.core.cache import PhraseCache
from streamtts.engine_client.base import EngineClient
from streamtts.engine_client.inprocess import InProcessEngineClient
from streamtts.server.config import ServerConfig
from streamtts.server.errors import http_error
from streamtts.server.limits import Guard, redact_secrets_in_logs
from streamtts.server.metrics import Metrics
from streamtts.server.middleware import guard_middleware
from streamtts.server.openai_api import OPENAI_VOICES, speech_handler
from streamtts.server.state import STATE, ServerState, admission_metrics
from streamtts.server.ws import stream_handler
from streamtts.text.lexicon import Lexicon
from streamtts.voices import DEFAULT_VOICE, VOICES

log = logging.getLogger(__name__)

_MAX_BODY = 1024 * 1024  # HTTP request bodies (a speech request is at most 4096 chars of JSON)


def create_app(config: Optional[ServerConfig] = None, engine: Optional[ModelPair] = None,
               engine_client: Optional[Callable[..., EngineClient]] = None) -> web.Application:
    """A new server application. The worker thread starts with the app (on_startup) and loads
    ``engine`` or ``config.engine``; ``/ready`` answers 200 once it is warm. ``engine_client``
    (``factory(config, metrics=, lexicon=)``) puts another engine client, such as the cluster's
    (streamtts.cluster), in place of the in-process one; the transports are the same."""
    config = config or ServerConfig()
    redact_secrets_in_logs()  # a key in ?api_key= must not reach a log line (aiohttp logs request lines)
    # this app's user lexicon, read once; LexiconError (with the line) before serving
    lexicon = Lexicon.load(config.lexicon) if config.lexicon is not None else None
    metrics = Metrics()
    cache = PhraseCache(config.cache_bytes) if config.cache_bytes > 0 else None
    if engine_client is not None:
        client = engine_client(config, metrics=metrics, lexicon=lexicon)
    else:
        client = InProcessEngineClient(config, cache, metrics, engine, lexicon=lexicon)
    state = ServerState(config, metrics, cache, client, Guard(config))
    client.admission.on_change = lambda: admission_metrics(state)

    app = web.Application(client_max_size=_MAX_BODY, middlewares=[_gate, _cors, guard_middleware])
    app[STATE] = state
    app.router.add_get("/v1/stream", stream_handler)
    app.router.add_post("/v1/audio/speech", speech_handler)
    app.router.add_get("/v1/voices", _voices)
    app.router.add_get("/health", _health)
    app.router.add_get("/ready", _ready)
    app.router.add_get("/metrics", _metrics)
    app.router.add_route("OPTIONS", "/v1/{tail:.*}", _preflight)
    if config.static_dir is not None:
        app.router.add_get("/{path:.*}", _static)
    app.on_startup.append(_start)
    app.on_shutdown.append(_close_sockets)
    app.on_cleanup.append(_stop)
    if config.wyoming_port is not None:  # Home Assistant's protocol on its own port, same loop and core
        from streamtts.server.wyoming import install_wyoming

        install_wyoming(app)
    return app


def serve(config: ServerConfig, engine: Optional[ModelPair] = None,
          engine_client: Optional[Callable[..., EngineClient]] = None) -> None:
    """Run the server until SIGTERM or SIGINT (blocking), then drain (:func:`drain`) and return."""
    asyncio.run(_serve(config, engine, engine_client))


async def _serve(config: ServerConfig, engine: Optional[ModelPair],
                 engine_client: Optional[Callable[..., EngineClient]] = None) -> None:
    app = create_app(config, engine, engine_client)
    # handlers still running after the drain are cancelled after this grace
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=0.5)
    await runner.setup()
    try:
        await web.TCPSite(runner, config.host, config.port).start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutting down: new work is refused; active utterances get %g s", config.drain_timeout_s)
        await drain(app, config.drain_timeout_s)
        log.info("drained")
    finally:
        await runner.cleanup()
        log.info("stopped")


_GOING_AWAY = "the server is shutting down"


def _wyoming_key():
    from streamtts.server.wyoming import WYOMING  # only loaded when Wyoming is served

    return WYOMING


async def drain(app: web.Application, timeout_s: float) -> None:
    """Stop taking work at once (``/ready`` 503; new sessions and requests get ``going_away``),
    let active utterances finish for up to ``timeout_s``, then end what is left: WebSocket
    sessions get a fatal ``going_away`` (close 1001), HTTP streams are cut. Sessions with no
    utterance under way (idle, or waiting for a slot) are ended at once."""
    state = app[STATE]
    state.draining = True
    state.metrics.draining.set(1)
    wyoming = app.get(_wyoming_key())
    deadline = time.monotonic() + timeout_s
    while True:
        for conn in list(state.connections):
            if not conn.active():
                conn.going_away(_GOING_AWAY)
        wyoming_busy = wyoming is not None and wyoming.drain_step()
        if not (state.connections or state.http_tasks or wyoming_busy) or time.monotonic() >= deadline:
            break
        await asyncio.sleep(0.05)
    for conn in list(state.connections):
        conn.going_away(f"{_GOING_AWAY} (drain timeout of {timeout_s:g} s)")
    if wyoming is not None:
        wyoming.drain_step(final=True)
    for task in list(state.http_tasks):
        task.cancel()
    # a client that does not read cannot hold the shutdown: its socket goes after a short grace
    end = time.monotonic() + 1.0
    while (state.connections or state.http_tasks) and time.monotonic() < end:
        await asyncio.sleep(0.05)
    for conn in list(state.connections):
        conn.abort()
    log.info("drain: %d sessions and %d HTTP streams were cut", len(state.connections), len(state.http_tasks))


async def _start(app: web.Application) -> None:
    app[STATE].engine.start()


async def _close_sockets(app: web.Application) -> None:
    async def close(ws: web.WebSocketResponse) -> None:
        try:  # bounded: a client that does not read cannot take a close frame
            await asyncio.wait_for(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown"), 1.0)
        except (asyncio.TimeoutError, ConnectionError, RuntimeError):
            pass

    await asyncio.gather(*(close(ws) for ws in list(app[STATE].sockets)))


async def _stop(app: web.Application) -> None:
    app[STATE].engine.stop(timeout=2.0)


# Paths that start work: refused while draining.
_WORK_PATHS = ("/v1/stream", "/v1/audio/speech")


@web.middleware
async def _gate(request: web.Request, handler):
    """While draining, refuse new work with a typed reason; track HTTP streams for the drain."""
    state = request.app[STATE]
    if request.path not in _WORK_PATHS:
        return await handler(request)
    if state.draining:
        return http_error("going_away", _GOING_AWAY, shape="stream" if request.path == "/v1/stream" else "openai",
                          metrics=state.metrics)
    if request.path == "/v1/stream":
        return await handler(request)
    task = asyncio.current_task()
    state.http_tasks.add(task)
    try:
        return await handler(request)
    finally:
        state.http_tasks.discard(task)


@web.middleware
async def _cors(request: web.Request, handler):
    response = await handler(request)
    if request.path.startswith("/v1/") and not isinstance(response, web.WebSocketResponse):
        origin = request.app[STATE].guard.cors_origin(request)
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
    return response


async def _preflight(request: web.Request) -> web.Response:
    if request.app[STATE].guard.cors_origin(request) is None:
        return http_error("origin_not_allowed", "this Origin is not allowed")
    return web.Response(status=204, headers={
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": "Authorization, Content-Type",
        "Access-Control-Max-Age": "600"})


async def _voices(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if not state.guard.authorized(request):
        return http_error("unauthorized", "missing or wrong API key", metrics=state.metrics)
    return web.json_response({"voices": [{"name": v, "default": v == DEFAULT_VOICE} for v in VOICES],
                              "aliases": OPENAI_VOICES, "default": DEFAULT_VOICE})


async def _health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def _ready(request: web.Request) -> web.Response:
    state = request.app[STATE]
    engine = state.engine
    if state.draining:
        return web.json_response({"status": "draining"}, status=503)
    if engine.ready:
        return web.json_response({"status": "ready", "engine": engine.name, "capacity": engine.capacity})
    if engine.failure is not None:
        return web.json_response({"status": "failed", "error": engine.failure}, status=503)
    return web.json_response({"status": "loading"}, status=503)


async def _metrics(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.cache is not None:
        state.metrics.cache_bytes.set(state.cache.bytes)
    body, content_type = state.metrics.render()
    # aiohttp wants the charset apart from the media type
    media, _, params = content_type.partition(";")
    charset = params.split("charset=")[-1].strip() if "charset=" in params else None
    return web.Response(body=body, content_type=media.strip(), charset=charset)


async def _static(request: web.Request) -> web.StreamResponse:
    """A file under static_dir; never anything outside it (resolved paths are checked)."""
    root = Path(request.app[STATE].config.static_dir).resolve()
    rel = request.match_info["path"] or "index.html"
    if "\x00" in rel:
        raise web.HTTPNotFound()
    try:
        path = (root / rel).resolve()
    except (OSError, RuntimeError):
        raise web.HTTPNotFound() from None
    if path.is_dir():
        path = path / "index.html"
    if not path.is_relative_to(root) or any(p.startswith(".") for p in path.relative_to(root).parts):
        raise web.HTTPNotFound()
    if not path.is_file():
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={"Cache-Control": "no-cache"})
