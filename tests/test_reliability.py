"""Reliability against a real server: pacing and prompt barge-in for a client that reads at
playback speed, graceful drain on SIGTERM (a real ``streamtts serve`` process), bounded outboxes,
sessions that only produce errors, the idle timer, and a worker that cannot die silently (faults
injected into a real engine: a poisoned input, a failing call, a hanging call, a failed load)."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
import weakref

import numpy as np
import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from engines.base import AcousticModel, ModelPair, Vocoder
from streamtts.protocol import Limits
from streamtts.server import ServerConfig
from support.servers import ProcessServer, ThreadServer, shared_engine
from support.ws import collect, events, jsend, ws_connect

RATE = 22050
LONG = "今天天气很好，我们一起去公园散步吧。春天来了，小草发芽了，花儿也开了。" * 30
SHORT = "你好，欢迎使用流式语音合成。"


def seconds(frame: bytes) -> float:
    return len(frame) / 2 / RATE


# ---- pacing and barge-in ---------------------------------------------------------------------

LEAD = 1.0


@pytest.fixture(scope="module")
def paced():
    with ProcessServer("--capacity", "4", "--max-lead", str(LEAD)) as srv:
        yield srv


async def _playback_reader(url: str, listen_s: float) -> dict:
    """Read audio at playback speed (sleep each frame's duration), cancel after ``listen_s`` of
    listening, then speak a short reply. Keepalive pings every second must be answered."""
    out = {"ahead": 0.0, "after_cancel": 0, "closed": None}
    async with websockets.connect(url, ping_interval=1.0, ping_timeout=3.0, max_size=None) as ws:
        await ws.send(json.dumps({"type": "start", "format": "pcm_s16le", "sample_rate": RATE}))
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(json.dumps({"type": "text", "text": LONG}))
        t_first, received, t_cancel = None, 0.0, None
        while True:
            m = await asyncio.wait_for(ws.recv(), 60)
            now = time.monotonic()
            if isinstance(m, bytes):
                assert t_cancel is None or "cancelled" not in out, "audio after cancelled"
                if t_first is None:
                    t_first = now
                received += seconds(m)
                out["ahead"] = max(out["ahead"], received - (now - t_first))
                await asyncio.sleep(seconds(m))  # "play" it
                if t_cancel is None and time.monotonic() - t_first > listen_s:
                    t_cancel = time.monotonic()
                    await ws.send(json.dumps({"type": "cancel"}))
                continue
            msg = json.loads(m)
            assert msg["type"] != "error", msg
            if msg["type"] == "cancelled":
                out["cancel_latency"] = now - t_cancel
                out["listened"] = received
                break
        # a new reply right after the barge-in starts at once (the player dropped the old one)
        t0 = time.monotonic()
        await ws.send(json.dumps({"type": "text", "text": SHORT}))
        await ws.send(json.dumps({"type": "end"}))
        reply = []
        try:
            while True:
                m = await asyncio.wait_for(ws.recv(), 60)
                if isinstance(m, bytes) and "reply_ttfa" not in out:
                    out["reply_ttfa"] = time.monotonic() - t0
                reply.append(m if isinstance(m, bytes) else json.loads(m))
        except ConnectionClosed as exc:
            out["closed"] = exc.rcvd.code if exc.rcvd else None
        out["reply"] = reply
    return out


def test_barge_in_reaches_a_playback_speed_reader_within_the_lead(paced):
    out = asyncio.run(_playback_reader(paced.ws_url, listen_s=5.0))
    # the server stays at most max_lead ahead of the listener (one frame of slack for the wire)
    assert out["ahead"] <= LEAD + 0.5, out["ahead"]
    # cancel -> cancelled: what was already sent (at most the lead) plus a moment
    assert out["cancel_latency"] <= LEAD + 0.5, out["cancel_latency"]
    assert out["listened"] >= 4.0
    # keepalive pings were answered throughout (else the client closes with 1011), and the reply
    # after the barge-in is spoken in full
    assert out["closed"] == 1000
    reply = out["reply"]
    assert [m["type"] for m in reply if isinstance(m, dict)][-1] == "done"
    assert sum(seconds(m) for m in reply if isinstance(m, bytes)) > 1.0
    assert out["reply_ttfa"] < out["cancel_latency"] + 2.0


# ---- graceful drain on SIGTERM ---------------------------------------------------------------

class _Listener(threading.Thread):
    """A WebSocket client in a thread: sends ``msgs``, reads everything (fast), records it;
    ``audio_s`` is the audio received so far, as it comes."""

    def __init__(self, url: str, msgs: list[dict]):
        super().__init__(daemon=True)
        self.url, self.msgs = url, msgs
        self.items: list = []
        self.audio_s = 0.0
        self.code = None
        self.closed_at = None
        self.ready = threading.Event()

    def run(self) -> None:
        with connect(self.url, proxy=None, open_timeout=30, max_size=None) as ws:
            for m in self.msgs:
                ws.send(json.dumps(m, ensure_ascii=False))
            self.ready.set()
            try:
                while True:
                    m = ws.recv(timeout=60)
                    if isinstance(m, bytes):
                        self.items.append(m)
                        self.audio_s += seconds(m)
                    else:
                        self.items.append(json.loads(m))
            except ConnectionClosed as e:
                self.code = e.rcvd.code if e.rcvd else None
            self.closed_at = time.monotonic()


def _non_reading_http(port: int) -> socket.socket:
    """POST a long speech request and never read the answer."""
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    body = json.dumps({"model": "tts-1", "input": LONG[:2000], "response_format": "pcm"}).encode()
    s.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body)
    return s


def _wait(condition, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_sigterm_drains_then_exits(tmp_path):
    """SIGTERM with a session mid-utterance, an idle one, an endless one and an HTTP stream whose
    client does not read. Every step waits on a state, not on a time: the signal goes once the
    short utterance is under way with little of it left, and the drain timeout is long against
    what is left, so that on a slow machine too only the endless utterance meets it."""
    drain = 8.0
    with ProcessServer("--capacity", "8", "--max-lead", "1", "--drain-timeout", str(drain)) as srv:
        idle = _Listener(srv.ws_url, [{"type": "start"}])
        endless = _Listener(srv.ws_url, [{"type": "text", "text": LONG}])
        for c in (idle, endless):
            c.start()
            assert c.ready.wait(30)
        hung = _non_reading_http(srv.port)
        _wait(lambda: b'streamtts_active_sessions{api="http"} 1.0' in srv.get("/metrics")[1], "no HTTP stream")
        _wait(lambda: endless.audio_s > 0, "the endless utterance never spoke")
        # paced at real time (lead 1 s): the 3 s utterance is under way once 1.5 s of it arrived,
        # with at most its last seconds to synthesize and play
        finishing = _Listener(srv.ws_url, [{"type": "text", "text": SHORT}, {"type": "end"}])
        finishing.start()
        _wait(lambda: finishing.audio_s >= 1.5 or finishing.closed_at is not None, "the short utterance never spoke")
        t0 = time.monotonic()
        srv.proc.send_signal(15)
        # refusing during the drain, long before its end, with a typed reason
        _wait(lambda: srv.get("/ready")[0] == 503, "not refusing", timeout=drain - 2)
        status, body = srv.get("/ready")
        assert status == 503 and json.loads(body)["status"] == "draining"
        with pytest.raises(InvalidStatus) as refused:
            connect(srv.ws_url, proxy=None, open_timeout=10)
        assert refused.value.response.status_code == 503
        assert json.loads(refused.value.response.body)["code"] == "going_away"
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("POST", "/v1/audio/speech", json.dumps({"input": SHORT}), {"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 503 and json.loads(r.read())["error"]["code"] == "going_away"
        rc = srv.proc.wait(drain + 10)
        took = time.monotonic() - t0
        for c in (finishing, idle, endless):
            c.join(10)
        hung.close()
    assert rc == 0, srv.output()
    assert took <= drain + 2.0, took
    # the idle session is told at once; the finishing one completes its utterance
    assert idle.code == 1001 and events(idle.items, "error")[-1]["code"] == "going_away"
    assert idle.closed_at - t0 < 1.5
    assert finishing.code == 1000 and events(finishing.items)[-1]["type"] == "done"
    assert sum(seconds(m) for m in finishing.items if isinstance(m, bytes)) > 2.0
    assert finishing.closed_at > t0  # it was under way when the signal came
    # the endless one speaks until the drain timeout, then gets going_away
    err = events(endless.items, "error")
    assert endless.code == 1001 and err and err[-1]["code"] == "going_away" and err[-1]["fatal"]
    assert endless.closed_at - t0 >= drain - 0.5
    assert any(isinstance(m, bytes) for m in endless.items)


# ---- bounded queues, error-only sessions, idle timer (in-process server, real engine) ----------

@pytest.fixture(scope="module")
def strict(pack):
    config = ServerConfig(port=0, static_dir=None, capacity=4, idle_timeout_s=1.5,
                          limits=Limits(rate=5000, burst=5000, max_outbox_bytes=64 * 1024))
    with ThreadServer(config, shared_engine(pack)) as srv:
        yield srv


def test_a_session_of_only_errors_is_closed(strict):
    with ws_connect(strict) as ws:
        for i in range(100):
            ws.send("{not json")
        items, code = collect(ws, timeout=30)
    errors = events(items, "error")
    assert len(errors) == 101 and {e["code"] for e in errors[:100]} == {"bad_json"}
    assert errors[-1]["code"] == "too_many_errors" and errors[-1]["fatal"] and code == 1008


def test_idle_timer_counts_only_valid_messages(strict):
    with ws_connect(strict) as ws:
        t0 = time.monotonic()
        items = []
        try:
            while time.monotonic() - t0 < 10:
                ws.send('{"type": "nonsense"}')
                time.sleep(0.25)
                while True:
                    try:
                        m = ws.recv(timeout=0)
                    except TimeoutError:
                        break
                    items.append(json.loads(m))
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else None
            rest, _ = collect(ws, timeout=5)
            items += rest
        took = time.monotonic() - t0
    assert items[-1]["code"] == "idle_timeout" and code == 1001
    assert took < 5.0  # invalid messages every 0.25 s did not keep it open


def test_a_client_that_sends_and_never_reads_is_closed(strict):
    """Errors for a client that never reads pile up: past max_outbox_bytes the session is closed
    (outbox_full), the server forgets it, and other sessions are unaffected."""
    before = strict.metrics().get('streamtts_errors_total{code="outbox_full"}', 0.0)
    s = socket.create_connection(("127.0.0.1", strict.port))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.sendall(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")

    def frame(payload: bytes) -> bytes:  # a masked client text frame (mask 0: payload as is)
        return bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload

    bad, good = frame(b'{"type":"nonsense"}'), frame(b'{"type":"flush"}')
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            s.sendall((bad * 49 + good) * 10)  # never 100 errors in a row: only the outbox stops it
            if strict.metrics().get('streamtts_errors_total{code="outbox_full"}', 0.0) > before:
                break
    except OSError:
        pass  # the server dropped the connection
    assert strict.metrics().get('streamtts_errors_total{code="outbox_full"}', 0.0) == before + 1
    deadline = time.monotonic() + 10
    while strict.state.connections:  # dropped by the server, while the client still holds it open
        assert time.monotonic() < deadline, "the closed session is still held"
        time.sleep(0.1)
    s.close()
    with ws_connect(strict) as ws:  # the server goes on
        jsend(ws, type="text", text="你好。")
        jsend(ws, type="end")
        items, code = collect(ws)
    assert code == 1000 and events(items)[-1]["type"] == "done"


# ---- a worker that cannot die silently ----------------------------------------------------------

class FaultyAcoustic(AcousticModel):
    """A real acoustic model with faults injected: rows started with ``poison_seed`` make any
    call holding them raise; ``fail_batch`` makes the next call of two rows or more raise once."""

    def __init__(self, inner: AcousticModel, poison_seed=None):
        self.inner, self.poison_seed, self.fail_batch = inner, poison_seed, False
        self.name, self.n_mels, self.hop_length, self.sample_rate = (
            inner.name, inner.n_mels, inner.hop_length, inner.sample_rate)
        self.calls = 0
        self.poisoned = weakref.WeakSet()  # rows of the poisoned seed (by identity)
        self.raised = 0

    @property
    def lookahead(self) -> int:
        return self.inner.lookahead

    def start(self, ids, speaker, seed):
        row = self.inner.start(ids, speaker, seed)
        if seed == self.poison_seed:
            self.poisoned.add(row)
        return row

    def decode(self, rows, steps):
        self.calls += 1
        if (self.fail_batch and len(rows) > 1) or any(r in self.poisoned for r in rows):
            self.raised += 1
            self.fail_batch = self.fail_batch and len(rows) < 2
            raise RuntimeError("injected fault")
        return self.inner.decode(rows, steps)


class HangingVocoder(Vocoder):
    """A real vocoder whose next call, once ``hang_s`` is set, sleeps that long (a stuck backend)."""

    def __init__(self, inner: Vocoder):
        self.inner, self.hang_s = inner, 0.0
        for k in ("name", "n_mels", "hop_length", "sample_rate", "context", "tail_frames", "tail_value"):
            setattr(self, k, getattr(inner, k))

    def _run(self, mel, at_start, at_end):
        hang, self.hang_s = self.hang_s, 0.0
        time.sleep(hang)
        return self.inner._run(mel, at_start, at_end)


def _speak(srv, text: str, seed: int, out: dict) -> None:
    with ws_connect(srv) as ws:
        jsend(ws, type="start", seed=seed)
        jsend(ws, type="text", text=text)
        jsend(ws, type="end")
        out[seed] = collect(ws)


def _audio(items) -> np.ndarray:
    return np.frombuffer(b"".join(m for m in items if isinstance(m, bytes)), np.int16).astype(np.int32)


def _same_audio(a: np.ndarray, b: np.ndarray) -> bool:
    """The same speech: same length, samples within 1e-3 of full scale (what batching may move
    in float rounding, as in tests/test_server_capacity.py)."""
    return len(a) == len(b) and int(np.abs(a - b).max()) <= 33


@pytest.fixture(scope="module")
def int8(int8_engine):
    """The onnx-int8 engine: its decoder rows are bit-identical batched or alone."""
    return int8_engine


def test_a_poisoned_request_fails_alone_and_a_failed_call_fails_nobody(int8):
    base = int8
    faulty = FaultyAcoustic(base.acoustic, poison_seed=666)
    config = ServerConfig(port=0, static_dir=None, capacity=4, cache_bytes=0)
    with ThreadServer(config, ModelPair(faulty, base.vocoder)) as srv:
        solo: dict = {}
        _speak(srv, SHORT, 1, solo)
        out: dict = {}
        threads = [threading.Thread(target=_speak, args=(srv, SHORT, seed, out)) for seed in (1, 666, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        items, code = out[666]
        assert code == 1011 and events(items, "error")[-1]["code"] == "internal"
        for seed in (1, 2):
            items, code = out[seed]
            assert code == 1000 and events(items)[-1]["type"] == "done"
        assert _same_audio(_audio(out[1][0]), _audio(solo[1][0]))  # its neighbour's failure did not touch it
        # one failing batched call: the runner retries its rows one by one; nobody fails
        faulty.fail_batch, faulty.poison_seed, raised = True, None, faulty.raised
        out = {}
        threads = [threading.Thread(target=_speak, args=(srv, SHORT, seed, out)) for seed in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert faulty.raised == raised + 1 and not faulty.fail_batch
        assert all(out[s][1] == 1000 for s in (1, 2)), {s: (out[s][1], events(out[s][0])[-1]) for s in (1, 2)}
        assert _same_audio(_audio(out[1][0]), _audio(solo[1][0]))
        assert srv.get("/ready")[0] == 200


def test_a_hanging_engine_is_reported_not_waited_on(pack):
    base = shared_engine(pack)
    config = ServerConfig(port=0, static_dir=None, capacity=4, cache_bytes=0, tick_deadline_s=1.0)
    vocoder = HangingVocoder(base.vocoder)
    with ThreadServer(config, ModelPair(base.acoustic, vocoder)) as srv:
        vocoder.hang_s = 4.0
        t0 = time.monotonic()
        with ws_connect(srv) as ws:
            jsend(ws, type="text", text=LONG[:200])
            items, code = collect(ws, timeout=30)
        assert events(items, "error")[-1]["code"] == "engine_unavailable" and code == 1011
        assert time.monotonic() - t0 < 4.0  # told before the stuck call came back
        status, body = srv.get("/ready")
        assert status == 503 and json.loads(body)["status"] == "failed"
        metrics = srv.metrics()
        assert metrics["streamtts_ready"] == 0 and metrics["streamtts_engine_failed"] == 1
        with ws_connect(srv) as ws:  # a new session is told at once
            items, code = collect(ws, timeout=30)
        assert events(items, "error")[-1]["code"] == "engine_unavailable"
        time.sleep(3.5)  # the stuck call returns into a worker that has given up: no crash


def test_an_engine_that_fails_to_load_answers_waiting_sessions(pack, monkeypatch):
    import streamtts.engine_client.inprocess as worker_mod

    loading = threading.Event()

    def slow_broken_load(name, vocoder="auto"):
        loading.set()
        time.sleep(2.0)
        raise OSError("weights are unreadable")

    monkeypatch.setattr(worker_mod, "load_engine", slow_broken_load)
    config = ServerConfig(port=0, static_dir=None, engine="onnx")
    with ThreadServer(config, None, wait_ready=False) as srv:
        assert loading.wait(30)
        out: dict = {}
        waiting = threading.Thread(target=_speak, args=(srv, SHORT, 7, out))
        waiting.start()  # connects while the engine is loading: queued, then told
        waiting.join(30)
        items, code = out[7]
        assert events(items, "error")[-1]["code"] == "engine_unavailable" and code == 1011
        assert "weights are unreadable" in events(items, "error")[-1]["message"]
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
        conn.request("POST", "/v1/audio/speech", json.dumps({"input": SHORT, "response_format": "pcm"}),
                     {"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 503 and json.loads(r.read())["error"]["code"] == "engine_unavailable"
        assert srv.get("/ready")[0] == 503
