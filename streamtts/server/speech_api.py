"""OpenAI-compatible ``POST /v1/audio/speech``, streamed as it is synthesized (chunked transfer).

Works with the ``openai`` package::

    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY or anything")
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input="你好。", response_format="pcm") as response:
        for data in response.iter_bytes():      # 24 kHz s16le mono
            ...
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
import time

import numpy as np
from aiohttp import web

from streamtts.constants import DEFAULT_SEED, MAX_SPEED, MIN_SPEED
from streamtts.errors import StreamTTSError
from streamtts.protocol import AudioEncoder, ProtocolError, check_text
from streamtts.constants import NATIVE_RATE
from streamtts.core.outputs import AudioOut, FinishedOut, PauseOut, SegmentOut
from streamtts.core.request import CLOSE, END, TEXT, Request
from streamtts.server.state import STATE, admission_metrics, engine_unavailable, openai_error
from streamtts.voices import resolve_voice

OUTPUT_RATE = 24000  # OpenAI's pcm and wav are 24 kHz 16-bit mono
# OpenAI's stock voice names -> ours (any of ours is accepted as is, too).
OPENAI_VOICES = {
    "alloy": "biaobei", "ash": "Aicheng", "ballad": "Aida", "coral": "Aiqi", "echo": "Xiaogang",
    "fable": "Aiyu", "onyx": "Aida", "nova": "Aijia", "sage": "Siyue", "shimmer": "Xiaoyun",
    "verse": "Aicheng", "marin": "Aiyue", "cedar": "Xiaogang",
}
FORMATS = {"pcm": "audio/pcm", "wav": "audio/wav"}
UNSUPPORTED_FORMATS = ("mp3", "opus", "aac", "flac")
_EMPTY = np.zeros(0, np.float32)


def wav_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header for a stream of unknown length: the sizes are 0xFFFFFFFF."""
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16) +
            b"data" + struct.pack("<I", 0xFFFFFFFF))


def resolve_openai_voice(voice) -> str:
    if isinstance(voice, dict):  # OpenAI's custom voice object {"id": ...}
        voice = voice.get("id")
    if voice is None:
        return resolve_voice(None)
    if not isinstance(voice, str):
        raise ProtocolError("bad_message", "voice must be a string or {\"id\": ...}")
    mapped = OPENAI_VOICES.get(voice.strip().lower(), voice)
    try:
        return resolve_voice(mapped)
    except StreamTTSError as exc:
        raise ProtocolError(exc.code, exc.message + f"; or one of OpenAI's: {', '.join(OPENAI_VOICES)}") from None


def parse_request(body, max_chars: int) -> tuple[str, str, str, float]:
    """(text, voice, format, speed) of a request body; raises ProtocolError."""
    if not isinstance(body, dict):
        raise ProtocolError("bad_message", "the body must be a JSON object")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ProtocolError("bad_message", "model must be a string")
    if "input" not in body:
        raise ProtocolError("bad_message", "input is required")
    text = check_text(body["input"], max_chars)
    voice = resolve_openai_voice(body.get("voice"))
    fmt = body.get("response_format") or "wav"
    if fmt in UNSUPPORTED_FORMATS:
        raise ProtocolError("unknown_format", f"response_format {fmt!r} is not supported by this server; "
                                              "use \"pcm\" (24 kHz s16le) or \"wav\"")
    if fmt not in FORMATS:
        raise ProtocolError("unknown_format", f"unknown response_format {fmt!r}; use \"pcm\" or \"wav\"")
    speed = body.get("speed", 1.0)
    if speed is None:
        speed = 1.0
    if (isinstance(speed, bool) or not isinstance(speed, (int, float)) or not math.isfinite(speed)
            or not MIN_SPEED <= speed <= MAX_SPEED):
        raise ProtocolError("bad_speed", f"speed must be a number within {MIN_SPEED}-{MAX_SPEED} on this server "
                                         f"(OpenAI allows 0.25-4.0), got {speed!r}")
    if body.get("stream_format", "audio") != "audio":
        raise ProtocolError("unknown_format", "only stream_format \"audio\" is supported")
    return text, voice, fmt, float(speed)


