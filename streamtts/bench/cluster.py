"""What the cluster path costs against the single-process server, in the same run::

    python -m streamtts.bench.cluster --engine onnx-int8 --vocoder melgan --streams 6 --json bench-cluster.json

For each of ``single`` (``streamtts serve``: one engine in the process) and ``cluster``
(``streamtts serve --replicas 2``: a local loopback Ray head, two replicas, the same front end),
as child processes with no phrase cache:

* ``ttfa``: ``--ttfa-runs`` WebSocket utterances one after another (LLM-style fragments, as the
  capacity benchmark sends them); TTFA from the first text to the first audio, p50 and p99, and
  each run's in order;
* ``load``: ``--streams`` clients at once; streams held (no underrun past the tolerance), and CPU
  seconds of the whole process tree (front end, Ray, replicas) per second of audio made: the cores
  one real-time stream costs; and the same for the server's own process alone
  (``front_end_cpu_per_realtime_stream``: in the cluster, what bounds one front end).

The JSON has both rows and the differences: ``ttfa_p50_added_ms``, ``cpu_per_stream_added``
(cores per real-time stream) and ``held_ratio`` (cluster / single).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional

import psutil

from streamtts.bench import ws
from streamtts.bench.streams import STALL_TOLERANCE_S, stream_texts, summarize
from streamtts.bench.ws import add_load_options, load_server_args, run_clients


class ChildServer(ws.ChildServer):
    """A server of the comparison (single process, or front end of a cluster), with its CPU time."""

    stop_timeout_s = 60.0

    def __init__(self, args: list[str], ready_timeout_s: float = 900.0):
        super().__init__(args, ready_timeout_s)

    def cpu_s(self, tree: bool = True) -> float:
        """CPU seconds of the server and every process under it (Ray's included), or of the
        server's own process alone (``tree=False``: the front end, with its Ray driver)."""
        total = 0.0
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root] + (root.children(recursive=True) if tree else [])
        except psutil.NoSuchProcess:
            return 0.0
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                continue
        return total


def measure(mode: str, args: list[str], ttfa_runs: int, streams: int, sentences: int) -> dict:
    print(f"{mode}: starting `streamtts serve {' '.join(args)}` ...", file=sys.stderr, flush=True)
    server = ChildServer(args)
    try:
        run_clients(server, ["你好，今天天气很好。"], 0.0)  # warm-up (first-call costs), not counted
        ttfa_logs = []
        for i in range(ttfa_runs):
            logs, _ = run_clients(server, stream_texts(1, 1), 0.0)
            ttfa_logs += logs
        ttfa = summarize(ttfa_logs)
        cpu0, front0 = server.cpu_s(), server.cpu_s(tree=False)
        logs, wall = run_clients(server, stream_texts(streams, sentences), 2.0)
        cpu, front = server.cpu_s() - cpu0, server.cpu_s(tree=False) - front0
        load = summarize(logs, STALL_TOLERANCE_S)
        row = {"mode": mode, "args": args, "engine": server.ready.get("engine"),
               "capacity": server.ready.get("capacity"),
               "ttfa_runs": ttfa_runs, "ttfa_ms_p50": ttfa["ttfa_text_ms_p50"], "ttfa_ms_p99": ttfa["ttfa_text_ms_p99"],
               "ttfa_ms_each": [s["ttfa_text_ms"] for s in ttfa["per_stream"]],  # in order: outliers' place
               "streams": streams, "streams_held": load["streams_held"], "streams_failed": load["streams_failed"],
               "audio_s": load["audio_s"], "wall_s": wall, "cpu_s": cpu,
               "cpu_per_realtime_stream": cpu / load["audio_s"] if load["audio_s"] else None,
               "front_end_cpu_s": front,
               "front_end_cpu_per_realtime_stream": front / load["audio_s"] if load["audio_s"] else None}
        print(f"  {json.dumps({k: v for k, v in row.items() if k != 'args'})}", file=sys.stderr, flush=True)
        return row
    finally:
        server.stop()


def run(engine: str, vocoder: str, replicas: int, ttfa_runs: int, streams: int, sentences: int,
        json_path: Optional[str] = None, extra_slots: Optional[float] = None) -> dict:
    # --extra-slots is the single process's (the cluster admits by its replicas' capacities)
    base = load_server_args(engine, vocoder, extra_slots)
    single = measure("single", base, ttfa_runs, streams, sentences)
    cluster = measure("cluster", base + ["--replicas", str(replicas)], ttfa_runs, streams, sentences)

    def diff(key):
        a, b = single.get(key), cluster.get(key)
        return None if a is None or b is None else b - a

    result = {"single": single, "cluster": cluster, "replicas": replicas, "cpu_count": os.cpu_count(),
              "ttfa_p50_added_ms": diff("ttfa_ms_p50"), "cpu_per_stream_added": diff("cpu_per_realtime_stream"),
              "held_ratio": (cluster["streams_held"] / single["streams_held"]) if single["streams_held"] else None}
    print(json.dumps({k: v for k, v in result.items() if k not in ("single", "cluster")}, indent=1))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_load_options(p, streams=6, extra_slots_help="`serve --extra-slots` for both (default: the server's)")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--ttfa-runs", type=int, default=15)
    a = p.parse_args(argv)
    run(a.engine, a.vocoder, a.replicas, a.ttfa_runs, a.streams, a.sentences, a.json, a.extra_slots)
    return 0


if __name__ == "__main__":
    sys.exit(main())
