"""The command line as a user runs it: real subprocesses, real voices."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from streamtts.audio.wav import read_wav
from streamtts.voices import VOICES


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamtts", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_voices_lists_all_24():
    proc = run("voices")
    assert proc.returncode == 0
    names = [line.split()[0] for line in proc.stdout.splitlines()]
    assert names == list(VOICES) and len(names) == 24


def test_frontend_prints_one_json_object():
    proc = run("frontend", "你好，世界。")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == {"normalized", "pinyin", "ids"}
    assert out["pinyin"][:2] == ["ni2", "hao3"]
    assert out["ids"][-2:] == [1, 0]  # "~ _" ends every utterance


def test_frontend_reads_with_the_lexicon_it_is_given(tmp_path):
    readings = {}
    for name, reading in (("xing", "yin2 xing2"), ("yin1", "yin1 hang2"), (None, None)):
        args = ["frontend", "我们去银行。"]
        if name is not None:
            (tmp_path / f"{name}.tsv").write_text(f"银行\t{reading}\n", encoding="utf-8")
            args += ["--lexicon", str(tmp_path / f"{name}.tsv")]
        proc = run(*args)
        assert proc.returncode == 0, proc.stderr
        readings[name] = json.loads(proc.stdout)["pinyin"][-2:]
    assert readings == {"xing": ["yin2", "xing2"], "yin1": ["yin1", "hang2"], None: ["yin2", "hang2"]}


def test_synth_writes_a_wav(tmp_path):
    out = tmp_path / "out.wav"
    proc = run("synth", "今天天气很好。", "-o", str(out), "--voice", "Aiyue", "--seed", "3")
    assert proc.returncode == 0, proc.stderr
    audio, rate = read_wav(out)
    assert rate == 22050
    assert 0.8 < len(audio) / rate < 4.0  # six syllables
    assert 0.02 < float(abs(audio).max()) <= 1.0


@pytest.mark.parametrize("text,code", [("", "empty_text"), ("   \n\t ", "empty_text"),
                                       ("😀😀🎉", "no_speakable_text"), ("。！？", "no_speakable_text")])
def test_bad_text_is_a_clear_error(tmp_path, text, code):
    proc = run("synth", text, "-o", str(tmp_path / "x.wav"))
    assert proc.returncode == 2
    assert f"error [{code}]" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "x.wav").exists()


def test_unknown_voice_lists_the_voices(tmp_path):
    proc = run("synth", "你好。", "-o", str(tmp_path / "x.wav"), "--voice", "Nobody")
    assert proc.returncode == 2 and "error [unknown_voice]" in proc.stderr
    assert "biaobei" in proc.stderr and "Aiyue" in proc.stderr and "Traceback" not in proc.stderr


def test_frontend_bad_text_is_a_clear_error():
    proc = run("frontend", "🙂")
    assert proc.returncode == 2 and "error [no_speakable_text]" in proc.stderr


def test_serve_refuses_a_negative_extra_slot_share_before_it_starts():
    proc = run("serve", "--port", "0", "--engine", "onnx-int8", "--extra-slots", "-1", timeout=120)
    assert proc.returncode == 2 and "--extra-slots" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("levels", ["0", "x0", "x-2", "xnan", "two", "x"])
def test_conversation_bench_refuses_a_level_that_is_neither_calls_nor_a_multiple(levels):
    proc = run("bench", "--conversations", f"4,{levels}", timeout=120)
    assert proc.returncode == 2 and "--conversations" in proc.stderr and "Traceback" not in proc.stderr


def test_conversation_levels_relative_to_the_measured_capacity():
    # `xK` calls: K times the capacity the row's server measured, rounded up (the VM's speed moves
    # the capacity between runs; the target is stated per stream slot)
    from streamtts.bench.conversations import calls_for
    from streamtts.cli import _call_level

    assert [_call_level(t) for t in ("12", "x2", "X2.50")] == [12, "x2", "x2.5"]
    assert calls_for(12, 5) == 12 and calls_for("x2", 6) == 12 and calls_for("x2.5", 7) == 18
    assert calls_for("x0.1", 3) == 1
