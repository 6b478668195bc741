"""`streamtts bench` runs end to end and writes the documented JSON fields: per engine (slow: every
engine in its own process, plus Whisper) and the capacity benchmark (fast: 1 and 2 streams of a
short text, in process and through the real server). Relations only, never absolute timings."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FIELDS = {"engine", "ttfa_ms_p50", "ttfa_ms_p90", "rtf", "decoder_ms_per_step", "vocoder_rtf",
          "peak_rss_mb", "pinyin_error_rate"}

CAPACITY_FIELDS = {"mode", "engine", "n", "streams", "streams_finished", "streams_held", "ttfa_text_ms_p50",
                   "ttfa_text_ms_p99", "ttfa_chunk_ms_p50", "ttfa_chunk_ms_p99", "worst_stall_s",
                   "worst_stall_total_s", "underruns", "compute_rtf", "mean_batch_rows", "audio_s", "per_stream"}


@pytest.mark.slow
def test_bench_writes_json_with_every_field(tmp_path, pack):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "streamtts", "bench", "--engines", "onnx-int8", "--limit", "2",
                           "--repeats", "1", "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    rows = {r["engine"]: r for r in report["results"]}
    assert set(rows) == {"onnx-int8+melgan", "upstream-eager"}
    for row in rows.values():
        assert FIELDS <= set(row), row
        assert 0 < row["ttfa_ms_p50"] <= row["ttfa_ms_p90"]
        assert row["rtf"] > 0 and row["decoder_ms_per_step"] > 0 and row["peak_rss_mb"] > 50
        assert 0 < row["vocoder_rtf"] < row["rtf"]
        assert 0 <= row["pinyin_error_rate"] <= 0.5
    # streaming's first audio comes long before the whole-sentence baseline has any
    assert rows["onnx-int8+melgan"]["ttfa_ms_p50"] < rows["upstream-eager"]["ttfa_ms_p50"]
    assert "| onnx-int8+melgan |" in proc.stdout and report["machine"]["cores"] >= 1


def test_capacity_bench_writes_json_with_every_field(tmp_path, pack):
    out = tmp_path / "cap.json"
    proc = subprocess.run([sys.executable, "-m", "streamtts", "bench", "--concurrency", "1,2", "--engine", "onnx-int8",
                           "--vocoder", "melgan", "--text", "你好，今天天气很好。", "--stagger", "0.3", "--ws",
                           "--capacity", "1", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert report["kind"] == "capacity" and report["engine"] == "onnx-int8+melgan"
    assert {"cpu", "cores", "python", "onnxruntime"} <= set(report["machine"])
    assert report["settings"]["start_buffer_s"] == 0.2 and report["settings"]["fragment_chars"] == 3
    rows = report["rows"]
    assert [(r["mode"], r["n"]) for r in rows] == [("in-process", 1), ("in-process", 2), ("ws", 1),
                                                   ("ws-over-capacity", 3)]
    for r in rows:
        assert CAPACITY_FIELDS <= set(r), sorted(CAPACITY_FIELDS - set(r))
        assert 0 <= r["streams_held"] <= r["streams"] <= r["n"]
        assert r["streams_finished"] >= 1 and r["audio_s"] > 0.5 * r["streams_finished"]
        # measured from the fragment that completed the first chunk: never before the first fragment
        assert 0 < r["ttfa_chunk_ms_p50"] <= r["ttfa_text_ms_p50"]
        assert r["ttfa_chunk_ms_p99"] <= r["ttfa_text_ms_p99"]
        assert r["ttfa_text_ms_p50"] <= r["ttfa_text_ms_p99"]
        assert 0 <= r["worst_stall_s"] <= r["worst_stall_total_s"]
        assert r["compute_rtf"] > 0 and r["mean_batch_rows"] >= 1
        assert len(r["per_stream"]) == r["streams"]
        for s in r["per_stream"]:
            ok = s["stall_total_s"] <= report["settings"]["stall_tolerance_s"] and s["finished"] and not s["failed"]
            assert s["held"] == ok
    inproc = [r for r in rows if r["mode"] == "in-process"]
    assert all(r["streams_finished"] == r["n"] for r in inproc)
    assert all(1 <= r["mean_batch_rows"] <= r["n"] for r in inproc)
    assert 0 <= report["capacity"] <= 2
    assert report["tick_profile"]["median"]["decoder_call_ms"] > 0
    over = rows[-1]
    assert over["admitted"] + over["admitted_after_queue"] + over["refused"] <= over["n"] == 3
    assert over["held_admitted_at_once"] <= over["admitted"]
    assert "| in-process | 2 |" in proc.stdout and "capacity:" in proc.stdout
