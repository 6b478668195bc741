"""WebSocket ``GET /v1/stream``: moves data between the socket, the protocol and the worker.

One :class:`Connection` per socket: a receive loop feeds client frames to the sans-I/O
:class:`~streamtts.protocol.Session` and turns its events into scheduler commands; a send loop
writes what the session queues; worker outputs arrive via ``call_soon_threadsafe``. All protocol
state is touched on the event loop only.
"""

from __future__ import annotations

import asyncio
import json
import logging

from aiohttp import WSMsgType, web

from streamtts.constants import NATIVE_RATE
from streamtts.core.outputs import AudioOut, FailedOut, FinishedOut, PauseOut, SegmentOut
from streamtts.core.request import CANCEL, CLOSE, END, FLUSH, TEXT, Request
from streamtts.protocol import (CancelEvent, EndEvent, FlushEvent, Session, StartEvent, State, TextEvent,
                                error_message)
from streamtts.server.admission import Busy
from streamtts.server.state import STATE, ServerState, admission_metrics, engine_unavailable

log = logging.getLogger(__name__)

_FLUSH_TIMEOUT_S = 30.0  # after done or a fatal error: time to hand the rest to a slow client


def _refusal(status: int, code: str, message: str, state: ServerState) -> web.Response:
    state.metrics.errors.labels(code=code).inc()
    return web.json_response(error_message(code, message, fatal=True), status=status)


def _websocket(max_frame_bytes: int) -> web.WebSocketResponse:
    # No permessage-deflate: PCM hardly compresses, and zlib would cost the CPU synthesis needs.
    # Text frames stay bytes (aiohttp >= 3.14) so invalid UTF-8 is the protocol's non-fatal
    # `bad_utf8`; older aiohttp decodes itself and closes such a socket with 1007.
    kw = dict(max_msg_size=max_frame_bytes, heartbeat=30.0, compress=False)
    try:
        return web.WebSocketResponse(decode_text=False, **kw)
    except TypeError:
        return web.WebSocketResponse(**kw)


