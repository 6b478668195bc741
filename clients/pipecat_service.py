"""A pipecat TTS service over streamtts' WebSocket (`GET /v1/stream`, docs/protocol.md).

One socket for the whole conversation, opened with ``"contexts": true``: every pipecat audio
context (a bot turn, or a ``TTSSpeakFrame``) is one server context named by pipecat's context id.
LLM text goes out as it comes (``text`` messages; pieces faster than the server's message rate
are joined), a turn's end sends ``end`` for its context, and an interruption sends
``close_context`` for the contexts it drops: no reconnect per turn or per barge-in. The server's
``segment.chars`` become pipecat word timestamps, one Chinese character (or one Latin word) per
token, in seconds from the start of the context's audio.

    from clients.pipecat_service import StreamTTSService

    tts = StreamTTSService(url="ws://127.0.0.1:8000/v1/stream",
                           settings=StreamTTSService.Settings(voice="Aiyue"))
    pipeline = Pipeline([transport.input(), stt, user_agg, llm, tts, transport.output(), bot_agg])

Needs the ``pipecat`` extra: ``pip install 'streamtts[pipecat]'``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from loguru import logger
from websockets.protocol import State

from pipecat.frames.frames import (
    ErrorFrame,
    Frame,
    InterruptionFrame,
    TTSAudioRawFrame,
    TTSStoppedFrame,
)
from pipecat.processors.frame_processor import FrameDirection, FrameProcessorSetup
from pipecat.services.settings import TTSSettings
from pipecat.services.tts_service import TextAggregationMode, WebsocketTTSService
from pipecat.transcriptions.language import Language
from pipecat.utils.types import NOT_GIVEN, NotGiven, is_given

from clients.pipecat_words import segment_word_times

DEFAULT_URL = "ws://127.0.0.1:8000/v1/stream"
SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)  # what the server resamples to
MAX_PIECE_CHARS = 4000  # the server takes at most 4096 characters per `text`
SEND_INTERVAL_S = 0.025  # at most ~40 text messages/s: the server drops messages beyond 60/s
READY_TIMEOUT_S = 30.0
# The server closes these itself, or they are the normal end of a socket: not pipeline errors.
_QUIET_FATAL = {"idle_timeout", "going_away"}


class StreamTTSError(Exception):
    """The server refused the session (its error code and message)."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass
class StreamTTSSettings(TTSSettings):
    """Settings of :class:`StreamTTSService`.

    Parameters:
        speed: 0.5-2.0, the spoken rate (pitch kept).
        seed: the prenet dropout seed (same text, voice, seed and speed: same audio).
    """

    speed: float | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)
    seed: int | None | NotGiven = field(default_factory=lambda: NOT_GIVEN)


# Options of the socket's `start`: the server takes them per socket, so a change reconnects.
_SOCKET_FIELDS = frozenset({"voice", "speed", "seed"})


