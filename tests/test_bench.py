"""`streamtts bench` runs end to end and writes the documented JSON fields per engine."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FIELDS = {"engine", "ttfa_ms_p50", "ttfa_ms_p90", "rtf", "decoder_ms_per_step", "vocoder_rtf",
          "peak_rss_mb", "pinyin_error_rate"}


@pytest.mark.slow
def test_bench_writes_json_with_every_field(tmp_path, pack):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "streamtts", "bench", "--engines", "onnx-int8", "--limit", "2",
                           "--repeats", "1", "--json", str(out)], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    rows = {r["engine"]: r for r in report["results"]}
    assert set(rows) == {"onnx-int8", "upstream-eager"}
    for row in rows.values():
        assert FIELDS <= set(row), row
        assert 0 < row["ttfa_ms_p50"] <= row["ttfa_ms_p90"]
        assert row["rtf"] > 0 and row["decoder_ms_per_step"] > 0 and row["peak_rss_mb"] > 50
        assert 0 <= row["pinyin_error_rate"] <= 0.5
    # streaming's first audio comes long before the whole-sentence baseline has any
    assert rows["onnx-int8"]["ttfa_ms_p50"] < rows["upstream-eager"]["ttfa_ms_p50"]
    assert "| onnx-int8 |" in proc.stdout and report["machine"]["cores"] >= 1
