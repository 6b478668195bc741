"""``streamtts bench``: time-to-first-audio, real-time factor and intelligibility per engine.

Each engine runs in a child process of its own, so its peak RSS is its own, on the same fixed
public sentence set (:data:`streamtts.evaluation.sentences.TEST_SENTENCES`), through the library
API (:class:`streamtts.speech.Speaker`, i.e. the engine core's scheduler and runner). A row is
named ``<acoustic>+<vocoder>`` as asked for (``onnx-int8+melgan``). The baseline row
``upstream-eager`` runs our torch modules the way ttskit does (:class:`streamtts.synthesis.Synthesizer`):
whole sentence, eager torch, MelGAN, no streaming, so its first audio exists only when the whole
sentence is done (it ignores ``--vocoder``).

Fields per row: ``engine``, ``ttfa_ms_p50``, ``ttfa_ms_p90`` (text submitted -> first PCM sample),
``rtf`` (compute seconds / audio seconds, pauses between chunks included in the audio),
``decoder_ms_per_step`` (acoustic decode-call seconds / decoder steps run, summed over rows),
``vocoder_rtf`` (vocoder-call seconds / audio seconds), ``peak_rss_mb``, ``pinyin_error_rate``
(Whisper base, toneless pinyin; null with ``--no-asr``), plus counts. The stage times come from
a thin wrapper around the engine's two stages (:class:`TimedAcoustic`, :class:`TimedVocoder`);
nothing inside the engine is patched.

``streamtts bench --concurrency 1,4,8`` is the capacity benchmark instead:
:mod:`streamtts.bench.capacity`.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

import numpy as np

BASELINE = "upstream-eager"
DEFAULT_ENGINES = ("torch", "onnx", "onnx-int8")


# ---- thin timing wrappers around an engine's two stages ----------------------------------------

class _Proxy:
    """Forwards every attribute to the wrapped stage; subclasses time some calls."""

    def __init__(self, inner: Any):
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class TimedAcoustic(_Proxy):
    """An AcousticModel whose ``start`` (encoder) and ``decode`` calls are timed and counted."""

    def __init__(self, inner: Any):
        super().__init__(inner)
        self.reset()

    def reset(self) -> None:
        self.start_s = self.decode_s = 0.0
        self.starts = self.calls = self.rows = self.steps = 0

    def start(self, *args, **kwargs):
        t = time.perf_counter()
        try:
            return self._inner.start(*args, **kwargs)
        finally:
            self.start_s += time.perf_counter() - t
            self.starts += 1

    def decode(self, rows: Sequence[Any], steps: int):
        before = sum(r.steps for r in rows)
        t = time.perf_counter()
        try:
            return self._inner.decode(rows, steps)
        finally:
            self.decode_s += time.perf_counter() - t
            self.calls += 1
            self.rows += len(rows)
            self.steps += sum(r.steps for r in rows) - before


class TimedVocoder(_Proxy):
    """A Vocoder whose ``vocode`` calls are timed and counted."""

    def __init__(self, inner: Any):
        super().__init__(inner)
        self.reset()

    def reset(self) -> None:
        self.vocode_s = 0.0
        self.calls = self.windows = self.samples = 0
        self.frames_in = 0  # mel frames in the windows (context included)

    def vocode(self, windows: Sequence[Any]):
        t = time.perf_counter()
        out = self._inner.vocode(windows)
        self.vocode_s += time.perf_counter() - t
        self.calls += 1
        self.windows += len(windows)
        self.samples += sum(len(a) for a, _ in out)
        self.frames_in += sum(w.mel.shape[1] for w in windows)
        return out


def timed_engine(acoustic: str, vocoder: str = "auto"):
    """(ModelPair with timed stages, its TimedAcoustic, its TimedVocoder)."""
    from engines.base import ModelPair
    from engines.registry import create_models

    inner = create_models(acoustic, vocoder=vocoder)
    ta, tv = TimedAcoustic(inner.acoustic), TimedVocoder(inner.vocoder)
    return ModelPair(ta, tv), ta, tv  # type: ignore[arg-type]


def row_name(engine: str, vocoder: str) -> str:
    """``onnx-int8+melgan``: the names asked for (an ``auto`` vocoder is named melgan: on a CPU,
    where the bench runs, that is what auto picks)."""
    return f"{engine}+{'melgan' if vocoder == 'auto' else vocoder}"


# ---- per-engine rows ---------------------------------------------------------------------------

def percentile(values: Sequence[float], q: float) -> Optional[float]:
    values = [v for v in values if v is not None and v == v]
    return float(np.percentile(np.asarray(values, np.float64), q)) if values else None


def _run_streaming(engine_name: str, vocoder: str, sentences: list[str], voice: str,
                   repeats: int) -> tuple[dict, list[np.ndarray]]:
    from streamtts.speaker import Audio, Speaker

    engine, ta, tv = timed_engine(engine_name, vocoder)
    speaker = Speaker(engine)
    speaker.synthesize("你好。", voice)  # warm-up: first-call allocations, thread pools
    ta.reset()
    tv.reset()
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
        ttfa.append(1000 * first if first is not None else None)
        audios.append(np.concatenate(pieces) if pieces else np.zeros(0, np.float32))
    seconds_audio = sum(len(a) for a in audios) / speaker.sample_rate
    row = {
        "engine": row_name(engine_name, vocoder),
        "engine_stages": engine.name,
        "ttfa_ms_p50": percentile(ttfa, 50),
        "ttfa_ms_p90": percentile(ttfa, 90),
        "rtf": compute / seconds_audio,
        "decoder_ms_per_step": 1000 * ta.decode_s / max(ta.steps, 1),
        "vocoder_rtf": tv.vocode_s / seconds_audio,
        "encoder_s": ta.start_s,
        "decoder_steps": ta.steps,
        "audio_seconds": seconds_audio,
    }
    return row, audios[:len(sentences)]


def _run_baseline(sentences: list[str], voice: str, repeats: int) -> tuple[dict, list[np.ndarray]]:
    from streamtts.reference import Synthesizer
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
        "engine_stages": "torch-eager+melgan-torch",
        "ttfa_ms_p50": percentile(latencies, 50),
        "ttfa_ms_p90": percentile(latencies, 90),
        "rtf": (decode_s + vocode_s) / seconds_audio,
        "decoder_ms_per_step": 1000 * decode_s / max(steps, 1),
        "vocoder_rtf": vocode_s / seconds_audio,  # postnet + vocoder, as before
        "decoder_steps": steps,
        "audio_seconds": seconds_audio,
    }
    return row, audios[:len(sentences)]


def run_one(engine_name: str, voice: str = "biaobei", asr: bool = True, limit: Optional[int] = None,
            repeats: int = 1, vocoder: str = "auto") -> dict:
    """Benchmark one engine in this process; returns its row."""
    from streamtts.evaluation.sentences import TEST_SENTENCES

    sentences = list(TEST_SENTENCES[:limit] if limit else TEST_SENTENCES)
    if engine_name == BASELINE:
        row, audios = _run_baseline(sentences, voice, repeats)
    else:
        row, audios = _run_streaming(engine_name, vocoder, sentences, voice, repeats)
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


def source_version() -> dict:
    """The checkout measured: commit, and the runtime files (engines, streamtts) changed since it."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # above streamtts/
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "engines", "streamtts"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"commit": commit or None, "changed": [line[3:] for line in dirty if line.strip()]}


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
    info: dict[str, Any] = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
                            "os": platform.platform()}
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]  # other jobs on a shared VM
    except OSError:
        pass
    for mod in ("torch", "onnxruntime", "numpy"):
        try:
            info[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return info


def _fmt(value: Optional[float], spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(rows: list[dict]) -> str:
    head = ("| engine | TTFA p50 ms | TTFA p90 ms | RTF | decoder ms/step | vocoder RTF | peak RSS MB "
            "| pinyin error |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        err = "n/a" if r.get("pinyin_error_rate") is None else f"{100 * r['pinyin_error_rate']:.1f} %"
        lines.append(f"| {r['engine']} | {_fmt(r['ttfa_ms_p50'], '.0f')} | {_fmt(r['ttfa_ms_p90'], '.0f')} "
                     f"| {r['rtf']:.3f} | {r['decoder_ms_per_step']:.2f} | {r['vocoder_rtf']:.3f} "
                     f"| {r['peak_rss_mb']:.0f} | {err} |")
    return "\n".join(lines)


def run(engines: list[str], voice: str = "biaobei", asr: bool = True, limit: Optional[int] = None,
        json_path: Optional[str] = None, repeats: int = 1, vocoder: str = "auto") -> dict:
    """Every engine (and the baseline) in its own child process; prints a markdown table."""
    rows = []
    for name in [*engines, BASELINE]:
        cmd = [sys.executable, "-m", "streamtts", "bench", "--one", name, "--voice", voice,
               "--vocoder", vocoder, "--repeats", str(repeats)]
        if not asr:
            cmd.append("--no-asr")
        if limit:
            cmd += ["--limit", str(limit)]
        label = name if name == BASELINE else row_name(name, vocoder)
        print(f"benchmarking {label} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(f"{label} failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
            rows.append({"engine": label, "error": proc.stderr.strip().splitlines()[-1:]})
            continue
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    ok = [r for r in rows if "error" not in r]
    base = next((r for r in ok if r["engine"] == BASELINE), None)
    if base:
        for r in ok:
            r["rtf_speedup_vs_upstream"] = base["rtf"] / r["rtf"]
    report = {"machine": machine(), "voice": voice, "vocoder": vocoder, "results": rows}
    print(markdown(ok))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)
    return report
