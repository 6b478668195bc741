#!/usr/bin/env python3
"""Prepare the GPU check's inputs on a CPU machine (voices, HiFiGAN and the text frontend here).

    python scripts/gpu-prep.py                      # -> shared/gpu-inputs/ (git-ignored)
    python scripts/gpu-prep.py DIR --references 4   # or elsewhere; texts with --text (repeatable)

Writes float16 copies of the acoustic and HiFiGAN weights, the test sentences' input ids, and CPU
float32 reference mels and audio (streamtts/bench/gpu_inputs.py); checks the folder fits the 64 MiB that
travel with the working tree. Then, on the GPU machine: ``python scripts/gpu-check.py OUT``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    from streamtts.errors import StreamTTSError
    from streamtts.evaluation.sentences import TEST_SENTENCES
    from streamtts.bench.gpu_inputs import write_inputs

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", nargs="?", default=str(ROOT / "shared" / "gpu-inputs"))
    parser.add_argument("--text", action="append", help="sentences to use (default: the 16 test sentences)")
    parser.add_argument("--voice", default="biaobei")
    parser.add_argument("--references", type=int, default=4, help="sentences with a CPU reference (default 4)")
    args = parser.parse_args()
    try:
        meta = write_inputs(Path(args.folder), args.text or list(TEST_SENTENCES), args.voice, args.references)
    except StreamTTSError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    print(f"wrote {args.folder}: {len(meta['sentences'])} sentences, {len(meta['reference_steps'])} references, "
          f"{meta['bytes'] / 2 ** 20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
