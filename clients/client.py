"""Async Python client of the streamtts WebSocket API (``GET /v1/stream``, docs/protocol.md).

How to call::

    from clients.client import StreamClient, StreamTTSClientError

    async with StreamClient("ws://127.0.0.1:8000/v1/stream", voice="Aiyue") as c:
        async for pcm in c.stream("你好。今天天气很好。"):   # str, or (async) iterable of text pieces
            play(pcm)                                      # bytes: c.format, c.sample_rate Hz, mono
        print(c.ttfa_ms, c.audio_ms, c.done, c.segments)

    # LLM tokens in, audio out while tokens still come; barge-in from any task:
    async for pcm in c.stream(llm_tokens()):               # each piece is sent as it arrives
        ...
        if user_spoke:
            await c.cancel()    # after it returns the stream yields no more audio of that text

``stream()`` sends ``start`` (on a new session), the text, then ``end``, and yields the audio frames
as they arrive; it ends after the server's ``done`` (or after a ``cancel``). A session that got
``end`` is over, so the next ``stream()`` opens a new connection (after a cancel before ``end`` the
session is reused). Server errors raise :class:`StreamTTSClientError` with the server's ``code``;
a refused connection raises it with code ``connection_failed`` (``unauthorized`` for a bad key).

Attributes of the current (or last) utterance: ``ready`` (the server's ``ready`` message),
``segments`` (``segment`` messages: text and per-character times), ``done`` (the ``done`` message:
server-side ``ttfa_ms``, ``audio_ms``, ``rtf``), ``ttfa_ms`` (client-side: first text sent to first
audio byte received), ``audio_bytes``, ``audio_ms``, ``cancelled``, ``heard`` (the server's ``cancelled`` message: how
much of the utterance the listener had heard, ``heard_ms`` and ``heard_text``), ``queued_position``
(while the server, at its capacity, keeps the text waiting for a stream slot: utterances ahead of
it; None once its audio comes). A ``server_busy`` error (no slot freed in time) is not fatal. Callbacks ``on_segment(msg)``
and ``on_event(msg)`` (every JSON message) run in the reader task as messages arrive.

Only ``websockets`` (>= 13, its asyncio API) is needed.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import AsyncIterable, Callable, Iterable, Optional, Union

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

__all__ = ["StreamClient", "StreamTTSClientError", "SAMPLE_WIDTH", "DEFAULT_URL", "synthesize"]

DEFAULT_URL = "ws://127.0.0.1:8000/v1/stream"
SAMPLE_WIDTH = {"pcm_s16le": 2, "pcm_f32le": 4, "mulaw": 1}  # bytes per sample of each format
MAX_PIECE_CHARS = 4000  # server limit is 4096 characters per `text` message
SEND_INTERVAL_S = 0.025  # at most ~40 text messages/s (server: 60/s); pieces arriving faster are joined

TextInput = Union[str, Iterable[str], AsyncIterable[str]]


class StreamTTSClientError(Exception):
    """An error the server reported (``code`` as in docs/protocol.md) or a connection failure."""

    def __init__(self, code: str, message: str, fatal: bool = False):
        super().__init__(f"[{code}] {message}")
        self.code, self.message, self.fatal = code, message, fatal


class StreamClient:
    """One WebSocket session at a time; see the module docstring."""

    def __init__(self, url: str = DEFAULT_URL, api_key: Optional[str] = None, voice: Optional[str] = None,
                 format: str = "pcm_s16le", sample_rate: int = 22050, *, speed: Optional[float] = None,
                 seed: Optional[int] = None, on_segment: Optional[Callable[[dict], None]] = None,
                 on_event: Optional[Callable[[dict], None]] = None, open_timeout: float = 10.0,
                 reply_timeout: float = 30.0):
        if format not in SAMPLE_WIDTH:
            raise ValueError(f"format must be one of {', '.join(SAMPLE_WIDTH)}")
        self.url, self.api_key, self.voice = url, api_key, voice
        self.format, self.sample_rate, self.speed, self.seed = format, int(sample_rate), speed, seed
        self.on_segment, self.on_event = on_segment, on_event
        self.open_timeout, self.reply_timeout = open_timeout, reply_timeout
        self.ready: Optional[dict] = None
        self.queued_position: Optional[int] = None
        self.segments: list[dict] = []
        self.done: Optional[dict] = None
        self.ttfa_ms: Optional[float] = None
        self.audio_bytes = 0
        self.cancelled = False
        self.heard: Optional[dict] = None  # the last `cancelled`: what the listener had heard (heard_ms, heard_text)
        self._ws: Optional[ClientConnection] = None
        self._reader: Optional[asyncio.Task] = None
        self._sender: Optional[asyncio.Task] = None
        self._ready_evt = asyncio.Event()
        self._cancelled_evt = asyncio.Event()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._gen = 0  # bumped by cancel(): a stream of an older generation stops yielding
        self._active = False  # an utterance is in progress (audio is kept)
        self._dropping = False  # cancel sent, `cancelled` not yet received: audio is dropped
        self._ended = False  # `end` was sent on this session: it cannot take more text
        self._error: Optional[StreamTTSClientError] = None  # what ended the session, if not `done`
        self._t_text: Optional[float] = None

    # ---- properties -------------------------------------------------------------------------

    @property
    def sample_width(self) -> int:
        """Bytes per sample of the session's format."""
        return SAMPLE_WIDTH[self.format]

    @property
    def audio_ms(self) -> float:
        """Milliseconds of audio received in the current (or last) utterance."""
        return 1000.0 * self.audio_bytes / (self.sample_width * self.sample_rate)

    @property
    def connected(self) -> bool:
        return self._ws is not None and self._reader is not None and not self._reader.done()

    # ---- connection -------------------------------------------------------------------------

    async def __aenter__(self) -> "StreamClient":
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def connect(self) -> None:
        """Open a session (``start`` → ``ready``) unless one is open and can take text."""
        if self.connected and not self._ended:
            return
        await self.close()
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else None
        try:
            ws = await connect(self.url, additional_headers=headers, open_timeout=self.open_timeout,
                               max_size=16 * 1024 * 1024, compression=None)
        except InvalidStatus as exc:
            raise _refusal(exc) from None
        except (OSError, InvalidHandshake, asyncio.TimeoutError) as exc:
            raise StreamTTSClientError("connection_failed", f"cannot connect to {self.url}: {exc}", True) from None
        self._ws, self._ended, self._error, self.ready = ws, False, None, None
        self._ready_evt = asyncio.Event()
        self._reader = asyncio.create_task(self._read(ws))
        start = {"type": "start", "format": self.format, "sample_rate": self.sample_rate}
        for key in ("voice", "speed", "seed"):
            if getattr(self, key) is not None:
                start[key] = getattr(self, key)
        await self._send(start)
        await self._wait(self._ready_evt, "ready")
        if self.ready is None:
            await self.close()
            raise self._error or StreamTTSClientError("connection_closed", "closed before ready", True)

    async def close(self) -> None:
        """Close the session (any utterance in progress is abandoned)."""
        ws, reader, sender = self._ws, self._reader, self._sender
        self._ws = self._reader = self._sender = None
        self._active = False
        for task in (sender,):
            if task is not None and not task.done():
                task.cancel()
        if ws is not None:
            try:
                await asyncio.wait_for(ws.close(), 5.0)
            except (asyncio.TimeoutError, OSError):
                pass
        if reader is not None and not reader.done():
            reader.cancel()
            try:
                await reader
            except (asyncio.CancelledError, Exception):
                pass

    # ---- speaking ---------------------------------------------------------------------------

    async def stream(self, text: TextInput, idle_flush_s: Optional[float] = None):
        """Speak ``text`` (a str, or an iterable / async iterable of pieces sent as they come);
        yield audio ``bytes`` as they arrive. Ends after ``done``, or after :meth:`cancel`.

        The server speaks a sentence once the character after its end punctuation has come; with
        ``idle_flush_s``, a ``flush`` is sent when the pieces stall that long (e.g. an LLM that
        pauses after a sentence), so what was sent is spoken without waiting for more."""
        await self.connect()
        gen = self._gen
        queue = self._queue = asyncio.Queue()
        self.segments, self.done, self.ttfa_ms, self.audio_bytes, self.cancelled = [], None, None, 0, False
        self._t_text = None
        self._active, finished = True, False
        self._sender = asyncio.create_task(self._send_text(text, gen, queue, idle_flush_s))
        try:
            while True:
                kind, payload = await queue.get()
                if gen != self._gen:  # cancelled: not one more byte of that text
                    finished = True
                    return
                if kind == "audio":
                    yield payload
                elif kind == "done":
                    finished = True
                    return
                elif kind == "error":
                    raise payload
        finally:
            if gen == self._gen:
                self._active = False
            if not finished and gen == self._gen:  # error, or the caller stopped iterating
                await self.close()

    async def flush(self) -> None:
        """Speak what the server has buffered now, even without end punctuation."""
        await self._send({"type": "flush"})

    async def cancel(self) -> None:
        """Barge-in: stop speaking now. When this returns the server has answered ``cancelled``
        and the running :meth:`stream` yields nothing more; the session can speak again."""
        if not self._active or not self.connected:
            return
        self._gen += 1
        self._active, self._dropping, self.cancelled = False, True, True
        self._queue.put_nowait(("cancel", None))  # wakes the stream
        if self._sender is not None and not self._sender.done():
            self._sender.cancel()
        self._cancelled_evt = asyncio.Event()
        try:
            await self._send({"type": "cancel"})
            await self._wait(self._cancelled_evt, "cancelled")
        except StreamTTSClientError:
            await self.close()
            return
        finally:
            self._dropping = False
        if self._ended:  # the session already had `end`: it finishes and closes; start afresh
            await self.close()

    # ---- internals --------------------------------------------------------------------------

    async def _send(self, msg: dict) -> None:
        if self._ws is None:
            raise StreamTTSClientError("connection_closed", "not connected", True)
        try:
            await self._ws.send(json.dumps(msg, ensure_ascii=False))
        except ConnectionClosed as exc:
            raise self._error or StreamTTSClientError("connection_closed", f"connection closed: {exc}", True) from None

    async def _wait(self, event: asyncio.Event, what: str) -> None:
        try:
            await asyncio.wait_for(event.wait(), self.reply_timeout)
        except asyncio.TimeoutError:
            raise StreamTTSClientError("timeout", f"no {what} from the server in {self.reply_timeout:g} s") from None
        if self._error is not None and what != "ready":
            raise self._error

    async def _send_text(self, text: TextInput, gen: int, queue: asyncio.Queue,
                         idle_flush_s: Optional[float] = None) -> None:
        """Sender task: pieces go out as they come (joined when faster than SEND_INTERVAL_S), then end."""
        pending: list[str] = []
        more = asyncio.Event()
        exhausted = False

        async def produce() -> None:
            nonlocal exhausted
            try:
                if isinstance(text, str):
                    pending.append(text)
                elif hasattr(text, "__aiter__"):
                    async for piece in text:
                        pending.append(str(piece))
                        more.set()
                else:
                    for piece in text:
                        pending.append(str(piece))
            finally:
                exhausted = True
                more.set()

        producer = asyncio.create_task(produce())
        unflushed = False  # text sent since the last flush
        try:
            while True:
                if idle_flush_s and unflushed:
                    try:
                        await asyncio.wait_for(more.wait(), idle_flush_s)
                    except asyncio.TimeoutError:
                        await self._send({"type": "flush"})
                        unflushed = False
                        continue
                else:
                    await more.wait()
                more.clear()
                if producer.done() and producer.exception() is not None:
                    raise producer.exception()
                chunk = "".join(pending)
                pending.clear()
                for i in range(0, len(chunk), MAX_PIECE_CHARS):
                    if gen != self._gen:
                        return
                    if self._t_text is None:
                        self._t_text = time.perf_counter()
                    await self._send({"type": "text", "text": chunk[i:i + MAX_PIECE_CHARS]})
                    unflushed = True
                if exhausted and not pending:
                    break
                await asyncio.sleep(SEND_INTERVAL_S)
                if pending or exhausted:
                    more.set()
            if gen == self._gen:
                await self._send({"type": "end"})
                self._ended = True
        except asyncio.CancelledError:
            raise
        except StreamTTSClientError as exc:
            queue.put_nowait(("error", exc))
        except Exception as exc:  # the caller's iterator failed: end the stream with it
            queue.put_nowait(("error", exc))
        finally:
            producer.cancel()

    async def _read(self, ws: ClientConnection) -> None:
        """Reader task: audio and events of the session, in order."""
        error: Optional[BaseException] = None
        try:
            async for frame in ws:
                if isinstance(frame, bytes):
                    self.queued_position = None  # admitted: its audio comes
                    if self._active and not self._dropping:
                        if self.ttfa_ms is None and self._t_text is not None:
                            self.ttfa_ms = round(1000.0 * (time.perf_counter() - self._t_text), 1)
                        self.audio_bytes += len(frame)
                        self._queue.put_nowait(("audio", frame))
                    continue
                msg = json.loads(frame)
                kind = msg.get("type")
                if self.on_event is not None:
                    self.on_event(msg)
                if kind == "queued":  # the server is at capacity: the text waits for a stream slot
                    self.queued_position = msg.get("position")
                elif kind == "ready":
                    self.ready = msg
                    self.format, self.sample_rate = msg.get("format", self.format), msg.get("sample_rate", self.sample_rate)
                    self._ready_evt.set()
                elif kind == "segment":
                    if self._active and not self._dropping:
                        self.segments.append(msg)
                        if self.on_segment is not None:
                            self.on_segment(msg)
                elif kind == "cancelled":
                    self.heard = msg
                    self._dropping = False
                    self._cancelled_evt.set()
                elif kind == "done":
                    self.done = msg
                    self._queue.put_nowait(("done", msg))
                elif kind == "error":
                    exc = StreamTTSClientError(msg.get("code", "error"), msg.get("message", ""), bool(msg.get("fatal")))
                    if exc.fatal:
                        error = self._error = exc
                    if not self._ready_evt.is_set():
                        self._error = exc
                        self._ready_evt.set()
                    self._queue.put_nowait(("error", exc))
        except ConnectionClosed as exc:
            error = StreamTTSClientError("connection_closed", f"connection closed: {exc}", True)
        except Exception as exc:  # a callback raised, or a malformed message: the stream ends with it
            error = exc
            await ws.close()
        finally:
            if self.done is None or not self._ready_evt.is_set():
                closed = StreamTTSClientError("connection_closed", "the server closed the connection", True)
                if self._error is None:
                    self._error = error if isinstance(error, StreamTTSClientError) else closed
                self._queue.put_nowait(("error", error or self._error))
            self._ended = True
            self._ready_evt.set()
            self._cancelled_evt.set()


def _refusal(exc: InvalidStatus) -> StreamTTSClientError:
    """The server's JSON error body of a refused upgrade (401, 403, 429), as an exception."""
    response = exc.response
    try:
        body = json.loads(response.body or b"{}")
        code = body.get("code") or body.get("error", {}).get("code")
        message = body.get("message") or body.get("error", {}).get("message")
    except (ValueError, AttributeError):
        code = message = None
    return StreamTTSClientError(code or f"http_{response.status_code}",
                                message or f"the server refused the connection: HTTP {response.status_code}", True)


async def synthesize(text: TextInput, url: str = DEFAULT_URL, **options) -> tuple[bytes, StreamClient]:
    """All audio of ``text`` in one piece, and the client (for ``done``, ``segments``, ``ttfa_ms``)::

        pcm, c = await synthesize("你好。", "ws://127.0.0.1:8000/v1/stream", voice="Aiyue")
    """
    async with StreamClient(url, **options) as c:
        pieces = [pcm async for pcm in c.stream(text)]
    return b"".join(pieces), c
