"""The real server on a loopback port, the real torch engine, real clients (websockets, openai).

The server is tests/support's ThreadServer (create_app in a thread of this process); the torch
engine is loaded once per test process (the torch_engine fixture).
"""

from __future__ import annotations

import io
import json
import threading
import time
import wave

import numpy as np
import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("websockets")

from websockets.exceptions import ConnectionClosed  # noqa: E402

from streamtts.protocol import Limits, mulaw_decode  # noqa: E402
from streamtts.server import ServerConfig  # noqa: E402
from support.servers import ThreadServer  # noqa: E402
from support.ws import audio_bytes, collect, events, jsend, ws_connect  # noqa: E402


@pytest.fixture(scope="module")
def server(torch_engine):
    config = ServerConfig(port=0, static_dir=None, limits=Limits(rate=40, burst=60), capacity=8)
    with ThreadServer(config, torch_engine) as srv:
        yield srv


def test_health_ready_voices(server):
    assert json.loads(server.get("/health")[1]) == {"status": "ok"}
    status, body = server.get("/ready")
    assert status == 200 and json.loads(body) == {"status": "ready", "engine": "torch+melgan", "capacity": 8}
    voices = json.loads(server.get("/v1/voices")[1])
    assert {"name": "biaobei", "default": True} in voices["voices"] and len(voices["voices"]) == 24
    assert voices["aliases"]["alloy"] == "biaobei"


def test_audio_arrives_before_the_text_is_finished(server):
    with ws_connect(server) as ws:
        jsend(ws, type="start", format="pcm_s16le", sample_rate=16000)
        ready = json.loads(ws.recv(timeout=30))
        assert ready["type"] == "ready" and ready["sample_rate"] == 16000 and ready["channels"] == 1
        jsend(ws, type="text", text="春天来了。")
        jsend(ws, type="text", text="小")  # confirms the first sentence has ended
        first = ws.recv(timeout=30)
        assert isinstance(first, bytes) and len(first) % 2 == 0, "audio of the first sentence, text unfinished"
        jsend(ws, type="text", text="草发芽了。")
        jsend(ws, type="end")
        items, code = collect(ws)
    items = [first] + items
    assert code == 1000
    segments = events(items, "segment")
    assert [s["text"] for s in segments] == ["春天来了。", "小草发芽了。"]
    assert [s["index"] for s in segments] == [0, 1]
    for s in segments:
        assert s["chars"] and s["audio_start_ms"] < s["audio_end_ms"]
        assert all(s["audio_start_ms"] <= c["start_ms"] < c["end_ms"] <= s["audio_end_ms"] for c in s["chars"])
    assert "".join(c["char"] for c in segments[1]["chars"]) == "小草发芽了"
    # segment times are positions in the byte stream: 16 kHz s16le, so ms = bytes / 32
    at_seg = audio_bytes(items[: items.index(segments[1])])
    assert abs(at_seg / 32 - segments[1]["audio_end_ms"]) <= 0.1
    done = events(items, "done")[0]
    assert done == items[-1]
    assert done["segments"] == 2 and 0 < done["ttfa_ms"] < 10_000 and 0 < done["rtf"] < 20
    assert abs(done["audio_ms"] - audio_bytes(items) / 32) <= 0.1
    assert done["audio_ms"] >= segments[1]["audio_end_ms"]


@pytest.mark.parametrize("fmt,rate,width", [("mulaw", None, 1), ("pcm_f32le", 24000, 4), ("pcm_s16le", 48000, 2)])
def test_formats_and_rates(server, fmt, rate, width):
    with ws_connect(server) as ws:
        start = {"type": "start", "format": fmt}
        if rate:
            start["sample_rate"] = rate
        ws.send(json.dumps(start))
        jsend(ws, type="text", text="格式测试。")
        jsend(ws, type="end")
        items, code = collect(ws)
    ready, seg, done = events(items)
    rate = rate or 8000
    assert ready["sample_rate"] == rate and code == 1000
    frames = [m for m in items if isinstance(m, bytes)]
    assert all(len(f) % width == 0 for f in frames)
    n = audio_bytes(items) // width
    assert abs(1000 * n / rate - seg["audio_end_ms"]) <= 0.2
    assert 500 < seg["audio_end_ms"] < 3000  # four syllables
    data = b"".join(frames)
    x = {"mulaw": lambda: mulaw_decode(data) / 32768, "pcm_f32le": lambda: np.frombuffer(data, "<f4"),
         "pcm_s16le": lambda: np.frombuffer(data, "<i2") / 32768}[fmt]()
    assert 0.02 < np.sqrt(np.mean(np.square(x))) < 0.5, "speech, not silence or noise"


