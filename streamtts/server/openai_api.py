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

Admission: as a WebSocket utterance, a request that finds every stream slot taken waits in the
server's bounded queue (its wait counts in its time to first audio); a full queue or a wait that
runs out is a 503 ``server_busy`` with ``Retry-After``. A client that goes away while queued gives
its place up at once, and a drain ends the wait with ``going_away``.

Pacing: the utterance's output stream (:mod:`streamtts.engine_client.stream`) keeps it at most
``max_lead_s`` of audio ahead of its listener's real-time clock, the socket's send buffers are
capped, and audio counts as delivered only once it is written, so flow control (pause at
``max_buffered_s`` undelivered) bounds the audio waiting for this handler.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Optional

import numpy as np
from aiohttp import web

from streamtts.constants import DEFAULT_SEED
from streamtts.engine_client import (FRAME_S, Audio, Busy, Done, Event, OutputStream, Segment, Slot, Utterance,
                                     UtteranceSpec)
from streamtts.protocol import AudioEncoder
from streamtts.server import sse
from streamtts.server.errors import http_error
from streamtts.audio.encoders import SAMPLE_RATE, StreamEncoder
from streamtts.server.openai_request import OPENAI_VOICES, BadRequest, SpeechRequest, parse_request, request_id
from streamtts.server.state import STATE, engine_unavailable

__all__ = ["speech_handler", "OPENAI_VOICES", "SEND_BUFFER_S", "WRITE_BUFFER_S", "PIECE_S"]

log = logging.getLogger(__name__)

# The kernel's send buffer of a speech response, in seconds of its format (Linux doubles the
# value for its bookkeeping). Uncapped it grows to megabytes: a client that stopped reading had a
# whole long test text parked in the socket buffers, pcm or mp3, and the engine ran to the end.
# One second keeps real-time throughput up to about a second of round-trip time.
SEND_BUFFER_S, MIN_SEND_BUFFER = 1.0, 8 * 1024
# What the event loop's transport may hold unsent before the next write waits for the socket.
WRITE_BUFFER_S, MIN_WRITE_BUFFER = 0.25, 4 * 1024
PIECE_S = FRAME_S  # audio is paced and written in pieces of at most this (the stream's, as everywhere)
_POLL_S = 0.1  # how often a paced or blocked stream looks whether its client went away
_EMPTY = np.zeros(0, np.float32)


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
        return http_error("unauthorized", "missing or wrong API key (Authorization: Bearer KEY)", metrics=metrics)
    if not guard.admit_request(request):
        return http_error("rate_limited", "too many requests for this key; try again shortly", metrics=metrics)
    try:
        body = json.loads(await request.read())
    except web.HTTPRequestEntityTooLarge:
        return http_error("message_too_large", f"the body is larger than {request.client_max_size} bytes",
                          metrics=metrics)
    except (ValueError, RecursionError):
        return http_error("bad_json", "the body is not valid JSON", metrics=metrics)
    try:
        sp = parse_request(body, state.config.max_input_chars)
    except BadRequest as exc:
        return http_error(exc.code, exc.message, metrics=metrics, param=exc.param)
    if state.engine.failure is not None:
        return http_error("engine_unavailable", engine_unavailable(state), metrics=metrics)
    with guard.session() as admitted:
        if not admitted:
            return http_error("too_many_sessions", f"the server is at its limit of "
                              f"{state.config.max_sessions} sessions; try again later", metrics=metrics)
        t0 = time.monotonic()  # the wait for a slot counts in the time to first audio
        try:  # as a WebSocket utterance: a slot now, or a wait in the bounded queue
            slot = await state.engine.admission.wait_unless(lambda: _stop_waiting(request, state), _POLL_S)
        except Busy as exc:  # the queue is full or the wait ran out: 503, and the client retries
            metrics.refused.labels(api="http").inc()
            return http_error("server_busy", exc.message, metrics=metrics,
                              headers={"Retry-After": str(int(exc.retry_after_s))})
        except _Refused as exc:
            return http_error(exc.code, exc.message, metrics=metrics)
        except ConnectionResetError:  # nobody to answer; its place in the queue is given up
            log.debug("speech request %s: the client went away while queued", rid)
            return web.Response(status=499, reason="Client Closed Request")
        try:
            if state.draining:  # a slot freed by the drain itself: no new work now
                return http_error("going_away", _GOING_AWAY, metrics=metrics)
            if state.engine.failure is not None:
                return http_error("engine_unavailable", engine_unavailable(state), metrics=metrics)
            return await _stream(request, state, sp, rid, t0, slot)
        finally:
            slot.release()


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


