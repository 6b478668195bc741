"""Timings of the engines, component by component (medians of interleaved repeats).

How to call::

    python -m engines.onnx_bench [--repeats 9] [--threads N] [--json out.json]

Reports: decoder ms/step (torch eager, ONNX fp32/int8 driven step by step from Python and as a
Loop block), encoder ms per sentence, postnet + vocoder real-time factor on a whole utterance,
and end-to-end ChunkStream first-audio latency and RTF. Timings are wall clock; on a shared
machine they are noisy, hence interleaving and medians (min is shown as the quiet-machine bound).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Callable

import numpy as np
import torch

from engines.onnx_engine import OnnxEngine
from engines.torch_engine import TorchEngine
from streamtts.models.acoustic import prenet_masks
from streamtts.pipeline import ChunkStream
from streamtts.voices import speaker_vector

# "今天天气很好，我们一起去公园散步吧。" as phkit ids (hanzi cleaner): 70 symbols, 300 frames
SENTENCE_IDS = [13, 46, 71, 2, 24, 42, 71, 2, 24, 42, 71, 2, 20, 40, 74, 2, 11, 37, 72, 2, 11, 34, 73, 2, 131, 2,
                25, 64, 73, 2, 16, 37, 75, 2, 12, 40, 74, 2, 20, 40, 73, 2, 20, 65, 74, 2, 10, 54, 71, 2, 26, 66,
                72, 2, 22, 32, 74, 2, 4, 56, 74, 2, 4, 30, 75, 2, 130, 2, 1, 0]
STEPS = 64


def _median_ms(fn: Callable[[], object], repeats: int, per: float = 1.0) -> tuple[float, float]:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3 / per)
    return float(np.median(times)), float(min(times))


def run(repeats: int = 9, threads: int | None = None) -> dict[str, dict[str, float]]:
    ids = np.asarray(SENTENCE_IDS, np.int64)
    spk = speaker_vector("biaobei")
    torch_engine = TorchEngine()
    engines = {"onnx": OnnxEngine(threads=threads), "onnx-int8": OnnxEngine(variant="int8", threads=threads)}
    step_engines = {k + "/step": OnnxEngine(variant=e.variant, threads=threads, decoder="step")
                    for k, e in engines.items()}
    masks = prenet_masks(torch_engine.acoustic, STEPS, 1, torch.Generator().manual_seed(0))[:, :, 0, :].numpy()
    results: dict[str, dict[str, float]] = {}

    def decoder_case(engine) -> Callable[[], object]:
        memory = engine.encode(ids, spk)
        state = engine.decode(memory, engine.initial_state(memory), masks[:20], 2.0).state  # past the start
        return lambda: engine.decode(memory, state, masks, 2.0)  # threshold > 1: never stops

    cases = {"torch x1 thread": decoder_case(torch_engine)}
    cases.update({f"{k}/block": decoder_case(e) for k, e in engines.items()})
    cases.update({k: decoder_case(e) for k, e in step_engines.items()})
    timings: dict[str, list[float]] = {k: [] for k in cases}
    torch_threads = torch.get_num_threads()
    for _ in range(repeats):  # interleaved, so load from other processes hits every case alike
        for name, fn in cases.items():
            torch.set_num_threads(1 if name.startswith("torch") else torch_threads)
            timings[name].append(_median_ms(fn, 1, STEPS)[0])
    torch.set_num_threads(torch_threads)
    results["decoder ms/step"] = {k: float(np.median(v)) for k, v in timings.items()}
    results["decoder ms/step (min)"] = {k: float(min(v)) for k, v in timings.items()}

    all_engines = {"torch": torch_engine, **engines}
    results["encoder ms"] = {k: _median_ms(lambda e=e: e.encode(ids, spk), repeats)[0]
                             for k, e in all_engines.items()}

    memory = engines["onnx"].encode(ids, spk)
    frames = engines["onnx"].decode(memory, engines["onnx"].initial_state(memory),
                                    prenet_masks(torch_engine.acoustic, 400, 1, torch.Generator().manual_seed(0))
                                    [:, :, 0, :].numpy(), 0.5).frames.T
    seconds = frames.shape[1] * torch_engine.vocoder_config.hop_length / torch_engine.vocoder_config.sample_rate
    rtf = {}
    for k, e in all_engines.items():
        def post_voc(e=e):
            e.vocode(e.postnet(frames, True, True), True, True, 0)
        rtf[k] = _median_ms(post_voc, max(3, repeats // 3))[0] / 1e3 / seconds
    results["postnet+vocoder RTF"] = rtf

    e2e = {}
    for k, e in all_engines.items():
        firsts, totals = [], []
        for _ in range(max(3, repeats // 3)):
            t = time.perf_counter()
            stream = ChunkStream(e, list(SENTENCE_IDS))
            n = 0
            for i, piece in enumerate(stream):
                if i == 0:
                    firsts.append(time.perf_counter() - t)
                n += len(piece.audio)
            totals.append((time.perf_counter() - t) / (n / torch_engine.vocoder_config.sample_rate))
        e2e[k + " first audio ms"] = float(np.median(firsts)) * 1e3
        e2e[k + " RTF"] = float(np.median(totals))
    results["ChunkStream"] = e2e
    results["utterance"] = {"frames": float(frames.shape[1]), "seconds": seconds}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads outside the decoder")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    results = run(args.repeats, args.threads)
    for section, values in results.items():
        print(section)
        for k, v in values.items():
            print(f"  {k:28s} {v:9.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
