"""Command line: ``streamtts fetch | voices | frontend | synth``.

Every user error ends with one line ``error [code]: message`` on stderr and exit status 2; a
traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from streamtts.errors import StreamTTSError


def _cmd_fetch(args: argparse.Namespace) -> int:
    from streamtts.pack import ensure_pack

    pack = ensure_pack(wheel=Path(args.wheel) if args.wheel else None, force=args.force)
    print(f"voices ready in {pack.path}")
    return 0


def _cmd_voices(args: argparse.Namespace) -> int:
    from streamtts.voices import DEFAULT_VOICE, VOICES

    for voice in VOICES:
        print(f"{voice}{'  (default)' if voice == DEFAULT_VOICE else ''}")
    return 0


def _cmd_frontend(args: argparse.Namespace) -> int:
    from streamtts.text import phonemize

    ph = phonemize(args.text)
    print(json.dumps({"normalized": ph.normalized, "pinyin": ph.pinyin, "ids": ph.ids}, ensure_ascii=False))
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    import numpy as np

    from engines.registry import create_engine
    from streamtts.audio import write_wav
    from streamtts.pipeline import DEFAULT_SEED
    from streamtts.speech import Audio, Speaker
    from streamtts.text import phonemize
    from streamtts.voices import resolve_voice

    seed = DEFAULT_SEED if args.seed is None else args.seed
    voice = resolve_voice(args.voice)  # fail fast, before loading models
    phonemize(args.text)
    speaker = Speaker(create_engine(args.engine))
    t0 = time.perf_counter()
    ttfa = None
    pieces = []
    for event in speaker.speak(args.text, voice=voice, seed=seed):
        if isinstance(event, Audio):
            if ttfa is None:
                ttfa = time.perf_counter() - t0
            pieces.append(event.audio)
    elapsed = time.perf_counter() - t0
    audio = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
    write_wav(args.output, audio, speaker.sample_rate)
    seconds = len(audio) / speaker.sample_rate
    print(f"wrote {args.output}: {seconds:.2f} s of audio, first audio after {1000 * (ttfa or 0):.0f} ms, "
          f"all in {elapsed:.2f} s (RTF {elapsed / max(seconds, 1e-9):.3f}), voice {voice}, seed {seed}, "
          f"engine {speaker.engine.name}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from streamtts import bench

    if args.one:
        print(json.dumps(bench.run_one(args.one, args.voice, asr=not args.no_asr, limit=args.limit)))
        return 0
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bench.run(engines, args.voice, asr=not args.no_asr, limit=args.limit, json_path=args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from streamtts.voices import DEFAULT_VOICE

    parser = argparse.ArgumentParser(prog="streamtts", description="Streaming Chinese text-to-speech.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("fetch", help="download and convert the voices (once; later runs are offline)")
    p.add_argument("--wheel", help=f"use this local ttskit wheel instead of downloading it")
    p.add_argument("--force", action="store_true", help="convert again even if the pack verifies")
    p.set_defaults(func=_cmd_fetch)

    p = sub.add_parser("voices", help="list the voices")
    p.set_defaults(func=_cmd_voices)

    p = sub.add_parser("frontend", help="print the normalized text, pinyin and model ids as JSON")
    p.add_argument("text")
    p.set_defaults(func=_cmd_frontend)

    p = sub.add_parser("synth", help="synthesize text to a WAV file")
    p.add_argument("text")
    p.add_argument("-o", "--output", required=True, help="WAV file to write (16-bit mono, 22050 Hz)")
    p.add_argument("--voice", default=DEFAULT_VOICE, help=f"voice name (default {DEFAULT_VOICE})")
    p.add_argument("--seed", type=int, default=None, help="seed of the prenet dropout masks (default 0)")
    p.add_argument("--engine", default="torch", help="inference engine: torch, onnx, onnx-int8, auto")
    p.set_defaults(func=_cmd_synth)

    p = sub.add_parser("bench", help="benchmark TTFA, RTF and intelligibility per engine")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--engines", default="torch,onnx,onnx-int8", help="comma-separated engine names")
    p.add_argument("--voice", default=DEFAULT_VOICE)
    p.add_argument("--limit", type=int, default=None, help="only the first N test sentences")
    p.add_argument("--no-asr", action="store_true", help="skip the intelligibility measurement")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: one engine in this process
    p.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except StreamTTSError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
