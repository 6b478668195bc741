"""A burst of long streams on one server, with its admission watched::

    python -m streamtts.bench.burst --streams 10 [--extra-slots 0] --json burst.json

Starts ``streamtts -v serve`` (live capacity, no phrase cache), warms it, then opens ``--streams``
WebSocket streams spread over 2 s, each fed ``--sentences`` test sentences at LLM speed and played
at real time (streamtts/bench/ws.py). Meanwhile it reads the server's ``/metrics`` every
``--every-s``: capacity, extra slots, admitted and queued. The JSON has each stream's stalls and
TTFA, that trace, and the server's capacity changes with their reasons (from its log): what the
admission did while the burst came in, and which streams paid for it.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Optional

from streamtts.bench.conversations import capacity_changes
from streamtts.bench.streams import STALL_TOLERANCE_S, stream_texts, summarize
from streamtts.bench.ws import ChildServer, add_load_options, load_server_args, run_clients

METRICS = ("streamtts_capacity", "streamtts_extra_slots", "streamtts_admitted", "streamtts_queued")


def run(engine: str, vocoder: str, streams: int, sentences: int, extra_slots: Optional[float],
        every_s: float = 0.1, json_path: Optional[str] = None) -> dict:
    args = load_server_args(engine, vocoder, extra_slots)
    server = ChildServer(args, verbose=True)
    try:
        run_clients(server, ["你好，今天天气很好。"], 0.0)  # warm-up (first-call costs), not counted
        trace: list[list] = []
        done = threading.Event()

        def watch() -> None:
            t0 = time.monotonic()
            while not done.is_set():
                try:
                    m = server.metrics()
                except (OSError, RuntimeError):
                    m = {}
                trace.append([round(time.monotonic() - t0, 2)] + [m.get(k) for k in METRICS])
                done.wait(every_s)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        logs, wall = run_clients(server, stream_texts(streams, sentences), 2.0)
        done.set()
        watcher.join()
        load = summarize(logs, STALL_TOLERANCE_S)
        keep = ("index", "held", "stall_total_s", "ttfa_text_ms", "queued")
        result = {"kind": "burst", "engine": server.ready.get("engine"), "args": args, "streams": streams,
                  "sentences": sentences, "streams_held": load["streams_held"], "wall_s": wall,
                  "per_stream": [{k: s.get(k) for k in keep} for s in load["per_stream"]],
                  "trace_columns": ["t_s", *METRICS], "trace": trace,
                  "capacity_changes": capacity_changes(server.output())}
    finally:
        server.stop()
    print(f"held {result['streams_held']} of {streams}; capacity changes: {result['capacity_changes']}")
    for s in result["per_stream"]:
        print(f"  stream {s['index']}: held {s['held']}, stalls {s['stall_total_s']:.3f} s, "
              f"TTFA {s['ttfa_text_ms']:.0f} ms")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_options(p, streams=10, extra_slots_help="`serve --extra-slots` (default: the server's)")
    p.add_argument("--every-s", type=float, default=0.1, help="metrics sampling period")
    a = p.parse_args(argv)
    run(a.engine, a.vocoder, a.streams, a.sentences, a.extra_slots, a.every_s, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
