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
import socket
from typing import Optional

from aiohttp import WSMsgType, web

from streamtts.constants import NATIVE_RATE
from streamtts.core.outputs import AudioOut, FailedOut, FinishedOut, PauseOut, SegmentOut
from streamtts.audio.pacing import Pacer
from streamtts.core.request import CANCEL, CLOSE, END, FLUSH, TEXT, Request
from streamtts.protocol import (CancelEvent, EndEvent, FlushEvent, Session, StartEvent, State, TextEvent,
                                error_message)
from streamtts.server.admission import Busy
from streamtts.server.state import STATE, ServerState, admission_metrics, engine_unavailable

log = logging.getLogger(__name__)

_FLUSH_TIMEOUT_S = 30.0  # after done or a fatal error: time to hand the rest to a slow client
# The kernel's send buffer of a streaming socket. Linux autotunes it up to megabytes (minutes of
# audio) for a client that reads slowly; a cancel or a pong would queue behind all of that.
# Pacing keeps a real-time reader within max_lead_s; this caps what a slower one can park there.
SEND_BUFFER_BYTES = 64 * 1024


def cap_send_buffer(request: web.Request, size: int = SEND_BUFFER_BYTES) -> None:
    sock = request.transport.get_extra_info("socket") if request.transport is not None else None
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        except OSError as exc:  # not a TCP socket (a test transport, say): nothing to cap
            log.debug("SO_SNDBUF not set: %s", exc)


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
    cap_send_buffer(request)
    with guard.session() as admitted:
        lead = state.config.max_lead_s
        session = Session(limits=state.config.limits, pacer=Pacer(lead) if lead > 0 else None)
        if not admitted:
            session.fail("too_many_sessions", f"the server is at its limit of {state.config.max_sessions} "
                                              "sessions; try again later")
        elif state.worker.failure is not None:
            session.fail("engine_unavailable", engine_unavailable(state))
        await Connection(state, ws, session, request.transport).run()
    return ws


class Connection:
    def __init__(self, state: ServerState, ws: web.WebSocketResponse, session: Session, transport=None):
        self.state, self.ws, self.session, self.transport = state, ws, session, transport
        self._waiting: Optional[asyncio.Task] = None  # the wait for an admission slot
        self._kicked = False  # that wait was cancelled by going_away
        self.scheduler = state.scheduler
        self.metrics = state.metrics
        self.job: Request | None = None
        self.loop = asyncio.get_running_loop()
        self.wakeup = asyncio.Event()

    async def run(self) -> None:
        self.state.sockets.add(self.ws)
        self.state.connections.add(self)
        gauge = self.metrics.active_sessions.labels(api="ws")
        gauge.inc()
        sender = asyncio.create_task(self._send_loop())
        try:
            if self.session.state is not State.CLOSED:
                self._waiting = asyncio.ensure_future(self._admitted_session())
                try:
                    await self._waiting
                except asyncio.CancelledError:
                    if not self._kicked:
                        raise  # this handler itself is cancelled
            self.wakeup.set()
            if self.session.fatal_code == "outbox_full":
                self.abort()  # it does not read: nothing more can reach it
            elif self.session.state is State.CLOSED and not sender.done():
                await asyncio.wait({sender}, timeout=_FLUSH_TIMEOUT_S)
        finally:
            sender.cancel()
            if self.job is not None:
                self.scheduler.command(self.job, CLOSE)  # frees its work at once
            gauge.dec()
            self.state.sockets.discard(self.ws)
            self.state.connections.discard(self)
            if not self.ws.closed:
                try:  # a client that does not read cannot take the close frame: drop it
                    await asyncio.wait_for(self.ws.close(code=self.session.close_code or 1000), 2.0)
                except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                    self.abort()

    async def _admitted_session(self) -> None:
        """Wait for a stream slot (queued, told its position), then serve the client."""
        admission = self.state.admission
        try:
            async with admission.slot(on_position=self._queued):
                self._waiting = None  # admitted: from here the session ends by its protocol
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
            left = idle - self.session.idle_s()
            if left <= 0:
                if self._busy():  # listening to a long text is not idling
                    self.session.valid_at = self.session.clock()
                    continue
                self.session.fail("idle_timeout", f"no valid message for {idle:g} s")
                self.wakeup.set()
                return
            try:
                msg = await self.ws.receive(timeout=left)
            except asyncio.TimeoutError:
                continue
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
        """Audio of this session is being made or is on its way to the client."""
        job = self.job
        return job is not None and (job.has_work or job.backlog_s > 0 or bool(job.inbox)
                                    or self.session.has_outgoing)

    def active(self) -> bool:
        """An utterance is under way: audio on its way, or text waiting for its sentence's end."""
        return self._busy() or (self.job is not None and bool(self.job.chunker.pending))

    def going_away(self, message: str) -> None:
        """Server shutdown: end the session now (fatal `going_away`, close code 1001)."""
        self.session.fail("going_away", message)
        if self._waiting is not None:  # still queued for a slot: stop waiting
            self._kicked = True
            self._waiting.cancel()
        self.wakeup.set()

    def abort(self) -> None:
        """Drop the connection without a closing handshake (a client that does not read)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

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
                    if session.state is State.CLOSED and not session.has_outgoing:
                        await ws.close(code=session.close_code or 1000)
                        return
                    self.wakeup.clear()
                    wait = session.send_wait_s()  # > 0: audio held back by pacing
                    try:
                        await asyncio.wait_for(self.wakeup.wait(), timeout=wait or None)
                    except asyncio.TimeoutError:
                        pass
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
