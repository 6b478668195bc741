"""Sans-I/O WebSocket session protocol (docs/protocol.md): messages in, events and messages out.

No sockets, no threads, no clock other than the one passed in. The server moves data::

    session = Session(limits=Limits())
    for event in session.receive_text(frame):      # or receive_bytes(frame) for a binary frame
        ...                                        # StartEvent, TextEvent, FlushEvent, CancelEvent, EndEvent
    # synthesis results, tagged with the generation of the text they came from:
    session.audio(generation, samples)             # float32 @ 22050 Hz
    session.segment(generation, Segment(...))  # streamtts.engine_client.stream
    session.pause(generation, n_samples)
    session.finished(generation)                   # all text after `end` was spoken -> done
    while (item := session.next_to_send()) is not None:
        send(item)                                 # dict -> JSON text frame, bytes -> binary frame
    if session.state is State.CLOSED: close(session.close_code)

Errors a client causes never raise: they queue an ``error`` message (``fatal`` ones also close the
session). ``cancel`` bumps ``session.generation``: results of older generations are dropped, and
so is every audio frame and segment of the cancelled text still waiting to be sent.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import deque
from typing import Callable, Optional, Union

import numpy as np

from streamtts.audio.codec import NATIVE_RATE, AudioEncoder
from streamtts.audio.pacing import Pacer
from streamtts.engine_client.stream import Segment
from streamtts.errors import close_code
from streamtts.protocol.messages import (
    _DONE,
    FRAME_S,
    NO_CONTEXT,
    CancelEvent,
    EndEvent,
    Event,
    FlushEvent,
    Limits,
    Options,
    Outgoing,
    ProtocolError,
    StartEvent,
    State,
    TextEvent,
    TokenBucket,
    _text_format,
    check_text,
    error_message,
    parse_options,
    parse_text,
)


class _Dropped(Exception):
    """A message dropped by the rate limit (its error, once per run, is already queued)."""


class Session:
    """One WebSocket session's protocol state machine; see the module docstring."""

    def __init__(self, limits: Optional[Limits] = None, session_id: Optional[str] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.limits = limits or Limits()
        self.id = session_id or uuid.uuid4().hex[:16]
        self.clock = clock
        self.valid_at = clock()  # when the last valid client message came (the idle timer)
        self.error_streak = 0  # client messages in a row answered with an error
        self.outbox_bytes = 0  # everything queued, JSON included (bounded by max_outbox_bytes)
        self.fatal_code: Optional[str] = None  # the code of the fatal error that closed it
        self.state = State.NEW
        self.options: Optional[Options] = None
        self.generation = 0
        self.close_code: Optional[int] = None
        self.encoder: Optional[AudioEncoder] = None
        self._bucket = TokenBucket(self.limits.rate, self.limits.burst, clock)
        self._limited = False  # inside a run of rate-limited messages (one error per run)
        self._outbox: deque[Outgoing] = deque()
        self.buffered_bytes = 0  # audio bytes in the outbox
        self.chars_received = 0
        self.segments_sent = 0
        self.samples_sent = 0  # output samples handed to the socket (all generations)
        self._segment_start: Optional[int] = None  # output position where the current chunk began
        self._position = 0  # output samples queued so far (for segment times)
        self.native_samples = 0  # synthesized samples received (for rtf)
        self.compute_s = 0.0  # synthesis time spent for this session (reported by the server)
        self._ttfa_armed = True  # the next text starts a ttfa measurement (session start, after cancel)
        self._ttfa_start: Optional[float] = None  # when that text came, until its first audio is sent
        self._ttfa_pending = False  # an audio frame of the utterance is queued, not yet sent
        self.ttfa_s: Optional[float] = None  # the session's first ttfa (for `done`)
        self.ttfa_observed: list[float] = []  # every utterance's ttfa; the server drains it
        self.utterance = 1  # the current utterance's number on this socket (a cancel starts the next)
        # The modelled listener (the pacing model: a player that starts with the first audio, plays
        # at real time and waits when it runs dry): what of the audio sent it has played by now.
        self.listener = Pacer(0.0)
        self._utterance_sent = 0  # samples_sent when the current utterance began
        self._sent_chars: list[tuple[str, float]] = []  # (char, end_ms) of its segments sent
        self._sent_segments: list[float] = []  # audio_end_ms of its segments sent

    # ---- client -> server -------------------------------------------------------------------

    def receive_text(self, data: Union[str, bytes]) -> list[Event]:
        """A text frame (str, or its raw UTF-8 bytes). Returns the events for the server."""
        try:
            events = self._receive(data)
        except _Dropped:  # over the rate limit: not spoken, and not a sign of life
            return []
        except ProtocolError as exc:
            self._client_error(exc.code, exc.message, exc.fatal, exc.context)
            return []
        if self.state is not State.CLOSED or events:
            self.valid_at = self.clock()
            self.error_streak = 0
        return events

    def receive_bytes(self, data: bytes) -> list[Event]:
        """A binary frame: never valid from a client."""
        if self.state is State.CLOSED or not self._admit():
            return []
        self._client_error("binary_not_allowed", "send JSON text frames; binary frames are not accepted")
        return []

    def _client_error(self, code: str, message: str, fatal: bool = False, context: object = NO_CONTEXT) -> None:
        self._error(code, message, fatal, context)
        self.error_streak += 1
        if self.error_streak >= self.limits.max_error_streak and self.state is not State.CLOSED:
            self._error("too_many_errors", f"{self.error_streak} messages in a row were errors; closing",
                        fatal=True)

    def idle_s(self, now: Optional[float] = None) -> float:
        """Seconds since the last valid client message (invalid ones do not keep a session open)."""
        return (self.clock() if now is None else now) - self.valid_at

    def queued(self, position: int) -> None:
        """The server is at capacity: the current utterance waits for a stream slot, ``position``
        utterances ahead of it (0: next)."""
        if self.state is not State.CLOSED:
            self._queue({"type": "queued", "position": int(position), "utterance": self.utterance})

    def drop_utterance(self, code: str, message: str) -> int:
        """The current utterance cannot be spoken (no stream slot freed in time, say): a non-fatal
        error, its text dropped as by a cancel, and the session ready for the next. Returns the
        next utterance's generation."""
        if self.state is State.CLOSED:
            return self.generation
        self._next_utterance()
        self.state = State.READY
        self._error(code, message)
        return self.generation

    def fail(self, code: str, message: str) -> None:
        """End the session with a fatal error (server-detected: too many sessions, bug, going
        away, ...). Audio and segments not yet sent are dropped: the error goes out next."""
        if self.state is not State.CLOSED:
            self._drop_unsent()
            self._error(code, message, fatal=True)

    def _drop_unsent(self) -> int:
        """Remove queued audio and segments (not other JSON); returns the audio bytes dropped."""
        dropped = sum(len(m) for m in self._outbox if isinstance(m, (bytes, bytearray)))
        kept = deque(m for m in self._outbox if m is _DONE or isinstance(m, dict) and m.get("type") != "segment")
        segments = [m for m in self._outbox if isinstance(m, dict) and m.get("type") == "segment"]
        self.outbox_bytes -= dropped + sum(_json_size(m) for m in segments)
        self.segments_sent -= len(segments)  # `index` counts segments sent: the next one reuses theirs
        self._outbox = kept
        self.buffered_bytes = 0
        return dropped

    def _admit(self) -> bool:
        if self._bucket.take():
            self._limited = False
            return True
        if not self._limited:
            self._limited = True
            self._error("rate_limited", f"more than {self.limits.rate:g} messages/s: messages are dropped "
                                        "until the rate falls (one error per run of dropped messages)")
        return False

    def _receive(self, data: Union[str, bytes]) -> list[Event]:
        if self.state is State.CLOSED:
            return []
        if not self._admit():
            raise _Dropped
        size = len(data) if isinstance(data, bytes) else len(data.encode("utf-8", "surrogatepass"))
        if size > self.limits.max_message_bytes:
            raise ProtocolError("message_too_large", f"message of {size} bytes; at most {self.limits.max_message_bytes}")
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError("bad_utf8", "text frame is not valid UTF-8") from None
        try:
            msg = json.loads(data)
        except (ValueError, RecursionError):
            raise ProtocolError("bad_json", "message is not valid JSON") from None
        if not isinstance(msg, dict):
            raise ProtocolError("bad_message", "message must be a JSON object")
        kind = msg.get("type")
        if not isinstance(kind, str):
            raise ProtocolError("bad_message", 'message needs a string "type"')
        return self._route(kind, msg)

    def _route(self, kind: str, msg: dict) -> list[Event]:
        """A valid JSON message to its handler (a socket with contexts routes by context)."""
        handler = self._HANDLERS.get(kind)
        if handler is None:
            raise ProtocolError("unknown_type", f"unknown message type {kind[:40]!r}; "
                                                f"the types are: {', '.join(self._HANDLERS)}")
        if msg.get("context_id") is not None:
            raise ProtocolError("bad_context", "this socket has no contexts: send `start` with "
                                               '"contexts": true (or name a context_id in the first message)')
        return handler(self, msg)

    def _on_start(self, msg: dict) -> list[Event]:
        if self.state is not State.NEW:
            raise ProtocolError("bad_message", "start must be the first message of a session")
        return [self._ready(parse_options(msg))]

    def _implicit_start(self) -> list[Event]:
        return [self._ready(Options())] if self.state is State.NEW else []

    def _ready(self, options: Options) -> StartEvent:
        self.options = options
        self.encoder = AudioEncoder(options.format, options.sample_rate)
        self.state = State.READY
        self._queue({"type": "ready", "session": self.id, "voice": options.voice, "format": options.format,
                     "sample_rate": options.sample_rate, "channels": 1, "speed": options.speed,
                     "seed": options.seed})
        return StartEvent(options)

    def _on_text(self, msg: dict) -> list[Event]:
        if self.state is State.ENDING:
            raise ProtocolError("text_after_end", "text after end is not spoken")
        text = check_text(msg.get("text"), self.limits.max_text_chars)
        if self.chars_received + len(text) > self.limits.max_session_chars:
            raise ProtocolError("text_too_long", f"the session's text would exceed {self.limits.max_session_chars} characters")
        fmt = _text_format(msg.get("text_format"), self.options.text_format if self.options else "text")
        size, text = len(text), parse_text(text, fmt)
        events = self._implicit_start()
        self.chars_received += size
        if self._ttfa_armed:
            self._ttfa_armed = False
            self._ttfa_start = self.clock()
        return events + [TextEvent(text, self.generation)]

    def _on_flush(self, msg: dict) -> list[Event]:
        if self.state is State.ENDING:
            raise ProtocolError("bad_message", "flush after end: the session is ending")
        return self._implicit_start() + [FlushEvent(self.generation)]

    def _on_cancel(self, msg: dict) -> list[Event]:
        events = self._implicit_start()
        heard = self.heard()
        self._next_utterance()
        self._queue({"type": "cancelled", **heard})
        return events + [CancelEvent(self.generation)]

    def _next_utterance(self) -> None:
        """Drop what is left of the current utterance; the next text starts a new one."""
        self.generation += 1
        self.utterance += 1
        # audio dropped from the outbox was never sent: positions count samples sent
        self._position -= self._drop_unsent() // self.encoder.sample_width
        self._ttfa_pending = False
        self._ttfa_start = None
        self._ttfa_armed = True
        self._segment_start = None
        self.encoder.reset()
        self.listener.reset()  # a barge-in stops the player: what it had is dropped
        self._utterance_sent = self.samples_sent
        self._sent_chars.clear()
        self._sent_segments.clear()

    def heard(self, now: Optional[float] = None) -> dict:
        """What the listener has heard of the current utterance, by the pacing model:
        ``audio_sent_ms`` handed to the socket, ``heard_ms`` played by now, ``heard_text`` the
        spoken characters whose audio ends by then, ``heard_segments`` the segments heard whole."""
        if self.encoder is None:
            return {"audio_sent_ms": 0.0, "heard_ms": 0.0, "heard_text": "", "heard_segments": 0}
        rate = self.options.sample_rate
        sent_ms = 1000.0 * (self.samples_sent - self._utterance_sent) / rate
        lead_ms = 1000.0 * self.listener.lead_s(self.clock() if now is None else now)
        heard_ms = max(0.0, sent_ms - lead_ms)
        until = 1000.0 * self._utterance_sent / rate + heard_ms + 0.05  # positions are rounded to 0.1 ms
        return {"audio_sent_ms": round(sent_ms, 1), "heard_ms": round(heard_ms, 1),
                "heard_text": "".join(c for c, end in self._sent_chars if end <= until),
                "heard_segments": sum(1 for end in self._sent_segments if end <= until)}

    def _on_end(self, msg: dict) -> list[Event]:
        if self.state is State.ENDING:
            raise ProtocolError("bad_message", "end was already received")
        events = self._implicit_start()
        self.state = State.ENDING
        return events + [EndEvent(self.generation)]

    _HANDLERS = {"start": _on_start, "text": _on_text, "flush": _on_flush, "cancel": _on_cancel, "end": _on_end}

    # ---- synthesis -> client ----------------------------------------------------------------

    def _current(self, generation: int) -> bool:
        return generation == self.generation and self.state in (State.READY, State.ENDING)

    def audio(self, generation: int, samples: np.ndarray, compute_s: float = 0.0) -> None:
        """Speech of the current chunk (float32 at 22050 Hz); ``compute_s`` the time it took."""
        self.compute_s += compute_s
        if not self._current(generation):
            return
        self.native_samples += len(samples)
        if self._segment_start is None:
            self._segment_start = self._position
        self._queue_audio(self.encoder.encode(samples))

    def segment(self, generation: int, seg: Segment, compute_s: float = 0.0) -> None:
        """The current chunk's audio is complete: flush the resampler, then its `segment`."""
        self.compute_s += compute_s
        if not self._current(generation):
            return
        self._queue_audio(self.encoder.encode(np.zeros(0, np.float32), last=True))
        rate = self.options.sample_rate
        start = self._position if self._segment_start is None else self._segment_start
        start_ms, end_ms = 1000.0 * start / rate, 1000.0 * self._position / rate
        chars = [{"char": c, "start_ms": round(min(start_ms + s, end_ms), 1),
                  "end_ms": round(min(start_ms + e, end_ms), 1)} for c, s, e in seg.chars]
        self._queue({"type": "segment", "index": self.segments_sent, "text": seg.text,
                     "normalized": seg.normalized, "audio_start_ms": round(start_ms, 1),
                     "audio_end_ms": round(end_ms, 1), "chars": chars})
        self.segments_sent += 1
        self._segment_start = None

    def pause(self, generation: int, n_samples: int) -> None:
        """Silence between chunks (``n_samples`` at 22050 Hz)."""
        if self._current(generation) and n_samples > 0:
            self.native_samples += n_samples
            self._queue_audio(self.encoder.silence(n_samples))

    def finished(self, generation: int) -> None:
        """Everything up to `end` was spoken: queue `done` and close."""
        if self.state is not State.ENDING or generation != self.generation:
            return
        self._queue_audio(self.encoder.encode(np.zeros(0, np.float32), last=True))
        self._outbox.append(_DONE)  # filled in when sent: ttfa is known once the audio has gone
        self.outbox_bytes += _json_size(_DONE)
        self.state = State.CLOSED
        self.close_code = 1000

    # ---- outbox -----------------------------------------------------------------------------

    def next_to_send(self) -> Optional[Outgoing]:
        """The next message to send (dict: JSON text frame; bytes: binary frame), or None: nothing
        queued."""
        if not self._outbox:
            return None
        item = self._outbox.popleft()
        self.outbox_bytes -= len(item) if isinstance(item, bytes) else _json_size(item)
        if item is _DONE:
            seconds = self.native_samples / NATIVE_RATE
            return {"type": "done", "ttfa_ms": None if self.ttfa_s is None else round(1000.0 * self.ttfa_s, 1),
                    "audio_ms": round(1000.0 * self._position / self.options.sample_rate, 1),
                    "rtf": round(self.compute_s / seconds, 4) if seconds else None, "segments": self.segments_sent,
                    **self.heard()}
        if isinstance(item, dict) and item.get("type") == "segment":
            self._sent_segments.append(item["audio_end_ms"])
            self._sent_chars.extend((c["char"], c["end_ms"]) for c in item["chars"])
        if isinstance(item, bytes):
            self.buffered_bytes -= len(item)
            n = len(item) // self.encoder.sample_width
            self.samples_sent += n
            self.listener.sent(n / self.options.sample_rate, self.clock())
            if self._ttfa_pending:
                ttfa = self.clock() - self._ttfa_start
                self.ttfa_observed.append(ttfa)
                if self.ttfa_s is None:
                    self.ttfa_s = ttfa
                self._ttfa_pending = False
                self._ttfa_start = None
        return item

    @property
    def has_outgoing(self) -> bool:
        return bool(self._outbox)

    def _seconds(self, n_bytes: int) -> float:
        return n_bytes / (self.encoder.sample_width * self.options.sample_rate)

    @property
    def buffered_seconds(self) -> float:
        """Seconds of audio queued and not yet handed to the socket (for backpressure)."""
        if self.encoder is None:
            return 0.0
        return self._seconds(self.buffered_bytes)

    def _queue(self, msg: dict) -> None:
        self._outbox.append(msg)
        self.outbox_bytes += _json_size(msg)
        self._check_outbox()

    def _check_outbox(self) -> None:
        """A client that does not read while it sends (say, errors) must not grow the server."""
        if self.outbox_bytes <= self.limits.max_outbox_bytes or self.state is State.CLOSED:
            return
        self._outbox.clear()
        self.outbox_bytes = self.buffered_bytes = 0
        self.state = State.CLOSED
        self.close_code = close_code("outbox_full")
        self.fatal_code = "outbox_full"
        self._queue(error_message("outbox_full", f"more than {self.limits.max_outbox_bytes} bytes are waiting "
                                                 "for this client, which does not read; closing", fatal=True))

    def _queue_audio(self, data: bytes) -> None:
        if not data:
            return
        if self._ttfa_start is not None and not self._ttfa_pending:
            self._ttfa_pending = True
        self._position += len(data) // self.encoder.sample_width
        self.buffered_bytes += len(data)
        self.outbox_bytes += len(data)
        # frames of at most FRAME_S: pacing then keeps its lead to the frame, and a whole cached
        # sentence (seconds of audio at once) reaches the client as a stream, not one block
        step = max(1, int(FRAME_S * self.options.sample_rate)) * self.encoder.sample_width
        for i in range(0, len(data), step):
            self._outbox.append(data[i:i + step])
        self._check_outbox()

    def _error(self, code: str, message: str, fatal: bool = False, context: object = NO_CONTEXT) -> None:
        msg = error_message(code, message, fatal)
        if context is not NO_CONTEXT:
            msg["context_id"] = context
        self._queue(msg)
        if fatal:
            self.fatal_code = code
            self.state = State.CLOSED
            self.close_code = close_code(code)


def _json_size(msg) -> int:
    """Bytes a queued JSON message takes on the wire (`done` is filled in when sent: its bound)."""
    if msg is _DONE:
        return 128
    return len(json.dumps(msg, ensure_ascii=False).encode("utf-8", "surrogatepass"))