def test_cancel_stops_audio_and_the_session_goes_on(server):
    with ws_connect(server) as ws:
        jsend(ws, type="text", text="这是一段很长的话，用来测试打断。我们会在第一段声音之后取消它。后面的内容都不应该再被听到。")
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        assert isinstance(ws.recv(timeout=30), bytes)
        jsend(ws, type="cancel")
        while True:  # audio sent before the cancel may still be in flight; then `cancelled`
            m = ws.recv(timeout=30)
            if not isinstance(m, bytes):
                assert json.loads(m)["type"] in ("cancelled", "segment")
                if json.loads(m)["type"] == "cancelled":
                    break
        with pytest.raises(TimeoutError):  # nothing of the cancelled text after `cancelled`
            ws.recv(timeout=1.5)
        jsend(ws, type="text", text="好的。")
        jsend(ws, type="end")
        items, code = collect(ws)
    assert code == 1000 and isinstance(items[0], bytes)
    assert [s["text"] for s in events(items, "segment")] == ["好的。"]
    assert events(items, "done")[0]["segments"] >= 1


def test_disconnect_frees_the_work(server):
    sched = server.state.engine.scheduler
    with ws_connect(server) as ws:
        jsend(ws, type="text", text="断开连接以后，服务器应该立刻停止合成这段很长很长的文字，不再浪费时间。")
        jsend(ws, type="flush")
        ws.recv(timeout=30)
        assert isinstance(ws.recv(timeout=30), bytes)
        assert sched.size == 1
    deadline = time.monotonic() + 5
    while sched.size:
        assert time.monotonic() < deadline, "the job outlived its socket"
        time.sleep(0.05)


def test_phrase_cache_hit_is_fast_and_counted(server):
    def speak():
        t0 = time.monotonic()
        with ws_connect(server) as ws:
            jsend(ws, type="text", text="缓存命中测试。")
            jsend(ws, type="end")
            items, _ = collect(ws)
        return time.monotonic() - t0, items, events(items, "done")[0]

    before = server.metrics()
    t_miss, miss, done_miss = speak()
    t_hit, hit, done_hit = speak()
    after = server.metrics()
    assert after["streamtts_cache_hits_total"] - before["streamtts_cache_hits_total"] == 1
    assert after["streamtts_cache_misses_total"] - before["streamtts_cache_misses_total"] == 1
    assert [m for m in hit if isinstance(m, bytes)] and b"".join(m for m in hit if isinstance(m, bytes)) == \
        b"".join(m for m in miss if isinstance(m, bytes)), "a hit gives the same audio"
    assert done_hit["ttfa_ms"] < done_miss["ttfa_ms"] and done_hit["rtf"] < done_miss["rtf"]
    assert t_hit < t_miss


def test_metrics_move(server):
    before = server.metrics()
    with ws_connect(server) as ws:
        ws.send("not json")
        jsend(ws, type="text", text="指标。")
        jsend(ws, type="end")
        collect(ws)
    after = server.metrics()

    def delta(name):
        return after.get(name, 0) - before.get(name, 0)

    assert delta('streamtts_requests_total{api="ws"}') == 1
    assert delta('streamtts_errors_total{code="bad_json"}') == 1
    assert delta('streamtts_ttfa_seconds_count{api="ws"}') == 1
    assert delta("streamtts_audio_seconds_total") > 0.3
    assert after['streamtts_active_sessions{api="ws"}'] == 0
    for name in ("streamtts_rtf_count", "streamtts_queue_depth", "streamtts_cache_bytes", "streamtts_ready"):
        assert name in after


