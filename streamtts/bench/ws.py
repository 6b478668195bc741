"""The capacity benchmark through the real server: ``streamtts serve`` in a child process, real
``websockets`` clients in this one (``streamtts bench --concurrency ... --ws``).

The server runs with ``--capacity C`` set explicitly, no phrase cache, and otherwise its defaults;
one short session warms it up before the rows (not counted).
Each client behaves like an LLM front end: it connects, sends ``start`` (its seed: its index)
and waits for ``ready``; then it sends the same load as the in-process benchmark
(:mod:`streamtts.bench.capacity`: ``text`` fragments of 3 characters every 30 ms, then ``end``)
and plays the binary audio frames (pcm_s16le, 22050 Hz) on the same player clock (200 ms start
buffer, underruns). Its utterance takes a stream slot with its first text: one the server cannot
admit yet gets ``queued`` events, then its audio, or the error ``server_busy`` when no slot freed in
time. TTFA is measured from the first ``text`` it sent, so it includes a wait in the queue;
``queue_wait_s`` is the time from the first ``queued`` to the first audio (0 when not queued).

Rows: ``ws`` with C clients (all admitted at once), and ``ws-over-capacity`` with 2C clients (C + 2
when C is 1) and a queue of C/2 (at least 1) whose wait may last 120 s: C are admitted at once,
C/2 are queued and admitted as slots free up (a slot frees when its session is done, i.e. all its
audio was sent, not played), the rest get ``server_busy``. ``admitted``/``queued``/``refused`` count
them; ``held_admitted_at_once`` and ``held_after_queue`` say whether each group held.
``compute_rtf`` and ``mean_batch_rows`` come from the server's /metrics (tick seconds / audio
seconds, batch rows histogram), as deltas over the row.

The server's session rate limit (10 new sessions a second per client IP, bursts of 20) applies;
clients start spread over ``max(stagger, (n - 15) / 8)`` seconds so it is never hit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Optional, Sequence

from streamtts.bench.engines import row_name
from streamtts.bench.streams import FRAGMENT_INTERVAL_S, SR, STALL_TOLERANCE_S, StreamLog, fragments, summarize

QUEUE_TIMEOUT_S = 120.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ChildServer:
    """``streamtts [-v] serve --port P --cache-mb 0 ARGS`` in a child process, ready (its /ready
    answer in :attr:`ready`) until :meth:`stop`; ``verbose``: its progress log (capacity changes
    and their reasons) in :meth:`output`."""

    stop_timeout_s = 20.0

    def __init__(self, args: Sequence[str], ready_timeout_s: float = 300.0, verbose: bool = False):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()
        self.ready: dict = {}
        cmd = [sys.executable, "-m", "streamtts", *(["-v"] if verbose else []), "serve", "--port", str(self.port),
               "--cache-mb", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=dict(os.environ))
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}): {self.output()[-3000:]}")
            try:
                with urllib.request.urlopen(self.base + "/ready", timeout=5) as r:
                    if r.status == 200:
                        self.ready = json.loads(r.read())
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the server did not get ready in time")
            time.sleep(0.5)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(self.base + "/metrics", timeout=10) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith("streamtts_") and " " in line and "{" not in line:
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Server(ChildServer):
    """The benchmark's server: an engine pair, a pinned capacity and a queue."""

    def __init__(self, engine: str, vocoder: str, capacity: int, queue_size: int,
                 queue_timeout_s: float = QUEUE_TIMEOUT_S, ready_timeout_s: float = 300.0,
                 max_sessions: int = 512, verbose: bool = False):
        super().__init__(["--engine", engine, "--vocoder", vocoder, "--capacity", str(capacity),
                          "--queue-size", str(queue_size), "--queue-timeout", str(queue_timeout_s),
                          "--max-sessions", str(max_sessions)], ready_timeout_s, verbose)
        self.engine_stages: Optional[str] = self.ready.get("engine")  # the server's engine name


