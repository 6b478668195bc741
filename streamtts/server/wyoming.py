"""The Wyoming protocol (Home Assistant's voice services) on its own TCP port, in the server's
process, on its event loop and its scheduler: moves data between Wyoming events and the core.

    config = ServerConfig(wyoming_port=10200)      # None (default): off; 0: any free port
    app = create_app(config)                       # create_app calls install_wyoming(app)
    app[WYOMING].port                              # the bound port, once the app has started

Per connection (docs/protocol.md, "Wyoming"):

* ``describe`` -> ``info``: one TTS program with the 24 voices (``zh_CN``), streaming supported.
* ``synthesize`` -> one ``audio-start``, ``audio-chunk``..., ``audio-stop`` cycle, sent as it is
  computed (s16le mono at 22050 Hz).
* ``synthesize-start``, ``synthesize-chunk``..., ``synthesize-stop`` -> one cycle per spoken chunk
  (the core's chunker re-cuts the text: a sentence, the first maybe cut at a comma), then
  ``synthesize-stopped``. A ``synthesize`` inside a stream is the full text a client such as Home
  Assistant repeats for servers without streaming: it is not spoken again.
* Bad input gets an ``error`` event with a ``code`` and the connection goes on; an unreadable
  frame gets one and the connection is closed (its framing is lost).
* A synthesis that finds every stream slot taken waits in the server's bounded queue, as a
  WebSocket utterance does (nothing is sent meanwhile; its text is kept until it is admitted). A
  full queue or a wait that runs out gets a ``server_busy`` error event, a drain ``going_away``;
  the connection goes on. One synthesis at a time per connection, in the order asked.

Why ``asyncio.start_server`` with wyoming's ``async_read_event``/``async_write_event`` rather than
wyoming's ``AsyncServer``/``AsyncEventHandler``: the handler base awaits each event before it reads
the next, but a stream's chunks must be read while its audio is being written, and a client that
leaves must be seen at once to free its work; ``start_server`` also takes a line limit, the reader
handed to ``async_read_event`` refuses oversized data and payloads (the library reads whatever
length a header claims), and port 0 gives its bound port for tests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Optional

from aiohttp import web
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.event import Event, async_read_event, async_write_event
from wyoming.info import Attribution, Describe, Info, TtsProgram, TtsVoice
from wyoming.ping import Ping, Pong
from wyoming.tts import (Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped,
                         SynthesizeVoice)

from streamtts import __version__
from streamtts.audio.codec import AudioEncoder
from streamtts.constants import DEFAULT_SEED, NATIVE_RATE
from streamtts.engine_client import Audio, Busy, Done, Failed, Segment, Slot, Utterance, UtteranceSpec
from streamtts.errors import StreamTTSError
from streamtts.protocol import ProtocolError, check_text, parse_text
from streamtts.server.errors import count_error, wyoming_error
from streamtts.server.state import STATE, ServerState, engine_unavailable
from streamtts.voices import DEFAULT_VOICE, VOICES, resolve_voice

log = logging.getLogger(__name__)

_GOING_AWAY = "the server is shutting down"
WIDTH, CHANNELS = 2, 1  # s16le mono, at NATIVE_RATE for every cycle of a connection
LANGUAGE = "zh_CN"
_VOICE_ATTRIBUTION = Attribution(name="kuangdd (ttskit 0.3.8, MIT)", url="https://pypi.org/project/ttskit/")


def info_event() -> Event:
    """The ``info`` answer to ``describe``."""
    voices = [TtsVoice(name=v, attribution=_VOICE_ATTRIBUTION, installed=True, version="0.3.8",
                       description=f"{v} (default)" if v == DEFAULT_VOICE else v, languages=[LANGUAGE])
              for v in VOICES]
    program = TtsProgram(name="streamtts", attribution=Attribution(name="streamtts", url=""), installed=True,
                         description="Streaming Mandarin text-to-speech", version=__version__, voices=voices,
                         supports_synthesize_streaming=True)
    return Info(tts=[program]).event()


def text_commands(text: str, text_format) -> list[str]:
    """The one place where Wyoming text (of ``synthesize`` or a ``synthesize-chunk``) becomes the
    core's TEXT commands: the texts to push, in order. Plain text goes as it is (the core's chunker
    cuts it into sentences, so pieces may cut through words). With ``text_format`` "ssml" the text
    is one whole ``<speak>`` document (a ``synthesize-chunk`` too), parsed here (``invalid_ssml``)."""
    check_format(text_format)
    return [parse_text(text, text_format or "text")]


def check_format(text_format) -> None:
    if text_format not in (None, "text", "ssml"):
        raise ProtocolError("unsupported_text_format", f"text_format {str(text_format)[:40]!r} is not supported; "
                                                       "send \"text\" or \"ssml\"")


def parse_voice(data: dict) -> str:
    """Our voice for an event's ``voice`` field: ``name`` (case-insensitive), or ``speaker`` when
    it names one of our voices (each voice has one speaker, so a speaker is a voice); ``language``
    alone must be Chinese (the default voice). Raises ProtocolError."""
    raw = data.get("voice")
    if raw is None:
        return DEFAULT_VOICE
    if not isinstance(raw, dict):
        raise ProtocolError("bad_message", "voice must be an object {\"name\": ..., \"speaker\": ...}")
    for key in ("name", "speaker", "language"):
        if raw.get(key) is not None and not isinstance(raw[key], str):
            raise ProtocolError("bad_message", f"voice.{key} must be a string")
    voice = SynthesizeVoice.from_dict(raw)
    name = voice.name if voice is not None else None
    speaker, language = raw.get("speaker"), raw.get("language")
    if not name and not speaker and language and not language.lower().startswith(("zh", "cmn")):
        raise ProtocolError("unsupported_language", f"language {language!r} is not spoken here; the voices speak "
                                                    f"{LANGUAGE}")
    try:
        return resolve_voice(speaker if speaker and speaker.strip() else name)
    except StreamTTSError as exc:
        raise ProtocolError.from_error(exc) from None


def _parse(kind, event: Event):
    """``kind.from_event(event)`` (the library's parsing); a missing or malformed field is bad_message."""
    try:
        return kind.from_event(event)
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ProtocolError("bad_message", f"{event.type}: missing or malformed field ({exc!r})") from None


class FrameTooLarge(Exception):
    pass


class _BoundedReader:
    """The two reads ``async_read_event`` makes, with the data and payload lengths a header claims
    bounded (the line itself is bounded by the StreamReader's limit)."""

    def __init__(self, reader: asyncio.StreamReader, max_bytes: int):
        self.reader, self.max_bytes = reader, max_bytes

    async def readline(self) -> bytes:
        return await self.reader.readline()

    async def readexactly(self, n) -> bytes:
        if not isinstance(n, int) or n > self.max_bytes:
            raise FrameTooLarge(f"an event of {n!r} bytes of data or payload; at most {self.max_bytes}")
        return await self.reader.readexactly(n)

    def at_eof(self) -> bool:
        return self.reader.at_eof()


@dataclass(eq=False)
class _Synthesis:
    """One synthesis (a ``synthesize``, or a stream): its stream slot and utterance, once admitted."""

    voice: str
    streaming: bool
    text_format: object = None
    slot: Optional[Slot] = None
    utt: Optional[Utterance] = None  # its output stream is bounded by flow control (max_buffered_s)
    pending: list[str] = field(default_factory=list)  # text that came while it waited for a slot
    ended: bool = False  # the end of its text was asked
    refused: bool = False  # no slot came (an error was sent): its text is dropped
    t0: Optional[float] = None  # when its first text came (TTFA: a wait for a slot counts)
    chars: int = 0


class WyomingServer:
    """The TCP listener and its connections; ``start``/``stop`` are the app's startup/cleanup hooks."""

    def __init__(self, state: ServerState):
        self.state = state
        cfg = state.config
        self.host = cfg.wyoming_host or cfg.host
        # An event's data may carry a stream's whole text (the full `synthesize` inside a stream):
        # up to max_session_chars, 6 bytes a char when JSON-escaped.
        self.max_bytes = 6 * max(cfg.limits.max_session_chars, cfg.max_input_chars) + cfg.limits.max_message_bytes
        self.info = info_event()
        self.port: Optional[int] = None
        self._server: Optional[asyncio.AbstractServer] = None
        self._tasks: set[asyncio.Task] = set()
        self.connections: dict["Connection", asyncio.Task] = {}

    async def start(self, app: Optional[web.Application] = None) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.state.config.wyoming_port,
                                                  limit=self.max_bytes)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("Wyoming protocol on tcp://%s:%d", self.host, self.port)

    async def stop(self, app: Optional[web.Application] = None) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        conn = Connection(self, reader, writer)
        self.connections[conn] = task
        try:
            await conn.run()
        finally:
            self._tasks.discard(task)
            self.connections.pop(conn, None)

    def drain_step(self, final: bool = False) -> bool:
        """Server shutdown: end connections with no synthesis under way (all, when ``final``);
        True while some synthesis is still under way. A synthesis waiting for a slot sees the
        drain itself (a ``going_away`` error), after which its connection is ended here."""
        busy = False
        for conn, task in list(self.connections.items()):
            if final or not conn._busy():
                task.cancel()
            else:
                busy = True
        return busy


