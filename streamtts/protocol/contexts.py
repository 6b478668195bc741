"""Contexts: several utterance streams on one socket (docs/protocol.md "Contexts").

A :class:`ContextSession` is the socket's session when contexts are on. It keeps the socket's
concerns (options, rate limit, idle timer, socket-wide errors, the socket's `end`) and routes each
message by its ``context_id`` to one plain :class:`Session` per context, which keeps that
context's utterance: generation, encoder, listener clock, segments and what was heard. Their
outboxes are merged here: every event gets its ``context_id``, every audio frame its tag (one
byte N, then N bytes of the id; N = 0 for the default context, whose id is None)::

    if wants_contexts(first_frame):
        session = ContextSession(limits)
    for event in session.receive_text(frame):
        if isinstance(event, Routed): ...          # event.context_id, event.event (TextEvent, ...)
        elif isinstance(event, ContextClosed): ... # that context is gone: free its work
    session.contexts[context_id].audio(...)        # results go to the context's own session
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Callable, Optional, Union

from streamtts.protocol.messages import Event, Options, ProtocolError, StartEvent, State
from streamtts.protocol.session import Session, _json_size

CONTEXT_ID = re.compile(r"[A-Za-z0-9_.:\-]{1,64}\Z")
ContextId = Optional[str]


@dataclass(frozen=True)
class Routed:
    """An event of one context."""

    context_id: ContextId
    event: Event


@dataclass(frozen=True)
class ContextClosed:
    """The context is gone (`close_context`, or idle): its utterance's work and slot are freed."""

    context_id: ContextId


def wants_contexts(data: Union[str, bytes]) -> bool:
    """Does a socket's first text frame turn contexts on (`start` with ``"contexts": true``, or
    a message that names a ``context_id``)? Anything unreadable: no (the plain session answers it)."""
    try:
        msg = json.loads(data)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return False
    if not isinstance(msg, dict):
        return False
    if msg.get("type") == "start":
        return msg.get("contexts") is True
    return msg.get("context_id") is not None


def tag(context_id: ContextId, frame: bytes) -> bytes:
    """An audio frame of a context, as sent on a socket with contexts."""
    name = b"" if context_id is None else context_id.encode("utf-8")
    return bytes((len(name),)) + name + frame


def untag(frame: bytes) -> tuple[ContextId, bytes]:
    """The context id and the audio of a tagged frame (what a client does)."""
    n = frame[0]
    return (frame[1:1 + n].decode("utf-8") if n else None), frame[1 + n:]


