"""The WebSocket protocol's messages (docs/protocol.md): options of ``start``, text checks, limits,
the events a session hands to the server, and the error message shape. Pure, no I/O::

    options = parse_options({"type": "start", "voice": "Aiyue"})   # ProtocolError on bad input
    text = check_text(msg["text"], limits.max_text_chars)
"""

from __future__ import annotations

import enum
import math
import time
import unicodedata
from dataclasses import dataclass
from typing import Callable, Union

from streamtts.audio.codec import FORMATS, NATIVE_RATE, SAMPLE_RATES
from streamtts.constants import DEFAULT_SEED, MAX_SPEED, MIN_SPEED
from streamtts.engine_client.stream import FRAME_S  # noqa: F401  (the one piece size, re-exported)
from streamtts.errors import ERRORS, StreamTTSError, error_message  # noqa: F401  (error_message re-exported)
from streamtts.voices import resolve_voice

# WebSocket close code per error code (RFC 6455 section 7.4.1), from the error table
# (streamtts/errors.py: close_code(code) gives the default for the others).
CLOSE_CODES = {code: spec.close for code, spec in ERRORS.items() if spec.close is not None}
MAX_SEED = 2**31 - 1
_DONE = object()  # outbox placeholder of the `done` message
NO_CONTEXT = object()  # an error that concerns no context (None is the default context's id)


class State(enum.Enum):
    NEW = "new"  # nothing received yet (or only rejected `start`s)
    READY = "ready"  # options fixed, `ready` sent; text may come
    ENDING = "ending"  # `end` received: speaking what is left, then `done`
    CLOSED = "closed"  # `done` or a fatal error sent; the socket should close


class ProtocolError(Exception):
    """A client mistake with its error code (see docs/protocol.md)."""

    def __init__(self, code: str, message: str, fatal: bool = False, context: object = NO_CONTEXT):
        super().__init__(message)
        self.code, self.message, self.fatal = code, message, fatal
        self.context = context  # the context_id the message named (its error says it), or NO_CONTEXT

    @classmethod
    def from_error(cls, exc: StreamTTSError) -> "ProtocolError":
        """A typed error of the input (an unknown voice, bad SSML...) as the client's mistake it
        is: same code, same message. ``raise ProtocolError.from_error(exc) from None``."""
        return cls(exc.code, exc.message)


@dataclass(frozen=True)
class Options:
    voice: str = "biaobei"
    format: str = "pcm_s16le"
    sample_rate: int = NATIVE_RATE
    speed: float = 1.0
    seed: int = DEFAULT_SEED
    text_format: str = "text"  # of `text` messages that give none: "text" or "ssml" (one <speak> document each)


TEXT_FORMATS = ("text", "ssml")


@dataclass(frozen=True)
class Limits:
    max_message_bytes: int = 64 * 1024  # one client message (larger: message_too_large, session goes on)
    max_text_chars: int = 4096  # `text` of one message
    max_session_chars: int = 100_000  # all `text` of one session
    rate: float = 60.0  # client messages per second, sustained (token bucket) ...
    burst: float = 120.0  # ... and in a burst
    # Bytes (audio and JSON) queued for a client that does not read: past this the session is
    # closed (`outbox_full`). Audio alone stays far below it (flow control pauses synthesis at
    # max_buffered_s), so only a client that sends and never reads reaches it.
    max_outbox_bytes: int = 2 * 1024 * 1024
    max_error_streak: int = 100  # client messages in a row answered with an error: then closed
    max_contexts: int = 5  # live contexts on one socket (docs/protocol.md "Contexts")
    context_idle_s: float = 20.0  # a context with no message and nothing in flight this long is closed


@dataclass(frozen=True)
class StartEvent:
    options: Options


@dataclass(frozen=True)
class TextEvent:
    text: str
    generation: int


@dataclass(frozen=True)
class FlushEvent:
    generation: int


@dataclass(frozen=True)
class CancelEvent:
    generation: int  # the new generation: results of older ones are dropped


@dataclass(frozen=True)
class EndEvent:
    generation: int


Event = Union[StartEvent, TextEvent, FlushEvent, CancelEvent, EndEvent]
Outgoing = Union[dict, bytes]


