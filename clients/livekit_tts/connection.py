"""One WebSocket to ``streamtts serve`` that carries several contexts at once.

docs/protocol.md, "Contexts: several utterances on one socket": the socket is opened with
``{"type":"start","contexts":true,…}``; each utterance is a ``context_id`` of its own, with its own
``text``/``flush``/``end``, its own ``done``, and ``close_context`` to drop it (a barge-in) without
touching the others or the socket. Every event names its context, and every binary frame starts
with a tag: one byte N, then N bytes of the context id, then the audio.

:class:`Connection` owns the socket: a reader task routes audio and events to the context's
:class:`ContextHandler`, and a writer task sends the queued messages. Text pieces of one context
that wait in the queue are sent as one message, and messages leave at most ``SEND_RATE`` per
second, because the server drops messages past 60/s (``rate_limited``) and an LLM can emit tokens
faster than that, for several contexts at once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import aiohttp
from livekit.agents import APIConnectionError, APIError, APIStatusError, APITimeoutError

logger = logging.getLogger("streamtts.livekit")

CONTEXT_ID = re.compile(r"[A-Za-z0-9_\-.:]{1,64}")  # what the server accepts as a context_id
MAX_TEXT_CHARS = 4000  # the server takes at most 4096 characters per `text` message
SEND_RATE = 50.0  # messages per second, under the server's 60/s
OUTBOX_LIMIT = 256  # queued messages before a sender waits (text pieces merge, so it rarely fills)
# The server's character limit per session (--max-session-chars, default 100 000) is the socket's,
# shared by its contexts: a socket that has sent this much takes no new context, and the next
# one opens a fresh socket instead of failing halfway through a turn.
CHAR_BUDGET = 80_000

# error codes after which the context goes on: the server dropped one message and nothing else
# (an LLM token that is only an emoji is `no_speakable_text`)
HARMLESS_ERRORS = frozenset({"no_speakable_text", "empty_text"})
# error codes where the same request may succeed later
RETRYABLE_ERRORS = frozenset({"server_busy", "rate_limited", "going_away", "engine_unavailable",
                              "idle_timeout", "outbox_full", "internal",
                              "text_too_long"})  # the socket's budget: a new socket takes it


class StreamTTSError(APIError):
    """An error the server reported: ``code`` as in docs/protocol.md's error table."""

    def __init__(self, code: str, message: str, *, retryable: Optional[bool] = None):
        super().__init__(f"[{code}] {message}", body={"code": code, "message": message},
                         retryable=code in RETRYABLE_ERRORS if retryable is None else retryable)
        self.code = code


@dataclass
class ContextHandler:
    """Where one context's traffic goes. The callbacks run in the reader task and must not block."""

    on_audio: Callable[[bytes], None]
    on_event: Callable[[dict], None]
    on_lost: Callable[[BaseException], None]  # the socket is gone: the context will get nothing more


@dataclass
class ContextStats:
    """What the socket saw of one context, for checks and logs."""

    audio_bytes: int = 0  # audio routed to its handler
    late_bytes: int = 0  # audio that came after the context was detached (close_context in flight)
    after_closed_bytes: int = 0  # audio that came after its done / context_closed (must stay 0)
    closed_event: Optional[dict] = None  # its done or context_closed
    detached_at: Optional[float] = None  # monotonic time of detach()


@dataclass
class _Outgoing:
    msg: dict
    context_id: Optional[str] = None


