"""POST /v1/audio/speech as OpenAI clients use it: the openai package, LiveKit's plugin request
(SSE), every response_format decoded back with PyAV, x-request-id, pacing, typed errors.

One real server (the shared torch engine) for the module, with a short lead and buffer so the
pacing tests run in seconds.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import io
import json
import logging
import socket
import time
import urllib.request

import numpy as np
import pytest

from support.servers import ThreadServer

av = pytest.importorskip("av")
openai = pytest.importorskip("openai")

from streamtts.core.request import Status  # noqa: E402
from streamtts.server import ServerConfig  # noqa: E402
from streamtts.server.openai_api import PIECE_S, SEND_BUFFER_S, WRITE_BUFFER_S  # noqa: E402

TEXT = "你好，今天天气很好。"
SENTENCE = "这是一句要说很久的话。"  # spoken once first, so that repeats of it come from the cache
LEAD_S, BUFFERED_S = 1.0, 2.0
PCM_RATE = 24000 * 2  # bytes a second of 24 kHz s16le


@pytest.fixture(scope="module")
def server(torch_engine):
    config = ServerConfig(port=0, static_dir=None, capacity=4, max_lead_s=LEAD_S, max_buffered_s=BUFFERED_S)
    with ThreadServer(config, torch_engine) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="dummy", max_retries=0)


@pytest.fixture(scope="module")
def pcm_seconds(client) -> float:
    """Seconds of TEXT as 24 kHz pcm, the reference for every format's duration."""
    pcm = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="pcm").content
    assert len(pcm) % 2 == 0 and len(pcm) > PCM_RATE * 0.5
    return len(pcm) / PCM_RATE


def decode(data: bytes) -> tuple[np.ndarray, int, int, av.container.InputContainer]:
    """(mono samples, decoded rate, channels, container) of an encoded stream, by PyAV."""
    container = av.open(io.BytesIO(data))
    frames = [f for f in container.decode(container.streams.audio[0])]
    channels = frames[0].layout.nb_channels
    samples = np.concatenate([f.to_ndarray().reshape(-1) for f in frames])
    return samples, frames[0].sample_rate, channels, container


def post(server, body, headers=None) -> tuple[int, dict, bytes]:
    """(status, headers with lower-case names, body) of a raw POST, as any HTTP client sends it."""
    req = urllib.request.Request(server.url + "/v1/audio/speech", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def sse_events(body: bytes) -> list[dict]:
    events = []
    for block in body.decode().split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block[:80]
            events.append(json.loads(block[len("data: "):]))
    return events


# ---- formats ------------------------------------------------------------------------------------

def test_default_is_mp3(client, pcm_seconds):
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=TEXT) as r:
        assert r.headers["content-type"] == "audio/mpeg" and r.headers["x-request-id"]
        assert r.headers.get("transfer-encoding") == "chunked"
        streamed = r.read()
    whole = client.audio.speech.create(model="gpt-4o-mini-tts", voice="alloy", input=TEXT).content
    for data in (streamed, whole):
        samples, rate, channels, container = decode(data)
        assert container.format.name == "mp3" and (rate, channels) == (24000, 1)
        assert abs(len(samples) / rate - pcm_seconds) < 0.15  # the encoder's padding, no more
        assert 0.02 < np.sqrt(np.mean(np.square(samples))) < 0.5, "speech, not silence"


