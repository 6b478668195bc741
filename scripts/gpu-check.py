#!/usr/bin/env python3
"""The one-command GPU check of the cuda backend: parity with the CPU, then the concurrency rows.

On a CPU machine first: ``python scripts/gpu-prep.py`` (writes shared/gpu-inputs/). On the GPU
machine, with shared/gpu-inputs carried along::

    python scripts/gpu-check.py OUT                        # CUDA; writes OUT/gpu-check.json
    python scripts/gpu-check.py OUT --device cpu --levels 1,2 --dtypes float32   # the CPU dry run

Needs only Python, torch, numpy and safetensors (no network, no text frontend, no onnxruntime):
the inputs carry the phoneme ids, the weights and the CPU float32 references. Steps, each written
to the JSON as soon as it is done (a run cut short keeps what it measured):

1. parity per dtype: every reference sentence alone through the streaming path (cuda engine:
   device-resident slots, CUDA-graph blocks, HiFiGAN on its stream) against the CPU float32
   reference: max abs mel / audio difference and the stop steps;
2. capture of the decoder blocks the rows will use (bucket x memory width x steps), timed;
3. per dtype (``--dtypes``, default float16 then float32) and level (``--levels``, default
   1,64,256,512,1024,2048): N streams in process (streamtts/bench/gpu.py): TTFA p50/p99, streams
   holding real time, GPU memory, tick time split into decoder / vocoder / encoder / host. A level
   gets at most what is left of ``--budget-s`` (default 420 s, so the whole run stays within 8
   minutes); levels that no longer fit are skipped and listed.

A step that fails (a capture, an out-of-memory level) is recorded under ``errors`` and the run goes
on: a dtype whose graph capture fails is measured eagerly instead. Prints a short table last.
Exit status 0 when it ran (whatever the figures), 2 for bad inputs.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# modules a bare GPU machine lacks: importing any of them would be a bug of the check
FORBIDDEN = ("pypinyin", "jieba", "onnxruntime", "aiohttp", "streamtts.text", "cn2an")


def _save(out: Path, report: dict) -> None:
    tmp = out / ".gpu-check.json.tmp"
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out / "gpu-check.json")


def _engine(inputs, device: str, dtype: str, max_rows: int, graphs: bool = True):
    from engines.base import ModelPair
    from engines.cuda_backend import CudaTacotron, CudaVocoder

    acoustic = CudaTacotron(inputs.acoustic_pack, device, dtype=dtype, max_rows=max_rows, max_symbols=256,
                            graphs=graphs)
    return ModelPair(acoustic, CudaVocoder(inputs.load_vocoder(), "hifigan", acoustic=acoustic))


def _prepare(inputs, args, dtype: str, levels: list, steps: int, report: dict):
    """The engine of ``dtype`` with its parity measured and its blocks captured; when capture
    (or anything on the graph path) fails, the error is recorded and the same is done eagerly,
    so one short lease still gives figures."""
    from streamtts.bench import gpu as bench_gpu

    refs = inputs.references
    tbs = sorted({min(256, max(16, 1 << (len(u.ids) - 1).bit_length())) for u in inputs.utterances})
    top = min(max(levels), 1024)  # the largest block's rows
    for graphs in (True, False):
        try:
            engine = _engine(inputs, args.device, dtype, max(levels), graphs)
            report["parity"][dtype] = bench_gpu.parity(engine, refs, inputs.utterances[:len(refs)], steps)
            t = time.perf_counter()
            built = engine.acoustic.warm([b for b in (1 << i for i in range(11)) if b < 2 * top], [steps], tbs)
            report["capture"][dtype] = {"graphs": engine.acoustic.use_graphs, "blocks": built,
                                        "seconds": time.perf_counter() - t,
                                        "slot_buffer_mb": engine.acoustic.memory_bytes() / 2 ** 20}
            return engine
        except Exception as exc:  # noqa: BLE001 - recorded; the eager path is tried next
            report.setdefault("errors", []).append(f"{dtype} graphs={graphs}: {type(exc).__name__}: {exc}")
            print(f"{dtype} (graphs={graphs}) failed: {exc}", file=sys.stderr, flush=True)
    return None


def _table(report: dict) -> str:
    lines = ["dtype     parity: mel max / audio max diff, same stops"]
    for dtype, p in report["parity"].items():
        lines.append(f"{dtype:9s} {p['mel_max_abs_diff']:.2e} / {p['audio_max_abs_diff']:.2e}, {p['same_steps']}")
    lines.append("")
    lines.append("dtype      N     held   TTFA p50/p99 ms  GPU MB   tick ms total/dec/voc/host")
    for dtype, rows in report["rows"].items():
        for r in rows:
            t = r["tick_ms"]
            f = (lambda v, s=".0f": "n/a" if v is None else format(v, s))
            lines.append(f"{dtype:9s} {r['n']:5d} {r['streams_held']:5d}/{r['n']:<5d} "
                         f"{f(r['ttfa_ms_p50']):>6s}/{f(r['ttfa_ms_p99']):<7s} {f(r['gpu_max_memory_mb']):>7s}   "
                         f"{f(t['total'], '.1f')}/{f(t['decoder'], '.1f')}/{f(t['vocoder'], '.1f')}/{f(t['host'], '.1f')}")
    if report.get("skipped"):
        lines.append(f"skipped (time budget): {', '.join(report['skipped'])}")
    for error in report.get("errors", []):
        lines.append(f"error: {error}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="folder for gpu-check.json")
    parser.add_argument("--inputs", default=str(ROOT / "shared" / "gpu-inputs"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--levels", default="1,64,256,512,1024,2048")
    parser.add_argument("--dtypes", default="float16,float32", help="timed in this order; all get parity")
    parser.add_argument("--budget-s", type=float, default=420.0)
    parser.add_argument("--stagger", type=float, default=1.0, help="streams arrive over this many seconds")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    from engines.cuda_backend import resolve_device
    from streamtts.bench import gpu as bench_gpu
    from streamtts.errors import StreamTTSError
    from streamtts.bench.gpu_inputs import load_inputs

    try:
        resolve_device(args.device)
        inputs = load_inputs(Path(args.inputs))
    except StreamTTSError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    levels = [int(n) for n in args.levels.split(",") if n.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    steps = int(inputs.meta["steps"])
    report: dict = {"kind": "gpu-check", "environment": bench_gpu.environment(), "device": args.device,
                    "levels": levels, "dtypes": dtypes, "steps": steps, "inputs": inputs.meta["sha256"],
                    "parity": {}, "capture": {}, "rows": {}, "skipped": []}
    engines = {}
    for dtype in dtypes:
        engine = _prepare(inputs, args, dtype, levels, steps, report)
        if engine is not None:
            engines[dtype] = engine
        _save(out, report)
    for dtype, engine in engines.items():
        report["rows"][dtype] = []
        for n in levels:
            left = args.budget_s - (time.perf_counter() - t_start)
            if left < 15:
                report["skipped"].append(f"{dtype} N={n}")
                continue
            print(f"{dtype}: {n} streams ...", file=sys.stderr, flush=True)
            try:
                row = bench_gpu.run_level(engine, inputs.utterances, n, steps, stagger_s=args.stagger,
                                          timeout_s=min(120.0, left - 10))
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory at the largest N: recorded
                report.setdefault("errors", []).append(f"{dtype} N={n}: {type(exc).__name__}: {exc}")
                print(f"{dtype} N={n} failed: {exc}", file=sys.stderr, flush=True)
                break
            report["rows"][dtype].append(row)
            _save(out, report)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    report["forbidden_imports"] = [m for m in FORBIDDEN if m in sys.modules]
    report["wall_s"] = time.perf_counter() - t_start
    _save(out, report)
    print(_table(report))
    print(f"wrote {out / 'gpu-check.json'} in {report['wall_s']:.0f} s"
          + (f"; imported what a GPU machine lacks: {report['forbidden_imports']}" if report["forbidden_imports"] else ""))
    return 1 if report["forbidden_imports"] else 0


if __name__ == "__main__":
    sys.exit(main())