class TokenBucket:
    """``take()`` is True while the rate allows: ``rate`` per second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic):
        self.rate, self.burst, self.clock = float(rate), float(burst), clock
        self.tokens, self.stamp = float(burst), clock()

    def take(self, n: float = 1.0) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= n:
            self.tokens -= n
            return True
        return False


def _number(value, what: str, code: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ProtocolError(code, f"{what} must be a finite number, got {value!r}")
    return float(value)


def parse_options(msg: dict) -> Options:
    """Options of a `start` message (all fields optional; unknown fields ignored)."""
    voice = msg.get("voice")
    if "voice" in msg and not isinstance(voice, (str, dict)):  # dict: a blend {"Aiyue": 0.7, ...}; null is a wrong type too
        raise ProtocolError("bad_message", "voice must be a string or an object {voice: weight}")
    try:
        voice = resolve_voice(voice)
    except StreamTTSError as exc:
        raise ProtocolError.from_error(exc) from None
    fmt = msg.get("format", "pcm_s16le")
    if not isinstance(fmt, str) or fmt not in FORMATS:  # a list or object is unhashable: test the type first
        raise ProtocolError("unknown_format", f"unknown format {fmt!r:.60}; the formats are: {', '.join(FORMATS)}")
    rate = msg.get("sample_rate")
    if rate is None:
        rate = 8000 if fmt == "mulaw" else NATIVE_RATE
    elif isinstance(rate, bool) or not isinstance(rate, (int, float)) or rate not in SAMPLE_RATES:
        raise ProtocolError("unsupported_sample_rate",
                            f"unsupported sample_rate {rate!r}; use one of {', '.join(map(str, SAMPLE_RATES))}")
    speed = _number(msg.get("speed", 1.0), "speed", "bad_speed")
    if not MIN_SPEED <= speed <= MAX_SPEED:
        raise ProtocolError("bad_speed", f"speed must be within {MIN_SPEED}-{MAX_SPEED}, got {speed}")
    seed = msg.get("seed", DEFAULT_SEED)
    if seed is None:
        seed = DEFAULT_SEED
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ProtocolError("bad_message", f"seed must be an integer 0-{MAX_SEED}, got {seed!r}")
    return Options(voice, fmt, int(rate), speed, seed, _text_format(msg.get("text_format"), "text"))


def _text_format(value, default: str) -> str:
    if value is None:
        return default
    if value not in TEXT_FORMATS:
        raise ProtocolError("bad_message", f"text_format must be one of {', '.join(TEXT_FORMATS)}, got {value!r}")
    return value


def parse_text(text: str, text_format: str) -> str:
    """The text of a message as the request's chunker takes it: ``text`` itself, or for "ssml" the
    parsed document (``streamtts.text.ssml.SsmlDocument``, a str); ProtocolError ``invalid_ssml``."""
    if text_format != "ssml":
        return text
    from streamtts.text.ssml import parse_ssml  # the frontend's; loaded only when SSML comes

    try:
        doc = parse_ssml(text)
    except StreamTTSError as exc:
        raise ProtocolError.from_error(exc) from None
    if not any(_can_speak(ch) and not ch.isspace() for ch in doc):
        raise ProtocolError("no_speakable_text", "nothing speakable in the SSML document")
    return doc


def _dropped(ch: str) -> bool:
    # Control characters would reach the normalizer as garbage; newlines and tabs are spacing.
    return unicodedata.category(ch) == "Cc" and ch not in "\t\n\r"


def _can_speak(ch: str) -> bool:
    # Letters, digits, punctuation and spaces shape speech (punctuation ends sentences, spaces
    # separate Latin words); emoji, symbols and format characters do not.
    return ch.isalnum() or ch.isspace() or unicodedata.category(ch)[0] == "P"


def check_text(text, max_chars: int) -> str:
    """The text of a `text` message (or an HTTP `input`), cleaned; raises ProtocolError."""
    if not isinstance(text, str):
        raise ProtocolError("bad_message", "text must be a string")
    if not text:
        raise ProtocolError("empty_text", "text is empty")
    if len(text) > max_chars:
        raise ProtocolError("text_too_long", f"text has {len(text)} characters; at most {max_chars} per message")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProtocolError("bad_utf8", "text is not valid Unicode (lone surrogate)") from None
    if any(_dropped(ch) for ch in text):
        text = "".join(ch for ch in text if not _dropped(ch))
    if not any(_can_speak(ch) for ch in text):
        raise ProtocolError("no_speakable_text", "nothing speakable in text (only emoji, symbols or control characters)")
    return text