@pytest.mark.parametrize("fmt,content_type,container,rate", [
    ("opus", "audio/ogg", "ogg", 48000),  # Opus decoders play at 48 kHz; the stream was 24 kHz
    ("aac", "audio/aac", "aac", 24000),  # ADTS
    ("flac", "audio/flac", "flac", 24000),
    ("wav", "audio/wav", "wav", 24000),
])
def test_each_format_decodes(server, pcm_seconds, fmt, content_type, container, rate):
    status, headers, data = post(server, {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": fmt})
    assert status == 200 and headers["content-type"] == content_type and headers["x-request-id"]
    samples, decoded_rate, channels, c = decode(data)
    assert c.format.name == container and (decoded_rate, channels) == (rate, 1)
    assert abs(len(samples) / decoded_rate - pcm_seconds) < 0.15
    if fmt == "opus":  # OpusHead: the input rate the encoder was given
        head = data.index(b"OpusHead")
        assert int.from_bytes(data[head + 12:head + 16], "little") == 24000


def test_pcm_content_type(server, pcm_seconds):
    status, headers, data = post(server, {"model": "tts-1", "voice": "alloy", "input": TEXT, "response_format": "pcm"})
    assert status == 200 and headers["content-type"] == "audio/pcm"
    assert abs(len(data) / PCM_RATE - pcm_seconds) < 0.01


# ---- LiveKit's request: SSE ----------------------------------------------------------------------

def test_livekit_plugin_request_over_sse(server, pcm_seconds):
    # livekit-plugins-openai's TTS defaults, as its ChunkedStream sends them through the openai SDK
    body = {"input": TEXT, "model": "gpt-4o-mini-tts", "voice": "ash", "response_format": "mp3",
            "speed": 1.0, "stream_format": "sse"}
    status, headers, data = post(server, body, {"Authorization": "Bearer dummy", "Accept": "application/octet-stream"})
    assert status == 200 and headers["content-type"] == "text/event-stream" and headers["x-request-id"]
    events = sse_events(data)
    deltas, done = events[:-1], events[-1]
    assert len(deltas) > 1 and all(e["type"] == "speech.audio.delta" for e in deltas)
    assert done["type"] == "speech.audio.done"
    audio = b"".join(base64.b64decode(e["audio"]) for e in deltas)
    samples, rate, channels, container = decode(audio)  # the deltas carry the mp3 stream
    assert container.format.name == "mp3" and (rate, channels) == (24000, 1)
    seconds = len(samples) / rate  # another voice than pcm_seconds': its own length
    assert 0.5 * pcm_seconds < seconds < 2 * pcm_seconds
    usage = done["usage"]
    assert usage["input_tokens"] == len(TEXT)
    assert abs(usage["output_tokens"] - 20 * seconds) <= 3  # one per 50 ms of audio
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_sse_with_pcm_and_instructions(server, pcm_seconds):
    instructions = "用欢快的语气说。"
    status, headers, data = post(server, {"input": TEXT, "model": "gpt-4o-mini-tts", "voice": {"id": "alloy"},
                                          "response_format": "pcm", "stream_format": "sse",
                                          "instructions": instructions})
    assert status == 200
    events = sse_events(data)
    pcm = b"".join(base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta")
    assert abs(len(pcm) / PCM_RATE - pcm_seconds) < 0.01
    assert events[-1]["usage"]["input_tokens"] == len(TEXT) + len(instructions)


def test_request_id(server):
    body = {"model": "tts-1", "voice": "alloy", "input": "好。", "response_format": "pcm"}
    for header in ("x-request-id", "x-client-request-id"):
        status, headers, _ = post(server, body, {header: "lk-7f3a_01.x"})
        assert status == 200 and headers["x-request-id"] == "lk-7f3a_01.x"
    ids = set()
    for bad in ("has spaces in it", "x" * 200, "<script>"):
        status, headers, _ = post(server, body, {"x-request-id": bad})
        assert status == 200 and headers["x-request-id"].startswith("req_")
        ids.add(headers["x-request-id"])
    assert len(ids) == 3, "a fresh id each time"
    status, headers, _ = post(server, {**body, "voice": None}, {"x-client-request-id": "err-1"})
    assert status == 400 and headers["x-request-id"] == "err-1"


# ---- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("change,code,param", [
    ({"voice": None}, "bad_voice", "voice"),
    ({"voice": 123}, "bad_voice", "voice"),
    ({"voice": {"id": 5}}, "bad_voice", "voice"),
    ({"voice": "robot"}, "unknown_voice", "voice"),
    ({"response_format": "ogg"}, "unknown_format", "response_format"),
    ({"response_format": 3}, "unknown_format", "response_format"),
    ({"stream_format": "websocket"}, "unknown_stream_format", "stream_format"),
    ({"instructions": 5}, "bad_instructions", "instructions"),
    ({"instructions": "慢" * 5000}, "bad_instructions", "instructions"),
    ({"model": 4}, "bad_message", "model"),
    ({"speed": 0.25}, "bad_speed", "speed"),
    ({"input": "<speak>你好"}, "invalid_ssml", "input"),
    ({"input": '<?xml version="1.0"?><!DOCTYPE s [<!ENTITY a "aaaa">]><speak>&a;</speak>'}, "invalid_ssml",
     "input"),
])
def test_bad_requests_are_typed_400s(server, change, code, param):
    status, headers, data = post(server, {"model": "tts-1", "voice": "alloy", "input": "你好。", **change})
    error = json.loads(data)["error"]
    assert status == 400 and headers["x-request-id"]
    assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error")
    assert error["message"]


def test_an_input_that_is_a_speak_document_is_ssml(server):
    def seconds(text: str) -> float:
        status, _, data = post(server, {"model": "tts-1", "input": text, "response_format": "pcm"})
        assert status == 200
        return len(data) / 2 / 24000

    plain = seconds("你好。世界。")
    ssml = seconds('<speak>你好。<break time="1s"/>世界。</speak>')
    assert 0.6 < ssml - plain < 0.8  # the 1 s break in place of the full stop's 300 ms


def test_serves_after_errors(server):
    post(server, {"model": "tts-1", "voice": None, "input": "你好。"})
    status, _, data = post(server, {"model": "x", "voice": "alloy", "input": "你好。", "response_format": "pcm"})
    assert status == 200 and len(data) > PCM_RATE * 0.3


# ---- pacing -------------------------------------------------------------------------------------

def _speech_job(server):
    """The one HTTP request the scheduler holds now (None before it arrives or after it ends)."""
    jobs = [r for r in list(server.state.engine.scheduler.requests.values()) if r.api == "http"]
    return jobs[0] if jobs else None


def test_reader_gets_audio_at_most_the_lead_ahead(server):
    post(server, {"model": "tts-1", "voice": "alloy", "input": SENTENCE, "response_format": "pcm"})  # cache it
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/audio/speech", body=json.dumps({"model": "tts-1", "voice": "alloy", "input": SENTENCE * 4,
                                                              "response_format": "pcm"}),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    received, t_first, ahead = 0, None, []
    while data := response.read1(65536):  # a greedy reader: everything as soon as it is there
        now = time.monotonic()
        t_first = t_first or now
        received += len(data)
        ahead.append(received / PCM_RATE - (now - t_first))  # audio it holds beyond what it played
    conn.close()
    total_s, elapsed = received / PCM_RATE, time.monotonic() - t_first
    assert total_s > 6, "four sentences"
    # the audio was ready at once (cached): only pacing spread it over its own duration
    assert elapsed > total_s - LEAD_S - 1.0
    # the lead, a piece, and room for a late first read on a busy machine (unpaced: all 8 s)
    assert max(ahead) < LEAD_S + PIECE_S + 0.8


