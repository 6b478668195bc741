"""scripts/gpu-prep.py + scripts/gpu-check.py, dry run on the CPU: inputs prepared from the real
packs, then the check run as on a bare GPU machine (its own process), small N."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
CHECK = ROOT / "scripts" / "gpu-check.py"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    from streamtts.bench.gpu_inputs import LIMIT_BYTES, write_inputs

    folder = tmp_path_factory.mktemp("gpu-inputs")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the 2-core machine is shared: one thread is faster than two contending
    try:
        meta = write_inputs(folder, ["你好。"], references=1)
    finally:
        torch.set_num_threads(threads)
    assert meta["bytes"] <= LIMIT_BYTES
    return folder


@pytest.fixture(scope="module")
def checked(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-check")
    proc = subprocess.run([sys.executable, str(CHECK), str(out), "--inputs", str(inputs), "--device", "cpu",
                           "--levels", "1,2", "--dtypes", "float32", "--stagger", "0.1", "--threads", "1"],
                          capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    return proc, json.loads((out / "gpu-check.json").read_text())


def test_check_dry_run_parity_and_rows(checked):
    proc, report = checked
    assert proc.returncode == 0, proc.stderr[-2000:]
    p = report["parity"]["float32"]
    # the cuda code path on the CPU against the CPU float32 reference from the same weights
    assert p["same_steps"] and p["mel_max_abs_diff"] < 1e-3 and p["audio_max_abs_diff"] < 1e-3
    rows = report["rows"]["float32"]
    assert [r["n"] for r in rows] == [1, 2]
    for r in rows:
        assert r["streams_finished"] == r["n"] and r["failed"] == 0
        assert r["ttfa_ms_p50"] > 0 and r["tick_ms"]["decoder"] > 0 and r["tick_ms"]["vocoder"] > 0
        assert r["gpu_max_memory_mb"] is None  # no GPU, no figure
    assert report["capture"]["float32"]["blocks"] >= 1
    assert "errors" not in report and not report["skipped"]  # nothing failed over to the eager path


def test_check_imports_nothing_a_bare_gpu_machine_lacks(checked):
    proc, report = checked
    assert report["forbidden_imports"] == []
    # the short table comes last
    tail = proc.stdout.strip().splitlines()
    assert tail[-1].startswith("wrote ") and any(line.startswith("float32       2") for line in tail)


def test_check_on_cuda_without_cuda_and_without_inputs(tmp_path, inputs):
    no_gpu = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # a machine without CUDA, anywhere
    proc = subprocess.run([sys.executable, str(CHECK), str(tmp_path / "o"), "--inputs", str(inputs)],
                          capture_output=True, text=True, timeout=120, cwd=str(ROOT), env=no_gpu)
    assert proc.returncode == 2 and proc.stderr.startswith("error [cuda_unavailable]:")
    proc = subprocess.run([sys.executable, str(CHECK), str(tmp_path / "o"), "--inputs", str(tmp_path / "none"),
                           "--device", "cpu"], capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    assert proc.returncode == 2 and proc.stderr.startswith("error [gpu_inputs]:")
