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

from streamtts.engine_client import Audio, Busy, Done, Event, Failed, Segment, Slot, Utterance, UtteranceSpec
from streamtts.protocol import CancelEvent, EndEvent, FlushEvent, Session, StartEvent, State, TextEvent
from streamtts.protocol.contexts import ContextClosed, ContextSession, Routed, wants_contexts
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


class Lane:
    """One utterance stream of a socket (the socket's only one, or one context's): its slot, its
    engine utterance and the commands held while it waits for a slot. It takes a stream slot with
    its first text and gives it back once the engine has nothing of it left to compute (all its
    text spoken, its audio possibly still being paced out), or when done or cancelled; more text
    takes a slot again. So a lane with nothing to say holds none, and a slot counts the streams
    the engine computes, which is what the capacity is measured in."""

    def __init__(self, conn: "Connection", session: Session, context_id=None):
        self.conn, self.session, self.context_id = conn, session, context_id
        self.utt: Optional[Utterance] = None  # the utterance being spoken (it holds `slot`)
        self.slot: Optional[Slot] = None
        self.waiting: Optional[asyncio.Task] = None  # the current utterance's wait for a slot
        # Commands of the utterance that waits for its slot, in order. Bounded by the session's
        # text limit: texts carry characters, and flushes and the end are kept once each.
        self.held: list = []
        self.sending: Optional[Event] = None  # the stream event whose frames the session holds

    async def admit(self) -> None:
        """Wait for the current utterance's stream slot (told its place), then speak it."""
        conn = self.conn
        try:
            slot = await conn.engine.admission.wait(on_position=self._queued)
        except Busy as exc:
            self.waiting = None
            self.held.clear()
            conn.metrics.refused.labels(api="ws").inc()
            self.session.drop_utterance("server_busy", exc.message)
            conn.wakeup.set()
            return
        self.waiting = None
        if self.session.state is State.CLOSED or conn.lanes.get(self.context_id) is not self:
            slot.release()
            return
        if conn.engine.failure is not None:
            slot.release()
            self.session.fail("engine_unavailable", engine_unavailable(conn.state))
            conn.wakeup.set()
            return
        self.slot = slot
        if self.utt is None:  # its first text (later text goes on in the utterance it began)
            self._open()
        held, self.held = self.held, []
        for event in held:
            self.command(event)
        conn.wakeup.set()

    def _open(self) -> None:
        conn, o = self.conn, self.session.options
        self.utt = conn.engine.open(UtteranceSpec(o.voice, o.seed, o.speed, api="ws"),
                                    max_lead_s=conn.state.config.max_lead_s)
        if self.session.generation:  # a new engine utterance starts at generation 0
            self.utt.cancel(self.session.generation)
        self.utt.stream.bind(conn.loop, conn.wakeup)
        conn.metrics.requests.labels(api="ws").inc()

    def end_utterance(self) -> None:
        """The current utterance is over (cancelled, or the socket or context closes): stop waiting
        for its slot, free its work and give its slot back."""
        if self.waiting is not None:
            self.waiting.cancel()  # Admission.wait leaves the queue (or hands a granted slot on)
            self.waiting = None
        self.held.clear()
        self.sending = None
        if self.utt is not None:
            self.utt.close()
            self.utt = None
        if self.slot is not None:
            self.slot.release()
            self.slot = None

    def _queued(self, position: int) -> None:
        self.session.queued(position)
        self.conn.wakeup.set()

    def busy(self) -> bool:
        """Audio of it is being made, or waits for a slot (the session's outbox is the socket's)."""
        return self.waiting is not None or (self.utt is not None and self.utt.busy)

    def dispatch(self, event) -> None:
        if isinstance(event, CancelEvent):
            self.end_utterance()
            if self.session.state is State.ENDING:  # nothing more will come: it is done
                self.session.finished(event.generation)
        elif self.waiting is not None:  # after the text that waits for its slot, in order
            self._hold(event)
        elif self.utt is not None and (self.slot is not None or not isinstance(event, TextEvent)):
            self.command(event)  # (a flush or the end needs no compute of its own)
        elif isinstance(event, TextEvent):  # text, and no slot: it asks for one
            self._hold(event)
            self.waiting = asyncio.ensure_future(self.admit())
        elif isinstance(event, EndEvent):  # no text since the last utterance: nothing to say
            self.session.finished(event.generation)
        # a flush with nothing to speak does nothing

    def settle(self) -> None:
        """Give the slot back once the engine has nothing of the utterance left to compute."""
        if self.slot is not None and self.utt is not None and not self.utt.computing:
            self.slot.release()
            self.slot = None

    def _hold(self, event) -> None:
        if isinstance(event, (FlushEvent, EndEvent)) and self.held and type(self.held[-1]) is type(event):
            return  # two flushes in a row are one
        self.held.append(event)

    def command(self, event) -> None:
        utt = self.utt
        if isinstance(event, TextEvent):
            utt.text(event.generation, event.text)
        elif isinstance(event, FlushEvent):
            utt.flush(event.generation)
        elif isinstance(event, EndEvent):
            utt.end(event.generation)

    def to_session(self, event: Event) -> None:
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
            if (event.code == "engine_unavailable" and self.conn.engine.failure is None
                    and session.state is State.READY):
                # The engine lives but could not make this utterance (no engine replica left for
                # now): that utterance fails, the socket goes on and its next text may find one.
                session.drop_utterance(event.code, event.message)
                self.end_utterance()
                self.conn.wakeup.set()
            else:
                session.fail(event.code, event.message)


