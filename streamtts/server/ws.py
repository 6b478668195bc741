"""WebSocket ``GET /v1/stream``: moves data between the socket, the sans-I/O session and the
engine client.

One :class:`Connection` per socket: a receive loop feeds client frames to the
:class:`~streamtts.protocol.Session` and turns its events into commands of the session's
utterance; a send loop writes what the session queues, and hands the session the utterance's
output stream one event at a time (paced by the stream), reporting each as delivered once its
frames are written. All protocol state is touched on the event loop only.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Optional

from aiohttp import WSMsgType, web

from streamtts.engine_client import Audio, Busy, Done, Event, Failed, Segment, Utterance, UtteranceSpec
from streamtts.protocol import CancelEvent, EndEvent, FlushEvent, Session, StartEvent, State, TextEvent
from streamtts.server.errors import http_error
from streamtts.server.state import STATE, ServerState, engine_unavailable

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
        return http_error("unauthorized", "missing or wrong API key (Authorization: Bearer KEY or ?api_key=KEY)",
                          shape="stream", metrics=state.metrics)
    if not guard.origin_allowed(request):
        return http_error("origin_not_allowed", f"Origin {request.headers.get('Origin')!r} is not allowed",
                          shape="stream", metrics=state.metrics)
    ws = _websocket(state.config.max_frame_bytes)
    if not ws.can_prepare(request).ok:
        return http_error("bad_message", "this endpoint speaks WebSocket: send an Upgrade request",
                          shape="stream", metrics=state.metrics, status=426)
    if not guard.admit_request(request):
        return http_error("rate_limited", "too many new sessions for this key; try again shortly",
                          shape="stream", metrics=state.metrics)
    await ws.prepare(request)
    cap_send_buffer(request)
    with guard.session() as admitted:
        session = Session(limits=state.config.limits)
        if not admitted:
            session.fail("too_many_sessions", f"the server is at its limit of {state.config.max_sessions} "
                                              "sessions; try again later")
        elif state.engine.failure is not None:
            session.fail("engine_unavailable", engine_unavailable(state))
        await Connection(state, ws, session, request.transport).run()
    return ws


class Connection:
    def __init__(self, state: ServerState, ws: web.WebSocketResponse, session: Session, transport=None):
        self.state, self.ws, self.session, self.transport = state, ws, session, transport
        self._waiting: Optional[asyncio.Task] = None  # the wait for an admission slot
        self._kicked = False  # that wait was cancelled by going_away
        self.engine = state.engine
        self.metrics = state.metrics
        self.utt: Optional[Utterance] = None
        self._sending: Optional[Event] = None  # the stream event whose frames the session holds
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
            if self.utt is not None:
                self.utt.close()  # frees its work at once
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
        try:
            async with self.engine.admission.slot(queue=True, on_position=self._queued):
                self._waiting = None  # admitted: from here the session ends by its protocol
                if self.engine.failure is not None:
                    self.session.fail("engine_unavailable", engine_unavailable(self.state))
                    return
                await self._receive_loop()
        except Busy as exc:
            self.metrics.refused.labels(api="ws").inc()
            self.session.fail("server_busy", exc.message)

    def _queued(self, position: int) -> None:
        self.session.queued(position)
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
        return self.utt is not None and (self.utt.busy or self.session.has_outgoing)

    def active(self) -> bool:
        """An utterance is under way: audio on its way, or text waiting for its sentence's end."""
        return self._busy() or (self.utt is not None and self.utt.pending_text)

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
            self.utt = self.engine.open(UtteranceSpec(o.voice, o.seed, o.speed, api="ws"),
                                        max_lead_s=self.state.config.max_lead_s)
            self.utt.stream.bind(self.loop, self.wakeup)
            self.metrics.requests.labels(api="ws").inc()
        elif isinstance(event, TextEvent):
            self.utt.text(event.generation, event.text)
        elif isinstance(event, FlushEvent):
            self.utt.flush(event.generation)
        elif isinstance(event, CancelEvent):
            self.utt.cancel(event.generation)
        elif isinstance(event, EndEvent):
            self.utt.end(event.generation)

    # ---- engine -> client -------------------------------------------------------------------

    def _to_session(self, event: Event) -> None:
        """One event of the utterance's stream becomes the session's frames and messages."""
        session = self.session
        if isinstance(event, Audio):
            if event.silence:
                session.pause(event.generation, len(event.samples))
            else:
                session.audio(event.generation, event.samples, event.compute_s)
        elif isinstance(event, Segment):
            session.segment(event.generation, event, event.compute_s)
        elif isinstance(event, Done):
            session.finished(event.generation)
        elif isinstance(event, Failed):
            session.fail(event.code, event.message)

    async def _send_loop(self) -> None:
        session, ws = self.session, self.ws
        try:
            while True:
                self.wakeup.clear()  # every source is looked at below before waiting
                item = session.next_to_send()
                if item is None:
                    stream = self.utt.stream if self.utt is not None else None
                    if self._sending is not None:  # all its frames are written (or dropped by a cancel)
                        stream.delivered(self._sending)
                        self._sending = None
                    if session.state is State.CLOSED and not session.has_outgoing:
                        await ws.close(code=session.close_code or 1000)
                        return
                    if stream is not None and session.state is not State.CLOSED:
                        event = stream.next()
                        if event is not None:
                            self._to_session(event)
                            self._sending = event
                            continue
                    wait = stream.wait_s() if stream is not None else 0.0  # > 0: held back by pacing
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
        except (ConnectionError, RuntimeError) as exc:  # the client went away mid-send
            log.debug("send failed: %s", exc)