WYOMING = web.AppKey("streamtts_wyoming", WyomingServer)


def install_wyoming(app: web.Application) -> None:
    """Serve Wyoming next to ``app`` if its config has a ``wyoming_port``: the listener starts on
    the app's loop at startup and stops at cleanup."""
    state = app[STATE]
    if state.config.wyoming_port is None:
        return
    server = app[WYOMING] = WyomingServer(state)
    app.on_startup.append(server.start)
    app.on_cleanup.append(server.stop)


class Connection:
    def __init__(self, server: WyomingServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.server, self.state = server, server.state
        self.config, self.metrics, self.engine = self.state.config, self.state.metrics, self.state.engine
        self.reader = _BoundedReader(reader, server.max_bytes)
        self.writer = writer
        self.task: Optional[asyncio.Task] = None  # the synthesis being spoken (one at a time) ...
        self.current: Optional[_Synthesis] = None  # ... and its request
        self.stream_open = False  # between synthesize-start and synthesize-stop
        self.stream: Optional[_Synthesis] = None  # that stream's synthesis; None if it was refused

    async def run(self) -> None:
        try:
            with self.state.guard.session() as admitted:
                if not admitted:
                    await self._error("too_many_sessions", f"the server is at its limit of "
                                                           f"{self.config.max_sessions} sessions; try again later")
                    return
                await self._read_loop()
        except (ConnectionError, asyncio.TimeoutError) as exc:  # the client went away or stopped reading
            log.debug("wyoming connection ended: %r", exc)
        except Exception:  # a bug: this connection ends, the server goes on
            log.exception("wyoming connection failed")
            try:
                await self._error("internal", "internal error")
            except Exception:
                pass
        finally:
            if self.task is not None:  # frees its work at once (the done callback sends CLOSE)
                self.task.cancel()
                await asyncio.gather(self.task, return_exceptions=True)
            self.writer.close()

    # ---- client -> core ---------------------------------------------------------------------

    async def _read_loop(self) -> None:
        while True:
            event = await self._next_event()
            if event is None:
                return
            try:
                await self._handle(event)
            except ProtocolError as exc:
                await self._error(exc.code, exc.message)

    async def _next_event(self) -> Optional[Event]:
        """The client's next event; None when the connection is to end (with an error event sent
        when that is the client's mistake or its idling)."""
        idle = self.config.idle_timeout_s
        read = asyncio.ensure_future(async_read_event(self.reader))
        try:
            while not read.done():  # a read is never cancelled mid-frame while the client is busy
                await asyncio.wait({read}, timeout=idle)
                if not read.done() and not self._busy():
                    code, message = "idle_timeout", f"no event for {idle:g} s"
                    break
            else:
                event = read.result()
                if event is not None or self.reader.at_eof():
                    return event  # an event, or the client has gone
                # not JSON, or a line over the limit: the framing is lost
                code, message = "bad_message", "not a Wyoming event (a JSON line, then data and payload); closing"
        except FrameTooLarge as exc:
            code, message = "message_too_large", str(exc)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None
        except Exception as exc:  # a header the library makes no event of (no type, data not an object...)
            code, message = "bad_message", f"not a Wyoming event ({exc!r}); closing"
        finally:
            read.cancel()
        await self._error(code, message)
        return None

    def _busy(self) -> bool:
        """Audio under way (to be made or not yet taken, or waited for in the queue, which its
        timeout bounds): the client is listening, not idling. A stream left open with nothing to
        say is idle."""
        syn = self.current
        if syn is None or self.task is None or self.task.done():
            return False
        if syn.utt is None:
            return True
        return not syn.streaming or syn.utt.busy

    async def _handle(self, event: Event) -> None:
        if not isinstance(event.data, dict):
            raise ProtocolError("bad_message", f"{event.type!r}: data must be an object")
        kind = event.type
        if Describe.is_type(kind):
            await self._write(self.server.info)
        elif Synthesize.is_type(kind):
            await self._synthesize(event)
        elif SynthesizeStart.is_type(kind):
            await self._stream_start(event)
        elif SynthesizeChunk.is_type(kind):
            self._stream_chunk(event)
        elif SynthesizeStop.is_type(kind):
            await self._stream_stop()
        elif Ping.is_type(kind):
            await self._write(Pong(text=_parse(Ping, event).text).event())
        else:  # Wyoming servers drop events they do not know
            log.debug("wyoming: ignored %r", kind)

    async def _synthesize(self, event: Event) -> None:
        if self.stream_open:
            return  # the stream's full text, repeated for servers without streaming: already spoken
        request = _parse(Synthesize, event)
        text = check_text(request.text, self.config.max_input_chars)
        voice = parse_voice(event.data)
        pieces = text_commands(text, request.text_format)
        await self._idle()
        syn = self._admit(voice, streaming=False, text_format=request.text_format)
        self._push(syn, pieces)
        self._end(syn)

    async def _stream_start(self, event: Event) -> None:
        if self.stream_open:
            raise ProtocolError("stream_open", "synthesize-start inside a stream; send synthesize-stop first")
        # Open even if refused below: its chunks are then dropped and synthesize-stop still gets
        # synthesize-stopped, so a client waiting for it does not hang.
        self.stream_open, self.stream = True, None
        start = _parse(SynthesizeStart, event)
        voice = parse_voice(event.data)
        check_format(start.text_format)  # refuse an unsupported format now, not per chunk
        await self._idle()
        self.stream = self._admit(voice, streaming=True, text_format=start.text_format)

    def _stream_chunk(self, event: Event) -> None:
        if not self.stream_open:
            raise ProtocolError("no_stream", "synthesize-chunk without synthesize-start")
        text = _parse(SynthesizeChunk, event).text
        syn = self.stream
        if syn is None or syn.refused:
            return  # the stream was refused (an error was sent then)
        try:
            text = check_text(text, self.config.limits.max_text_chars)
        except ProtocolError as exc:
            if exc.code in ("empty_text", "no_speakable_text"):
                return  # an empty piece, or only emoji: nothing to say, not a mistake in a stream
            raise
        limit = self.config.limits.max_session_chars
        if syn.chars + len(text) > limit:
            raise ProtocolError("text_too_long", f"the stream's text would exceed {limit} characters")
        syn.chars += len(text)
        self._push(syn, text_commands(text, syn.text_format))

    async def _stream_stop(self) -> None:
        if not self.stream_open:
            raise ProtocolError("no_stream", "synthesize-stop without synthesize-start")
        syn, self.stream_open, self.stream = self.stream, False, None
        if syn is None or syn.refused:  # refused at its start, or no slot came
            await self._idle()
            await self._write(SynthesizeStopped().event())
        else:
            self._end(syn)  # its task sends synthesize-stopped after the audio (or its refusal)

    async def _idle(self) -> None:
        """One synthesis at a time, in the order asked: wait for the one being spoken."""
        if self.task is not None:
            await asyncio.wait({self.task})

    def _admit(self, voice: str, streaming: bool, text_format) -> _Synthesis:
        """A synthesis and its task, which waits for a stream slot, then speaks; raises
        ProtocolError when it cannot be served at all now.

        The wait runs in the task, not here: the read loop goes on reading meanwhile, so a client
        that hangs up while queued is seen at once (its place goes to the next in line), pings
        are answered, and a stream's chunks are kept for when it is admitted."""
        if self.state.draining:
            raise ProtocolError("going_away", _GOING_AWAY)
        if self.engine.failure is not None:
            raise ProtocolError("engine_unavailable", engine_unavailable(self.state))
        syn = _Synthesis(voice, streaming, text_format)
        # the callback, not the task's own finally, frees the slot: a task cancelled before its
        # first step never runs its body
        self.current, self.task = syn, asyncio.create_task(self._serve(syn))
        self.task.add_done_callback(lambda task: self._done(syn, task))
        return syn

    async def _serve(self, syn: _Synthesis) -> None:
        try:
            syn.slot = await self.engine.admission.wait_unless(self._stop_waiting)
        except Busy as exc:  # the queue is full or the wait ran out
            self.metrics.refused.labels(api="wyoming").inc()
            return await self._refuse(syn, "server_busy", exc.message)
        except ProtocolError as exc:
            return await self._refuse(syn, exc.code, exc.message)
        if self.state.draining:  # a slot freed by the drain itself: no new work now
            return await self._refuse(syn, "going_away", _GOING_AWAY)
        if self.engine.failure is not None:
            return await self._refuse(syn, "engine_unavailable", engine_unavailable(self.state))
        # Not paced: a Wyoming client has no cancel to answer (it hangs up), and Home Assistant
        # collects a whole `synthesize` before it plays it, so pacing would only delay it.
        syn.utt = self.engine.open(UtteranceSpec(syn.voice, DEFAULT_SEED, 1.0, api="wyoming"), max_lead_s=0.0)
        self.metrics.requests.labels(api="wyoming").inc()
        self.metrics.active_sessions.labels(api="wyoming").inc()
        pending, syn.pending = syn.pending, []
        for piece in pending:
            syn.utt.text(0, piece)
        if syn.ended:
            syn.utt.end(0)
        await self._speak(syn)

    def _stop_waiting(self) -> Optional[BaseException]:
        """Why a synthesis waiting for a slot stops waiting: the server drains, the engine failed,
        or the client has gone (seen here too while the read loop waits for this synthesis)."""
        if self.state.draining:
            return ProtocolError("going_away", _GOING_AWAY)
        if self.engine.failure is not None:
            return ProtocolError("engine_unavailable", engine_unavailable(self.state))
        if self.reader.at_eof() or self.writer.is_closing():
            return ConnectionResetError("the client went away while queued")
        return None

    async def _refuse(self, syn: _Synthesis, code: str, message: str) -> None:
        """No slot for it: an error event (the connection goes on); a stream whose stop already
        came also gets its synthesize-stopped (else the stop sends it)."""
        syn.refused, syn.pending = True, []
        await self._error(code, message)
        if syn.streaming and syn.ended:
            await self._write(SynthesizeStopped().event())

    def _push(self, syn: _Synthesis, pieces: list[str]) -> None:
        if syn.t0 is None:
            syn.t0 = time.monotonic()
        if syn.refused:
            return
        if syn.utt is None:  # still waiting for a slot
            syn.pending.extend(pieces)
            return
        for piece in pieces:
            syn.utt.text(0, piece)

    @staticmethod
    def _end(syn: _Synthesis) -> None:
        syn.ended = True
        if syn.utt is not None:
            syn.utt.end(0)

    def _done(self, syn: _Synthesis, task: asyncio.Task) -> None:
        if syn.utt is not None:
            syn.utt.close()  # a client that went away frees its work at once
            self.metrics.active_sessions.labels(api="wyoming").dec()
        if syn.slot is not None:
            syn.slot.release()
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            if not isinstance(exc, (ConnectionError, asyncio.TimeoutError)):
                log.error("wyoming synthesis failed", exc_info=exc)
            self.writer.close()  # the reader sees the end and the connection closes

    # ---- core -> client ---------------------------------------------------------------------

    async def _speak(self, syn: _Synthesis) -> None:
        """Write a synthesis's audio as the engine makes it: one cycle for a ``synthesize``, one per
        spoken chunk for a stream (its silence before a chunk opens that chunk's cycle)."""
        stream, encoder = syn.utt.stream, AudioEncoder("pcm_s16le", NATIVE_RATE)
        cycle: Optional[int] = None  # samples written in the open cycle; None: no cycle open
        first = True
        if not syn.streaming:
            await self._write(AudioStart(NATIVE_RATE, WIDTH, CHANNELS).event())
            cycle = 0
        while True:
            event = await stream.get()
            if syn.ended and syn.slot is not None and not syn.utt.computing:
                syn.slot.release()  # all its text is synthesized: the slot counts compute, not playback
                syn.slot = None
            if isinstance(event, Audio):
                samples = len(event.samples)
                data = encoder.silence(samples) if event.silence else encoder.encode(event.samples)
                if cycle is None:
                    await self._write(AudioStart(NATIVE_RATE, WIDTH, CHANNELS).event())
                    cycle = 0
                if data:
                    await self._write(AudioChunk(NATIVE_RATE, WIDTH, CHANNELS, data,
                                                 timestamp=cycle * 1000 // NATIVE_RATE).event())
                cycle += samples
                if first and not event.silence:
                    first = False
                    self.metrics.ttfa.labels(api="wyoming").observe(time.monotonic() - (syn.t0 or 0.0))
                stream.delivered(event)
            elif isinstance(event, Segment):
                if syn.streaming and cycle is not None:
                    await self._write(AudioStop().event())
                    cycle = None
            elif isinstance(event, (Done, Failed)):  # the utterance is over either way
                if isinstance(event, Failed):
                    await self._error(event.code, event.message)
                if cycle is not None:
                    await self._write(AudioStop().event())
                if syn.streaming:
                    await self._write(SynthesizeStopped().event())
                return

    async def _write(self, event: Event) -> None:
        """One event, once the transport has drained; a client that reads nothing for
        ``idle_timeout_s`` is given up (asyncio.TimeoutError)."""
        await asyncio.wait_for(async_write_event(event, self.writer), self.config.idle_timeout_s)

    async def _error(self, code: str, message: str) -> None:
        count_error(self.metrics, code)
        await self._write(wyoming_error(code, message))