class Connection:
    """One socket: one lane (its utterances, one after another), or one lane per context when
    the socket turns contexts on (docs/protocol.md "Contexts")."""

    def __init__(self, state: ServerState, ws: web.WebSocketResponse, session: Session, transport=None):
        self.state, self.ws, self.session, self.transport = state, ws, session, transport
        self.engine = state.engine
        self.metrics = state.metrics
        self.lanes: dict = {None: Lane(self, session)}
        self._turn = 0  # round robin over the lanes' streams
        self.loop = asyncio.get_running_loop()
        self.wakeup = asyncio.Event()

    @property
    def contexts(self) -> bool:
        return isinstance(self.session, ContextSession)

    async def run(self) -> None:
        self.state.sockets.add(self.ws)
        self.state.connections.add(self)
        gauge = self.metrics.active_sessions.labels(api="ws")
        gauge.inc()
        sender = asyncio.create_task(self._send_loop())
        try:
            if self.session.state is not State.CLOSED:
                await self._receive_loop()
            self.wakeup.set()
            if self.session.fatal_code == "outbox_full":
                # it does not read: nothing more can reach it, its error included (counted here)
                self.metrics.errors.labels(code="outbox_full").inc()
                self.abort()
            elif self.session.state is State.CLOSED and not sender.done():
                await asyncio.wait({sender}, timeout=_FLUSH_TIMEOUT_S)
        finally:
            sender.cancel()
            for lane in self.lanes.values():
                lane.end_utterance()  # frees its work and its slot at once
            self.lanes.clear()
            gauge.dec()
            self.state.sockets.discard(self.ws)
            self.state.connections.discard(self)
            if not self.ws.closed:
                try:  # a client that does not read cannot take the close frame: drop it
                    await asyncio.wait_for(self.ws.close(code=self.session.close_code or 1000), 2.0)
                except (asyncio.TimeoutError, ConnectionError, RuntimeError):
                    self.abort()

    def _lane(self, context_id) -> Optional[Lane]:
        """The lane of a context (made when the context is new)."""
        lane = self.lanes.get(context_id)
        if lane is None:
            ctx = self.session.contexts.get(context_id)
            if ctx is None:
                return None
            lane = self.lanes[context_id] = Lane(self, ctx, context_id)
        return lane

    def _prune(self) -> None:
        """Lanes whose context is gone (done, failed, closed) free their work and slot."""
        if not self.contexts:
            return
        for cid in [c for c in self.lanes if c not in self.session.contexts]:
            self.lanes.pop(cid).end_utterance()

    # ---- client -> server -------------------------------------------------------------------

    async def _receive_loop(self) -> None:
        idle = self.state.config.idle_timeout_s
        first = True
        while self.session.state is not State.CLOSED:
            left = idle - self.session.idle_s()
            if left <= 0:
                if self._busy():  # listening to a long text is not idling
                    self.session.valid_at = self.session.clock()
                    continue
                self.session.fail("idle_timeout", f"no valid message for {idle:g} s")
                self.wakeup.set()
                return
            if self.contexts:  # idle contexts are looked at every second or so
                left = min(left, 1.0)
            try:
                msg = await self.ws.receive(timeout=left)
            except asyncio.TimeoutError:
                self._expire()
                continue
            if msg.type is WSMsgType.TEXT:
                if first and wants_contexts(msg.data):
                    self._to_contexts()
                events = self.session.receive_text(msg.data)
            elif msg.type is WSMsgType.BINARY:
                events = self.session.receive_bytes(msg.data)
            else:  # CLOSE / CLOSING / CLOSED, or a frame aiohttp refused (too big: closed with 1009)
                if msg.type is WSMsgType.ERROR:
                    code = getattr(msg.data, "code", None)
                    self.metrics.errors.labels(code="message_too_large" if code == 1009 else "bad_message").inc()
                return
            first = False
            for event in events:
                self._dispatch(event)
            self._expire()
            self.wakeup.set()

    def _to_contexts(self) -> None:
        """The socket's first message turns contexts on: its session routes by context."""
        old = self.session
        self.session = ContextSession(limits=old.limits, session_id=old.id, clock=old.clock)
        self.lanes = {}

    def _expire(self) -> None:
        if self.contexts:
            for closed in self.session.expire(lambda cid: cid in self.lanes and self.lanes[cid].busy()):
                self._dispatch(closed)
            self.wakeup.set()

    def _busy(self) -> bool:
        """Audio of this session is being made, is on its way, or waits for a slot."""
        return self.session.has_outgoing or any(lane.busy() for lane in self.lanes.values())

    def active(self) -> bool:
        """An utterance is under way: audio on its way, or text waiting for its sentence's end
        (one still waiting for its slot is not: a drain ends it at once)."""
        return any(lane.utt is not None and (lane.busy() or self.session.has_outgoing or lane.utt.pending_text)
                   for lane in self.lanes.values())

    def going_away(self, message: str) -> None:
        """Server shutdown: end the session now (fatal `going_away`, close code 1001)."""
        self.session.fail("going_away", message)
        for lane in self.lanes.values():
            if lane.waiting is not None:  # still queued for a slot: stop waiting
                lane.end_utterance()
        self.wakeup.set()

    def abort(self) -> None:
        """Drop the connection without a closing handshake (a client that does not read)."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def _dispatch(self, event) -> None:
        if isinstance(event, StartEvent):
            return  # the session keeps its options
        if isinstance(event, ContextClosed):
            lane = self.lanes.pop(event.context_id, None)
            if lane is not None:
                lane.end_utterance()
            return
        if isinstance(event, Routed):
            lane = self._lane(event.context_id)
            if lane is not None:
                lane.dispatch(event.event)
            return
        self.lanes[None].dispatch(event)

    # ---- engine -> client -------------------------------------------------------------------

    def _next_event(self) -> bool:
        """Hand the next ready stream event of a lane (round robin) to its session."""
        lanes = [lane for lane in self.lanes.values() if lane.utt is not None]
        for i in range(len(lanes)):
            lane = lanes[(self._turn + i) % len(lanes)]
            event = lane.utt.stream.next()
            if event is not None:
                self._turn = (self._turn + i + 1) % len(lanes)
                lane.to_session(event)
                lane.sending = event
                return True
        return False

    def _wait_s(self) -> Optional[float]:
        """Until a lane's pacing lets its next piece go (None: until woken)."""
        waits = [w for lane in self.lanes.values() if lane.utt is not None and (w := lane.utt.stream.wait_s()) > 0]
        return min(waits) if waits else None

    async def _send_loop(self) -> None:
        ws = self.ws
        try:
            while True:
                self.wakeup.clear()  # every source is looked at below before waiting
                session = self.session
                item = session.next_to_send()
                if item is None:
                    self._prune()
                    for lane in self.lanes.values():  # all their frames are written (or dropped)
                        if lane.sending is not None:
                            if lane.utt is not None:
                                lane.utt.stream.delivered(lane.sending)
                            lane.sending = None
                        lane.settle()
                    if session.state is State.CLOSED and not session.has_outgoing:
                        await ws.close(code=session.close_code or 1000)
                        return
                    if session.state is not State.CLOSED and self._next_event():
                        continue
                    try:
                        await asyncio.wait_for(self.wakeup.wait(), timeout=self._wait_s())
                    except asyncio.TimeoutError:
                        pass
                    continue
                if isinstance(item, bytes):
                    await ws.send_bytes(item)
                else:
                    if item["type"] == "error" and item["code"] != "outbox_full":
                        self.metrics.errors.labels(code=item["code"]).inc()
                    await ws.send_str(json.dumps(item, ensure_ascii=False))
                for ttfa in session.ttfa_observed:
                    self.metrics.ttfa.labels(api="ws").observe(ttfa)
                session.ttfa_observed.clear()
        except (ConnectionError, RuntimeError) as exc:  # the client went away mid-send
            log.debug("send failed: %s", exc)