async def speech_handler(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    guard, metrics = state.guard, state.metrics
    if not guard.authorized(request):
        return openai_error(401, "unauthorized", "missing or wrong API key (Authorization: Bearer KEY)", metrics)
    if not guard.admit_request(request):
        return openai_error(429, "rate_limited", "too many requests for this key; try again shortly", metrics)
    try:
        body = json.loads(await request.read())
    except web.HTTPRequestEntityTooLarge:
        return openai_error(413, "message_too_large", f"the body is larger than {request.client_max_size} bytes",
                            metrics)
    except (ValueError, RecursionError):
        return openai_error(400, "bad_json", "the body is not valid JSON", metrics)
    try:
        text, voice, fmt, speed = parse_request(body, state.config.max_input_chars)
    except ProtocolError as exc:
        return openai_error(400, exc.code, exc.message, metrics)
    if state.worker.failure is not None:
        return openai_error(503, "engine_unavailable", engine_unavailable(state), metrics)
    with guard.session() as admitted:
        if not admitted:
            return openai_error(503, "too_many_sessions", f"the server is at its limit of "
                                f"{state.config.max_sessions} sessions; try again later", metrics)
        admission = state.admission
        if not admission.try_acquire():
            metrics.refused.labels(api="http").inc()
            return openai_error(503, "server_busy", f"the server is at its capacity of {admission.capacity} "
                                "streams; try again shortly", metrics,
                                headers={"Retry-After": str(admission.retry_after_s())})
        admission_metrics(state)
        try:
            return await _stream(request, state, text, voice, fmt, speed)
        finally:
            admission.release()
            admission_metrics(state)


async def _stream(request, state, text: str, voice: str, fmt: str, speed: float) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    outputs: asyncio.Queue = asyncio.Queue()
    job = Request(voice, DEFAULT_SEED, speed, sink=lambda out: loop.call_soon_threadsafe(outputs.put_nowait, out),
              api="http")
    sched, metrics = state.scheduler, state.metrics
    t0 = time.monotonic()
    sched.add_request(job)
    sched.command(job, TEXT, 0, text)
    sched.command(job, END, 0)
    metrics.requests.labels(api="http").inc()
    gauge = metrics.active_sessions.labels(api="http")
    gauge.inc()
    response = web.StreamResponse(headers={"Content-Type": FORMATS[fmt], "Cache-Control": "no-store"})
    response.enable_chunked_encoding()
    encoder = AudioEncoder("pcm_s16le", OUTPUT_RATE)
    first = True
    try:
        await response.prepare(request)
        if fmt == "wav":
            await response.write(wav_header(OUTPUT_RATE))
        while True:
            out = await outputs.get()
            seconds = 0.0
            if isinstance(out, AudioOut):
                data, seconds = encoder.encode(out.audio), len(out.audio) / NATIVE_RATE
            elif isinstance(out, PauseOut):
                data, seconds = encoder.silence(out.samples), out.samples / NATIVE_RATE
            elif isinstance(out, (SegmentOut, FinishedOut)):
                data = encoder.encode(_EMPTY, last=True)
            else:  # FailedOut after the headers went out: break the stream so the client sees it
                metrics.errors.labels(code=out.code).inc()
                raise ConnectionAbortedError(out.message)
            if data:
                await response.write(data)
                if first:
                    metrics.ttfa.labels(api="http").observe(time.monotonic() - t0)
                    first = False
            if seconds:
                job.delivered(seconds)
                sched.flow(job)
            if isinstance(out, FinishedOut):
                break
        await response.write_eof()
        return response
    finally:
        sched.command(job, CLOSE)  # a client that went away frees its work at once
        gauge.dec()
