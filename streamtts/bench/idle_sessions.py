"""Memory of idle WebSocket sessions, and speech beside them: ``python -m streamtts.bench.idle_sessions``.

A voice bot keeps one socket per call and is silent while its user talks. Such a socket holds no
stream slot, only its connection and session state; this measures what that costs. ``streamtts
serve`` runs in a child process (capacity 2, ``--max-sessions`` above the largest step); clients
connect in steps (default up to 1,000), each sends ``start``, waits for ``ready`` and stays
silent. After every step the server's resident memory is read from ``/proc``.

One more socket speaks (a text, then ``end``; a new socket per utterance) ``--repeats`` times
(default 10) in each of three phases: before the idle sessions connect, with all of them open,
and after they closed again; the first utterance of the run warms up and is not counted. Its
time to first audio (first ``text`` sent -> first audio frame, client side; and the server's
``ttfa_ms`` from ``done``), p50, min, max and spread (max - min), say whether the idle sessions
cost the speaker anything beyond the noise of the phases without them, and ``queued`` whether
they held capacity.

File descriptors: the bench process holds one socket per session and the server one more, so
the soft ``RLIMIT_NOFILE`` is raised to the hard limit here before the server starts (the child
inherits it); the server's own limit is read from ``/proc`` and reported, and a limit too low
for the largest step is an error before anything connects.

New sessions are limited to 10 a second per client IP (the server's default), so the clients
connect at that pace. Prints the rows and writes them as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

from streamtts.bench.engines import machine
from streamtts.bench.ws import Server

CONNECT_INTERVAL_S = 0.11  # under the server's 10 new sessions a second per IP
SPOKEN = ("你好，欢迎光临。", "请问去火车站怎么走？", "谢谢你的耐心，我马上为你查询。")
FD_MARGIN = 64  # descriptors besides the sessions: model files, the engine's threads, logs


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def open_files_limit(pid: int) -> int:
    """The soft limit on open files of process ``pid`` (from /proc/PID/limits)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft = line.split()[3]
            return resource.RLIM_INFINITY if soft == "unlimited" else int(soft)
    raise RuntimeError("no open-files limit")


def raise_nofile(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; returns the new soft limit.
    Too low for ``needed`` descriptors: an error naming both."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise RuntimeError(f"open-files limit {soft} (hard {hard}) is below the {needed} this run needs; "
                           "raise it (ulimit -n) and run again")
    return soft


async def _open(url: str, n: int, sockets: list) -> None:
    from websockets.asyncio.client import connect

    for _ in range(n):
        ws = await connect(url, proxy=None, compression=None, open_timeout=60, ping_interval=None)
        await ws.send(json.dumps({"type": "start"}))
        if json.loads(await ws.recv())["type"] != "ready":
            raise RuntimeError("a session was not made ready")
        sockets.append(ws)
        await asyncio.sleep(CONNECT_INTERVAL_S)


async def _speak(url: str, text: str) -> dict:
    from websockets.asyncio.client import connect

    queued = False
    async with connect(url, proxy=None, compression=None, open_timeout=60) as ws:
        t0 = time.monotonic()
        await ws.send(json.dumps({"type": "text", "text": text}, ensure_ascii=False))
        await ws.send(json.dumps({"type": "end"}))
        first: Optional[float] = None
        async for msg in ws:
            if isinstance(msg, bytes):
                first = first if first is not None else time.monotonic() - t0
                continue
            m = json.loads(msg)
            queued = queued or m["type"] == "queued"
            if m["type"] == "done":
                return {"ttfa_s": first, "queued": queued, "done": m}
            if m["type"] == "error":
                return {"ttfa_s": first, "queued": queued, "error": m}
    return {"ttfa_s": first, "queued": queued, "error": "closed"}


def _stats(values: list) -> dict:
    v = [x for x in values if x is not None]
    if not v:
        return {"n": 0}
    return {"n": len(v), "p50": round(statistics.median(v), 1), "min": round(min(v), 1), "max": round(max(v), 1),
            "spread": round(max(v) - min(v), 1), "mean": round(statistics.mean(v), 1),
            "stdev": round(statistics.stdev(v), 1) if len(v) > 1 else 0.0}


