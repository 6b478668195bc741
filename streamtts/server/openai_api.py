"""OpenAI-compatible ``POST /v1/audio/speech``, streamed as it is synthesized (chunked transfer).

Works with the ``openai`` package::

    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="KEY or anything")
    with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input="你好。") as response:   # mp3, 24 kHz mono
        for data in response.iter_bytes():
            ...

The body is checked by :mod:`streamtts.server.openai_request`, encoded by
:mod:`streamtts.audio.encoders` (``stream_format: "sse"`` wraps it in :mod:`streamtts.server.sse`
events). Every response of the endpoint, errors too, carries ``x-request-id``.

Pacing: a stream is kept at most ``max_lead_s`` of audio ahead of its listener's real-time clock
(:class:`streamtts.core.pacing.Pacer`), the socket's send buffers are capped, and the request is
told its audio was delivered only once it is written, so the scheduler's flow control (pause at
``max_buffered_s`` undelivered) bounds the audio waiting in this handler's queue.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time

import numpy as np
from aiohttp import web

from streamtts.constants import DEFAULT_SEED, NATIVE_RATE
from streamtts.core.outputs import AudioOut, FinishedOut, PauseOut, SegmentOut
from streamtts.audio.pacing import Pacer
from streamtts.core.request import CLOSE, END, TEXT, Request
from streamtts.protocol import AudioEncoder
from streamtts.server import sse
from streamtts.audio.encoders import SAMPLE_RATE, StreamEncoder
from streamtts.server.openai_request import OPENAI_VOICES, BadRequest, SpeechRequest, parse_request, request_id
from streamtts.server.state import STATE, admission_metrics, engine_unavailable

__all__ = ["speech_handler", "OPENAI_VOICES", "SEND_BUFFER_S", "WRITE_BUFFER_S", "PIECE_S"]

log = logging.getLogger(__name__)

# The kernel's send buffer of a speech response, in seconds of its format (Linux doubles the
# value for its bookkeeping). Uncapped it grows to megabytes: a client that stops reading got
# all 26 s of a test text into the socket buffers, pcm or mp3, and the engine ran to the end.
# One second keeps real-time throughput up to about a second of round-trip time.
SEND_BUFFER_S, MIN_SEND_BUFFER = 1.0, 8 * 1024
# What the event loop's transport may hold unsent before the next write waits for the socket.
WRITE_BUFFER_S, MIN_WRITE_BUFFER = 0.25, 4 * 1024
PIECE_S = 0.2  # audio is paced and written in pieces of at most this
_POLL_S = 0.1  # how often a paced or blocked stream looks whether its client went away
_EMPTY = np.zeros(0, np.float32)


def _error(status: int, code: str, message: str, metrics, param=None, headers=None) -> web.Response:
    """OpenAI's error shape {"error": {"message", "type", "param", "code"}}."""
    metrics.errors.labels(code=code).inc()
    kind = "invalid_request_error" if status < 500 else "server_error"
    return web.json_response({"error": {"message": message, "type": kind, "param": param, "code": code}},
                             status=status, headers=headers)


async def speech_handler(request: web.Request) -> web.StreamResponse:
    rid = request_id(request.headers)
    response = await _handle(request, rid)
    if not response.prepared:  # a streamed response sent its x-request-id with its headers
        response.headers["x-request-id"] = rid
    return response


async def _handle(request: web.Request, rid: str) -> web.StreamResponse:
    state = request.app[STATE]
    guard, metrics = state.guard, state.metrics
    if not guard.authorized(request):
        return _error(401, "unauthorized", "missing or wrong API key (Authorization: Bearer KEY)", metrics)
    if not guard.admit_request(request):
        return _error(429, "rate_limited", "too many requests for this key; try again shortly", metrics)
    try:
        body = json.loads(await request.read())
    except web.HTTPRequestEntityTooLarge:
        return _error(413, "message_too_large", f"the body is larger than {request.client_max_size} bytes", metrics)
    except (ValueError, RecursionError):
        return _error(400, "bad_json", "the body is not valid JSON", metrics)
    try:
        sp = parse_request(body, state.config.max_input_chars)
    except BadRequest as exc:
        return _error(400, exc.code, exc.message, metrics, exc.param)
    if state.worker.failure is not None:
        return _error(503, "engine_unavailable", engine_unavailable(state), metrics)
    with guard.session() as admitted:
        if not admitted:
            return _error(503, "too_many_sessions", f"the server is at its limit of "
                          f"{state.config.max_sessions} sessions; try again later", metrics)
        admission = state.admission
        if not admission.try_acquire():
            metrics.refused.labels(api="http").inc()
            return _error(503, "server_busy", f"the server is at its capacity of {admission.capacity} "
                          "streams; try again shortly", metrics,
                          headers={"Retry-After": str(admission.retry_after_s())})
        admission_metrics(state)
        try:
            return await _stream(request, state, sp, rid)
        finally:
            admission.release()
            admission_metrics(state)


def speak_input(sched, job: Request, text: str) -> None:
    """Where ``input`` becomes the request's commands: all of it as one text, then the end."""
    sched.command(job, TEXT, 0, text)
    sched.command(job, END, 0)


