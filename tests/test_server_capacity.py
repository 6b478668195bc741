"""Many sessions on one batched engine, over a real socket: eight WebSocket clients at once each get
exactly their own speech (equal to its solo synthesis), and admission control queues or refuses
sessions beyond the server's capacity with typed, documented answers."""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import numpy as np
import pytest

from streamtts.protocol import Limits
from streamtts.server import ServerConfig
from streamtts.speaker import Audio, Speaker
from support.servers import ThreadServer
from support.ws import collect, events, jsend, ws_connect

# (text, voice, seed): different lengths, voices and seeds, so a mix-up shows
JOBS = [("今天天气很好。", "biaobei", 1), ("我们一起去公园散步吧。", "Aiyue", 2), ("你好。", "Xiaogang", 3),
        ("欢迎使用流式语音合成。", "Aibao", 4), ("明天会下雨吗？", "biaobei", 5), ("请把门关上，谢谢。", "Siyue", 6),
        ("这本书很有意思。", "Aijia", 7), ("火车八点出发。", "Xiaomei", 8)]


@pytest.fixture(scope="module")
def engine(int8_engine):
    return int8_engine


def _speak(server, text: str, voice: str, seed: int, out: dict, key: int) -> None:
    with ws_connect(server) as ws:
        jsend(ws, type="start", voice=voice, seed=seed, format="pcm_f32le")
        jsend(ws, type="text", text=text)
        jsend(ws, type="end")
        out[key] = collect(ws, timeout=120)


def test_eight_clients_at_once_each_get_their_own_speech(engine):
    solo = []
    for text, voice, seed in JOBS:  # before the server runs: the references need the engine alone
        events_ = Speaker(engine).speak(text, voice=voice, seed=seed)
        solo.append(np.concatenate([e.audio for e in events_ if isinstance(e, Audio)]))
    config = ServerConfig(port=0, static_dir=None, capacity=len(JOBS), cache_bytes=0)
    with ThreadServer(config, engine) as server:
        rows: list[int] = []
        core = server.state.engine.worker.core
        core.on_tick = lambda plan, out, prev=core.on_tick: (rows.append(len(plan.decode)), prev(plan, out))
        results: dict[int, tuple] = {}
        threads = [threading.Thread(target=_speak, args=(server, *job, results, i)) for i, job in enumerate(JOBS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
    assert max(rows) >= 4, f"sessions were not batched (largest decoder batch {max(rows)})"
    for i, (text, voice, seed) in enumerate(JOBS):
        items, code = results[i]
        assert code == 1000 and events(items)[-1]["type"] == "done", (text, events(items)[-1])
        got = np.frombuffer(b"".join(m for m in items if isinstance(m, bytes)), "<f4")
        assert len(got) == len(solo[i]), text
        assert np.abs(got - solo[i]).max() <= 1e-3, text


def _post(server, body: dict) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(server.url + "/v1/audio/speech", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


LONG = "今天天气很好，我们一起去公园散步吧。" * 12  # far longer than a test reads of it


def _speaking(ws) -> None:
    """``ws`` speaks a long text (so its utterance holds a slot) and has its first audio."""
    jsend(ws, type="text", text=LONG)
    while not isinstance(ws.recv(timeout=120), bytes):
        pass


def test_beyond_capacity_utterances_queue_then_are_refused(engine):
    config = ServerConfig(port=0, static_dir=None, capacity=2, queue_size=1, queue_timeout_s=60.0,
                          limits=Limits(rate=100, burst=200))
    with ThreadServer(config, engine) as server:
        with ws_connect(server) as a, ws_connect(server) as b:
            for ws in (a, b):  # both utterances hold a slot while they speak
                _speaking(ws)
            with ws_connect(server) as c, ws_connect(server) as d:
                jsend(c, type="text", text="排队等候。")  # kept, and spoken once it has its slot
                jsend(c, type="end")
                assert [json.loads(c.recv(timeout=30))["type"] for _ in range(2)] == ["ready", "queued"]
                jsend(d, type="text", text="人太多了。")  # the queue (1) is full
                assert json.loads(d.recv(timeout=30))["type"] == "ready"
                error = json.loads(d.recv(timeout=30))
                assert error["code"] == "server_busy" and error["fatal"] is False  # that utterance only
                status, headers, body = _post(server, {"model": "tts-1", "input": "你好。", "voice": "alloy"})
                assert status == 503 and int(headers["Retry-After"]) >= 1
                assert json.loads(body)["error"]["code"] == "server_busy"
                m = server.metrics()
                assert m["streamtts_capacity"] == 2 and m["streamtts_admitted"] == 2
                assert m["streamtts_queued"] == 1 and m['streamtts_refused_total{api="ws"}'] == 1
                assert m['streamtts_refused_total{api="http"}'] == 1
                a.close()  # a slot frees: the queued utterance is spoken
                items, code = collect(c, timeout=60)
                assert events(items)[-1]["type"] == "done" and code == 1000
                assert any(isinstance(x, bytes) for x in items)
                jsend(d, type="text", text="现在轮到我。")  # the refused socket lives: its next utterance
                jsend(d, type="end")
                items, code = collect(d, timeout=60)
                assert events(items)[-1]["type"] == "done" and code == 1000
        deadline = time.monotonic() + 10
        while server.state.engine.admission.admitted:  # every slot is given back
            assert time.monotonic() < deadline
            time.sleep(0.05)
        status, headers, body = _post(server, {"model": "tts-1", "input": "你好。", "voice": "alloy",
                                               "response_format": "pcm"})
        assert status == 200 and len(body) > 1000


def test_python_client_waits_in_the_queue_then_speaks(engine):
    import asyncio

    from clients.client import StreamClient

    config = ServerConfig(port=0, static_dir=None, capacity=1, queue_size=2, queue_timeout_s=60.0)
    with ThreadServer(config, engine) as server:
        with ws_connect(server) as holder:
            _speaking(holder)  # the only slot is taken
            seen: list = []

            async def speak() -> int:
                n = 0
                async with StreamClient(f"ws://127.0.0.1:{server.port}/v1/stream", on_event=seen.append) as c:
                    async for pcm in c.stream("排队以后再说。"):
                        n += len(pcm)
                return n

            async def main() -> int:
                task = asyncio.create_task(speak())
                for _ in range(300):
                    if any(m["type"] == "queued" for m in seen):
                        break
                    await asyncio.sleep(0.05)
                assert {"type": "queued", "position": 0, "utterance": 1} in seen and not task.done()
                holder.close()  # the slot frees: the queued client is served
                return await task

            assert asyncio.run(main()) > 10_000
            assert [m["type"] for m in seen][:2] == ["ready", "queued"]