async def _client(url: str, log: StreamLog, offset_s: float) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    from streamtts.text.chunker import SentenceChunker

    await asyncio.sleep(offset_s)
    log.admitted = False
    t_queued = None
    try:
        async with connect(url, proxy=None, compression=None, max_size=None, open_timeout=60,
                           ping_interval=None) as ws:
            await ws.send(json.dumps({"type": "start", "seed": log.index}))
            while True:  # `ready`, or a refusal of the session itself
                m = json.loads(await ws.recv())
                if m["type"] == "ready":
                    break
                if m["type"] == "error":
                    log.failed = m.get("code")
                    return
            # the utterance takes its stream slot with its first text: `queued` events while it
            # waits, then its audio, or a (non-fatal) `server_busy` when no slot freed in time
            sender = asyncio.create_task(_send(ws, log, SentenceChunker()))
            try:
                async for msg in ws:
                    t = time.monotonic()
                    if isinstance(msg, bytes):
                        if not log.admitted:
                            log.admitted = True
                            log.queue_wait_s = t - t_queued if t_queued is not None else 0.0
                        log.add_audio(t, len(msg) // 2, True)
                        continue
                    m = json.loads(msg)
                    if m["type"] == "queued":
                        log.queued = True
                        t_queued = t if t_queued is None else t_queued
                    elif m["type"] == "segment":
                        log.segments += 1
                    elif m["type"] == "done":
                        log.t_done = t
                    elif m["type"] == "error" and (m.get("fatal") or m.get("code") == "server_busy"):
                        log.failed = m.get("code")
                        if not m.get("fatal"):  # that utterance was dropped: this client is through
                            break
            finally:
                sender.cancel()
    except (ConnectionClosed, OSError, asyncio.TimeoutError) as exc:
        if log.failed is None and log.t_done is None:
            log.failed = f"connection: {type(exc).__name__}"


async def _send(ws, log: StreamLog, chunker) -> None:
    pieces = fragments(log.text)
    base = time.monotonic()
    for k, piece in enumerate(pieces):
        await asyncio.sleep(max(0.0, base + k * FRAGMENT_INTERVAL_S - time.monotonic()))
        log.mark_text(time.monotonic(), bool(chunker.push(piece)))
        await ws.send(json.dumps({"type": "text", "text": piece}, ensure_ascii=False))
    await asyncio.sleep(max(0.0, base + len(pieces) * FRAGMENT_INTERVAL_S - time.monotonic()))
    log.mark_text(time.monotonic(), True)
    await ws.send(json.dumps({"type": "end"}))


def load_server_args(engine: str, vocoder: str, extra_slots: Optional[float] = None) -> list[str]:
    """``streamtts serve`` arguments of the benchmarks that load one server with many long streams
    (burst, cluster): a long queue wait, and ``--extra-slots`` when given (None: the server's)."""
    args = ["--engine", engine, "--vocoder", vocoder, "--queue-timeout", "120"]
    return args + ["--extra-slots", str(extra_slots)] if extra_slots is not None else args


def add_load_options(p: argparse.ArgumentParser, streams: int, extra_slots_help: str) -> None:
    """The command-line options those benchmarks share."""
    p.add_argument("--engine", default="onnx-int8")
    p.add_argument("--vocoder", default="melgan")
    p.add_argument("--streams", type=int, default=streams)
    p.add_argument("--sentences", type=int, default=2)
    p.add_argument("--extra-slots", type=float, default=None, metavar="SHARE", help=extra_slots_help)
    p.add_argument("--json", default=None)


# A client's whole stream, from its connection to its close, at most (the queue waits up to
# 120 s in the benchmarks that queue longest).
CLIENT_TIMEOUT_S = 300.0


def run_clients(server: Server, texts: Sequence[str], stagger_s: float) -> tuple[list[StreamLog], float]:
    n = len(texts)
    spread = max(stagger_s, (n - 15) / 8)
    logs = [StreamLog(i, t) for i, t in enumerate(texts)]
    url = f"ws://127.0.0.1:{server.port}/v1/stream"

    async def one(lg: StreamLog) -> None:
        await asyncio.sleep(spread * lg.index / max(n, 1))
        try:  # a stream that never ends is a result to report, not a benchmark that never ends
            await asyncio.wait_for(_client(url, lg, 0.0), CLIENT_TIMEOUT_S)
        except asyncio.TimeoutError:
            lg.failed = lg.failed or "timeout"

    async def main() -> None:
        await asyncio.gather(*(one(lg) for lg in logs))

    # Each client's chunker (when its first chunk is complete) segments words: the segmenter is
    # built here, not on the clients' event loop mid-stream, where loading it would hold every
    # client's playback up for a second and count as stalls of the server.
    from streamtts.text.chunker import preload

    preload()
    t0 = time.monotonic()
    asyncio.run(main())
    return logs, time.monotonic() - t0


def _row(mode: str, name: str, logs: list[StreamLog], wall: float, before: dict, after: dict,
         tolerance_s: float, capacity: int, stages: Optional[str] = None) -> dict:
    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    admitted = [lg for lg in logs if lg.admitted]
    at_once = [lg for lg in admitted if not lg.queued]
    later = [lg for lg in admitted if lg.queued]
    row = {"mode": mode, "engine": name, "n": len(logs), "capacity": capacity, "engine_stages": stages}
    row.update(summarize(admitted, tolerance_s))
    held = {s["index"]: s["held"] for s in row["per_stream"]}
    audio = delta("streamtts_audio_seconds_total")
    rows_n = delta("streamtts_batch_rows_count")
    row.update({
        "n": len(logs),
        "admitted": len(at_once), "queued": sum(lg.queued for lg in logs),
        "refused": sum(lg.failed == "server_busy" for lg in logs),
        "admitted_after_queue": len(later),
        "held_admitted_at_once": sum(held[lg.index] for lg in at_once),
        "held_after_queue": sum(held[lg.index] for lg in later),
        "other_failures": sorted({lg.failed for lg in logs if lg.failed not in (None, "server_busy")}),
        "compute_rtf": delta("streamtts_tick_seconds_sum") / audio if audio else None,
        "mean_batch_rows": delta("streamtts_batch_rows_sum") / rows_n if rows_n else None,
        "wall_s": wall,
    })
    return row


def ws_rows(engine: str, vocoder: str, capacity: int, texts: Sequence[Sequence[str]],
            stagger_s: float, tolerance_s: float = STALL_TOLERANCE_S) -> list[dict]:
    """Rows ``ws`` (texts[0]: C clients) and ``ws-over-capacity`` (texts[1]: more than C)."""
    name = row_name(engine, vocoder)
    print(f"{name}: starting the server (capacity {capacity}) ...", file=sys.stderr, flush=True)
    server = Server(engine, vocoder, capacity, queue_size=max(1, capacity // 2))
    rows = []
    try:
        run_clients(server, ["你好，今天天气很好。"], 0.0)  # warm-up session (first-call costs), not counted
        for mode, group in zip(("ws", "ws-over-capacity"), texts):
            print(f"{name}: {len(group)} WebSocket clients ...", file=sys.stderr, flush=True)
            before = server.metrics()
            logs, wall = run_clients(server, group, stagger_s)
            rows.append(_row(mode, name, logs, wall, before, server.metrics(), tolerance_s, capacity,
                             server.engine_stages))
            r = rows[-1]
            r["load_average_1m_after"] = round(os.getloadavg()[0], 2)
            print(f"  admitted {r['admitted']} (+{r['admitted_after_queue']} after queueing), refused "
                  f"{r['refused']}, held {r['streams_held']}", file=sys.stderr, flush=True)
    finally:
        server.stop()
    return rows


__all__ = ["Server", "run_clients", "ws_rows", "SR"]