class _Body:
    """Writes of one response: SSE framing, the write-buffer cap, a client that went away."""

    def __init__(self, request: web.Request, response: web.StreamResponse, events: bool, bytes_per_s: int):
        self.request, self.response, self.events = request, response, events
        bytes_per_s = bytes_per_s * 4 // 3 if events else bytes_per_s  # base64
        self.send_buffer = max(MIN_SEND_BUFFER, int(SEND_BUFFER_S * bytes_per_s))
        self.write_buffer = max(MIN_WRITE_BUFFER, int(WRITE_BUFFER_S * bytes_per_s))

    def gone(self) -> bool:
        transport = self.request.transport
        return transport is None or transport.is_closing()

    def cap_send_buffer(self) -> None:
        transport = self.request.transport
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
            except OSError:  # not a socket that takes it (a pipe in a test): only less bounded
                pass

    async def send(self, data: bytes) -> None:
        if not data:
            return
        if self.gone():
            raise ConnectionResetError("the client went away")
        await self.response.write(sse.delta_event(data) if self.events else data)
        # aiohttp waits for the socket only every 64 KiB written (8 s of mp3): wait here instead,
        # so what is counted as delivered has left this process
        wait = 0.01
        transport = self.request.transport
        while transport is not None and transport.get_write_buffer_size() > self.write_buffer:
            if self.gone():
                raise ConnectionResetError("the client went away")
            await asyncio.sleep(wait)
            wait = min(2 * wait, _POLL_S)

    async def pace(self, pacer: Pacer) -> None:
        """Wait until the listener's clock lets more audio go (or the client went away)."""
        while (wait := pacer.wait_s(time.monotonic())) > 0:
            if self.gone():
                raise ConnectionResetError("the client went away")
            await asyncio.sleep(min(wait, _POLL_S))


def _pieces(out, pcm: AudioEncoder):
    """(24 kHz s16le bytes, seconds) of an AudioOut or PauseOut, in pieces of at most PIECE_S:
    a cached sentence comes as one long array, and pacing needs finer steps than that."""
    n = len(out.audio) if isinstance(out, AudioOut) else out.samples
    step = int(PIECE_S * NATIVE_RATE)
    for i in range(0, n, step):
        k = min(step, n - i)
        data = pcm.encode(out.audio[i:i + k]) if isinstance(out, AudioOut) else pcm.silence(k)
        yield data, k / NATIVE_RATE


async def _stream(request: web.Request, state, sp: SpeechRequest, rid: str) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    # Not bounded by size but by flow control: the scheduler pauses this request once
    # max_buffered_s of its audio is posted and not yet written (delivered() runs after the write).
    outputs: asyncio.Queue = asyncio.Queue()
    job = Request(sp.voice, DEFAULT_SEED, sp.speed, sink=lambda out: loop.call_soon_threadsafe(outputs.put_nowait, out),
                  api="http")
    sched, metrics = state.scheduler, state.metrics
    t0 = time.monotonic()
    sched.add_request(job)
    speak_input(sched, job, sp.text)
    metrics.requests.labels(api="http").inc()
    gauge = metrics.active_sessions.labels(api="http")
    gauge.inc()
    encoder = StreamEncoder(sp.format)
    headers = {"Content-Type": sse.CONTENT_TYPE if sp.stream_format == "sse" else encoder.content_type,
               "Cache-Control": "no-store", "x-request-id": rid}
    origin = state.guard.cors_origin(request)
    if origin is not None:  # the CORS middleware runs after the handler, too late for a stream
        headers.update({"Access-Control-Allow-Origin": origin, "Vary": "Origin",
                        "Access-Control-Expose-Headers": "x-request-id"})
    response = web.StreamResponse(headers=headers)
    response.enable_chunked_encoding()
    body = _Body(request, response, sp.stream_format == "sse", encoder.spec.bytes_per_s)
    pcm = AudioEncoder("pcm_s16le", SAMPLE_RATE)  # 22.05 kHz float -> 24 kHz s16le (soxr)
    pacer = Pacer(state.config.max_lead_s)
    audio_s, first = 0.0, True
    try:
        await response.prepare(request)
        body.cap_send_buffer()
        await body.send(encoder.start())
        while True:
            out = await outputs.get()
            if isinstance(out, (AudioOut, PauseOut)):
                for piece, seconds in _pieces(out, pcm):
                    await body.pace(pacer)
                    await body.send(encoder.encode(piece))
                    if first:
                        metrics.ttfa.labels(api="http").observe(time.monotonic() - t0)
                        first = False
                    pacer.sent(seconds, time.monotonic())
                    audio_s += seconds
                    job.delivered(seconds)  # after the write: flow control sees what is still here
                    sched.flow(job)
            elif isinstance(out, (SegmentOut, FinishedOut)):  # a chunk ended: drain the resampler
                data = encoder.encode(pcm.encode(_EMPTY, last=True))
                if isinstance(out, FinishedOut):
                    await body.send(data + encoder.finish())
                    break
                await body.send(data)
            else:  # FailedOut after the headers went out: break the stream so the client sees it
                metrics.errors.labels(code=out.code).inc()
                log.warning("speech request %s failed mid-stream: %s", rid, out.message)
                raise ConnectionAbortedError(out.message)
        if body.events:
            await response.write(sse.done_event(sse.usage(sp.text, sp.instructions, audio_s)))
        await response.write_eof()
    except ConnectionResetError as exc:  # the client went away: nothing to answer, nobody to tell
        log.debug("speech request %s: the client went away after %.1f s of audio (%s)", rid, audio_s, exc)
    finally:
        encoder.close()
        sched.command(job, CLOSE)  # a client that went away frees its work at once
        gauge.dec()
    return response
