"""streamtts as a LiveKit Agents TTS: ``TTS``, its ``SynthesizeStream`` and ``ChunkedStream``.

Every utterance (a ``stream()`` or a ``synthesize()``) is one context on a shared WebSocket
(docs/protocol.md, "Contexts"): its text goes out as it is pushed (the server cuts sentences
itself, so no tokenizer runs here), ``flush()`` is the context's ``flush``, ``end_input()`` its
``end``, and the stream ends with the context's ``done``. Closing a stream before that
(``aclose()``: LiveKit's interruption) sends ``close_context``: the server stops that context and
nothing else, and the socket stays open for the next turn. Up to ``max_contexts`` streams share a
socket; more open another. Each ``segment`` becomes aligned transcript pieces (one per Chinese
character, see align.py), timed from the start of the stream's audio.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import weakref
from dataclasses import dataclass, replace
from typing import Optional, Union

import aiohttp
from livekit.agents import APIConnectionError, APIError, tts, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions

from .align import timed_pieces
from .connection import (HARMLESS_ERRORS, MAX_TEXT_CHARS, Connection, ContextHandler,
                         StreamTTSError, logger)

DEFAULT_URL = "ws://127.0.0.1:8000/v1/stream"
SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)  # what the server offers
MAX_CONTEXTS = 5  # the server's default --max-contexts


@dataclass
class _Options:
    url: str
    api_key: Optional[str]
    voice: Union[str, dict]
    sample_rate: int
    speed: float
    seed: int
    text_format: str

    def start(self) -> dict:
        return {"voice": self.voice, "format": "pcm_s16le", "sample_rate": self.sample_rate,
                "speed": self.speed, "seed": self.seed, "text_format": self.text_format}


class TTS(tts.TTS):
    """A streamtts server as a LiveKit TTS, streaming with aligned transcripts.

    ``url``: the server's ``/v1/stream`` (``$STREAMTTS_URL``); ``api_key`` (``$STREAMTTS_API_KEY``);
    ``voice``: a name or a blend (``"Aiyue:0.7,biaobei:0.3"``); ``sample_rate``: one the server
    offers (22050 is the model's own); ``speed`` 0.5-2.0; ``seed`` the prenet seed;
    ``text_format`` ``"text"`` or ``"ssml"``; ``max_contexts``: streams per socket (the server's
    ``--max-contexts``); ``http_session``: an aiohttp session to use (else one of its own)."""

    def __init__(self, *, url: Optional[str] = None, api_key: Optional[str] = None,
                 voice: Union[str, dict] = "biaobei", sample_rate: int = 22050, speed: float = 1.0,
                 seed: int = 0, text_format: str = "text", max_contexts: int = MAX_CONTEXTS,
                 http_session: Optional[aiohttp.ClientSession] = None) -> None:
        if sample_rate not in SAMPLE_RATES:
            raise ValueError(f"sample_rate must be one of {SAMPLE_RATES}, not {sample_rate!r}")
        if not 0.5 <= speed <= 2.0:
            raise ValueError(f"speed must be within 0.5-2.0, not {speed!r}")
        if text_format not in ("text", "ssml"):
            raise ValueError(f"text_format must be 'text' or 'ssml', not {text_format!r}")
        if max_contexts < 1:
            raise ValueError("max_contexts must be at least 1")
        super().__init__(capabilities=tts.TTSCapabilities(streaming=True, aligned_transcript=True),
                         sample_rate=sample_rate, num_channels=1)
        self._opts = _Options(url=url or os.environ.get("STREAMTTS_URL") or DEFAULT_URL,
                              api_key=api_key if api_key is not None else os.environ.get("STREAMTTS_API_KEY"),
                              voice=voice, sample_rate=sample_rate, speed=float(speed), seed=int(seed),
                              text_format=text_format)
        self._max_contexts = max_contexts
        self._session = http_session
        self._own_session = http_session is None
        self._connections: list[Connection] = []
        self._connect_lock = asyncio.Lock()
        self._streams: weakref.WeakSet = weakref.WeakSet()
        self._prewarm_task: Optional[asyncio.Task] = None
        self.connects = 0  # sockets opened so far (a turn after a barge-in opens none)

    @property
    def model(self) -> str:
        return "streamtts"

    @property
    def provider(self) -> str:
        return "streamtts"

    @property
    def connections(self) -> list[Connection]:
        """The open sockets."""
        return [c for c in self._connections if not c.closed]

    def update_options(self, *, voice: Optional[Union[str, dict]] = None, speed: Optional[float] = None,
                       seed: Optional[int] = None) -> None:
        """New options for the next streams. They are the socket's (its ``start``), so the open
        sockets finish the contexts they have and close; the next stream opens a new one."""
        changes = {k: v for k, v in (("voice", voice), ("speed", speed), ("seed", seed)) if v is not None}
        if "speed" in changes and not 0.5 <= changes["speed"] <= 2.0:
            raise ValueError(f"speed must be within 0.5-2.0, not {changes['speed']!r}")
        if not changes:
            return
        self._opts = replace(self._opts, **changes)
        for conn in self._connections:
            conn.retire()

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
            self._own_session = True
        return self._session

    async def _context(self, context_id: str, handler: ContextHandler,
                       timeout: float) -> tuple[Connection, float, bool]:
        """A socket with room, ``context_id`` attached to it: (connection, seconds it took to
        get, whether it was reused)."""
        t0 = time.perf_counter()
        async with self._connect_lock:
            self._connections = [c for c in self._connections if not c.closed]
            for conn in self._connections:
                if conn.has_room(self._max_contexts):
                    conn.attach(context_id, handler)
                    return conn, time.perf_counter() - t0, True
            conn = await Connection.open(self._http(), self._opts.url, api_key=self._opts.api_key,
                                         start=self._opts.start(), timeout=timeout)
            self.connects += 1
            self._connections.append(conn)
            conn.attach(context_id, handler)
            return conn, time.perf_counter() - t0, False

    def synthesize(self, text: str, *,
                   conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> "ChunkedStream":
        return ChunkedStream(tts=self, input_text=text, conn_options=conn_options)

    def stream(self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS) -> "SynthesizeStream":
        stream = SynthesizeStream(tts=self, conn_options=conn_options)
        self._streams.add(stream)
        return stream

    def prewarm(self) -> None:
        """Open a socket before the first turn (LiveKit calls this when a session starts)."""
        async def _open() -> None:
            async with self._connect_lock:
                if any(c.has_room(self._max_contexts) for c in self._connections):
                    return
                try:
                    conn = await Connection.open(self._http(), self._opts.url, api_key=self._opts.api_key,
                                                 start=self._opts.start(),
                                                 timeout=DEFAULT_API_CONNECT_OPTIONS.timeout)
                except APIError as e:
                    logger.warning("streamtts prewarm failed: %s", e)
                    return
                self.connects += 1
                self._connections.append(conn)

        if self._prewarm_task is None or self._prewarm_task.done():
            self._prewarm_task = asyncio.create_task(_open(), name="streamtts-prewarm")

    async def aclose(self) -> None:
        if self._prewarm_task is not None:
            await utils.aio.gracefully_cancel(self._prewarm_task)
        for stream in list(self._streams):
            await stream.aclose()
        for conn in self._connections:
            await conn.aclose()
        self._connections.clear()
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None


class _Utterance:
    """One context of one stream: audio and aligned transcripts into the emitter, and a future
    that ends with the context's ``done`` (or its error)."""

    def __init__(self, emitter: tts.AudioEmitter, sample_rate: int) -> None:
        self.emitter = emitter
        self.sample_rate = sample_rate
        self.samples = 0  # received for this context
        self.finished: asyncio.Future = asyncio.get_running_loop().create_future()
        self.first_audio_at: Optional[float] = None
        self.segments: list[dict] = []
        self.handler = ContextHandler(on_audio=self._audio, on_event=self._event, on_lost=self._lost)

    def _audio(self, audio: bytes) -> None:
        if self.first_audio_at is None:
            self.first_audio_at = time.perf_counter()
        self.samples += len(audio) // 2
        self.emitter.push(audio)

    def _event(self, ev: dict) -> None:
        kind = ev.get("type")
        if kind == "segment":
            self.segments.append(ev)
            # times from the start of this stream's audio: the segment ends where the audio
            # received so far ends (its last frame came before it)
            received_ms = self.samples * 1000.0 / self.sample_rate
            end_ms = ev.get("audio_end_ms", received_ms)
            pieces = timed_pieces(ev.get("text", ""), ev.get("chars") or [], received_ms - end_ms,
                                  (ev.get("audio_start_ms", end_ms), end_ms))
            if pieces:
                self.emitter.push_timed_transcript(pieces)
        elif kind == "done":
            self._settle(None)
        elif kind == "error":
            if ev.get("code") in HARMLESS_ERRORS:
                logger.debug("streamtts dropped a piece: %s", ev)
                return
            self._settle(StreamTTSError(ev.get("code", "error"), ev.get("message", "")))
        elif kind == "context_closed" and ev.get("reason") != "idle":
            # only a close we did not ask for reaches here (ours is sent after detaching)
            self._settle(StreamTTSError("context_closed", f"the server closed the context ({ev.get('reason')})"))
        # `queued` (waiting for a stream slot; counts in the time to first audio), `cancelled`
        # and an idle `context_closed` (its next text opens it again) need nothing here

    def _lost(self, reason: BaseException) -> None:
        self._settle(reason)

    def _settle(self, error: Optional[BaseException]) -> None:
        if self.finished.done():
            return
        if error is None:
            self.finished.set_result(None)
        else:
            self.finished.set_exception(error)


async def _speak(owner: Union["SynthesizeStream", "ChunkedStream"], emitter: tts.AudioEmitter,
                 text_source) -> None:
    """Run one utterance as a context: attach, send what ``text_source(conn, context_id)`` sends
    (it returns whether it sent any text), wait for ``done``. Leaving early (cancelled: the stream
    was closed) closes the context on the server."""
    engine: TTS = owner._tts
    context_id = utils.shortuuid("lk-")
    utterance = _Utterance(emitter, engine.sample_rate)
    try:
        conn, owner._acquire_time, owner._connection_reused = await engine._context(
            context_id, utterance.handler, owner._conn_options.timeout)
    except asyncio.TimeoutError as e:
        raise APIConnectionError("timed out connecting to streamtts") from e
    done = False
    sender = asyncio.create_task(text_source(conn, context_id), name="streamtts-send")
    try:
        await asyncio.wait({utterance.finished, sender}, return_when=asyncio.FIRST_COMPLETED)
        if sender.done() and not utterance.finished.done() and not sender.result():
            done = True  # no text at all: nothing was sent, nothing to wait for
            return
        await utterance.finished
        done = True
    finally:
        # no await before close_context is queued: a second cancel must not skip it, and the
        # sender (cancelled first) queues nothing after it that would open the context again
        conn.detach(context_id)
        sender.cancel()
        if not done and context_id in conn.live and not conn.closed:
            with contextlib.suppress(APIError):
                conn.send_nowait({"type": "close_context"}, context_id)
        await utils.aio.gracefully_cancel(sender)


def _pieces(text: str):
    for i in range(0, len(text), MAX_TEXT_CHARS):
        yield text[i:i + MAX_TEXT_CHARS]


class ChunkedStream(tts.ChunkedStream):
    """``synthesize(text)``: the whole text on a context of its own, then ``end``."""

    def __init__(self, *, tts: TTS, input_text: str, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, input_text=input_text, conn_options=conn_options)
        self._tts: TTS = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        output_emitter.initialize(request_id=utils.shortuuid(), sample_rate=self._tts.sample_rate,
                                  num_channels=1, mime_type="audio/pcm", stream=False)

        async def send_all(conn: Connection, context_id: str) -> bool:
            if not self._input_text:
                return False
            for piece in _pieces(self._input_text):
                await conn.send({"type": "text", "text": piece}, context_id)
            await conn.send({"type": "end"}, context_id)
            return True

        await _speak(self, output_emitter, send_all)
        output_emitter.flush()


class SynthesizeStream(tts.SynthesizeStream):
    """``stream()``: text pushed as it comes (``push_text``), ``flush()`` speaks what is
    buffered, ``end_input()`` ends the turn; ``aclose()`` before the end interrupts it."""

    def __init__(self, *, tts: TTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._tts: TTS = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        request_id = utils.shortuuid()
        output_emitter.initialize(request_id=request_id, sample_rate=self._tts.sample_rate,
                                  num_channels=1, mime_type="audio/pcm", stream=True)
        output_emitter.start_segment(segment_id=request_id)

        async def send_input(conn: Connection, context_id: str) -> bool:
            sent = False
            async for data in self._input_ch:
                if isinstance(data, self._FlushSentinel):
                    if sent:
                        await conn.send({"type": "flush"}, context_id)
                    continue
                for piece in _pieces(data):
                    self._mark_started()
                    await conn.send({"type": "text", "text": piece}, context_id)
                    sent = True
            if sent:
                await conn.send({"type": "end"}, context_id)
            return sent

        try:
            await _speak(self, output_emitter, send_input)
        finally:
            output_emitter.end_segment()
