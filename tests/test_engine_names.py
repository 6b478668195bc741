"""Engine names: every backend in engines/ is reachable by name, from the registry and the CLI."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from engines import registry
from engines.registry import ENGINE_NAMES, create_acoustic, create_models

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


def _no_pack(*args, **kwargs):
    raise AssertionError("the voice pack was looked at before TensorRT was")


def test_every_acoustic_backend_has_a_name():
    assert set(ENGINE_NAMES) == {"auto", "torch", "onnx", "onnx-int8", "cuda", "tensorrt"}


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_tensorrt_without_tensorrt_is_its_typed_error(monkeypatch):
    from engines.tensorrt_backend import TensorRTUnavailableError

    monkeypatch.setattr(registry, "ensure_pack", _no_pack)
    for build in (lambda: create_models("tensorrt"), lambda: create_models(" TensorRT ", vocoder="melgan"),
                  lambda: create_acoustic("tensorrt")):
        with pytest.raises(TensorRTUnavailableError) as err:
            build()
        assert err.value.code == "tensorrt_unavailable" and "tensorrt" in err.value.message.lower()


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_cli_synth_with_tensorrt_exits_2_with_the_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "streamtts", "synth", "你好。", "-o", str(tmp_path / "x.wav"),
                           "--engine", "tensorrt"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error [tensorrt_unavailable]: "), proc.stderr
    assert not (tmp_path / "x.wav").exists()


@pytest.mark.parametrize("command", ["synth", "serve"])
def test_cli_help_lists_every_engine_name(command):
    from streamtts.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices[command]
    engine = next(a for a in sub._actions if a.dest == "engine")
    assert all(name in engine.help for name in ENGINE_NAMES), engine.help