class StreamTTSService(WebsocketTTSService):
    """streamtts over one persistent WebSocket, one server context per pipecat audio context.

    Event handlers (besides the base class's ``on_connected`` etc.):
        on_heard(service, context_id, heard): the server's ``done``, ``cancelled`` or
            ``context_closed`` for a context, with what its listener had heard
            (``audio_sent_ms``, ``heard_ms``, ``heard_text``, ``heard_segments``).
    """

    Settings = StreamTTSSettings
    _settings: Settings

    def __init__(
        self,
        *,
        url: str = DEFAULT_URL,
        api_key: str | None = None,
        sample_rate: int | None = None,
        settings: Settings | None = None,
        text_aggregation_mode: TextAggregationMode | None = None,
        stop_frame_timeout_s: float = 10.0,
        socket_chars: int = 100_000,
        **kwargs,
    ):
        """Args:
        url: the server's ``/v1/stream`` WebSocket URL.
        api_key: sent as ``Authorization: Bearer``, when the server has keys.
        sample_rate: output rate; default the pipeline's. One of ``SAMPLE_RATES``: the
            server resamples, so the audio needs no resampling here.
        settings: voice (a name or a blend such as ``"Aiyue:0.7,biaobei:0.3"``), speed, seed.
        text_aggregation_mode: ``TOKEN`` (default) hands each LLM piece to the server, whose
            sentence chunker speaks a sentence as soon as it is complete (and may cut the
            first one at a comma); ``SENTENCE`` lets pipecat cut sentences first.
        stop_frame_timeout_s: how long a context may go without audio before pipecat ends
            it. A turn that waits for a stream slot on a busy server (``queued``) keeps its
            context alive meanwhile; this covers a server that goes silent.
        socket_chars: the server's character budget per socket (``--max-session-chars``).
            A call outlives it: a turn that starts with less than a fifth of it left (or
            after the server said ``text_too_long``) opens a fresh socket, once no other
            turn is under way on the old one.
        """
        if sample_rate is not None:
            _check_rate(sample_rate)
        store = self.Settings(model=None, voice="biaobei", language=Language.ZH, speed=1.0, seed=0)
        if settings is not None:
            store.apply_update(settings)
        super().__init__(
            text_aggregation_mode=text_aggregation_mode or TextAggregationMode.TOKEN,
            # Words come timed from the segments, so pipecat must not push the text itself.
            push_text_frames=False,
            # The base opens the audio context (TTSStartedFrame) before the first text.
            push_start_frame=True,
            # The server's `done` ends a context (TTSStoppedFrame pushed here).
            push_stop_frames=False,
            # Every audio frame names its context, so turns need not wait for each other.
            pause_frame_processing=False,
            stop_frame_timeout_s=stop_frame_timeout_s,
            sample_rate=sample_rate,
            settings=store,
            **kwargs,
        )
        self._url = url
        self._api_key = api_key
        self._receive_task: asyncio.Task | None = None
        self._send_lock = asyncio.Lock()
        # Contexts the server knows (text sent, no done/closed yet), with their audio bytes so
        # far: a segment's char times are placed against the audio received for its context.
        self._live: dict[str, int] = {}
        # Text waiting for the message rate, in order: [context_id, text] runs.
        self._pending: list[list[str]] = []
        self._pending_task: asyncio.Task | None = None
        self._last_text_at = 0.0
        # Audio that came for a context after it was closed (the server's frames in flight at a
        # barge-in), dropped: how far the server ran past the interruption.
        self._stale_audio_bytes = 0
        self._socket_chars = socket_chars
        self._chars_sent = 0  # text sent on this socket, against the server's budget
        self._budget_spent = False  # the server said text_too_long
        self._register_event_handler("on_heard")

    @property
    def stale_audio_s(self) -> float:
        """Seconds of audio received for contexts already closed (dropped, never played)."""
        return self._stale_audio_bytes / 2 / max(self.sample_rate, 1)

    # ---- pipecat service interface ------------------------------------------------------------

    def can_generate_metrics(self) -> bool:
        return True

    def language_to_service_language(self, language: Language) -> str | None:
        # The server speaks Mandarin (Latin letters and digits are read out in it).
        if str(language.value).lower().split("-")[0] in ("zh", "cmn"):
            return "zh"
        logger.warning(f"{self}: the server speaks Chinese only; language {language} is ignored")
        return "zh"

    async def setup(self, setup: FrameProcessorSetup):
        await super().setup(setup)
        _check_rate(self.sample_rate)
        await self._connect()

    async def _update_settings(self, delta: TTSSettings) -> dict[str, Any]:
        changed = await super()._update_settings(delta)
        if changed.keys() & _SOCKET_FIELDS:
            # voice, speed and seed are options of the socket's `start`.
            await self._disconnect()
            await self._connect()
        self._warn_unhandled_updated_settings(changed.keys() - _SOCKET_FIELDS - {"language"})
        return changed

    async def run_tts(self, text: str, context_id: str) -> AsyncGenerator[Frame | None, None]:
        """Send ``text`` to the server context ``context_id``; its audio comes on the receive task."""
        try:
            if not self._websocket or self._websocket.state is not State.OPEN:
                await self._connect()
            if not self._websocket:
                yield ErrorFrame(error=f"{self}: not connected to {self._url}")
                return
            if context_id not in self._live and not self._live and self._needs_new_socket(text):
                await self._replace_socket()
            self._live.setdefault(context_id, 0)
            self._chars_sent += len(text)
            await self._queue_text(context_id, text)
            await self.start_tts_usage_metrics(text)
            yield None
        except Exception as e:
            yield ErrorFrame(error=f"{self}: sending text failed: {e}", exception=e)

    async def flush_audio(self, context_id: str | None = None):
        """Speak what the context has buffered now (the server's ``flush``)."""
        ctx = context_id or self.get_active_audio_context_id()
        if ctx and ctx in self._live:
            await self._send_now({"type": "flush", "context_id": ctx})

    async def on_turn_context_completed(self):
        """The turn has no more text: ``end`` its context (the server speaks the rest, then
        sends ``done``, which ends the audio context)."""
        ctx = self._turn_context_id
        await super().on_turn_context_completed()
        if ctx and ctx in self._live:
            await self._send_now({"type": "end", "context_id": ctx})

    async def on_audio_context_interrupted(self, context_id: str):
        await self._close_context(context_id)
        await super().on_audio_context_interrupted(context_id)

    async def _handle_interruption(self, frame: InterruptionFrame, direction: FrameDirection):
        await super()._handle_interruption(frame, direction)
        # A context pipecat has already let go (it went quiet longer than stop_frame_timeout_s)
        # but the server still speaks: the interrupted turn will never `end` it.
        for ctx in list(self._live):
            if not self.audio_context_available(ctx):
                await self._close_context(ctx)

    # ---- connection ---------------------------------------------------------------------------

    def _needs_new_socket(self, text: str) -> bool:
        return self._budget_spent or self._chars_sent + len(text) > self._socket_chars * 0.8

    async def _replace_socket(self):
        """A fresh socket between turns (the old one's character budget is spent). Not through
        _disconnect: that would end the audio context the base just opened for this turn."""
        old, self._websocket = self._websocket, None
        if self._receive_task:
            await self.cancel_task(self._receive_task)
            self._receive_task = None
        if old:
            try:
                await old.close()
            except Exception as e:
                logger.debug(f"{self}: closing the spent socket: {e}")
        await self._connect_websocket()
        if self._websocket:
            self._receive_task = self.create_task(self._receive_task_handler(self._report_error))

    async def _connect(self):
        await super()._connect()
        await self._connect_websocket()
        if self._websocket and (self._receive_task is None or self._receive_task.done()):
            self._receive_task = self.create_task(self._receive_task_handler(self._report_error))

    async def _disconnect(self):
        await super()._disconnect()
        if self._receive_task:
            await self.cancel_task(self._receive_task)
            self._receive_task = None
        await self._disconnect_websocket()

    async def _connect_websocket(self):
        try:
            if self._websocket and self._websocket.state is State.OPEN:
                return
            headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
            ws = await self._websocket_connect(self._url, additional_headers=headers, max_size=4 << 20,
                                               proxy=None)
            start = {"type": "start", "contexts": True, "format": "pcm_s16le",
                     "sample_rate": self.sample_rate}
            for name in ("voice", "speed", "seed"):
                value = getattr(self._settings, name)
                if is_given(value) and value is not None:
                    start[name] = value
            await ws.send(json.dumps(start, ensure_ascii=False))
            ready = await asyncio.wait_for(_first_event(ws), READY_TIMEOUT_S)
            if ready.get("type") == "error":
                await ws.close()
                raise StreamTTSError(ready.get("code", "error"), ready.get("message", ""))
            if ready.get("type") != "ready" or ready.get("contexts") is not True:
                await ws.close()
                raise StreamTTSError("no_contexts", f"the server answered {ready}, not a ready "
                                     "with contexts: it is older than the contexts protocol")
            self._websocket = ws
            self._live.clear()
            self._chars_sent = 0
            self._budget_spent = False
            await self._call_event_handler("on_connected")
        except Exception as e:
            self._websocket = None
            await self.push_error(error_msg=f"{self}: connecting to {self._url} failed: {e}", exception=e)
            await self._call_event_handler("on_connection_error", f"{e}")

    async def _disconnect_websocket(self):
        try:
            await self.stop_all_metrics()
            if self._pending_task:
                await self.cancel_task(self._pending_task)
                self._pending_task = None
            self._pending.clear()
            if self._websocket:
                await self._websocket.close()
        except Exception as e:
            logger.debug(f"{self}: closing the socket: {e}")
        finally:
            self._websocket = None
            self._live.clear()
            await self._call_event_handler("on_disconnected")

    # ---- sending ------------------------------------------------------------------------------

    async def _send_now(self, msg: dict):
        """Send a control message after the text queued before it (for its context: `end`
        and `flush` must follow their text)."""
        await self._flush_pending()
        await self._send(msg)

    async def _send(self, msg: dict):
        if not self._websocket:
            return
        async with self._send_lock:
            await self._websocket.send(json.dumps(msg, ensure_ascii=False))

    async def _queue_text(self, ctx: str, text: str):
        """Send now, or join text that comes faster than the message rate and send it soon."""
        if self._pending and self._pending[-1][0] == ctx:
            self._pending[-1][1] += text
        else:
            self._pending.append([ctx, text])
        wait = self._last_text_at + SEND_INTERVAL_S - time.monotonic()
        if wait <= 0 and (self._pending_task is None or self._pending_task.done()):
            await self._flush_pending()
        elif self._pending_task is None or self._pending_task.done():
            self._pending_task = self.create_task(self._flush_later(wait), name="text_rate")

    async def _flush_later(self, wait: float):
        await asyncio.sleep(max(wait, 0.0))
        try:
            await self._flush_pending()
        except Exception as e:  # the receive loop sees a lost socket; the text is gone with it
            logger.warning(f"{self}: sending text failed: {e}")

    async def _flush_pending(self):
        while self._pending:
            ctx, text = self._pending.pop(0)
            for i in range(0, len(text), MAX_PIECE_CHARS):
                await self._send({"type": "text", "text": text[i:i + MAX_PIECE_CHARS], "context_id": ctx})
            self._last_text_at = time.monotonic()

    async def _close_context(self, ctx: str):
        """Barge-in: the server stops the context at once and forgets it (``close_context``)."""
        self._pending = [p for p in self._pending if p[0] != ctx]
        if ctx in self._live and self._websocket:
            self._live.pop(ctx, None)
            try:
                await self._send_now({"type": "close_context", "context_id": ctx})
            except Exception as e:
                logger.warning(f"{self}: close_context {ctx} failed: {e}")

    # ---- receiving ----------------------------------------------------------------------------

    async def _receive_messages(self):
        async for message in self._websocket:
            if isinstance(message, bytes):
                await self._on_audio(message)
            else:
                await self._on_event(json.loads(message))

    async def _on_audio(self, frame: bytes):
        n = frame[0]
        ctx = frame[1:1 + n].decode() if n else None
        audio = frame[1 + n:]
        if ctx is None or ctx not in self._live:
            self._stale_audio_bytes += len(audio)  # a context already closed: its last frames
            return
        self._live[ctx] += len(audio)
        if self.audio_context_available(ctx) or ctx == self._turn_context_id:
            await self.append_to_audio_context(
                ctx, TTSAudioRawFrame(audio, self.sample_rate, 1, context_id=ctx))

    async def _on_event(self, event: dict):
        kind = event.get("type")
        ctx = event.get("context_id")
        if kind == "segment":
            if ctx in self._live and self.audio_context_available(ctx):
                received_ms = self._live[ctx] / 2 / self.sample_rate * 1000.0
                words = segment_word_times(event, received_ms)
                if words:
                    await self.add_word_timestamps(words, ctx, includes_inter_frame_spaces=True)
        elif kind in ("done", "cancelled", "context_closed"):
            if kind != "cancelled":
                self._live.pop(ctx, None)
            heard = {k: event.get(k) for k in ("audio_sent_ms", "heard_ms", "heard_text", "heard_segments")}
            if kind == "done" and ctx and self.audio_context_available(ctx):
                await self.append_to_audio_context(ctx, TTSStoppedFrame(context_id=ctx))
                await self.remove_audio_context(ctx)
            await self._call_event_handler("on_heard", ctx, heard)
        elif kind == "queued":
            # Waiting for a stream slot: not a silent server.
            if ctx and self.audio_context_available(ctx):
                self._refresh_audio_context(ctx)
        elif kind == "error":
            await self._on_error(event, ctx)

    async def _on_error(self, event: dict, ctx: str | None):
        code, message = event.get("code", "error"), event.get("message", "")
        if event.get("fatal"):
            if code in _QUIET_FATAL:
                logger.debug(f"{self}: the server closes the socket: {code}")
            else:
                await self.push_error(error_msg=f"{self}: {code}: {message}")
            return
        if code == "no_speakable_text":
            return  # an emoji-only LLM piece: nothing to say, nothing lost
        if code == "text_too_long":
            self._budget_spent = True  # the next turn takes a fresh socket
        await self.push_error(error_msg=f"{self}: {code}: {message}")
        if ctx and code in ("server_busy", "too_many_contexts"):
            # The context's text was dropped: end its audio context rather than wait for audio.
            self._live.pop(ctx, None)
            if self.audio_context_available(ctx):
                await self.append_to_audio_context(ctx, TTSStoppedFrame(context_id=ctx))
                await self.remove_audio_context(ctx)


def _check_rate(rate: int) -> None:
    if rate not in SAMPLE_RATES:
        raise ValueError(f"sample rate {rate} Hz: the server speaks {', '.join(map(str, SAMPLE_RATES))}")


async def _first_event(ws) -> dict:
    """The first JSON event of a new socket (`ready`, or the error that refused `start`)."""
    async for message in ws:
        if isinstance(message, str):
            return json.loads(message)
    raise StreamTTSError("closed", "the server closed the socket before `ready`")
