"""Memory of idle WebSocket sessions, and speech beside them: ``python -m streamtts.bench.idle_sessions``.

A voice bot keeps one socket per call and is silent while its user talks. Such a socket holds no
stream slot, only its connection and session state; this measures what that costs. ``streamtts
serve`` runs in a child process (capacity 2); clients connect in steps, each sends ``start`` and
waits for ``ready``, and stays silent. After every step the server's resident memory is read
from ``/proc``. With all of them open, one more socket speaks a short text: its time to first
audio and whether it was queued show that the silent ones hold no capacity.

New sessions are limited to 10 a second per client IP (the server's default), so the clients
connect at that pace. Prints the rows and writes them as JSON (``--json``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Optional

from streamtts.bench.ws import Server

CONNECT_INTERVAL_S = 0.11  # under the server's 10 new sessions a second per IP


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


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


def run(steps: list[int], engine: str = "onnx-int8", vocoder: str = "melgan",
        json_path: Optional[Path] = None) -> dict:
    server = Server(engine, vocoder, capacity=2, queue_size=16, max_sessions=max(steps) + 8)
    url = f"ws://127.0.0.1:{server.port}/v1/stream"
    rows = []
    try:
        async def main() -> dict:
            sockets: list = []
            await asyncio.sleep(2.0)  # let start-up settle before the baseline
            base = rss_bytes(server.proc.pid)
            rows.append({"sessions": 0, "rss_mb": round(base / 2**20, 1)})
            for n in steps:
                await _open(url, n - len(sockets), sockets)
                await asyncio.sleep(1.0)
                rss = rss_bytes(server.proc.pid)
                row = {"sessions": n, "rss_mb": round(rss / 2**20, 1),
                       "kib_per_session": round((rss - base) / 1024 / n, 1)}
                rows.append(row)
                print(f"{n:5d} idle sessions: RSS {row['rss_mb']} MB, {row['kib_per_session']} KiB a session",
                      file=sys.stderr, flush=True)
            spoken = await _speak(url, "你好，欢迎光临。")
            for ws in sockets:
                await ws.close()
            return spoken

        spoken = asyncio.run(main())
    finally:
        server.stop()
    out = {"bench": "idle_sessions", "engine": server.engine_stages, "capacity": 2, "rows": rows,
           "speaking_beside_them": {"sessions_open": max(steps), **{k: v for k, v in spoken.items() if k != "done"},
                                    "server_ttfa_ms": spoken.get("done", {}).get("ttfa_ms")}}
    print(json.dumps(out, ensure_ascii=False, indent=1))
    if json_path is not None:
        Path(json_path).write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n")
    return out


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", default="100,200,400", help="idle sessions open after each step")
    p.add_argument("--engine", default="onnx-int8")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    run([int(x) for x in args.steps.split(",")], args.engine, json_path=args.json)


if __name__ == "__main__":
    main()
