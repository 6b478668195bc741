"""``stream_format: "sse"`` of ``POST /v1/audio/speech``: OpenAI's server-sent speech events.

    body = delta_event(encoded_bytes)          # b'data: {"type":"speech.audio.delta","audio":"..."}\\n\\n'
    body = done_event(usage(text, instr, secs))  # b'data: {"type":"speech.audio.done","usage":{...}}\\n\\n'

A delta's ``audio`` is base64 of the next bytes of the ``response_format`` stream (as OpenAI
sends them, and as LiveKit's OpenAI plugin decodes them: its mp3 default is decoded as mp3), so
the deltas joined are the same bytes ``stream_format: "audio"`` would send.

Usage is counted the way this server can count honestly, as OpenAI's fields name it:
``input_tokens`` is the number of characters of ``input`` plus ``instructions`` (one token per
character: a Chinese character is about one token), ``output_tokens`` one per 50 ms of audio
sent (a fixed rate of this server's choosing; there are no audio tokens here), ``total_tokens``
their sum. Clients use it for accounting only (LiveKit's plugin reports it as token usage).
"""

from __future__ import annotations

import base64
import json

CONTENT_TYPE = "text/event-stream"
AUDIO_TOKENS_PER_S = 20


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def delta_event(audio: bytes) -> bytes:
    return _event({"type": "speech.audio.delta", "audio": base64.b64encode(audio).decode("ascii")})


def usage(text: str, instructions: str, audio_s: float) -> dict:
    inp, out = len(text) + len(instructions), round(audio_s * AUDIO_TOKENS_PER_S)
    return {"input_tokens": inp, "output_tokens": out, "total_tokens": inp + out}


def done_event(usage: dict) -> bytes:
    return _event({"type": "speech.audio.done", "usage": usage})