def test_long_session_does_not_stall_a_short_one(server):
    long_text = "这是第一句比较长的话。这是第二句比较长的话。这是第三句比较长的话。这是第四句比较长的话。"
    with ws_connect(server) as a, ws_connect(server) as b:
        jsend(a, type="text", text=long_text)
        jsend(a, type="end")
        assert json.loads(a.recv(timeout=30))["type"] == "ready"
        assert isinstance(a.recv(timeout=30), bytes)  # A is busy now
        jsend(b, type="text", text="插队。")
        jsend(b, type="end")
        b_items, b_code = collect(b)
        assert server.state.engine.scheduler.size == 1, "B was done while A still had work"
        a_items, a_code = collect(a)
    assert b_code == 1000 and events(b_items, "done")[0]["ttfa_ms"] < 3000
    assert a_code == 1000 and events(a_items, "done")[0]["segments"] == 4


def test_bad_inputs_get_typed_errors_while_another_session_speaks(server):
    def good():
        with ws_connect(server) as ws:
            jsend(ws, type="text", text="我还在正常工作。")
            jsend(ws, type="end")
            return collect(ws)

    result = {}
    thread = threading.Thread(target=lambda: result.update(good=good()))
    thread.start()
    with ws_connect(server, max_size=None) as bad:
        jsend(bad, type="start", voice="nobody")
        jsend(bad, type="start", sample_rate=12345)
        jsend(bad, type="start", speed=9)
        jsend(bad, type="start", format="ogg")
        jsend(bad, type="nope")
        bad.send(b"\x00\x01binary")
        bad.send(b'{"type":"text","text":"\xff\xfe"}', text=True)  # invalid UTF-8 in a text frame
        bad.send(json.dumps({"type": "text", "text": "x" * (1 << 20)}))  # a 1 MB message
        jsend(bad, type="text", text="🙂🙂")
        jsend(bad, type="text", text="")
        jsend(bad, type="text")
        bad.send("[1,2,3]")
        # all rejected before any options were accepted: no `ready`, the session is still NEW
        expected = ["unknown_voice", "unsupported_sample_rate", "bad_speed", "unknown_format", "unknown_type",
                    "binary_not_allowed", "bad_utf8", "message_too_large", "no_speakable_text", "empty_text",
                    "bad_message", "bad_message"]
        got = [json.loads(bad.recv(timeout=30)) for _ in expected]
        assert [m["code"] for m in got] == expected
        assert all(m["type"] == "error" and m["fatal"] is False and m["message"] for m in got)
        for _ in range(400):  # a flood: dropped with rate_limited, the server stays responsive
            bad.send("{broken")
        jsend(bad, type="end")
        codes = set()
        while "rate_limited" not in codes:
            codes.add(json.loads(bad.recv(timeout=30)).get("code"))
        assert codes <= {"bad_json", "rate_limited"}
        time.sleep(1.5)  # the bucket refills; the session still works
        jsend(bad, type="text", text="结束。")
        jsend(bad, type="end")
        items, code = collect(bad)  # (if the flood's `end` got through, these two get errors)
        assert code == 1000 and events(items, "done")
    thread.join(60)
    items, code = result["good"]
    assert code == 1000 and audio_bytes(items) > 10_000 and events(items, "done")[0]["segments"] == 1
    status, _ = server.get("/health")
    assert status == 200


def test_oversized_frame_closes_with_1009(server):
    code = "no close frame"
    try:
        with ws_connect(server, max_size=None) as ws:
            ws.send("x" * (server.config.max_frame_bytes + 10))
            items, code = collect(ws, timeout=30)
    except ConnectionClosed as e:
        code = e.rcvd.code if e.rcvd else code
    # the server answers the frame's header with 1009 and hangs up; with megabytes still in
    # flight the client's kernel may see a reset before it reads the close frame
    assert code in (1009, "no close frame")
    with ws_connect(server) as ws:  # the server is fine
        jsend(ws, type="end")
        items, code = collect(ws)
        assert code == 1000 and events(items, "done")[0]["segments"] == 0