def test_stalled_reader_does_not_make_the_server_run_ahead(server):
    """A client that stops reading: pacing off, only flow control and the socket caps bound it."""
    status, _, data = post(server, {"model": "tts-1", "voice": "alloy", "input": SENTENCE, "response_format": "pcm"})
    sentence_s = len(data) / PCM_RATE  # cached now: each repeat comes as one piece of this length
    state = server.state
    paced = state.config
    state.config = dataclasses.replace(paced, max_lead_s=0)  # handlers read it per request
    rcvbuf = 16 * 1024
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.connect(("127.0.0.1", server.port))
        body = json.dumps({"model": "tts-1", "voice": "alloy", "input": SENTENCE * 12, "response_format": "pcm"}).encode()
        sock.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body)
        got = sock.recv(4096)
        assert got.startswith(b"HTTP/1.1 200")
        deadline, statuses, backlog, job = time.monotonic() + 4, set(), [], None
        while time.monotonic() < deadline:  # the client reads nothing now
            job = _speech_job(server) or job
            if job is not None:
                statuses.add(job.status)
                backlog.append(job.backlog_s)
            time.sleep(0.05)
        assert job is not None, "the whole text went into the sockets of a client that reads nothing"
        assert Status.PAUSED in statuses, "synthesis waits for the client"
        # what waits in the handler's queue: paused at BUFFERED_S, plus the chunk that crossed it
        assert max(backlog) < BUFFERED_S + sentence_s + 0.5
        # what left the handler sits in the two sockets' buffers (the kernel doubles both sizes)
        in_sockets_s = 2 * SEND_BUFFER_S + WRITE_BUFFER_S + 2 * rcvbuf / PCM_RATE
        assert job.produced_s < BUFFERED_S + sentence_s + in_sockets_s + 1.0 < 12 * sentence_s / 2, \
            "far less than the whole text"
        sock.settimeout(30)
        while data := sock.recv(65536):  # reading again: the rest comes, to the end
            got += data
            if got.endswith(b"\r\n0\r\n\r\n"):
                break
        assert len(got) > 12 * sentence_s * PCM_RATE
    finally:
        sock.close()
        state.config = paced


