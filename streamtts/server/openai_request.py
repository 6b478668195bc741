"""The body of ``POST /v1/audio/speech`` (OpenAI's create-speech request), checked.

    sp = parse_request(json.loads(body), max_chars=4096)   # raises BadRequest(code, message, param)
    sp.text, sp.voice, sp.format, sp.stream_format, sp.speed, sp.instructions, sp.model

Fields (OpenAI's names and defaults; unknown fields are ignored, as OpenAI-compatible servers do):

* ``input`` (required): 1..max_chars characters with something speakable; one that begins
  with ``<speak`` (or ``<?xml``) is an SSML document (``invalid_ssml`` when malformed).
* ``voice``: a name (ours, a blend ``"Aiyue:0.7,biaobei:0.3"``, or one of OpenAI's, mapped by
  ``OPENAI_VOICES``) or ``{"id": name}``; absent: the default voice. ``null`` or another type
  is ``bad_voice``; an unknown name is ``unknown_voice``.
* ``model``: any string (there is one engine); another type is ``bad_message``.
* ``response_format``: mp3 (default) | opus | aac | flac | wav | pcm, else ``unknown_format``.
* ``stream_format``: audio (default) | sse, else ``unknown_stream_format``.
* ``speed``: 0.5..2.0 on this server (OpenAI allows 0.25..4.0), else ``bad_speed``.
* ``instructions``: a string of at most max_chars characters, else ``bad_instructions``. It is
  accepted and counted in the SSE usage, and does not change the speech: the voices have one
  speaking style each (use ``speed`` for the rate).
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass

from streamtts.constants import MAX_SPEED, MIN_SPEED
from streamtts.errors import StreamTTSError
from streamtts.protocol import ProtocolError, check_text, parse_text
from streamtts.audio.encoders import FORMATS
from streamtts.voices import resolve_voice

# OpenAI's stock voice names -> ours (any of ours is accepted as is, too).
OPENAI_VOICES = {
    "alloy": "biaobei", "ash": "Aicheng", "ballad": "Aida", "coral": "Aiqi", "echo": "Xiaogang",
    "fable": "Aiyu", "onyx": "Aida", "nova": "Aijia", "sage": "Siyue", "shimmer": "Xiaoyun",
    "verse": "Aicheng", "marin": "Aiyue", "cedar": "Xiaogang",
}
DEFAULT_FORMAT = "mp3"  # OpenAI's default
STREAM_FORMATS = ("audio", "sse")

# A client's own request id is echoed when it is a plain token (what the openai SDK and LiveKit's
# plugin read back is the response's x-request-id); anything else gets a fresh id.
REQUEST_ID_HEADERS = ("x-request-id", "x-client-request-id")
_SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,127}")


class BadRequest(Exception):
    """A 400 with OpenAI's error fields."""

    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.code, self.message, self.param = code, message, param


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    voice: str  # resolved: one of ours, or a blend resolve_voice accepted
    format: str = DEFAULT_FORMAT
    stream_format: str = "audio"
    speed: float = 1.0
    instructions: str = ""
    model: str = ""


def request_id(headers) -> str:
    """The response's ``x-request-id``: the client's own (``x-request-id`` or
    ``x-client-request-id``) when it is a token of at most 128 characters, else a fresh one."""
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value and _SANE_ID.fullmatch(value):
            return value
    return "req_" + uuid.uuid4().hex


def resolve_openai_voice(voice) -> str:
    if isinstance(voice, dict):  # OpenAI's custom voice object {"id": ...}
        voice = voice.get("id")
        if not isinstance(voice, str):
            raise BadRequest("bad_voice", "voice {\"id\": ...} needs a string id", "voice")
    if not isinstance(voice, str):
        raise BadRequest("bad_voice", f"voice must be a string or {{\"id\": ...}}, got {_kind(voice)}", "voice")
    mapped = OPENAI_VOICES.get(voice.strip().lower(), voice)
    try:
        return resolve_voice(mapped)
    except StreamTTSError as exc:
        raise BadRequest(exc.code, exc.message + f"; or one of OpenAI's: {', '.join(OPENAI_VOICES)}",
                         "voice") from None


def parse_request(body, max_chars: int) -> SpeechRequest:
    """The checked request of a decoded JSON body; raises BadRequest."""
    if not isinstance(body, dict):
        raise BadRequest("bad_message", "the body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("bad_message", "model must be a string", "model")
    if "input" not in body:
        raise BadRequest("bad_message", "input is required", "input")
    try:
        text = check_text(body["input"], max_chars)
        # an input that is a <speak> document is SSML (parsed now: invalid_ssml is a 400)
        text = parse_text(text, "ssml" if text.lstrip().startswith(("<speak", "<?xml")) else "text")
    except ProtocolError as exc:
        raise BadRequest(exc.code, exc.message.replace("text", "input", 1), "input") from None
    voice = resolve_openai_voice(body["voice"]) if "voice" in body else resolve_voice(None)
    fmt = body.get("response_format")
    fmt = DEFAULT_FORMAT if fmt is None else fmt
    if not isinstance(fmt, str) or fmt not in FORMATS:
        raise BadRequest("unknown_format", f"unknown response_format {fmt!r}; use one of "
                                           f"{', '.join(FORMATS)}", "response_format")
    stream_format = body.get("stream_format")
    stream_format = "audio" if stream_format is None else stream_format
    if not isinstance(stream_format, str) or stream_format not in STREAM_FORMATS:
        raise BadRequest("unknown_stream_format", f"unknown stream_format {stream_format!r}; use \"audio\" "
                                                  "or \"sse\"", "stream_format")
    speed = body.get("speed")
    speed = 1.0 if speed is None else speed
    if (isinstance(speed, bool) or not isinstance(speed, (int, float)) or not math.isfinite(speed)
            or not MIN_SPEED <= speed <= MAX_SPEED):
        raise BadRequest("bad_speed", f"speed must be a number within {MIN_SPEED}-{MAX_SPEED} on this server "
                                      f"(OpenAI allows 0.25-4.0), got {speed!r}", "speed")
    instructions = body.get("instructions")
    instructions = "" if instructions is None else instructions
    if not isinstance(instructions, str) or len(instructions) > max_chars:
        got = f"{len(instructions)} characters" if isinstance(instructions, str) else _kind(instructions)
        raise BadRequest("bad_instructions", f"instructions must be a string of at most {max_chars} "
                                             f"characters, got {got}", "instructions")
    return SpeechRequest(text, voice, fmt, stream_format, float(speed), instructions, model or "")


def _kind(value) -> str:
    return "null" if value is None else type(value).__name__