def test_speed_keeps_chars_and_scales_duration(server):
    durations = {}
    for speed in (1.0, 2.0):
        with ws_connect(server) as ws:
            jsend(ws, type="start", speed=speed)
            jsend(ws, type="text", text="速度测试。")
            jsend(ws, type="end")
            items, _ = collect(ws)
        seg = events(items, "segment")[0]
        assert len(seg["chars"]) == 4
        durations[speed] = seg["audio_end_ms"]
    assert 0.45 < durations[2.0] / durations[1.0] < 0.55


# ---- OpenAI-compatible HTTP ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def openai_client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="dummy", max_retries=0)


def test_openai_pcm_is_streamed(openai_client):
    t0 = time.monotonic()
    chunks, first = [], None
    with openai_client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="alloy", input="流式接口测试。这是第二句话。", response_format="pcm") as r:
        assert r.headers["content-type"] == "audio/pcm" and r.headers.get("transfer-encoding") == "chunked"
        for data in r.iter_bytes():
            if first is None:
                first = time.monotonic() - t0
            chunks.append(data)
    total = time.monotonic() - t0
    pcm = b"".join(chunks)
    assert len(pcm) % 2 == 0
    seconds = len(pcm) / 2 / 24000
    assert 1.5 < seconds < 8
    assert first < total * 0.7, "the body is streamed, not sent at the end"


def test_openai_wav_and_voice_mapping(openai_client):
    with openai_client.audio.speech.with_streaming_response.create(
            model="gpt-4o-mini-tts", voice="nova", input="你好。", response_format="wav") as r:
        data = r.read()
    assert data[:4] == b"RIFF" and data[4:8] == b"\xff\xff\xff\xff"
    with wave.open(io.BytesIO(data)) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (24000, 1, 2)
        frames = w.readframes(10**9)
    assert len(frames) == len(data) - 44 and len(frames) > 24000 * 2 * 0.3


@pytest.mark.parametrize("kw,code", [
    ({"response_format": "ogg"}, "unknown_format"),
    ({"voice": "robot"}, "unknown_voice"),
    ({"input": ""}, "empty_text"),
    ({"input": "🤖"}, "no_speakable_text"),
    ({"speed": 4.0}, "bad_speed"),
    ({"input": "长" * 5000}, "text_too_long"),
])
def test_openai_errors_are_clear_400s(openai_client, kw, code):
    import openai

    args = {"model": "tts-1", "voice": "alloy", "input": "你好。", "response_format": "pcm", **kw}
    with pytest.raises(openai.BadRequestError) as info:
        openai_client.audio.speech.create(**args)
    assert info.value.status_code == 400 and info.value.body["code"] == code
    assert info.value.body["type"] == "invalid_request_error"


def test_openai_speed(openai_client):
    lengths = {}
    for speed in (1.0, 1.5):
        r = openai_client.audio.speech.create(model="tts-1", voice="alloy", input="速度测试。", speed=speed,
                                              response_format="pcm")
        lengths[speed] = len(r.content)
    assert 0.6 < lengths[1.5] / lengths[1.0] < 0.73


def test_http_client_that_goes_away_frees_the_work(server):
    import http.client

    sched = server.state.engine.scheduler
    text = "这是一句要说很久的话。" * 20  # about 40 s of speech: far longer than this test waits
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.request("POST", "/v1/audio/speech", body=json.dumps({"model": "tts-1", "input": text, "voice": "alloy",
                                                              "response_format": "pcm"}),
                 headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200 and len(response.read1(4096)) > 0
    assert sched.size == 1
    conn.sock.shutdown(2)
    conn.close()
    deadline = time.monotonic() + 8
    while sched.size:
        assert time.monotonic() < deadline, "the request's work outlived its client"
        time.sleep(0.05)
