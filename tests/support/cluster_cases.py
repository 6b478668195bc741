"""The cluster's cases, run by tests/test_cluster.py inside a network namespace that has only `lo`
(so every Ray process and every client can only talk on loopback). One cluster for all of them:
`streamtts serve --replicas 2` (a local Ray head, two onnx-int8 + MelGAN replicas, the aiohttp
front end) as a child process; this process is a second Ray driver that reads the replicas'
ledgers, scales the deployment and kills replicas. The cases run in file order: the last one
leaves no replica."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time

import numpy as np
import pytest

from support.servers import ProcessServer, free_port
from support.ws import audio_bytes, collect, events, jsend, read_until, ws_connect

REPORT = os.environ.get("STREAMTTS_CLUSTER_REPORT")  # measured figures go here (JSON lines)

# (text, voice, seed): different lengths, voices and seeds, so a mix-up shows
JOBS = [("今天天气很好。", "biaobei", 1), ("我们一起去公园散步吧。", "Aiyue", 2), ("你好。", "Xiaogang", 3),
        ("欢迎使用流式语音合成。", "Aibao", 4), ("明天会下雨吗？", "biaobei", 5), ("请把门关上，谢谢。", "Siyue", 6),
        ("这本书很有意思。", "Aijia", 7), ("火车八点出发。", "Xiaomei", 8)]
# several chunks each, so a replica dies while every stream is mid-utterance
LONG_JOBS = [("今天天气很好，我们一起去公园散步吧。明天会下雨吗？请把门关上，谢谢。这本书很有意思。", "biaobei", 11),
             ("欢迎使用流式语音合成。火车八点出发，请大家准时到达车站。我们一起去公园散步吧。", "Aiyue", 12),
             ("这本书很有意思，我已经读了三遍了。你好，很高兴认识你。明天见。", "Xiaogang", 13),
             ("请把门关上，谢谢。今天天气很好，阳光明媚。我们一起去公园散步吧，好不好？", "Aibao", 14)]


def report(**figures) -> None:
    print("CLUSTER-FIGURES", json.dumps(figures), flush=True)
    if REPORT:
        with open(REPORT, "a") as f:
            f.write(json.dumps(figures) + "\n")


def only_loopback() -> list[str]:
    """The interfaces that have an address here (a namespace with only `lo`: ['lo'])."""
    out = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, check=True).stdout
    return sorted({line.split()[1] for line in out.splitlines() if line.strip()})


@pytest.fixture(scope="module")
def cluster(int8_engine):
    assert os.environ.get("STREAMTTS_NETNS") == "1", "run through tests/test_cluster.py (network namespace)"
    assert only_loopback() == ["lo"], f"the namespace has more than loopback: {only_loopback()}"
    temp = tempfile.mkdtemp(prefix="stc-", dir="/tmp")  # Ray's socket paths must stay short
    port = free_port()
    with ProcessServer("--replicas", "2", "--ray-temp-dir", temp, "--ray-port", str(port), "--cache-mb", "0",
                       "--queue-timeout", "120") as srv:
        from streamtts.cluster.local import connect

        connect(f"127.0.0.1:{port}")
        from ray import serve

        handle = serve.get_deployment_handle("EngineReplica", app_name="streamtts")
        handle.stats.remote({}).result(timeout_s=120)  # makes this process's router
        yield Cluster(srv, handle)
        check_sockets()
        import ray

        ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


class Cluster:
    def __init__(self, srv, handle):
        self.srv, self.handle = srv, handle

    def replicas(self) -> dict[str, dict]:
        from streamtts.cluster.registry import live

        return live()

    def stats(self) -> dict[str, dict]:
        """Every live replica's stats and ledger (each call routed to that replica)."""
        out = {}
        for rid in list(self.replicas()):
            try:
                out[rid] = self.handle.stats.remote({"replica": rid}).result(timeout_s=30)
            except Exception:  # died meanwhile
                continue
        return out

    def wait_replicas(self, n: int, timeout: float = 300.0) -> dict[str, dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.stats()
            if len(stats) >= n:
                return stats
            time.sleep(0.5)
        raise AssertionError(f"fewer than {n} replicas after {timeout:g} s: {self.replicas()}")


# The engine settings of the fixture's `streamtts serve --replicas 2` (ProcessServer's engine and
# vocoder, --cache-mb 0), as a Serve config's application args
APP_ARGS = {"engine": "onnx-int8", "vocoder": "melgan", "cache_bytes": 0}


def serve_config_run(replicas: int) -> None:
    """`serve run CONFIG --non-blocking`: the app as a Serve config (the declarative deploy that
    `serve deploy` and a RayService make) with ``replicas`` engine replicas. While the config
    differs only in num_replicas its code version stays, so Serve scales in place (a downscale
    stops only the replicas beyond the count); the first such deploy replaces the replicas that
    `streamtts serve` deployed with serve.run."""
    from ray.serve.scripts import cli

    config = {"proxy_location": "Disabled",
              "applications": [{"name": "streamtts", "route_prefix": None,
                                "import_path": "streamtts.cluster.replica:build_app", "args": APP_ARGS,
                                "deployments": [{"name": "EngineReplica", "num_replicas": replicas}]}]}
    fd, path = tempfile.mkstemp(suffix=".yaml")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(config, f)  # JSON is YAML
        cli.main(["run", path, "--non-blocking"], standalone_mode=False)
    finally:
        os.unlink(path)


def wait_deployment(cluster: "Cluster", replicas: int, gone=(), timeout: float = 300.0) -> dict[str, dict]:
    """Until Serve runs exactly ``replicas`` replicas (none stopping or starting), none of them in
    ``gone``, and both this process and the front end route to just those; their stats."""
    from ray import serve

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        app = serve.status().applications.get("streamtts")
        states = app.deployments["EngineReplica"].replica_states if app is not None else None
        live = set(cluster.replicas())
        if (states == {"RUNNING": replicas} and str(app.status).endswith("RUNNING") and len(live) == replicas
                and not live & set(gone)
                and cluster.srv.metrics().get("streamtts_cluster_replicas") == replicas):
            stats = cluster.stats()
            if set(stats) == live:
                return stats
        time.sleep(0.2)
    raise AssertionError(f"not {replicas} replicas (without {sorted(gone)}) after {timeout:g} s: "
                         f"{serve.status().applications.get('streamtts')}, routed: {sorted(cluster.replicas())}")


def check_sockets() -> None:
    """No socket of any process in this namespace has a non-loopback address."""
    import psutil

    import ipaddress

    def loopback(ip: str) -> bool:
        addr = ipaddress.ip_address(ip.split("%")[0])
        if addr.version == 6 and addr.ipv4_mapped is not None:  # ::ffff:127.0.0.1
            addr = addr.ipv4_mapped
        return addr.is_loopback or addr.is_unspecified  # unspecified: a listener; only lo exists here

    bad = []
    conns = psutil.net_connections(kind="inet")
    for conn in conns:
        for addr in (conn.laddr, conn.raddr):
            if addr and not loopback(addr.ip):
                bad.append((conn.pid, conn.laddr, conn.raddr, conn.status))
    assert conns, "no sockets seen: the check looked at nothing"
    assert not bad, f"sockets with non-loopback addresses: {bad}"
    assert only_loopback() == ["lo"]


def solo(engine, text, voice, seed) -> np.ndarray:
    from streamtts.speaker import Audio, Speaker

    return np.concatenate([e.audio for e in Speaker(engine).speak(text, voice=voice, seed=seed)
                           if isinstance(e, Audio)])


def speak(srv, text, voice, seed, out: dict, key, started: threading.Event | None = None) -> None:
    """One WebSocket utterance; ``out[key]`` = (messages, close code, arrival times of audio)."""
    items, times = [], []
    with ws_connect(srv) as ws:
        jsend(ws, type="start", voice=voice, seed=seed, format="pcm_f32le")
        jsend(ws, type="text", text=text)
        jsend(ws, type="end")
        from websockets.exceptions import ConnectionClosed

        code = None
        try:
            while True:
                m = ws.recv(timeout=180)
                if isinstance(m, bytes):
                    times.append(time.monotonic())
                    if started is not None:
                        started.set()
                    items.append(m)
                else:
                    items.append(json.loads(m))
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
    out[key] = (items, code, times)


def same_audio(items, want: np.ndarray) -> tuple[bool, str]:
    got = np.frombuffer(b"".join(m for m in items if isinstance(m, bytes)), "<f4")
    if len(got) != len(want):
        return False, f"{len(got)} samples, solo has {len(want)}"
    err = float(np.abs(got - want).max()) if len(got) else 0.0
    return err <= 1e-3, f"max difference {err:.2e}"


def test_loopback_only_namespace(cluster):
    assert only_loopback() == ["lo"]
    assert cluster.srv.wait_ready()["engine"].startswith("cluster:")
    check_sockets()


def test_eight_streams_get_their_solo_audio_from_both_replicas(cluster, int8_engine):
    """Eight utterances at once: each gets its solo audio, and their first chunks, chosen all
    together, spread over the replicas by headroom (none is given more than its capacity while
    the other still has room)."""
    want = [solo(int8_engine, *job) for job in JOBS]
    cluster.wait_replicas(2)
    caps = {rid: int(s.get("capacity") or 0) for rid, s in cluster.replicas().items()}
    results: dict = {}
    threads = [threading.Thread(target=speak, args=(cluster.srv, *job, results, i)) for i, job in enumerate(JOBS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    for i, (text, voice, seed) in enumerate(JOBS):
        items, code, _ = results[i]
        assert code == 1000 and events(items)[-1]["type"] == "done", (text, events(items)[-1:])
        ok, why = same_audio(items, want[i])
        assert ok, (text, why)
    seeds = {seed for _, _, seed in JOBS}
    stats = cluster.stats()
    served = {rid: sum(1 for c in s["ledger"] if c["seed"] in seeds) for rid, s in stats.items()}
    assert len(served) == 2 and all(n > 0 for n in served.values()), f"chunks per replica: {served}"
    first: dict[int, tuple[float, str]] = {}  # seed -> (received, replica) of its first chunk
    for rid, s in stats.items():
        for c in s["ledger"]:
            if c["seed"] in seeds and (c["seed"] not in first or c["received"] < first[c["seed"]][0]):
                first[c["seed"]] = (c["received"], rid)
    firsts = {rid: sum(1 for _, r in first.values() if r == rid) for rid in stats}
    report(case="eight_streams", chunks_per_replica=served, first_chunks_per_replica=firsts, capacities=caps)
    for rid, other in (tuple(stats), tuple(stats)[::-1]):  # (a live capacity may move by one)
        assert firsts[rid] <= caps.get(rid, 0) + 1 or firsts[other] >= caps.get(other, 0) - 1, \
            f"first chunks per replica {firsts}, capacities {caps}"


def test_cancel_stops_the_row_at_the_replica(cluster):
    seed = 4242
    text = ("今天天气很好，我们一起去公园散步吧。欢迎使用流式语音合成，火车八点出发，请大家准时到达车站。"
            "这本书很有意思，我已经读了三遍了，明天还要再读一遍。") * 2
    with ws_connect(cluster.srv) as ws:
        jsend(ws, type="start", voice="biaobei", seed=seed, format="pcm_f32le")
        jsend(ws, type="text", text=text)
        jsend(ws, type="end")
        while not isinstance(ws.recv(timeout=120), bytes):  # its first audio
            pass
        deadline = time.monotonic() + 60
        while not [c for s in cluster.stats().values() for c in s["ledger"]
                   if c["seed"] == seed and c["outcome"] == "running"]:  # a chunk of it is being made
            assert time.monotonic() < deadline, "no call of the utterance was under way at a replica"
            time.sleep(0.01)
        t_cancel = time.monotonic()
        jsend(ws, type="cancel")
        while True:
            m = ws.recv(timeout=60)
            if isinstance(m, str) and json.loads(m)["type"] in ("cancelled", "done"):
                break
    deadline = time.monotonic() + 30
    record = None
    while time.monotonic() < deadline:
        calls = [c for s in cluster.stats().values() for c in s["ledger"] if c["seed"] == seed]
        cancelled = [c for c in calls if c["outcome"] == "cancelled"]
        if cancelled and cancelled[0].get("settled"):
            record = cancelled[0]
            break
        time.sleep(0.2)
    assert record is not None, f"no cancelled call of seed {seed} at the replicas: {calls}"
    assert record["worked"] is not None
    stop_s = record["worked"] - record["cancelled"]  # the row's last tick ended this long after
    seen_s = record["cancelled"] - t_cancel  # the client's cancel reached the replica
    report(case="cancel", replica_saw_cancel_after_s=round(seen_s, 4), row_last_worked_after_cancel_s=round(stop_s, 4),
           client_cancel_to_row_stopped_s=round(record["worked"] - t_cancel, 4))
    assert stop_s <= 0.1, f"the row was worked on {stop_s * 1000:.0f} ms after the replica saw the cancel"


def test_openai_http_through_the_replicas(cluster, int8_engine):
    """The OpenAI route is the same code over the cluster client: 24 kHz pcm as long as the solo audio."""
    from streamtts.server.openai_api import OPENAI_VOICES
    from support.servers import http

    text = "今天天气很好，我们一起去公园散步吧。"
    calls = cluster.srv.metrics().get("streamtts_cluster_calls", 0.0)
    status, body = http(cluster.srv.url + "/v1/audio/speech", {"model": "tts-1", "voice": "alloy", "input": text,
                                                               "response_format": "pcm"}, timeout=120)
    assert status == 200, body[:300]
    want = solo(int8_engine, text, OPENAI_VOICES["alloy"], 0)
    assert abs(len(body) / 2 / 24000 - len(want) / 22050) < 0.01, (len(body), len(want))
    deadline = time.monotonic() + 10
    while cluster.srv.metrics().get("streamtts_cluster_calls", 0.0) <= calls and time.monotonic() < deadline:
        time.sleep(0.3)
    assert cluster.srv.metrics().get("streamtts_cluster_calls", 0.0) > calls


def test_a_second_front_end_shares_the_replicas_capacity(cluster):
    """Two front ends on one cluster: the streams one holds are taken off what the other admits.
    While a second front end (here, in this process) holds the replicas' whole capacity, a
    session on the first is queued; once the second lets go it is served."""
    from streamtts.cluster.client import ClusterEngineClient
    from streamtts.engine_client.admission import Busy
    from streamtts.server.config import ServerConfig

    cluster.wait_replicas(2)
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    def on_loop(fn):  # the admission lives on its front end's loop
        async def call():
            return fn()
        return asyncio.run_coroutine_threadsafe(call(), loop).result(30)

    second = ClusterEngineClient(ServerConfig(static_dir=None))
    ready = threading.Event()
    loop.call_soon_threadsafe(second.start, ready.set)
    slots = []
    try:
        assert ready.wait(120) and second.failure is None, second.failure
        deadline = time.monotonic() + 60
        while cluster.srv.metrics()["streamtts_capacity"] > 0:  # the first admits nothing more
            assert time.monotonic() < deadline, f"the first front end still admits: {cluster.srv.metrics()}"
            try:
                slots.append(on_loop(second.admission.take))
            except Busy:
                pass
            time.sleep(0.05)
        held = len(slots)
        with ws_connect(cluster.srv) as ws:
            jsend(ws, type="start", voice="biaobei", seed=31, format="pcm_f32le")
            jsend(ws, type="text", text="你好，很高兴认识你。")
            jsend(ws, type="end")
            queued = read_until(ws, lambda it: events(it, "queued") or audio_bytes(it), timeout=60)
            assert events(queued, "queued") and not audio_bytes(queued), events(queued)
            for slot in slots:
                on_loop(slot.release)
            slots = []
            items, code = collect(ws, timeout=180)
        assert code == 1000 and events(items)[-1]["type"] == "done", (code, events(items)[-1:])
        assert audio_bytes(items) > 0
        report(case="two_front_ends", slots_held_by_the_second=held)
    finally:
        for slot in slots:
            on_loop(slot.release)
        loop.call_soon_threadsafe(second.stop)
        loop.call_soon_threadsafe(loop.stop)


def test_scale_down_lets_the_removed_replica_finish_its_chunks(cluster, int8_engine):
    """Scaling down from two replicas to one while both hold chunks of long utterances: the replica
    that goes finishes the calls it holds (graceful shutdown), so every stream completes with its
    solo audio and nothing fails over. Then back to two replicas for the cases after this one."""
    old = set(cluster.wait_replicas(2))
    serve_config_run(2)  # the app as a Serve config, whose num_replicas alone can change next
    jobs = [(text, voice, seed + 10) for text, voice, seed in LONG_JOBS]  # seeds of this case only
    seeds = {seed for _, _, seed in jobs}
    want = [solo(int8_engine, *job) for job in jobs]
    wait_deployment(cluster, 2, gone=old)
    failovers = cluster.srv.metrics().get("streamtts_cluster_failovers", 0.0)
    results: dict = {}
    threads = [threading.Thread(target=speak, args=(cluster.srv, *job, results, i)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while True:  # both replicas hold a chunk of these utterances: whichever goes has one under way
        held = {rid: [c for c in s["ledger"] if c["seed"] in seeds and c["outcome"] == "running"]
                for rid, s in cluster.stats().items()}
        if len(held) == 2 and all(held.values()):
            break
        assert time.monotonic() < deadline, f"the replicas did not both hold a chunk: {held}"
        time.sleep(0.01)
    t_scale = time.monotonic()
    serve_config_run(1)
    [kept] = wait_deployment(cluster, 1, timeout=120)  # the removed replica has stopped
    gone_s = time.monotonic() - t_scale
    [victim] = set(held) - {kept}
    for t in threads:
        t.join(300)
    for i, (text, voice, seed) in enumerate(jobs):
        items, code, _ = results[i]
        assert code == 1000 and events(items)[-1]["type"] == "done", (text, events(items)[-1:])
        ok, why = same_audio(items, want[i])
        assert ok, (text, why)
    assert cluster.srv.metrics().get("streamtts_cluster_failovers", 0.0) == failovers, "a chunk was sent again"
    # the chunks the removed replica held were not made again at the one that stayed
    made_again = [c for c in cluster.stats()[kept]["ledger"]
                  if (c["seed"], c["text"]) in {(h["seed"], h["text"]) for h in held[victim]}]
    assert not made_again, f"chunks of the removed replica were made again: {made_again}"
    report(case="scale_down", removed=victim, chunks_it_held=len(held[victim]),
           replica_stopped_after_s=round(gone_s, 3))
    serve_config_run(2)
    wait_deployment(cluster, 2)


def test_replica_killed_mid_utterance_streams_complete_with_solo_audio(cluster, int8_engine):
    cluster.wait_replicas(2)
    want = [solo(int8_engine, *job) for job in LONG_JOBS]
    before = cluster.srv.metrics().get("streamtts_cluster_failovers", 0.0)
    results: dict = {}
    started = [threading.Event() for _ in LONG_JOBS]
    threads = [threading.Thread(target=speak, args=(cluster.srv, *job, results, i, started[i]))
               for i, job in enumerate(LONG_JOBS)]
    for t in threads:
        t.start()
    for ev in started:
        assert ev.wait(120), "a stream got no audio"
    stats = cluster.stats()
    victim = max(stats.values(), key=lambda s: s["active"])
    assert victim["active"] > 0, f"no replica holds a call: {[(s['replica'], s['active']) for s in stats.values()]}"
    t_kill = time.monotonic()
    os.kill(victim["pid"], signal.SIGKILL)
    for t in threads:
        t.join(300)
    gaps = []
    for i, (text, voice, seed) in enumerate(LONG_JOBS):
        items, code, times = results[i]
        assert code == 1000 and events(items)[-1]["type"] == "done", (text, events(items)[-1:])
        ok, why = same_audio(items, want[i])
        assert ok, (text, why)
        after = [t for t in times if t >= t_kill]
        before_kill = [t for t in times if t < t_kill]
        if after and before_kill:
            gaps.append(after[0] - before_kill[-1])
    metrics = cluster.srv.metrics()
    failovers = metrics.get("streamtts_cluster_failovers", 0.0) - before
    assert failovers >= 1, "no chunk was sent again"
    report(case="failover", killed=victim["replica"], calls_on_it=victim["active"], failovers=failovers,
           front_end_gap_s=metrics.get("streamtts_cluster_failover_gap_seconds_last"),
           client_gap_after_kill_s=[round(g, 3) for g in gaps])


def test_no_replica_left_is_a_typed_error_within_two_seconds(cluster):
    stats = cluster.wait_replicas(2)
    with ws_connect(cluster.srv) as ws, ws_connect(cluster.srv) as bot:
        for sock in (ws, bot):  # both sockets are open before the replicas go
            jsend(sock, type="start", voice="biaobei", seed=7, format="pcm_f32le")
            assert json.loads(sock.recv(timeout=30))["type"] == "ready"
        for s in stats.values():
            os.kill(s["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        jsend(ws, type="text", text="今天天气很好，我们一起去公园散步吧。")
        jsend(ws, type="end")
        jsend(bot, type="text", text="今天天气很好，我们一起去公园散步吧。")
        jsend(bot, type="flush")  # no `end`: a bot's socket that should outlive the failure
        items, code = collect(ws, timeout=30)
        took = time.monotonic() - t0
        failed = read_until(bot, lambda it: events(it, "error"), timeout=30)
        jsend(bot, type="end")  # it lived: its end is answered with done and a normal close
        rest, bot_code = collect(bot, timeout=30)
    errors = events(items, "error")
    assert errors and errors[-1]["code"] == "engine_unavailable", events(items)
    report(case="no_replica", error_after_s=round(took, 3), close_code=code)
    assert took <= 2.0, f"the error came after {took:.2f} s"
    error = events(failed, "error")[-1]
    assert error["code"] == "engine_unavailable" and error["fatal"] is False, error
    assert bot_code == 1000 and events(rest)[-1]["type"] == "done", (bot_code, events(rest))
