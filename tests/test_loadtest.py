"""``streamtts loadtest`` against a real ``streamtts serve`` (the shared int8_server of
tests/support/fixtures.py: onnx-int8, capacity 4, no phrase cache so loaded sessions are synthesized
in batches): 4 clients for 40 s, every behaviour, no violation; and the checks it makes on the wire
flag what they must."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from streamtts.loadtest.report import Parity
from streamtts.loadtest.session import BEHAVIOURS
from streamtts.loadtest.wire import SessionLog, Utterance, Wire
from support.fixtures import API_KEY

DURATION_S = 30  # long enough for every behaviour of every client and a warm-up third


@pytest.fixture(scope="module")
def server(int8_server):
    return int8_server


def test_forty_seconds_of_four_clients_keep_the_protocol(server, tmp_path):
    out = tmp_path / "loadtest.json"
    cmd = [sys.executable, "-m", "streamtts", "loadtest", "--url", f"ws://127.0.0.1:{server.port}/v1/stream",
           "--api-key", API_KEY, "--clients", "4", "--duration", str(DURATION_S), "--seed", "0", "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:] + server.output()[-2000:]
    r = json.loads(out.read_text())
    assert r["ok"] and r["violation_count"] == 0 and r["violations"] == []
    served = r["sessions"]["served_by_behaviour"]
    assert all(served[b] >= 1 for b in BEHAVIOURS), served
    outcomes = r["sessions"]["by_outcome"]
    assert outcomes.get("done", 0) >= 1 and outcomes.get("disconnected", 0) >= 1 and "hung" not in outcomes
    assert r["errors_by_code"] == {}
    assert r["ttfa_ms"]["n"] >= 1 and r["ttfa_ms"]["p50"] <= r["ttfa_ms"]["p99"]
    for kind in ("fast", "playback"):  # cancel latency recorded for both kinds of reader
        c = r["cancel_latency_ms"][kind]
        assert c["n"] >= 1 and c["p50"] <= c["p99"] <= c["max"], (kind, c)
    assert r["playback"]["streams"] >= 1 and r["playback"]["max_lag_ms"]["n"] == r["playback"]["streams"]
    # loaded sessions were synthesized (no cache) and still matched their solo references
    p = r["parity"]
    assert p["via"] == "synthesis" and p["references"] == 3 and p["segments_compared"] >= 1
    assert p["max_abs_diff"] <= p["tolerance"]
    rss = r["rss"]  # sampled over the run from /metrics
    assert len(rss["samples"]) >= 5 and all(s["rss_mb"] > 0 for s in rss["samples"])
    assert rss["start_mb"] <= rss["max_mb"] and rss["warmup_end_s"] >= DURATION_S / 3 - 0.5
    assert r["server"]["capacity"] == 4 and r["server"]["cache"] == "off"


class _NoSocket:
    pass


def _wire(width: int = 2) -> Wire:
    log = SessionLog("t", 0, "cancel_fast", "biaobei", 0, width=width)
    wire = Wire(_NoSocket(), log, {})
    wire.feed(json.dumps({"type": "ready", "voice": "biaobei", "seed": 0}), 0.0)
    wire.begin("你好。")
    return wire


def test_the_wire_checks_flag_old_audio_after_cancelled_and_unexpected_errors():
    wire = _wire()
    wire.feed(b"\0\0" * 100, 1.0)
    wire.cancel_at = 1.0
    wire.feed(json.dumps({"type": "cancelled"}), 1.25)
    assert wire.log.cancel_latency_s == 0.25 and wire.log.violations == []
    wire.feed(b"\0\0" * 10, 1.3)  # old audio after cancelled
    wire.feed(json.dumps({"type": "segment", "index": 0, "text": "你好。", "audio_start_ms": 0,
                          "audio_end_ms": 5.0}), 1.3)
    wire.feed(json.dumps({"type": "error", "code": "server_busy", "message": "", "fatal": True}), 1.4)
    wire.feed(json.dumps({"type": "error", "code": "internal", "message": "boom", "fatal": True}), 1.4)
    wire.feed(b"\0\0\0", 1.5)  # splits a sample
    v = wire.log.violations
    assert any("binary frame (20 bytes) after cancelled" in x for x in v)
    assert any("segment after cancelled" in x for x in v)
    assert any("error internal" in x for x in v) and not any("server_busy" in x for x in v)
    assert any("splits a sample" in x for x in v)
    assert wire.log.admission == ["server_busy"]


def test_parity_flags_audio_that_is_not_the_streams_own():
    ref = np.sin(np.arange(2205, dtype=np.float32) / 7).astype(np.float32)
    key = ("你好。", "biaobei", 0)
    good, bad = (SessionLog(n, 0, "llm", "biaobei", 0, width=4) for n in ("good", "bad"))
    parity = Parity({key: [("你好。", ref)]}, 1e-3)
    for log, audio in ((good, ref), (bad, ref[::-1].copy())):
        log.audio += audio.astype("<f4").tobytes()
        log.utterances.append(Utterance("你好。", key, [("你好。", 0, len(audio))]))
        parity.check(log)
    stats = parity.summary()
    assert stats["segments_compared"] == 2 and stats["bit_exact"] == 1
    assert good.violations == [] and len(bad.violations) == 1 and "differs from its solo audio" in bad.violations[0]


def test_parity_skips_a_chunk_cut_early_and_compares_the_sentences_after_it():
    hello = np.sin(np.arange(2205, dtype=np.float32) / 7).astype(np.float32)
    bye = np.cos(np.arange(1800, dtype=np.float32) / 5).astype(np.float32)
    key = ("你好朋友。再见。", "biaobei", 0)
    parity = Parity({key: [("你好朋友。", hello), ("再见。", bye)]}, 1e-3)
    # the text stalled after 你好: the server cut there, then went on on the solo's boundaries
    cut = np.zeros(900, np.float32)
    log = SessionLog("cut", 0, "slow", "biaobei", 0, width=4)
    log.audio += np.concatenate([cut, cut, bye]).astype("<f4").tobytes()
    segments = [("你好", 0, 900), ("朋友。", 900, 1800), ("再见。", 1800, 3600)]
    log.utterances.append(Utterance(key[0], key, segments))
    parity.check(log)
    assert log.violations == [] and parity.summary()["segments_recut"] == 2
    assert parity.summary()["segments_compared"] == 1 and parity.summary()["bit_exact"] == 1
    # segments that do not spell the solo text are a violation, cut early or not
    lost = SessionLog("lost", 0, "slow", "biaobei", 0, width=4)
    lost.audio += np.concatenate([cut, bye]).astype("<f4").tobytes()
    lost.utterances.append(Utterance(key[0], key, [("你好", 0, 900), ("再见。", 900, 2700)]))
    parity.check(lost)
    assert len(lost.violations) == 1 and "is not the solo text at character 2" in lost.violations[0]


def test_rss_growth_is_measured_after_warm_up_and_the_phrase_cache_filling():
    from streamtts.loadtest.report import rss_summary

    mb = 1024 * 1024
    # the cache grows until 40 s of a 60 s run, then stays: warm-up ends there, not at 20 s
    rows = [{"t_s": t, "rss_bytes": (600 + t) * mb, "cache_bytes": min(t, 40) * mb, "admitted": 4}
            for t in range(0, 61, 5)]
    r = rss_summary(rows, 60.0)
    assert r["warmup_end_s"] == 40 and r["warmup_by"] == "cache"
    assert r["at_warmup_end_mb"] == 640 and r["end_mb"] == 660 and r["growth_after_warmup_mb"] == 20
    assert abs(r["slope_after_warmup_mb_per_min"] - 60) < 0.1
    flat = rss_summary([{**s, "cache_bytes": 0} for s in rows], 60.0)  # no cache: the first third
    assert flat["warmup_end_s"] == 20 and flat["warmup_by"] == "third" and flat["growth_after_warmup_mb"] == 40
