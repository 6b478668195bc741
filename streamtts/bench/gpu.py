"""``streamtts bench --device cuda|cpu --concurrency 1,64,...``: the cuda backend's figures in process.

An engine-level driver, no sockets, no scheduler: N streams each speak one utterance (precomputed
input ids, so nothing here needs the text frontend), stream i arriving at i/N x ``stagger_s``. A
loop of ticks, as the engine core's: start the rows that arrived (while slots are free; the others
wait, and their wait counts in their TTFA), run ONE decode call for every live row (the backend
splits it into blocks of at most 1024 rows), then vocode every stream's next exact window
(:class:`~streamtts.core.stream.MelStream`, at most ``vocode_frames`` frames each) in one batched
vocoder call. A stream more than ``max_lead_s`` ahead of its listener is not decoded that tick.

Per stream, a player like the capacity benchmark's (streamtts/bench/capacity.py): playback starts
200 ms after the first audio and runs at real time; a piece that arrives after it is due stalls
the player by the difference. A stream *holds real time* when it finished and its stalls sum to at
most 20 ms. Fields per N: ``ttfa_ms_p50/p99`` (arrival -> first audio), ``streams_held``,
``gpu_max_memory_mb`` (``torch.cuda.max_memory_allocated``, null on the CPU), ``tick_ms`` (means
over the ticks with at least three quarters of the largest batch) split into ``decoder`` (the acoustic decode call: blocks + postnet), ``vocoder`` (the vocode call),
``encoder`` (starts) and ``host`` (the rest: windows, bookkeeping).

Parity (:func:`parity`): each reference utterance synthesized solo through the same streaming
path by the engine under test and by the reference (CPU, fp32): max abs difference of the mel and
of the audio, and both decoder step counts (a difference means the stop step moved).

How to call::

    utts = [Utterance(ids, speaker, seed), ...]
    row  = run_level(engine, utts, n=64)                    # one N
    mel, audio, steps = synthesize(engine, utts[0])         # solo, streamed
    report = run(levels, device="cuda", dtype="float16", vocoder="hifigan", json_path="out.json")

Imports only numpy, torch and the engine modules (the check script runs it on a bare GPU machine).
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

START_BUFFER_S = 0.2  # the player starts this long after the first audio
STALL_TOLERANCE_S = 0.02
STEPS = 32  # decoder steps per tick (>= the engine's min_first_block)
VOCODE_FRAMES = 80  # frames of audio a stream's window makes exact per tick at most
MAX_LEAD_S = 5.0
STAGGER_S = 1.0
LEVELS = (1, 64, 256, 512, 1024, 2048)


@dataclass
class Utterance:
    ids: np.ndarray  # (T,) int64 input symbols
    speaker: np.ndarray  # (32,) float32
    seed: int = 0


def _pct(values: Sequence[float], q: float) -> Optional[float]:
    return float(np.percentile(np.asarray(values, np.float64), q)) if len(values) else None


def _stream(engine: Any):
    from streamtts.core.stream import MelStream

    v = engine.vocoder
    return MelStream(v.n_mels, v.hop_length, v.context, v.tail_frames, v.tail_value)


def synthesize(engine: Any, utt: Utterance, steps: int = STEPS,
               vocode_frames: int = VOCODE_FRAMES) -> tuple[np.ndarray, np.ndarray, int]:
    """One utterance alone through the streaming path -> (mel (80, F), audio (S,), decoder steps)."""
    row = engine.acoustic.start(utt.ids, utt.speaker, utt.seed)
    ms = _stream(engine)
    mels, pieces = [], []
    while not ms.done:
        if not row.finished:
            out = engine.acoustic.decode([row], steps)[0]
            ms.add(out.mel, out.finished)
            mels.append(out.mel)
        w = ms.window(vocode_frames)
        while w is not None:
            audio, first = engine.vocoder.vocode([w])[0]
            pieces.append(ms.take(w, audio, first, vocode_frames))
            w = ms.window(vocode_frames)
    return (np.concatenate(mels, axis=1), np.concatenate(pieces) if pieces else np.zeros(0, np.float32),
            row.steps)


def parity(engine: Any, reference: Sequence[tuple[np.ndarray, np.ndarray, int]],
           utts: Sequence[Utterance], steps: int = STEPS) -> dict:
    """Max abs mel/audio difference of ``engine`` against reference (mel, audio, steps) per utterance."""
    rows = []
    for (ref_mel, ref_audio, ref_steps), utt in zip(reference, utts):
        mel, audio, n = synthesize(engine, utt, steps)
        f, s = min(mel.shape[1], ref_mel.shape[1]), min(len(audio), len(ref_audio))
        rows.append({"symbols": int(len(utt.ids)), "steps": int(n), "reference_steps": int(ref_steps),
                     "mel_max_abs_diff": float(np.abs(mel[:, :f] - ref_mel[:, :f]).max()) if f else None,
                     "mel_mean_abs_diff": float(np.abs(mel[:, :f] - ref_mel[:, :f]).mean()) if f else None,
                     "audio_max_abs_diff": float(np.abs(audio[:s] - ref_audio[:s]).max()) if s else None,
                     "audio_rms_diff": float(np.sqrt(np.mean((audio[:s] - ref_audio[:s]) ** 2))) if s else None})
    worst = [r["mel_max_abs_diff"] for r in rows if r["mel_max_abs_diff"] is not None]
    worst_a = [r["audio_max_abs_diff"] for r in rows if r["audio_max_abs_diff"] is not None]
    return {"utterances": rows, "mel_max_abs_diff": max(worst, default=None),
            "audio_max_abs_diff": max(worst_a, default=None),
            "same_steps": all(r["steps"] == r["reference_steps"] for r in rows)}


@dataclass(eq=False)
class _Live:
    i: int
    t_arrive: float
    row: Any = None
    ms: Any = None
    t_first: Optional[float] = None
    samples: int = 0  # delivered so far
    stall_s: float = 0.0
    t_done: Optional[float] = None
    failed: Optional[str] = None
    pieces: list = field(default_factory=list)

    def deliver(self, now: float, n: int, sr: int) -> None:
        if n <= 0:
            return
        if self.t_first is None:
            self.t_first = now
        else:  # due time of this piece's first sample, later by the stalls so far
            due = self.t_first + START_BUFFER_S + self.samples / sr + self.stall_s
            self.stall_s += max(0.0, now - due)
        self.samples += n

    def lead_s(self, now: float, sr: int) -> float:
        if self.t_first is None:
            return 0.0
        played = max(0.0, now - self.t_first - START_BUFFER_S - self.stall_s)
        return self.samples / sr - played


def run_level(engine: Any, utts: Sequence[Utterance], n: int, steps: int = STEPS,
              vocode_frames: int = VOCODE_FRAMES, stagger_s: float = STAGGER_S,
              timeout_s: float = 120.0) -> dict:
    """N concurrent streams (stream i speaks utts[i % len(utts)]) -> one row of figures."""
    import torch

    acoustic, vocoder = engine.acoustic, engine.vocoder
    sr = vocoder.sample_rate
    cuda = getattr(acoustic, "cuda", False)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    clock = time.perf_counter
    t0 = clock()
    streams = [_Live(i, t0 + stagger_s * i / n) for i in range(n)]
    waiting = list(streams)
    live: list[_Live] = []
    ticks: list[dict] = []
    while (waiting or live) and clock() - t0 < timeout_s:
        ta = clock()
        enc = 0.0
        while waiting and waiting[0].t_arrive <= ta:  # start arrivals while slots are free
            s = waiting[0]
            utt = utts[s.i % len(utts)]
            te = clock()
            try:
                s.row = acoustic.start(utt.ids, utt.speaker, utt.seed)
            except Exception as exc:  # noqa: BLE001 - slots full (or a real failure): wait or fail
                if getattr(exc, "code", None) == "slots_exhausted" and live:
                    break
                s.failed = type(exc).__name__
                waiting.pop(0)
                continue
            finally:
                enc += clock() - te
            s.ms = _stream(engine)
            live.append(waiting.pop(0))
        if not live:
            time.sleep(min(0.005, max(0.0, waiting[0].t_arrive - clock())) if waiting else 0)
            continue
        now = clock()
        todo = [s for s in live if not s.row.finished and s.lead_s(now, sr) < MAX_LEAD_S]
        td = clock()
        if todo:
            for s, out in zip(todo, acoustic.decode([s.row for s in todo], steps)):
                s.ms.add(out.mel, out.finished)
        tv = clock()
        jobs = [(s, w) for s in live for w in [s.ms.window(vocode_frames)] if w is not None]
        tvc = clock()
        audio = vocoder.vocode([w for _, w in jobs]) if jobs else []
        tve = clock()
        now = clock()
        for (s, w), (a, first) in zip(jobs, audio):
            s.deliver(now, len(s.ms.take(w, a, first, vocode_frames)), sr)
        for s in [s for s in live if s.ms.done]:
            s.t_done = now
            live.remove(s)
        te = clock()
        ticks.append({"rows": len(todo), "windows": len(jobs), "tick_s": te - ta, "encoder_s": enc,
                      "decoder_s": tv - td, "vocoder_s": tve - tvc})
    return _summary(n, streams, ticks, clock() - t0, cuda, sr)


def _summary(n: int, streams: Sequence[_Live], ticks: Sequence[dict], wall: float, cuda: bool, sr: int) -> dict:
    import torch

    ttfa = [1000 * (s.t_first - s.t_arrive) for s in streams if s.t_first is not None]
    held = sum(1 for s in streams if s.t_done is not None and s.stall_s <= STALL_TOLERANCE_S)
    busy = [t for t in ticks if t["rows"]] or list(ticks)
    top = max((t["rows"] for t in busy), default=0)
    sel = [t for t in busy if t["rows"] >= top - top // 4] or busy

    def med(key: str) -> Optional[float]:  # means, so that the parts add up to the total
        return 1000 * float(np.mean([t[key] for t in sel])) if sel else None

    tick, dec, voc, enc = med("tick_s"), med("decoder_s"), med("vocoder_s"), med("encoder_s")
    host = None if tick is None else tick - dec - voc - enc
    speech = sum(s.samples for s in streams) / sr
    return {"n": n, "streams_held": held, "streams_finished": sum(s.t_done is not None for s in streams),
            "failed": sum(s.failed is not None for s in streams),
            "ttfa_ms_p50": _pct(ttfa, 50), "ttfa_ms_p99": _pct(ttfa, 99),
            "worst_stall_s": max((s.stall_s for s in streams), default=0.0),
            "gpu_max_memory_mb": torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None,
            "ticks": len(ticks), "tick_rows_max": top,
            "tick_ms": {"total": tick, "decoder": dec, "vocoder": voc, "encoder": enc, "host": host},
            "compute_rtf": sum(t["tick_s"] for t in ticks) / max(speech, 1e-9), "speech_s": speech,
            "wall_s": wall}


def environment() -> dict:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__,
                            "numpy": np.__version__, "cuda_build": torch.version.cuda, "cores": os.cpu_count()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_memory_gb=round(p.total_memory / 2 ** 30, 1), capability=f"{p.major}.{p.minor}")
    return info


def markdown(rows: Sequence[dict]) -> str:
    def f(v: Optional[float], spec: str = ".0f") -> str:
        return "n/a" if v is None else format(v, spec)

    lines = ["| N | held | TTFA p50 / p99 ms | GPU MB | tick ms: total / decoder / vocoder / host | compute RTF |",
             "|---:|---:|---|---:|---|---:|"]
    for r in rows:
        t = r["tick_ms"]
        lines.append(f"| {r['n']} | {r['streams_held']}/{r['n']} | {f(r['ttfa_ms_p50'])} / {f(r['ttfa_ms_p99'])} "
                     f"| {f(r['gpu_max_memory_mb'])} | {f(t['total'], '.1f')} / {f(t['decoder'], '.1f')} / "
                     f"{f(t['vocoder'], '.1f')} / {f(t['host'], '.1f')} | {f(r['compute_rtf'], '.3f')} |")
    return "\n".join(lines)


def run(levels: Sequence[int], device: str = "cuda", dtype: str = "float32", vocoder: str = "hifigan",
        json_path: Optional[str] = None, voice: Optional[str] = None, stagger_s: float = STAGGER_S) -> dict:
    """``streamtts bench --device``: the cuda engine on ``device`` (cpu: the dry run), the
    levels in turn, parity against the torch backend on the CPU in fp32 first."""
    from engines.base import ModelPair
    from engines.cuda_backend import CudaTacotron, cuda_vocoder, resolve_device
    from engines.registry import vocoder_source
    from engines.torch_backend import TorchTacotron, TorchVocoder
    from streamtts.evaluation.sentences import TEST_SENTENCES
    from streamtts.pack import ensure_pack
    from streamtts.text import phonemize
    from streamtts.voices import DEFAULT_VOICE, speaker_vector

    resolve_device(device)  # a typed error before anything loads
    pack = ensure_pack()
    kind = vocoder if vocoder != "auto" else ("hifigan" if device.startswith("cuda") else "melgan")
    src = vocoder_source(pack, kind)
    spk = speaker_vector(voice or DEFAULT_VOICE)
    utts = [Utterance(np.asarray(phonemize(t).ids, np.int64), spk, i) for i, t in enumerate(TEST_SENTENCES)]
    acoustic = CudaTacotron(pack, device, dtype=dtype, max_rows=max(max(levels), 1), max_symbols=256)
    engine = ModelPair(acoustic, cuda_vocoder(src.load(), kind, acoustic))
    ref = ModelPair(TorchTacotron(pack), TorchVocoder(src.load(), kind))
    probe = utts[:2]
    report: dict[str, Any] = {"kind": "gpu-bench", "environment": environment(), "device": device, "dtype": dtype,
                              "engine": engine.name, "settings": {"steps": STEPS, "vocode_frames": VOCODE_FRAMES,
                                                                  "stagger_s": stagger_s},
                              "parity_vs_cpu_fp32": parity(engine, [synthesize(ref, u) for u in probe], probe)}
    synthesize(engine, utts[0])  # first-call costs
    rows = []
    for n in levels:
        print(f"{engine.name} ({device}, {dtype}): {n} streams ...", file=sys.stderr, flush=True)
        rows.append(run_level(engine, utts, n, stagger_s=stagger_s))
    report["rows"] = rows
    print(markdown(rows))
    p = report["parity_vs_cpu_fp32"]
    print(f"parity vs CPU fp32: mel max abs diff {p['mel_max_abs_diff']}, audio {p['audio_max_abs_diff']}, "
          f"same stop steps: {p['same_steps']}")
    if json_path:
        with open(json_path, "w") as fh:
            json.dump(report, fh, indent=2)
    return report
