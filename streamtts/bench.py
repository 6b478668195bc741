"""``streamtts bench``: time-to-first-audio, real-time factor and intelligibility per engine.

Each engine runs in a child process of its own, so its peak RSS is its own, on the same fixed
public sentence set (:data:`streamtts.evaluation.sentences.TEST_SENTENCES`). The baseline row
``upstream-eager`` runs our torch modules the way ttskit does: whole sentence, eager, no
streaming, so its first audio exists only when the whole sentence is done.

Fields per row: ``engine``, ``ttfa_ms_p50``, ``ttfa_ms_p90`` (text submitted -> first PCM sample),
``rtf`` (compute seconds / audio seconds), ``decoder_ms_per_step``, ``vocoder_rtf`` (postnet +
vocoder seconds / audio seconds), ``peak_rss_mb``, ``pinyin_error_rate`` (Whisper base, toneless
pinyin), plus counts.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any, Optional

import numpy as np

BASELINE = "upstream-eager"
DEFAULT_ENGINES = ("torch", "onnx", "onnx-int8")


class _Timed:
    """Wraps an engine and adds up the seconds spent in each of its calls."""

    def __init__(self, engine: Any):
        self._engine = engine
        self.seconds = {"decode": 0.0, "postnet": 0.0, "vocode": 0.0}
        self.steps = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def decode(self, memory, state, masks, gate_threshold):
        t = time.perf_counter()
        block = self._engine.decode(memory, state, masks, gate_threshold)
        self.seconds["decode"] += time.perf_counter() - t
        self.steps += len(block.frames) + (1 if block.stopped else 0)
        return block

    def postnet(self, frames, at_start, at_end):
        t = time.perf_counter()
        out = self._engine.postnet(frames, at_start, at_end)
        self.seconds["postnet"] += time.perf_counter() - t
        return out

    def vocode(self, mel, at_start, at_end, offset):
        t = time.perf_counter()
        out = self._engine.vocode(mel, at_start, at_end, offset)
        self.seconds["vocode"] += time.perf_counter() - t
        return out


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _run_streaming(engine_name: str, sentences: list[str], voice: str,
                   repeats: int) -> tuple[dict, list[np.ndarray]]:
    from engines.registry import create_engine
    from streamtts.speech import Audio, Speaker

    timed = _Timed(create_engine(engine_name))
    speaker = Speaker(timed)  # type: ignore[arg-type]
    speaker.synthesize("你好。", voice)  # warm-up: first-call allocations, thread pools
    timed.seconds = dict.fromkeys(timed.seconds, 0.0)
    timed.steps = 0
    ttfa, audios, compute = [], [], 0.0
    for text in sentences * repeats:
        t0 = time.perf_counter()
        first: Optional[float] = None
        pieces = []
        for event in speaker.speak(text, voice):
            if isinstance(event, Audio) and len(event.audio):
                if first is None:
                    first = time.perf_counter() - t0
                pieces.append(event.audio)
        compute += time.perf_counter() - t0
        ttfa.append(1000 * (first if first is not None else float("nan")))
        audios.append(np.concatenate(pieces) if pieces else np.zeros(0, np.float32))
    seconds_audio = sum(len(a) for a in audios) / speaker.sample_rate
    row = {
        "engine": timed.name,
        "ttfa_ms_p50": _percentile(ttfa, 50),
        "ttfa_ms_p90": _percentile(ttfa, 90),
        "rtf": compute / seconds_audio,
        "decoder_ms_per_step": 1000 * timed.seconds["decode"] / max(timed.steps, 1),
        "vocoder_rtf": (timed.seconds["postnet"] + timed.seconds["vocode"]) / seconds_audio,
        "decoder_steps": timed.steps,
        "audio_seconds": seconds_audio,
    }
    return row, audios


def _run_baseline(sentences: list[str], voice: str, repeats: int) -> tuple[dict, list[np.ndarray]]:
    from streamtts.synthesis import Synthesizer
    from streamtts.text import phonemize

    synth = Synthesizer()
    synth.synthesize("你好。", voice)
    latencies, audios = [], []
    decode_s = vocode_s = 0.0
    steps = 0
    for text in sentences * repeats:
        t0 = time.perf_counter()
        ids = phonemize(text).ids
        decoded = synth.decode(ids, voice)
        t1 = time.perf_counter()
        audio = synth.vocode(synth.postnet(decoded.frames))
        t2 = time.perf_counter()
        decode_s += t1 - t0
        vocode_s += t2 - t1
        steps += decoded.frames.shape[1] + int(decoded.stopped)
        latencies.append(1000 * (t2 - t0))
        audios.append(audio)
    seconds_audio = sum(len(a) for a in audios) / synth.sample_rate
    row = {
        "engine": BASELINE,
        "ttfa_ms_p50": _percentile(latencies, 50),
        "ttfa_ms_p90": _percentile(latencies, 90),
        "rtf": (decode_s + vocode_s) / seconds_audio,
        "decoder_ms_per_step": 1000 * decode_s / max(steps, 1),
        "vocoder_rtf": vocode_s / seconds_audio,
        "decoder_steps": steps,
        "audio_seconds": seconds_audio,
    }
    return row, audios


def run_one(engine_name: str, voice: str = "biaobei", asr: bool = True, limit: Optional[int] = None,
            repeats: int = 1) -> dict:
    """Benchmark one engine in this process; returns its row."""
    from streamtts.evaluation.sentences import TEST_SENTENCES

    sentences = list(TEST_SENTENCES[:limit] if limit else TEST_SENTENCES)
    if engine_name == BASELINE:
        row, audios = _run_baseline(sentences, voice, repeats)
    else:
        row, audios = _run_streaming(engine_name, sentences, voice, repeats)
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row["sentences"] = len(sentences)
    row["repeats"] = repeats
    row["voice"] = voice
    if asr:
        from streamtts.evaluation.asr import Transcriber
        from streamtts.evaluation.metrics import corpus_error_rate

        transcriber = Transcriber()
        row["pinyin_error_rate"] = corpus_error_rate(
            (text, transcriber.transcribe(audio, 22050)) for text, audio in zip(sentences, audios))  # 1st pass
    else:
        row["pinyin_error_rate"] = None
    return row


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "os": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        pass
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return info


def markdown(rows: list[dict]) -> str:
    head = ("| engine | TTFA p50 ms | TTFA p90 ms | RTF | decoder ms/step | vocoder RTF | peak RSS MB "
            "| pinyin error |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        err = "n/a" if r.get("pinyin_error_rate") is None else f"{100 * r['pinyin_error_rate']:.1f} %"
        lines.append(f"| {r['engine']} | {r['ttfa_ms_p50']:.0f} | {r['ttfa_ms_p90']:.0f} | {r['rtf']:.3f} "
                     f"| {r['decoder_ms_per_step']:.2f} | {r['vocoder_rtf']:.3f} | {r['peak_rss_mb']:.0f} | {err} |")
    return "\n".join(lines)


def run(engines: list[str], voice: str = "biaobei", asr: bool = True, limit: Optional[int] = None,
        json_path: Optional[str] = None, repeats: int = 1) -> dict:
    """Every engine (and the baseline) in its own child process; prints a markdown table."""
    rows = []
    for name in [*engines, BASELINE]:
        cmd = [sys.executable, "-m", "streamtts", "bench", "--one", name, "--voice", voice]
        if not asr:
            cmd.append("--no-asr")
        if limit:
            cmd += ["--limit", str(limit)]
        cmd += ["--repeats", str(repeats)]
        print(f"benchmarking {name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{name} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            rows.append({"engine": name, "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    ok = [r for r in rows if "error" not in r]
    base = next((r for r in ok if r["engine"] == BASELINE), None)
    if base:
        for r in ok:
            r["rtf_speedup_vs_upstream"] = base["rtf"] / r["rtf"]
    report = {"machine": machine(), "voice": voice, "results": rows}
    print(markdown(ok))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)
    return report