class ContextSession(Session):
    """The session of a socket with contexts; see the module docstring."""

    def __init__(self, limits=None, session_id: Optional[str] = None, clock: Callable[[], float] = time.monotonic):
        super().__init__(limits, session_id, clock)
        self.contexts: dict[ContextId, Session] = {}
        self._turn = 0  # round robin over the contexts' outboxes
        self._chars_before = 0  # characters of contexts already gone (the socket's text limit)

    # ---- client -> server -------------------------------------------------------------------

    def _ready(self, options: Options) -> StartEvent:
        event = super()._ready(options)
        msg = self._outbox.pop()
        self.outbox_bytes -= _json_size(msg)
        self._queue({**msg, "contexts": True})
        return event

    def _route(self, kind: str, msg: dict) -> list:
        if kind == "start":
            return self._on_start(msg)
        if kind not in self._HANDLERS and kind != "close_context":
            raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r}; the types are: "
                                                f"{', '.join(self._HANDLERS)}, close_context")
        cid = msg.get("context_id")
        if cid is not None and not (isinstance(cid, str) and CONTEXT_ID.match(cid)):
            raise ProtocolError("bad_context", "context_id must be 1-64 characters of A-Z a-z 0-9 _ - . :")
        events: list = self._implicit_start()
        if kind == "close_context":
            if cid is None or cid not in self.contexts:
                raise ProtocolError("bad_context", f"no live context {cid!r:.70} to close", context=cid)
            return events + self._close(cid, "closed")
        if kind == "end" and "context_id" not in msg:
            return events + self._end_socket()
        ctx = self.contexts.get(cid)
        if ctx is None:
            if kind == "cancel":  # nothing of it is under way: nothing to stop
                self._queue({"type": "cancelled", "context_id": cid, **self.heard()})
                return events
            if self.state is State.ENDING:
                raise ProtocolError("text_after_end", "the socket is ending: no new context", context=cid)
            if len(self.contexts) >= self.limits.max_contexts:
                raise ProtocolError("too_many_contexts", f"{len(self.contexts)} contexts are live, the most a "
                                                         "socket may have; close one first", context=cid)
            ctx = self._open_context(cid)
        if kind == "text" and isinstance(msg.get("text"), str):
            used = self._chars_before + sum(c.chars_received for c in self.contexts.values())
            if used + len(msg["text"]) > self.limits.max_session_chars:
                raise ProtocolError("text_too_long", f"the socket's text would exceed "
                                                     f"{self.limits.max_session_chars} characters", context=cid)
        try:
            routed = self._HANDLERS[kind](ctx, msg)
        except ProtocolError as exc:
            if not ctx.chars_received and ctx.state is State.READY and not ctx.has_outgoing:
                self._retire(cid)  # a context whose first message failed never was
            exc.context = cid
            raise
        ctx.valid_at = self.clock()
        return events + [Routed(cid, e) for e in routed]

    def _open_context(self, cid: ContextId) -> Session:
        ctx = Session(limits=self.limits, session_id=self.id, clock=self.clock)
        ctx._ready(self.options)
        ctx._outbox.clear()  # the socket said `ready` once
        ctx.outbox_bytes = 0
        self.contexts[cid] = ctx
        return ctx

    def _end_socket(self) -> list:
        if self.state is State.ENDING:
            raise ProtocolError("bad_message", "end was already received")
        self.state = State.ENDING
        events = []
        for cid, ctx in list(self.contexts.items()):
            if ctx.state is State.READY:
                events += [Routed(cid, e) for e in ctx._on_end({})]
        self._close_if_done()
        return events

    def _close(self, cid: ContextId, reason: str) -> list:
        ctx = self.contexts[cid]
        heard = ctx.heard()
        ctx._drop_unsent()
        while (item := ctx.next_to_send()) is not None:  # what it still had to say (JSON only now)
            if isinstance(item, dict):
                self._queue({**item, "context_id": cid})
        self._retire(cid)
        self._queue({"type": "context_closed", "context_id": cid, "reason": reason, **heard})
        return [ContextClosed(cid)]

    def _retire(self, cid: ContextId) -> None:
        ctx = self.contexts.pop(cid)
        self._chars_before += ctx.chars_received
        self._close_if_done()

    def _close_if_done(self) -> None:
        if self.state is State.ENDING and not self.contexts:
            self.state = State.CLOSED
            self.close_code = 1000

    def expire(self, busy: Callable[[ContextId], bool], now: Optional[float] = None) -> list[ContextClosed]:
        """Close the contexts idle for ``context_idle_s``: no message, nothing being made
        (``busy``) and nothing waiting to be sent."""
        now = self.clock() if now is None else now
        closed = []
        for cid, ctx in list(self.contexts.items()):
            if (ctx.state is State.READY and now - ctx.valid_at >= self.limits.context_idle_s
                    and not ctx.has_outgoing and not busy(cid)):
                closed += self._close(cid, "idle")
        return closed

    def fail(self, code: str, message: str) -> None:
        """A socket-wide fatal error: every context's unsent audio goes with it."""
        if self.state is not State.CLOSED:
            for ctx in self.contexts.values():
                ctx._drop_unsent()
            self.contexts.clear()
        super().fail(code, message)

    # ---- outbox -----------------------------------------------------------------------------

    def next_to_send(self):
        item = super().next_to_send()  # the socket's own: ready, its errors, context_closed
        if item is not None or self.state is State.CLOSED and not self.contexts:
            return item
        ids = list(self.contexts)
        for i in range(len(ids)):
            cid = ids[(self._turn + i) % len(ids)]
            ctx = self.contexts[cid]
            item = ctx.next_to_send()
            self.ttfa_observed.extend(ctx.ttfa_observed)
            ctx.ttfa_observed.clear()
            if ctx.fatal_code == "outbox_full":  # a client that does not read: the socket's matter
                self._error("outbox_full", "the client does not read; closing", fatal=True)
            if ctx.state is State.CLOSED and not ctx.has_outgoing:
                self._retire(cid)  # its `done` (or its fatal error) is out
            if item is None:
                continue
            self._turn = (self._turn + i + 1) % max(1, len(ids))
            return tag(cid, item) if isinstance(item, bytes) else {**item, "context_id": cid}
        return None

    @property
    def has_outgoing(self) -> bool:
        return bool(self._outbox) or any(c.has_outgoing for c in self.contexts.values())
