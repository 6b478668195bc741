"""``streamtts bench --concurrency 1,4,8``: how many LLM-fed streams one engine keeps at real time.

Per N (the ``--concurrency`` list), N streams run at once through the real engine core: one
:class:`~streamtts.core.engine.EngineCore` (scheduler + runner, the server's settings: blocks
24/64, max batch 64, 128 vocoded frames a tick, ``max_buffered_s`` 5) whose ticks run in an
engine thread as in the server's worker (the same schedule -> execute -> update calls as
``EngineCore.step``, timed); each stream is a :class:`~streamtts.core.request.Request` fed from
the main thread. No phrase cache (a cache would turn repeated sentences into free hits).

The load, per stream i:

* text like an LLM's: three sentences of
  :data:`~streamtts.evaluation.sentences.TEST_SENTENCES` (a different pick per stream, seed i),
  sent in fragments of 3 characters every 30 ms, then END; stream i starts at i/N x ``stagger``
  seconds (default 2 s: sessions do not all open in the same millisecond);
* a player: it reads its utterance's output stream as the engine posts to it, paced to a lead of
  ``max_buffered_s`` (5 s) over its listener's clock as a server paces a real listener, so the
  scheduler pauses a stream that far ahead the same way; it starts playing 200 ms after the first
  audio arrived and plays at real time, so sample s (pauses between sentences included) is due at
  ``t_first + 0.2 + s / 22050``. ``--no-player-buffer`` does not pace (the consumer takes
  everything at once).
* underruns: a piece that arrives after it is due stalls the player for (arrival - due); the
  player then resumes, later by that much (as a real player re-buffers). Per stream: the number
  of underruns, their sum (``stall_total_s``) and the longest (``stall_max_s``).

A stream *holds* when it finished and its underruns sum to at most ``--tolerance-ms`` (default
20 ms: one tick of scheduling jitter, below what a listener notices). Capacity is the largest N
of the list at which every stream held, at it and at every smaller N of the list.

Fields per row: ``mode`` (``in-process``; ``ws``/``ws-over-capacity`` from
:mod:`streamtts.bench.ws`), ``n``, ``ttfa_text_ms_p50/p99`` (first text fragment sent -> first
audio), ``ttfa_chunk_ms_p50/p99`` (the fragment that completed the first chunk, per a
:class:`~streamtts.chunker.SentenceChunker` fed the same fragments -> first audio),
``streams_held``, ``streams_finished``, ``worst_stall_s`` (longest single underrun of any stream),
``worst_stall_total_s``, ``underruns``, ``compute_rtf`` (engine busy seconds / seconds of speech
produced, pauses not counted), ``utilization`` (busy / wall), ``mean_batch_rows`` (decoder rows
per decoding tick), ``streams_underrun_at_start`` (streams whose first underrun came in their
first 0.3 s of audio), ``decoder_ms_per_step``, ``vocoder_rtf``,
``vocoder_frames_in_per_frame_out`` (window context overhead), ``audio_s``, ``wall_s``,
``per_stream`` and a ``tick_profile`` of the batched ticks (decoder call / vocoder call / encoder /
runner host / scheduler milliseconds). The report also has ``machine`` (cpu, cores, load average,
python, torch, onnxruntime), ``source`` (git commit, changed engine/core/server files),
``settings`` and ``capacity``. The load and the player live in :mod:`streamtts.bench.streams`.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from streamtts.bench.engines import machine, row_name, source_version, timed_engine
from streamtts.bench.streams import (FRAGMENT_CHARS, FRAGMENT_INTERVAL_S, SENTENCES_PER_STREAM, SR,
                                     STAGGER_S, STALL_TOLERANCE_S, START_BUFFER_S, StreamLog, fragments,
                                     stream_texts, summarize)


# ---- the engine thread -------------------------------------------------------------------------

@dataclass
class Tick:
    plan_s: float  # schedule() when it had a plan at once (0: it had waited, time unknown)
    exec_s: float  # runner.execute
    update_s: float  # scheduler.update (routing to the sinks)
    rows: int  # decoder rows
    steps: int  # decoder steps of the block
    windows: int  # vocoder windows planned
    frames: int  # audio frames produced
    encoder_s: float  # acoustic.start calls
    decoder_s: float  # the acoustic.decode call
    vocoder_s: float  # vocoder.vocode calls

    @property
    def busy_s(self) -> float:
        return self.plan_s + self.exec_s + self.update_s


def engine_loop(core: Any, ta: Any, tv: Any, stop: threading.Event, ticks: list) -> None:
    """EngineCore.step's schedule -> execute -> update, timed, until ``stop``."""
    sched, runner = core.scheduler, core.runner
    clock = time.perf_counter
    while not stop.is_set():
        t0 = clock()
        plan = sched.schedule(0.0)
        t1 = clock()
        if plan is None:
            plan = sched.schedule(0.05)
            if plan is None:
                continue
            t0 = t1 = clock()
        before = (ta.start_s, ta.decode_s, tv.vocode_s)
        out = runner.execute(plan)
        t2 = clock()
        sched.update(plan, out)
        t3 = clock()
        ticks.append(Tick(t1 - t0, t2 - t1, t3 - t2, len(plan.decode), plan.steps, len(plan.vocode),
                          sum(r.frames for r in out.rows.values()), ta.start_s - before[0],
                          ta.decode_s - before[1], tv.vocode_s - before[2]))