class _Refused(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


_GOING_AWAY = "the server is shutting down"


def _stop_waiting(request: web.Request, state) -> Optional[BaseException]:
    """Why a request waiting for a slot stops waiting: the server drains (``going_away`` at once,
    not at the drain's end), the engine failed, or its client went away (its place goes to the
    next in line)."""
    if state.draining:
        return _Refused("going_away", _GOING_AWAY)
    if state.engine.failure is not None:
        return _Refused("engine_unavailable", engine_unavailable(state))
    if _gone(request):
        return ConnectionResetError("the client went away while queued")
    return None


def speak_input(utt: Utterance, text: str) -> None:
    """Where ``input`` becomes the utterance's commands: all of it as one text, then the end."""
    utt.text(0, text)
    utt.end(0)


class _Body:
    """Writes of one response: SSE framing, the write-buffer cap, a client that went away."""

    def __init__(self, request: web.Request, response: web.StreamResponse, events: bool, bytes_per_s: int):
        self.request, self.response, self.events = request, response, events
        bytes_per_s = bytes_per_s * 4 // 3 if events else bytes_per_s  # base64
        self.send_buffer = max(MIN_SEND_BUFFER, int(SEND_BUFFER_S * bytes_per_s))
        self.write_buffer = max(MIN_WRITE_BUFFER, int(WRITE_BUFFER_S * bytes_per_s))
        self._get: Optional[asyncio.Future] = None  # the stream read in progress

    def gone(self) -> bool:
        return _gone(self.request)

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

    async def next(self, stream: OutputStream) -> Event:
        """The stream's next event, looking every _POLL_S whether the client went away meanwhile
        (a paced stream, or one whose synthesis is paused, may wait long). The read outlives a
        wait that runs out, and an event it got is always returned, even one that came just as
        the wait ran out."""
        if self._get is None:
            self._get = asyncio.ensure_future(stream.get())
        while not self._get.done():
            await asyncio.wait({self._get}, timeout=_POLL_S)
            if not self._get.done() and self.gone():
                raise ConnectionResetError("the client went away")
        got, self._get = self._get, None
        return got.result()

    def stop_reading(self) -> None:
        if self._get is not None and not self._get.done():
            self._get.cancel()


async def _stream(request: web.Request, state, sp: SpeechRequest, rid: str, t0: float,
                  slot: Slot) -> web.StreamResponse:
    # The stream paces audio to the listener's clock; what waits in it and in the socket's
    # buffers is the utterance's backlog, which pauses its synthesis at max_buffered_s.
    utt = state.engine.open(UtteranceSpec(sp.voice, DEFAULT_SEED, sp.speed, api="http"),
                            max_lead_s=state.config.max_lead_s)
    stream, metrics = utt.stream, state.metrics
    speak_input(utt, sp.text)
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
    audio_s, first = 0.0, True
    try:
        await response.prepare(request)
        body.cap_send_buffer()
        await body.send(encoder.start())
        while True:
            event = await body.next(stream)
            if slot.held and not utt.computing:  # all of it synthesized: the slot counts compute
                slot.release()
            if isinstance(event, Audio):
                data = pcm.silence(len(event.samples)) if event.silence else pcm.encode(event.samples)
                await body.send(encoder.encode(data))
                if first:
                    metrics.ttfa.labels(api="http").observe(time.monotonic() - t0)
                    first = False
                audio_s += event.seconds
                stream.delivered(event)  # after the write: flow control sees what is still here
            elif isinstance(event, (Segment, Done)):  # a chunk ended: drain the resampler
                data = encoder.encode(pcm.encode(_EMPTY, last=True))
                if isinstance(event, Done):
                    await body.send(data + encoder.finish())
                    break
                await body.send(data)
            else:  # Failed after the headers went out: break the stream so the client sees it
                metrics.errors.labels(code=event.code).inc()
                log.warning("speech request %s failed mid-stream: %s", rid, event.message)
                raise ConnectionAbortedError(event.message)
        if body.events:
            await response.write(sse.done_event(sse.usage(sp.text, sp.instructions, audio_s)))
        await response.write_eof()
    except ConnectionResetError as exc:  # the client went away: nothing to answer, nobody to tell
        log.debug("speech request %s: the client went away after %.1f s of audio (%s)", rid, audio_s, exc)
    finally:
        body.stop_reading()
        encoder.close()
        utt.close()  # a client that went away frees its work at once
        gauge.dec()
    return response