def test_client_that_goes_away_is_no_error(server, caplog):
    post(server, {"model": "tts-1", "voice": "alloy", "input": SENTENCE, "response_format": "pcm"})  # cache it
    caplog.set_level("DEBUG")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/audio/speech", body=json.dumps({"model": "tts-1", "voice": "alloy", "input": SENTENCE * 6,
                                                              "stream_format": "sse"}),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and response.read1(4096)
    conn.sock.shutdown(socket.SHUT_RDWR)  # gone while the stream is paced
    conn.close()
    deadline = time.monotonic() + 10
    while _speech_job(server) is not None:
        assert time.monotonic() < deadline, "the request's work outlived its client"
        time.sleep(0.05)
    assert any("went away" in r.getMessage() and r.levelname == "DEBUG" for r in caplog.records)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_openai_sdk_sse_as_livekit_reads_it(client):
    """The plugin's code path: the SDK's streaming response, request_id, iter_lines."""
    with client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="ash", input=TEXT, response_format="mp3", speed=1.0,
            stream_format="sse", extra_headers={"x-client-request-id": "lk-req-1"}) as stream:
        assert stream.request_id == "lk-req-1"
        assert stream.headers["content-type"].split(";")[0] == "text/event-stream"
        events = [json.loads(line[len("data: "):]) for line in stream.iter_lines() if line.startswith("data: ")]
    assert [e["type"] for e in events][-1] == "speech.audio.done"
    samples, rate, _, _ = decode(b"".join(base64.b64decode(e["audio"]) for e in events[:-1]))
    assert rate == 24000 and len(samples) > rate * 0.5


def test_a_read_that_completes_as_its_wait_runs_out_loses_nothing(monkeypatch):
    """The response reads the output stream with a wait that runs out every _POLL_S to look for a
    client that left; an event that arrives just as a wait runs out is still the next one read.
    (Stand-ins for the request and the stream: this is the loop's own rule.)"""
    import asyncio
    import random
    import types

    from streamtts.server import openai_api

    monkeypatch.setattr(openai_api, "_POLL_S", 0.0005)  # waits run out all the time

    class Events:
        def __init__(self):
            self.n, self.rng = 0, random.Random(0)

        async def get(self):
            await asyncio.sleep(self.rng.uniform(0.0, 0.002))
            self.n += 1
            return self.n - 1

    open_transport = types.SimpleNamespace(is_closing=lambda: False)
    body = openai_api._Body.__new__(openai_api._Body)
    body.request, body._get = types.SimpleNamespace(transport=open_transport), None

    async def read_all():
        stream = Events()
        return [await body.next(stream) for _ in range(300)]

    assert asyncio.run(read_all()) == list(range(300))