def tick_profile(ticks: Sequence[Tick]) -> Optional[dict]:
    """Where a batched tick's milliseconds go: medians over the ticks with the most decoder rows
    (at least three quarters of the largest batch seen), and the largest tick in full."""
    batched = [t for t in ticks if t.rows >= 1]
    if not batched:
        return None
    top = max(t.rows for t in batched)
    least = max(1, top - top // 4)
    sel = [t for t in batched if t.rows >= least]

    def parts(t: Tick) -> dict:
        host = t.exec_s - t.encoder_s - t.decoder_s - t.vocoder_s
        return {"tick_ms": 1000 * t.busy_s, "decoder_call_ms": 1000 * t.decoder_s,
                "vocoder_call_ms": 1000 * t.vocoder_s, "encoder_ms": 1000 * t.encoder_s,
                "runner_host_ms": 1000 * host, "scheduler_ms": 1000 * (t.plan_s + t.update_s),
                "rows": t.rows, "steps": t.steps, "windows": t.windows, "frames": t.frames,
                "audio_ms": 1000 * t.frames * 256 / SR}

    table = [parts(t) for t in sel]
    median = {k: float(np.median([p[k] for p in table])) for k in table[0]}
    busy = sum(t.busy_s for t in sel) or 1e-9
    share = {"decoder_call": sum(t.decoder_s for t in sel) / busy,
             "vocoder_call": sum(t.vocoder_s for t in sel) / busy,
             "encoder": sum(t.encoder_s for t in sel) / busy,
             "runner_host": sum(t.exec_s - t.encoder_s - t.decoder_s - t.vocoder_s for t in sel) / busy,
             "scheduler": sum(t.plan_s + t.update_s for t in sel) / busy}
    largest = max(sel, key=lambda t: (t.rows, t.busy_s))
    return {"ticks": len(sel), "min_rows": least, "median": median, "share": share,
            "largest": parts(largest)}


# ---- one N, in process -------------------------------------------------------------------------

class InProcessBench:
    """One engine, loaded and warmed once; :meth:`run` drives N streams through a fresh core."""

    def __init__(self, engine: str = "onnx-int8", vocoder: str = "auto", max_buffered_s: float = 5.0,
                 player_buffer: bool = True, voice: Optional[str] = None):
        from streamtts.text.chunker import preload
        from streamtts.text import warm_up
        from streamtts.voices import DEFAULT_VOICE

        self.name = row_name(engine, vocoder)
        self.engine, self.ta, self.tv = timed_engine(engine, vocoder)
        # torch threads as the server's worker sets them by default (streamtts/engine_client/inprocess.py):
        # one for the torch acoustic backend, torch's default otherwise (torch vocoders)
        if self.engine.acoustic.name == "torch":
            import torch

            torch.set_num_threads(1)
        self.max_buffered_s = max_buffered_s
        self.player_buffer = player_buffer
        self.voice = voice or DEFAULT_VOICE
        warm_up()
        preload()
        from streamtts.engine_client.inprocess import speak_through

        speak_through(self._core(), "你好。")  # first-call costs

    def _core(self):
        from streamtts.core.engine_core import EngineCore, scheduler_config_for
        from streamtts.core.scheduler import BlockSchedule
        from streamtts.server.config import ServerConfig

        d = ServerConfig()  # the server's defaults
        cfg = scheduler_config_for(self.engine, blocks=BlockSchedule(d.block_first, d.block_rest),
                                   max_batch=d.max_batch, vocode_frames=d.vocode_frames,
                                   max_buffered_s=self.max_buffered_s)
        return EngineCore(self.engine, None, cfg)

    def run(self, texts: Sequence[str], stagger_s: float = STAGGER_S, tolerance_s: float = STALL_TOLERANCE_S,
            timeout_s: float = 600.0) -> dict:
        from streamtts.engine_client.base import UtteranceSpec
        from streamtts.engine_client.inprocess import InProcessUtterance
        from streamtts.engine_client.stream import Audio, Done, Failed, OutputStream, Segment
        from streamtts.text.chunker import SentenceChunker

        n = len(texts)
        core = self._core()
        sched = core.scheduler
        self.ta.reset()
        self.tv.reset()
        logs = [StreamLog(i, texts[i]) for i in range(n)]
        utts: list[Optional[InProcessUtterance]] = [None] * n
        chunkers = [SentenceChunker() for _ in range(n)]  # the request's chunker, default options
        pieces = [fragments(t) for t in texts]
        done = threading.Semaphore(0)
        # The player holds up to max_buffered_s: its stream paces to that lead, as a server paces
        # its listener, and what the stream holds back pauses the synthesis the same way.
        lead_s = self.max_buffered_s if self.player_buffer else 0.0
        lock = threading.Lock()  # streams are read from the engine thread (on push) and this one

        def take(i: int) -> None:
            """The player takes what its stream lets go now (arrival time: now)."""
            lg, stream = logs[i], utts[i].stream
            with lock:
                while (event := stream.next()) is not None:
                    t = time.monotonic()
                    if isinstance(event, Audio):
                        lg.add_audio(t, len(event.samples), not event.silence)
                        stream.delivered(event)
                    elif isinstance(event, Segment):
                        lg.segments += 1
                    elif isinstance(event, Done):
                        lg.t_done = t
                        done.release()
                    elif isinstance(event, Failed):
                        lg.failed = event.code
                        done.release()

        # (time offset, stream, fragment index); index == len: END
        events = sorted((stagger_s * i / max(n, 1) + k * FRAGMENT_INTERVAL_S, i, k)
                        for i in range(n) for k in range(len(pieces[i]) + 1))
        stop = threading.Event()
        ticks: list[Tick] = []
        thread = threading.Thread(target=engine_loop, args=(core, self.ta, self.tv, stop, ticks),
                                  name="bench-engine", daemon=True)
        thread.start()
        t0 = time.monotonic()
        next_flow = t0
        e = 0
        finished = 0
        try:
            while finished < n:
                now = time.monotonic()
                if now - t0 > timeout_s:
                    break
                while e < len(events) and t0 + events[e][0] <= now:
                    _, i, k = events[e]
                    e += 1
                    if utts[i] is None:
                        stream = OutputStream(SR, max_lead_s=lead_s)
                        stream.notify = lambda i=i: take(i)
                        utts[i] = InProcessUtterance(sched, UtteranceSpec(self.voice, i, 1.0, api="bench"), stream)
                    t = time.monotonic()
                    if k < len(pieces[i]):
                        logs[i].mark_text(t, bool(chunkers[i].push(pieces[i][k])))
                        utts[i].text(0, pieces[i][k])
                    else:
                        logs[i].mark_text(t, True)  # END flushes: a chunk not complete before is now
                        utts[i].end(0)
                if self.player_buffer and now >= next_flow:  # pieces held back by pacing fall due
                    next_flow = now + FRAGMENT_INTERVAL_S
                    for i, utt in enumerate(utts):
                        if utt is not None and logs[i].t_done is None:
                            take(i)
                wait = min(t0 + events[e][0] if e < len(events) else now + 0.05,
                           next_flow if self.player_buffer else now + 0.05) - time.monotonic()
                if done.acquire(timeout=max(0.0, min(wait, 0.05))):
                    finished += 1
        finally:
            stop.set()
            sched.wake()
            thread.join(30)
        wall = max((lg.t_done or time.monotonic()) for lg in logs) - t0
        return self._row(n, logs, ticks, wall, tolerance_s, stagger_s)

    def _row(self, n: int, logs: list, ticks: list, wall: float, tolerance_s: float, stagger_s: float) -> dict:
        row: dict[str, Any] = {"mode": "in-process", "engine": self.name, "n": n, "engine_stages": self.engine.name}
        row.update(summarize(logs, tolerance_s))
        busy = sum(t.busy_s for t in ticks)
        decoding = [t.rows for t in ticks if t.rows]
        ta, tv = self.ta, self.tv
        speech = row["speech_s"] or 1e-9
        row.update({
            "compute_rtf": busy / speech,
            "utilization": busy / max(wall, 1e-9),
            "mean_batch_rows": float(np.mean(decoding)) if decoding else 0.0,
            "max_batch_rows": max(decoding, default=0),
            # per step of a batched call (all its rows at once), and per row-step
            "decoder_ms_per_step": 1000 * ta.decode_s / max(sum(t.steps for t in ticks if t.rows), 1),
            "decoder_ms_per_row_step": 1000 * ta.decode_s / max(ta.steps, 1),
            "vocoder_rtf": tv.vocode_s / speech,
            # mel frames in the vocoder windows (context included) per frame of audio out
            "vocoder_frames_in_per_frame_out": tv.frames_in / max(1, sum(t.frames for t in ticks)),
            "vocoder_calls": tv.calls, "vocoder_windows": tv.windows,
            "encoder_s": ta.start_s, "decoder_s": ta.decode_s, "vocoder_s": tv.vocode_s,
            "busy_s": busy, "wall_s": wall, "ticks": len(ticks), "stagger_s": stagger_s,
            "tick_profile": tick_profile(ticks),
        })
        return row


# ---- report ------------------------------------------------------------------------------------

def _f(v: Optional[float], spec: str = ".0f") -> str:
    return "n/a" if v is None else format(v, spec)


def markdown(rows: Sequence[dict]) -> str:
    lines = ["| mode | N | admitted / queued / refused | TTFA text p50 / p99 ms | TTFA chunk p50 / p99 ms "
             "| held / streams run | worst stall s | compute RTF | mean batch rows |",
             "|---|---:|---|---|---|---:|---:|---:|---:|"]
    for r in rows:
        adm = (f"{r['admitted']} / {r['queued']} / {r['refused']}" if "refused" in r else "-")
        lines.append(
            f"| {r['mode']} | {r['n']} | {adm} | {_f(r['ttfa_text_ms_p50'])} / {_f(r['ttfa_text_ms_p99'])} "
            f"| {_f(r['ttfa_chunk_ms_p50'])} / {_f(r['ttfa_chunk_ms_p99'])} "
            f"| {r['streams_held']}/{r['streams']} | {r['worst_stall_s']:.3f} | {_f(r.get('compute_rtf'), '.3f')} "
            f"| {_f(r.get('mean_batch_rows'), '.1f')} |")
    return "\n".join(lines)


def profile_markdown(p: Optional[dict]) -> str:
    if not p:
        return "(no batched tick)"
    m, s = p["median"], p["share"]
    return (f"batched tick (median of {p['ticks']} ticks with >= {p['min_rows']} rows): {m['tick_ms']:.1f} ms "
            f"for {m['rows']:.0f} rows x {m['steps']:.0f} steps, {m['frames']:.0f} frames "
            f"({m['audio_ms']:.0f} ms audio): decoder call {m['decoder_call_ms']:.1f} ms ({100 * s['decoder_call']:.0f} %), "
            f"vocoder call {m['vocoder_call_ms']:.1f} ms ({100 * s['vocoder_call']:.0f} %), "
            f"encoder {m['encoder_ms']:.1f} ms ({100 * s['encoder']:.0f} %), runner host/python "
            f"{m['runner_host_ms']:.1f} ms ({100 * s['runner_host']:.0f} %), scheduler {m['scheduler_ms']:.1f} ms "
            f"({100 * s['scheduler']:.0f} %)")


def capacity_of(rows: Sequence[dict]) -> int:
    """Largest N at which every stream held, at it and at every smaller N (0: not even the first)."""
    cap = 0
    for r in sorted(rows, key=lambda r: r["n"]):
        if r["streams_held"] < r["n"]:
            break
        cap = r["n"]
    return cap


def run(concurrency: Sequence[int], engine: str = "onnx-int8", vocoder: str = "auto",
        json_path: Optional[str] = None, ws: bool = False, ws_capacity: Optional[int] = None,
        text: Optional[str] = None, sentences: int = SENTENCES_PER_STREAM, stagger_s: float = STAGGER_S,
        tolerance_s: float = STALL_TOLERANCE_S, player_buffer: bool = True, max_buffered_s: float = 5.0,
        timeout_s: float = 600.0) -> dict:
    """The capacity rows for each N (in process), then with ``ws`` the WebSocket rows; prints
    markdown, writes ``json_path``."""
    source = source_version()
    bench = InProcessBench(engine, vocoder, max_buffered_s, player_buffer)
    rows = []
    for n in concurrency:
        print(f"{bench.name}: {n} streams ...", file=sys.stderr, flush=True)
        rows.append(bench.run(stream_texts(n, sentences, text), stagger_s, tolerance_s, timeout_s))
        r = rows[-1]
        r["load_average_1m_after"] = round(os.getloadavg()[0], 2)  # neighbours on a shared machine
        print(f"  held {r['streams_held']}/{n}, worst stall {r['worst_stall_s']:.3f} s, "
              f"compute RTF {r['compute_rtf']:.3f}", file=sys.stderr, flush=True)
    capacity = capacity_of(rows)
    at = next((r for r in rows if r["n"] == capacity), None) or (rows[0] if rows else None)
    report: dict[str, Any] = {
        "kind": "capacity", "machine": machine(), "source": source, "engine": bench.name,
        "engine_stages": bench.engine.name,
        "settings": {"fragment_chars": FRAGMENT_CHARS, "fragment_interval_s": FRAGMENT_INTERVAL_S,
                     "start_buffer_s": START_BUFFER_S, "stall_tolerance_s": tolerance_s,
                     "sentences_per_stream": None if text else sentences, "text": text,
                     "stagger_s": stagger_s, "max_buffered_s": max_buffered_s,
                     "player_reports_buffer": player_buffer, "phrase_cache": False},
        "capacity": capacity,
        "tick_profile_n": at["n"] if at else None,
        "tick_profile": at["tick_profile"] if at else None,
        "rows": rows,
    }
    del bench  # free the engine before the server loads its own
    if ws:
        from streamtts.bench.ws import ws_rows

        c = ws_capacity or max(1, capacity)
        report["ws_capacity"] = c
        rows += ws_rows(engine, vocoder, c, [stream_texts(k, sentences, text) for k in (c, max(2 * c, c + 2))],
                        stagger_s, tolerance_s)
    if source_version() != source:  # someone changed the engine while it ran: say so
        report["source_after"] = source_version()
    print(markdown(rows))
    print(f"\ncapacity: {capacity} streams (every stream held up to it; tolerance {1000 * tolerance_s:.0f} ms)")
    if at:
        print(f"at N={at['n']}: " + profile_markdown(at["tick_profile"]))
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=2, ensure_ascii=False)
    return report