async def _speak_phase(url: str, repeats: int, sessions_open: int, label: str) -> dict:
    results = []
    for k in range(repeats):
        results.append(await _speak(url, SPOKEN[k % len(SPOKEN)]))
        await asyncio.sleep(0.3)  # one utterance at a time, the engine idle between them
    client = [1000.0 * r["ttfa_s"] for r in results if r.get("ttfa_s") is not None]
    server = [r["done"]["ttfa_ms"] for r in results if "done" in r]
    phase = {"phase": label, "sessions_open": sessions_open, "utterances": repeats,
             "failed": sum("done" not in r for r in results), "queued": sum(bool(r["queued"]) for r in results),
             "client_ttfa_ms": _stats(client), "server_ttfa_ms": _stats(server),
             "client_ttfa_ms_each": [round(x, 1) for x in client]}
    print(f"{label}: {sessions_open} idle sessions open, TTFA p50 {phase['client_ttfa_ms'].get('p50')} ms "
          f"(min {phase['client_ttfa_ms'].get('min')}, max {phase['client_ttfa_ms'].get('max')}), "
          f"queued {phase['queued']}, failed {phase['failed']}", file=sys.stderr, flush=True)
    return phase


def run(steps: list[int], engine: str = "onnx-int8", vocoder: str = "melgan",
        json_path: Optional[Path] = None, repeats: int = 10) -> dict:
    top = max(steps)
    nofile = raise_nofile(top + FD_MARGIN)
    load_before = [round(x, 2) for x in os.getloadavg()]
    server = Server(engine, vocoder, capacity=2, queue_size=16, max_sessions=top + 8)
    server_nofile = open_files_limit(server.proc.pid)
    if server_nofile != resource.RLIM_INFINITY and server_nofile < top + FD_MARGIN:
        server.stop()
        raise RuntimeError(f"the server's open-files limit {server_nofile} is below {top + FD_MARGIN}")
    url = f"ws://127.0.0.1:{server.port}/v1/stream"
    rows: list[dict] = []
    phases: list[dict] = []
    try:
        async def main() -> None:
            sockets: list = []
            await _speak(url, "你好。")  # first-call costs, not counted
            await asyncio.sleep(2.0)  # let start-up settle before the baseline
            phases.append(await _speak_phase(url, repeats, 0, "before"))
            await asyncio.sleep(1.0)
            base = rss_bytes(server.proc.pid)
            rows.append({"sessions": 0, "rss_mb": round(base / 2**20, 1)})
            for n in steps:
                await _open(url, n - len(sockets), sockets)
                await asyncio.sleep(1.0)
                rss = rss_bytes(server.proc.pid)
                row = {"sessions": n, "rss_mb": round(rss / 2**20, 1),
                       "rss_growth_mb": round((rss - base) / 2**20, 1),
                       "kib_per_session": round((rss - base) / 1024 / n, 1)}
                rows.append(row)
                print(f"{n:5d} idle sessions: RSS {row['rss_mb']} MB (+{row['rss_growth_mb']} MB), "
                      f"{row['kib_per_session']} KiB a session", file=sys.stderr, flush=True)
            phases.append(await _speak_phase(url, repeats, len(sockets), "with idle sessions"))
            alive = sum(ws.state.name == "OPEN" for ws in sockets)
            rows[-1]["sessions_still_open_after_speaking"] = alive
            for ws in sockets:
                await ws.close()
            await asyncio.sleep(1.0)
            phases.append(await _speak_phase(url, repeats, 0, "after they closed"))

        asyncio.run(main())
    finally:
        server.stop()
    base_ttfa = [x for p in phases if p["sessions_open"] == 0 for x in p["client_ttfa_ms_each"]]
    with_ttfa = next(p for p in phases if p["sessions_open"])["client_ttfa_ms_each"]
    out = {"bench": "idle_sessions", "engine": server.engine_stages, "capacity": 2, "machine": machine(),
           "load_average_before": load_before, "load_average_after": [round(x, 2) for x in os.getloadavg()],
           "open_files_limit": {"bench": nofile, "server": server_nofile}, "rows": rows,
           "rss_growth_mb_at_most_sessions": rows[-1]["rss_growth_mb"],
           "speaking": phases,
           "speaking_summary": {
               "without_idle_sessions_client_ttfa_ms": _stats(base_ttfa),
               "with_idle_sessions_client_ttfa_ms": _stats(with_ttfa),
               # within noise: the p50 with them lies within the range seen without them
               "with_p50_within_range_without": (bool(base_ttfa) and bool(with_ttfa)
                                                 and min(base_ttfa) <= statistics.median(with_ttfa) <= max(base_ttfa)),
           }}
    print(json.dumps({k: v for k, v in out.items() if k != "machine"}, ensure_ascii=False, indent=1))
    if json_path is not None:
        Path(json_path).write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    return out


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", default="250,500,750,1000", help="idle sessions open after each step")
    p.add_argument("--repeats", type=int, default=10, help="utterances of the speaking client in each phase")
    p.add_argument("--engine", default="onnx-int8")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    steps = [int(x) for x in args.steps.split(",")]
    if not steps or min(steps) < 1 or steps != sorted(steps):
        p.error("--steps takes increasing session counts >= 1, e.g. 250,500,1000")
    run(steps, args.engine, json_path=args.json, repeats=args.repeats)


if __name__ == "__main__":
    main()