@dataclass
class Connection:
    """An open socket with contexts on. Build with :meth:`open`."""

    ws: aiohttp.ClientWebSocketResponse
    ready: dict
    opened_at: float = field(default_factory=time.monotonic)
    closed: bool = False
    close_reason: Optional[BaseException] = None
    # ids the server still holds (ours, until their done or context_closed): counts toward
    # --max-contexts, including those being closed
    live: set = field(default_factory=set)
    handlers: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)
    retired: bool = False  # takes no new context (options changed, budget spent); closes once empty
    chars_sent: int = 0

    def __post_init__(self) -> None:
        self._outbox: collections.deque[_Outgoing] = collections.deque()
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._reader = asyncio.create_task(self._read_loop(), name="streamtts-ws-read")
        self._writer = asyncio.create_task(self._write_loop(), name="streamtts-ws-write")

    # -- opening

    @classmethod
    async def open(cls, session: aiohttp.ClientSession, url: str, *, api_key: Optional[str],
                   start: dict, timeout: float) -> "Connection":
        """Connect, send ``start`` with contexts on, wait for ``ready``. Raises APIError kinds:
        APIStatusError for a refused upgrade (401, 429, 503 …), StreamTTSError for an error
        answer to ``start`` (a bad voice), APIConnectionError/APITimeoutError otherwise."""
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        ws = None
        try:
            ws = await session.ws_connect(url, headers=headers, autoping=True, heartbeat=None,
                                          timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
                                          compress=0)
            await ws.send_str(json.dumps({"type": "start", "contexts": True, **start}, ensure_ascii=False))
            while True:
                msg = await ws.receive(timeout=timeout)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    raise APIConnectionError(f"streamtts closed the socket before `ready` ({msg.type.name})")
                ev = json.loads(msg.data)
                if ev.get("type") == "ready":
                    break
                if ev.get("type") == "error":
                    raise StreamTTSError(ev.get("code", "error"), ev.get("message", ""))
            if ev.get("contexts") is not True:
                raise StreamTTSError("no_contexts", "this streamtts server does not speak contexts "
                                     "(docs/protocol.md): upgrade the server", retryable=False)
            return cls(ws=ws, ready=ev)
        except BaseException as e:
            if ws is not None:
                with contextlib.suppress(Exception):
                    await ws.close()
            if isinstance(e, APIError):
                raise
            if isinstance(e, aiohttp.WSServerHandshakeError):
                raise APIStatusError(f"streamtts refused the connection: {e.message}", status_code=e.status,
                                     body=None) from e
            if isinstance(e, asyncio.TimeoutError):
                raise APITimeoutError("streamtts did not answer `start` in time") from e
            if isinstance(e, (aiohttp.ClientError, OSError)):
                raise APIConnectionError(f"could not connect to streamtts at {url}: {e}") from e
            raise

    # -- contexts

    def has_room(self, max_contexts: int) -> bool:
        return (not self.closed and not self.retired and self.chars_sent < CHAR_BUDGET
                and len(self.live | self.handlers.keys()) < max_contexts)

    def attach(self, context_id: str, handler: ContextHandler) -> None:
        """Route ``context_id``'s traffic to ``handler``. The server creates the context with the
        first message that names it (it is ``live`` from then on)."""
        if not CONTEXT_ID.fullmatch(context_id):
            raise ValueError(f"bad context id {context_id!r}: 1-64 of A-Z a-z 0-9 _ - . :")
        if self.closed:
            raise APIConnectionError("the streamtts socket is closed")
        self.handlers[context_id] = handler
        self.stats[context_id] = ContextStats()

    def retire(self) -> None:
        """Take no new context; close once the ones on it are over."""
        self.retired = True
        self._close_if_idle()

    def detach(self, context_id: str) -> None:
        """Stop routing: whatever still comes for the context is dropped (counted in stats)."""
        if self.handlers.pop(context_id, None) is not None:
            self.stats[context_id].detached_at = time.monotonic()
        self._close_if_idle()

    # -- sending

    async def send(self, msg: dict, context_id: Optional[str] = None) -> None:
        """Queue a message; waits while the queue is full."""
        while len(self._outbox) >= OUTBOX_LIMIT and not self.closed:
            self._room.clear()
            await self._room.wait()
        self.send_nowait(msg, context_id)

    def send_nowait(self, msg: dict, context_id: Optional[str] = None) -> None:
        """Queue a message now, past the limit (for the one control message of a closing context)."""
        if self.closed:
            raise APIConnectionError("the streamtts socket is closed") from self.close_reason
        if context_id is not None:
            msg = {**msg, "context_id": context_id}
            if context_id in self.handlers:
                # its first message (or the first after the server let it go idle) opens it
                self.live.add(context_id)
        if msg.get("type") == "text":
            self.chars_sent += len(msg.get("text", ""))
        self._outbox.append(_Outgoing(msg, context_id))
        self._wake.set()

    def _take(self) -> _Outgoing:
        """The next message, with every later text piece of the same context merged in, up to the
        next other message of that context (order within a context is kept; across contexts it
        does not matter)."""
        first = self._outbox.popleft()
        if first.msg.get("type") != "text" or first.context_id is None:
            return first
        text = first.msg["text"]
        keep: list[_Outgoing] = []
        while self._outbox:
            item = self._outbox.popleft()
            if item.context_id != first.context_id:
                keep.append(item)
                continue
            if item.msg.get("type") == "text" and len(text) + len(item.msg["text"]) <= MAX_TEXT_CHARS:
                text += item.msg["text"]
                continue
            keep.append(item)
            break
        self._outbox.extendleft(reversed(keep))
        return _Outgoing({**first.msg, "text": text}, first.context_id)

    async def _write_loop(self) -> None:
        try:
            while not self.closed:
                if not self._outbox:
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                item = self._take()
                if len(self._outbox) < OUTBOX_LIMIT:
                    self._room.set()
                await self.ws.send_str(json.dumps(item.msg, ensure_ascii=False))
                await asyncio.sleep(1.0 / SEND_RATE)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the socket broke: everyone on it learns why
            await self._lose(APIConnectionError(f"sending to streamtts failed: {e}"))

    # -- receiving

    async def _read_loop(self) -> None:
        reason: BaseException = APIConnectionError("streamtts closed the socket")
        try:
            async for msg in self.ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self._route_audio(msg.data)
                elif msg.type == aiohttp.WSMsgType.TEXT:
                    failure = self._route_event(json.loads(msg.data))
                    if failure is not None:
                        reason = failure
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    reason = APIConnectionError(f"streamtts socket error: {self.ws.exception()}")
                    break
            if self.ws.close_code not in (None, 1000) and not isinstance(reason, StreamTTSError):
                reason = APIStatusError(f"streamtts closed the socket with {self.ws.close_code}",
                                        status_code=self.ws.close_code)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001
            reason = APIConnectionError(f"reading from streamtts failed: {e}")
        await self._lose(reason)

    def _route_audio(self, frame: bytes) -> None:
        n = frame[0] if frame else 0
        context_id = frame[1:1 + n].decode("utf-8", "replace") if n else None
        audio = frame[1 + n:]
        handler = self.handlers.get(context_id)
        stats = self.stats.get(context_id)
        if handler is not None:
            stats.audio_bytes += len(audio)
            self._call(context_id, handler.on_audio, audio)
        elif stats is not None:
            if stats.closed_event is not None:
                stats.after_closed_bytes += len(audio)
            else:
                stats.late_bytes += len(audio)

    def _route_event(self, ev: dict) -> Optional[BaseException]:
        """Hand an event to its context. A socket-wide fatal error is returned (the reader's reason)."""
        kind = ev.get("type")
        context_id = ev.get("context_id")
        if kind in ("done", "context_closed") and context_id in self.live:
            self.live.discard(context_id)
            self.stats[context_id].closed_event = ev
        if kind == "error" and ev.get("code") == "text_too_long":
            self.retire()  # the socket's character budget is spent: new turns go to a new socket
        handler = self.handlers.get(context_id) if context_id is not None else None
        if handler is not None:
            self._call(context_id, handler.on_event, ev)
        elif kind == "error":
            error = StreamTTSError(ev.get("code", "error"), ev.get("message", ""))
            if ev.get("fatal"):
                return error
            logger.warning("streamtts: %s", error)
        if kind in ("done", "context_closed"):
            self._close_if_idle()
        return None

    def _call(self, context_id: str, callback, arg) -> None:
        """A handler that raises ends its own context, not the socket."""
        try:
            callback(arg)
        except Exception as e:  # noqa: BLE001
            logger.exception("streamtts: context %s failed", context_id)
            handler = self.handlers.get(context_id)
            self.detach(context_id)
            if handler is not None:
                handler.on_lost(APIError(f"handling streamtts output failed: {e}", retryable=False))

    # -- closing

    def _close_if_idle(self) -> None:
        if self.retired and not self.live and not self.handlers and not self.closed:
            try:
                asyncio.get_running_loop().create_task(self.aclose())
            except RuntimeError:  # no loop running (options changed from sync code): TTS.aclose closes it
                pass

    async def _lose(self, reason: BaseException) -> None:
        if self.closed:
            return
        self.closed, self.close_reason = True, reason
        self._room.set()
        self._wake.set()  # the writer sees `closed` and ends
        handlers, self.handlers = list(self.handlers.values()), {}
        for handler in handlers:
            handler.on_lost(reason)
        with contextlib.suppress(Exception):
            await self.ws.close()

    async def aclose(self) -> None:
        """Close the socket (the server then frees every context on it)."""
        await self._lose(APIConnectionError("the streamtts connection was closed by the client"))
        current = asyncio.current_task()
        for task in (self._writer, self._reader):
            if task is not current and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