async def stream_handler(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    guard = state.guard
    if not guard.authorized(request):
        return _refusal(401, "unauthorized", "missing or wrong API key (Authorization: Bearer KEY or ?api_key=KEY)",
                        state)
    if not guard.origin_allowed(request):
        return _refusal(403, "origin_not_allowed", f"Origin {request.headers.get('Origin')!r} is not allowed", state)
    ws = _websocket(state.config.max_frame_bytes)
    if not ws.can_prepare(request).ok:
        return _refusal(426, "bad_message", "this endpoint speaks WebSocket: send an Upgrade request", state)
    if not guard.admit_request(request):
        return _refusal(429, "rate_limited", "too many new sessions for this key; try again shortly", state)
    await ws.prepare(request)
    with guard.session() as admitted:
        session = Session(limits=state.config.limits)
        if not admitted:
            session.fail("too_many_sessions", f"the server is at its limit of {state.config.max_sessions} "
                                              "sessions; try again later")
        elif state.worker.failure is not None:
            session.fail("engine_unavailable", engine_unavailable(state))
        await Connection(state, ws, session).run()
    return ws


class Connection:
    def __init__(self, state: ServerState, ws: web.WebSocketResponse, session: Session):
        self.state, self.ws, self.session = state, ws, session
        self.scheduler = state.scheduler
        self.metrics = state.metrics
        self.job: Request | None = None
        self.loop = asyncio.get_running_loop()
        self.wakeup = asyncio.Event()

    async def run(self) -> None:
        self.state.sockets.add(self.ws)
        gauge = self.metrics.active_sessions.labels(api="ws")
        gauge.inc()
        sender = asyncio.create_task(self._send_loop())
        try:
            if self.session.state is not State.CLOSED:
                await self._admitted_session()
            self.wakeup.set()
            if self.session.state is State.CLOSED and not sender.done():
                await asyncio.wait({sender}, timeout=_FLUSH_TIMEOUT_S)
        finally:
            sender.cancel()
            if self.job is not None:
                self.scheduler.command(self.job, CLOSE)  # frees its work at once
            gauge.dec()
            self.state.sockets.discard(self.ws)
            if not self.ws.closed:
                await self.ws.close(code=self.session.close_code or 1000)

    async def _admitted_session(self) -> None:
        """Wait for a stream slot (queued, told its position), then serve the client."""
        admission = self.state.admission
        try:
            async with admission.slot(on_position=self._queued):
                admission_metrics(self.state)
                if self.state.worker.failure is not None:
                    self.session.fail("engine_unavailable", engine_unavailable(self.state))
                    return
                await self._receive_loop()
        except Busy as exc:
            self.metrics.refused.labels(api="ws").inc()
            self.session.fail("server_busy", exc.message)
        finally:
            admission_metrics(self.state)

    def _queued(self, position: int) -> None:
        self.session.queued(position)
        admission_metrics(self.state)
        self.wakeup.set()

    # ---- client -> server -------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        idle = self.state.config.idle_timeout_s
        while self.session.state is not State.CLOSED:
            try:
                msg = await self.ws.receive(timeout=idle)
            except asyncio.TimeoutError:
                if self._busy():
                    continue  # listening to a long text is not idling
                self.session.fail("idle_timeout", f"no message for {idle:g} s")
                return
            if msg.type is WSMsgType.TEXT:
                events = self.session.receive_text(msg.data)
            elif msg.type is WSMsgType.BINARY:
                events = self.session.receive_bytes(msg.data)
            else:  # CLOSE / CLOSING / CLOSED, or a frame aiohttp refused (too big: closed with 1009)
                if msg.type is WSMsgType.ERROR:
                    code = getattr(msg.data, "code", None)
                    self.metrics.errors.labels(code="message_too_large" if code == 1009 else "bad_message").inc()
                return
            for event in events:
                self._dispatch(event)
            self.wakeup.set()

    def _busy(self) -> bool:
        job = self.job
        return job is not None and (job.has_work or job.backlog_s > 0)

    def _dispatch(self, event) -> None:
        if isinstance(event, StartEvent):
            o = event.options
            self.job = Request(o.voice, o.seed, o.speed, sink=self._sink, api="ws")
            self.scheduler.add_request(self.job)
            self.metrics.requests.labels(api="ws").inc()
        elif isinstance(event, TextEvent):
            self.scheduler.command(self.job, TEXT, event.generation, event.text)
        elif isinstance(event, FlushEvent):
            self.scheduler.command(self.job, FLUSH, event.generation)
        elif isinstance(event, CancelEvent):
            self.scheduler.command(self.job, CANCEL, event.generation)
            self.job.set_buffered(self.session.buffered_seconds)
        elif isinstance(event, EndEvent):
            self.scheduler.command(self.job, END, event.generation)

    # ---- worker -> client -------------------------------------------------------------------

    def _sink(self, out) -> None:
        """Worker thread: hand an output to the event loop (raises once the loop is closed)."""
        self.loop.call_soon_threadsafe(self._on_output, out)

    def _on_output(self, out) -> None:
        session, job = self.session, self.job
        if isinstance(out, AudioOut):
            session.audio(out.generation, out.audio, out.compute_s)
            job.delivered(len(out.audio) / NATIVE_RATE)
        elif isinstance(out, PauseOut):
            session.pause(out.generation, out.samples)
            job.delivered(out.samples / NATIVE_RATE)
        elif isinstance(out, SegmentOut):
            session.segment(out.generation, out.segment, out.compute_s)
        elif isinstance(out, FinishedOut):
            session.finished(out.generation)
        elif isinstance(out, FailedOut):
            session.fail(out.code, out.message)
        job.set_buffered(session.buffered_seconds)
        self.wakeup.set()

    async def _send_loop(self) -> None:
        session, ws = self.session, self.ws
        try:
            while True:
                item = session.next_to_send()
                if item is None:
                    if session.state is State.CLOSED:
                        await ws.close(code=session.close_code or 1000)
                        return
                    self.wakeup.clear()
                    await self.wakeup.wait()
                    continue
                if isinstance(item, bytes):
                    await ws.send_bytes(item)
                else:
                    if item["type"] == "error":
                        self.metrics.errors.labels(code=item["code"]).inc()
                    await ws.send_str(json.dumps(item, ensure_ascii=False))
                for ttfa in session.ttfa_observed:
                    self.metrics.ttfa.labels(api="ws").observe(ttfa)
                session.ttfa_observed.clear()
                if self.job is not None:
                    self.job.set_buffered(session.buffered_seconds)
                    self.scheduler.flow(self.job)
        except (ConnectionError, RuntimeError) as exc:  # the client went away mid-send
            log.debug("send failed: %s", exc)
