"""examples/*.py run end to end against the real server (no audio device: file output)."""

from __future__ import annotations

import subprocess
import sys
import wave
from pathlib import Path

import pytest

from support.fixtures import API_KEY
from support.servers import ROOT


@pytest.fixture(scope="module")
def server(int8_server):
    return int8_server


def example(name: str, *args: str, cwd: Path) -> str:
    r = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args], cwd=cwd, capture_output=True,
                       text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def seconds(path: Path) -> float:
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        return w.getnframes() / w.getframerate()


def test_llm_tokens_bargein(server, tmp_path):
    out = example("llm_tokens_bargein.py", "--url", server.ws_url, "--api-key", API_KEY, "--barge-in-after", "0.8",
                  cwd=tmp_path)
    assert "user barges in: cancel" in out and "no more audio of that answer" in out
    first, second = seconds(tmp_path / "bargein-1.wav"), seconds(tmp_path / "bargein-2.wav")
    assert 0.3 < first < 20 and 2.0 < second < 8.0


def test_openai_sdk(server, tmp_path):
    pytest.importorskip("openai", reason="the openai package is not installed")
    out = example("openai_sdk.py", "--base-url", server.url + "/v1", "--api-key", API_KEY, "-o", "s.wav",
                  cwd=tmp_path)
    assert "wrote s.wav" in out
    with wave.open(str(tmp_path / "s.wav"), "rb") as w:
        assert w.getframerate() == 24000
    assert seconds(tmp_path / "s.wav") > 2.0


def test_live_playback_falls_back_to_a_file(server, tmp_path):
    from clients.say import find_output_device

    if find_output_device()[0] is not None:
        pytest.skip("this machine has an audio output device")
    out = example("live_playback.py", "--url", server.ws_url, "--api-key", API_KEY, "-o", "live.wav", cwd=tmp_path)
    assert "no audio output device" in out and "wrote live.wav" in out
    assert seconds(tmp_path / "live.wav") > 3.0
