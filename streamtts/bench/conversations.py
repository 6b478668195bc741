"""``streamtts bench --conversations 2,4,6,8 [--talk-ratio 0.4]``: how many voice-bot calls one
server keeps at real time, when each call is silent while its user talks.

Per N (the list; ``xK``: K times the capacity the row's server measured at its start, rounded
up), ``streamtts serve`` starts in a child process as in :mod:`streamtts.bench.ws` (no phrase
cache: an LLM seldom says a sentence twice word for word), with its live capacity
(``--capacity C`` pins it), the default admission queue (16 places, 30 s), and warms up with one
short session. Then N calls run at once for ``--duration-s`` seconds, each on one WebSocket
from this process, started 0.15 s apart (the server's session rate limit):

* **listening**: nothing on the socket. Each listening phase lasts ``talk * (1 - r) / r`` times
  a uniform draw in [0.5, 1.5], where ``talk`` is what the bot's last turn played and ``r`` the
  talk ratio, so the bot talks about ``r`` of the call; a call starts with a listening phase of
  a random share of that (calls do not start in step);
* **a bot turn**: one to three test sentences (:data:`~streamtts.evaluation.sentences.TEST_SENTENCES`)
  sent as an LLM streams them: tokens of 1-3 characters at a rate drawn per turn in 20-40 tokens
  a second, then ``flush``. The turn's audio is played by a modelled player that starts 200 ms
  after the turn's first audio and plays at real time (an underrun: the player ran dry after it
  started). Once every sentence of the turn has had its ``segment`` the client sends ``cancel``:
  on the legacy protocol an utterance (and its stream slot) lasts until ``done`` (``end``, which
  closes the socket) or ``cancel``, so this gives the slot back, as a finished context would;
  the next turn is the socket's next utterance. The player plays out what it holds, then the
  call listens again;
* **barge-in**: one turn in five is interrupted (turn k of call i when k + i is a multiple of
  five; such a turn has three sentences): the client sends ``cancel`` once its player has
  played a drawn 0.5-2.0 s of the turn. Audio that arrives between the ``cancel`` and its
  ``cancelled`` is dropped (allowed); audio after ``cancelled`` is counted as a violation.

A turn that finds every slot taken gets ``queued`` (counted) and waits; one refused
(``server_busy``) is counted, its tokens stop, and the client cancels whatever its tokens in
flight started. A turn *holds* when it was spoken (or interrupted as planned) and its player's
underruns sum to at most 20 ms (``--tolerance-ms``); a call holds when all its turns held and its
socket lived. TTFA of a turn: its first ``text`` sent -> its first audio frame, so a wait in the
admission queue counts.

While the calls run, the server's ``streamtts_capacity`` (the live capacity), ``streamtts_admitted``
and ``streamtts_queued`` are read from ``/metrics`` and its RSS from ``/proc`` once a second.
Engine load over the row: tick seconds over wall (``engine_busy``), tick seconds per second of
audio (``compute_rtf``), the server's and this client process's CPU seconds. The report (printed
table, ``--json``) also has the machine and the load average before and after each row, and
``best``: the largest N where every call held with turn TTFA p99 <= 300 ms, with the capacity
the server measured in that run.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import re
import resource
import statistics
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

from streamtts.bench.engines import machine, percentile, row_name, source_version
from streamtts.bench.streams import SR, STALL_TOLERANCE_S, START_BUFFER_S
from streamtts.bench.ws import Server

TALK_RATIO = 0.4
DURATION_S = 60.0
TOKEN_CHARS = (1, 3)
TOKENS_PER_S = (20.0, 40.0)
SENTENCES_PER_TURN = (1, 3)
INTERRUPT_EVERY = 5
INTERRUPT_AFTER_S = (0.5, 2.0)  # audio played when the user barges in
TTFA_TARGET_MS = 300.0
CONNECT_INTERVAL_S = 0.15  # under the server's 10 new sessions a second per client IP
SAMPLE_INTERVAL_S = 1.0
TURN_TIMEOUT_S = 120.0  # a turn that neither completes nor fails by then is counted as failed
FIRST_TALK_GUESS_S = 4.0  # talk assumed before a call's first turn has played anything


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def tokens(text: str, rng: random.Random) -> list[str]:
    """``text`` cut into LLM-like tokens of 1-3 characters."""
    out, i = [], 0
    while i < len(text):
        k = rng.randint(*TOKEN_CHARS)
        out.append(text[i:i + k])
        i += k
    return out


def play(pieces: Sequence[tuple[float, int]], start_buffer_s: float = START_BUFFER_S,
         stop_at: Optional[float] = None, more_expected: bool = False) -> dict:
    """A real-time player over ``pieces`` (arrival time, samples): it starts ``start_buffer_s``
    after the first arrival, waits when a piece is late (an underrun) and goes on from there.
    ``stop_at``: the user barged in then (the player stops); ``more_expected``: audio was still
    to come at that moment, so a player that had run dry before it was stalled until then."""
    out = {"underruns": 0, "stall_total_s": 0.0, "stall_max_s": 0.0, "played_s": 0.0, "end": None}
    if not pieces:
        return out
    start = pieces[0][0] + start_buffer_s
    pos, shift = 0, 0.0

    def stall(s: float) -> None:
        out["underruns"] += 1
        out["stall_total_s"] += s
        out["stall_max_s"] = max(out["stall_max_s"], s)

    for t, n in pieces:
        due = start + pos / SR + shift
        if stop_at is not None and due >= stop_at:
            break
        if t > due:
            if stop_at is not None and t >= stop_at:  # dry until the barge-in
                stall(stop_at - due)
                shift += stop_at - due
                break
            stall(t - due)
            shift += t - due
        pos += n
    else:
        if stop_at is not None and more_expected:
            dry = start + pos / SR + shift
            if dry < stop_at:
                stall(stop_at - dry)
                shift += stop_at - dry
    end = start + pos / SR + shift
    if stop_at is not None:
        end = min(end, max(stop_at, start))
    out["end"] = end
    out["played_s"] = max(0.0, end - start - shift)
    return out


@dataclass
class Turn:
    call: int
    index: int
    text: str
    interrupt_after_s: Optional[float]  # None: not interrupted
    t_first_text: Optional[float] = None
    # the token that completed the first chunk (or the flush) was sent: the server's first chunk,
    # known from its first segment, which may be cut early when the text stalls; until then, the
    # chunk that the server's default chunker would close
    t_chunk: Optional[float] = None
    sent: list = field(default_factory=list)  # (time, whitespace-free length so far) per token
    t_flush: Optional[float] = None
    t_first_audio: Optional[float] = None
    t_queued: Optional[float] = None
    t_complete: Optional[float] = None  # the segment of its last sentence arrived
    t_cancel: Optional[float] = None
    t_cancelled: Optional[float] = None
    pieces: list = field(default_factory=list)
    segment_text: str = ""
    segments: int = 0
    queued: bool = False
    refused: bool = False
    failed: Optional[str] = None
    errors: list = field(default_factory=list)
    dropped_after_cancel_bytes: int = 0  # between cancel and cancelled: allowed
    audio_after_cancelled_bytes: int = 0  # after cancelled: a violation
    play: dict = field(default_factory=dict)

    @property
    def interrupted(self) -> bool:
        return self.interrupt_after_s is not None and self.t_cancel is not None and self.t_complete is None

    @property
    def ttfa_ms(self) -> Optional[float]:
        if self.t_first_audio is None or self.t_first_text is None:
            return None
        return 1000.0 * (self.t_first_audio - self.t_first_text)

    @property
    def ttfa_chunk_ms(self) -> Optional[float]:
        """From the token that completed the first chunk: the server's share, without the time
        the text took to arrive."""
        if self.t_first_audio is None or self.t_chunk is None or self.t_chunk > self.t_first_audio:
            return None  # interrupted before its first segment said where the server cut
        return 1000.0 * (self.t_first_audio - self.t_chunk)

    def first_segment(self, text: str) -> None:
        """The server's first chunk was ``text``: it was complete when the token holding its last
        character was sent."""
        n = len(_squash(text))
        at = next((t for t, length in self.sent if length >= n), None)
        if n and at is not None and (self.t_chunk is None or at < self.t_chunk):
            self.t_chunk = at  # earlier than the default chunker's: the server cut it early

    def finish(self, tolerance_s: float) -> None:
        stop = self.t_cancel if self.interrupted else None
        self.play = play(self.pieces, stop_at=stop, more_expected=stop is not None)
        self.play["held"] = (not self.refused and self.failed is None and self.t_first_audio is not None
                             and (self.t_complete is not None or self.interrupted)
                             and self.audio_after_cancelled_bytes == 0
                             and self.play["stall_total_s"] <= tolerance_s)

    def to_json(self) -> dict:
        return {"call": self.call, "turn": self.index, "chars": len(self.text),
                "interrupted": self.interrupted, "planned_interrupt_s": self.interrupt_after_s,
                "ttfa_ms": self.ttfa_ms, "ttfa_chunk_ms": self.ttfa_chunk_ms, "queued": self.queued,
                "queue_wait_ms": (1000.0 * (self.t_first_audio - self.t_queued)
                                  if self.queued and self.t_first_audio and self.t_queued else None),
                "refused": self.refused, "failed": self.failed, "segments": self.segments,
                # first text -> cancel: the time the turn held (or waited for) a stream slot
                "slot_s": (self.t_cancel - self.t_first_text) if self.t_cancel and self.t_first_text else None,
                "audio_s": sum(n for _, n in self.pieces) / SR,
                "cancel_to_cancelled_ms": (1000.0 * (self.t_cancelled - self.t_cancel)
                                           if self.t_cancel and self.t_cancelled else None),
                "dropped_after_cancel_bytes": self.dropped_after_cancel_bytes,
                "audio_after_cancelled_bytes": self.audio_after_cancelled_bytes,
                **{k: v for k, v in self.play.items() if k != "end"}}


class Call:
    """One simulated call: one socket, listening and bot turns until ``deadline``."""

    def __init__(self, index: int, url: str, talk_ratio: float, deadline: float, seed: int = 0):
        self.index, self.url, self.talk_ratio, self.deadline = index, url, talk_ratio, deadline
        self.rng = random.Random(seed * 100_003 + index)
        self.turns: list[Turn] = []
        self.turn: Optional[Turn] = None
        self.failed: Optional[str] = None
        self.utterance = 1  # the server's number of the socket's current utterance
        self.changed = asyncio.Event()  # something arrived for the current turn
        self.talk_s = 0.0
        self.t_start: Optional[float] = None
        self.t_end: Optional[float] = None

    # ---- the socket's messages --------------------------------------------------------------
    async def _read(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            async for msg in ws:
                t = time.monotonic()
                turn = self.turn
                if isinstance(msg, bytes):
                    if turn is None or turn.t_cancelled is not None:
                        if turn is not None:
                            turn.audio_after_cancelled_bytes += len(msg)
                    elif turn.t_cancel is not None:
                        turn.dropped_after_cancel_bytes += len(msg)
                    else:
                        if turn.t_first_audio is None:
                            turn.t_first_audio = t
                        turn.pieces.append((t, len(msg) // 2))
                    self.changed.set()
                    continue
                m = json.loads(msg)
                kind = m.get("type")
                if turn is None:
                    continue
                if kind == "queued" and m.get("utterance") == self.utterance:
                    turn.queued = True
                    turn.t_queued = turn.t_queued or t
                elif kind == "segment" and turn.t_cancel is None:
                    if not turn.segments:
                        turn.first_segment(m.get("text", ""))
                    turn.segments += 1
                    turn.segment_text += m.get("text", "")
                    if _squash(turn.segment_text) == _squash(turn.text):
                        turn.t_complete = t
                elif kind == "cancelled":
                    turn.t_cancelled = t
                elif kind == "error":
                    if m.get("fatal"):
                        self.failed = m.get("code")
                        turn.failed = m.get("code")
                    elif m.get("code") == "server_busy":
                        turn.refused = True
                        self.utterance += 1  # the server dropped that utterance
                    else:
                        turn.errors.append(m.get("code"))
                self.changed.set()
        except ConnectionClosed:
            pass
        if self.failed is None and time.monotonic() < self.deadline:
            self.failed = "closed"
        if self.turn is not None and self.turn.failed is None and self.failed:
            self.turn.failed = self.failed
        self.changed.set()

    async def _until(self, cond, deadline: float) -> bool:
        while not cond():
            if self.failed is not None:
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            if cond():
                return True
            try:
                await asyncio.wait_for(self.changed.wait(), left)
            except asyncio.TimeoutError:
                return cond()
        return True

    # ---- a turn -----------------------------------------------------------------------------
    async def _send_tokens(self, ws, turn: Turn, pieces: list[str], rate: float) -> None:
        from streamtts.text.chunker import SentenceChunker

        chunker = SentenceChunker()  # the server's chunker, default options: when the first chunk is known
        base = time.monotonic()
        for k, tok in enumerate(pieces):
            await asyncio.sleep(max(0.0, base + k / rate - time.monotonic()))
            if turn.refused or turn.t_cancel is not None or self.failed:
                return
            now = time.monotonic()
            if turn.t_first_text is None:
                turn.t_first_text = now
            if turn.t_chunk is None and chunker.push(tok):
                turn.t_chunk = now
            turn.sent.append((now, (turn.sent[-1][1] if turn.sent else 0) + len(_squash(tok))))
            await ws.send(json.dumps({"type": "text", "text": tok}, ensure_ascii=False))
        await asyncio.sleep(max(0.0, base + len(pieces) / rate - time.monotonic()))
        if not (turn.refused or turn.t_cancel is not None or self.failed):
            turn.t_flush = time.monotonic()
            turn.t_chunk = turn.t_chunk or turn.t_flush
            await ws.send(json.dumps({"type": "flush"}))

    async def _cancel(self, ws, turn: Turn) -> None:
        turn.t_cancel = time.monotonic()
        await ws.send(json.dumps({"type": "cancel"}))
        self.utterance += 1
        await self._until(lambda: turn.t_cancelled is not None, turn.t_cancel + 30.0)

    async def _turn(self, ws, k: int, tolerance_s: float) -> Turn:
        rng = self.rng
        # turns k with (k + call) % 5 == 0: one in five, not in step across calls
        interrupt = bool(INTERRUPT_EVERY) and (k + self.index) % INTERRUPT_EVERY == 0
        from streamtts.evaluation.sentences import TEST_SENTENCES

        n = SENTENCES_PER_TURN[1] if interrupt else rng.randint(*SENTENCES_PER_TURN)
        turn = Turn(self.index, k, "".join(rng.sample(TEST_SENTENCES, n)),
                    rng.uniform(*INTERRUPT_AFTER_S) if interrupt else None)
        self.turn = turn
        self.turns.append(turn)
        sender = asyncio.create_task(self._send_tokens(ws, turn, tokens(turn.text, rng), rng.uniform(*TOKENS_PER_S)))
        limit = time.monotonic() + TURN_TIMEOUT_S

        def barge_in_due() -> Optional[float]:
            if turn.interrupt_after_s is None or turn.t_first_audio is None:
                return None
            return turn.t_first_audio + START_BUFFER_S + turn.interrupt_after_s

        while True:
            due = barge_in_due()
            if turn.t_complete is not None or turn.refused or self.failed:
                break
            if due is not None and time.monotonic() >= due:
                break
            await self._until(lambda: (turn.t_complete is not None or turn.refused
                                       or (barge_in_due() is not None and barge_in_due() != due)),
                              min(limit, due if due is not None else limit))
            if time.monotonic() >= limit:
                turn.failed = turn.failed or "timeout"
                break
        if not self.failed:
            # interrupted, refused (tokens in flight may have started another utterance), or done:
            # either way the utterance ends here and gives its slot back
            if turn.refused:
                await asyncio.sleep(0.2)  # let the tokens already sent arrive first
            sender.cancel()
            await self._cancel(ws, turn)
        else:
            sender.cancel()
        turn.finish(tolerance_s)
        return turn

    # ---- the call ---------------------------------------------------------------------------
    def _listen_s(self, talk_s: float) -> float:
        r = self.talk_ratio
        return talk_s * (1.0 - r) / r * self.rng.uniform(0.5, 1.5)

    async def run(self, offset_s: float, tolerance_s: float) -> None:
        from websockets.asyncio.client import connect

        await asyncio.sleep(offset_s)
        try:
            async with connect(self.url, proxy=None, compression=None, max_size=None, open_timeout=60,
                               ping_interval=None) as ws:
                await ws.send(json.dumps({"type": "start", "seed": self.index}))
                m = json.loads(await ws.recv())
                if m.get("type") != "ready":
                    self.failed = m.get("code", "not ready")
                    return
                self.t_start = time.monotonic()
                reader = asyncio.create_task(self._read(ws))
                try:
                    await asyncio.sleep(self._listen_s(FIRST_TALK_GUESS_S) * self.rng.random())
                    k = 0
                    while time.monotonic() < self.deadline and not self.failed:
                        turn = await self._turn(ws, k, tolerance_s)
                        k += 1
                        played = turn.play.get("played_s", 0.0)
                        self.talk_s += played
                        end = turn.play.get("end") or time.monotonic()
                        await asyncio.sleep(max(0.0, end - time.monotonic()))  # the player plays out
                        talk = played if played > 0 else FIRST_TALK_GUESS_S
                        await asyncio.sleep(min(self._listen_s(talk), max(0.0, self.deadline - time.monotonic())))
                    self.turn = None
                    self.t_end = time.monotonic()
                finally:
                    reader.cancel()
        except Exception as exc:  # a refused upgrade, a reset: the call failed, the run goes on
            self.failed = self.failed or f"{type(exc).__name__}: {exc}"
        if self.t_end is None:
            self.t_end = time.monotonic()

    @property
    def held(self) -> bool:
        return self.failed is None and bool(self.turns) and all(t.play.get("held") for t in self.turns)


# ---- the server, watched ----------------------------------------------------------------------

def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


class Watch:
    """Samples the server's live capacity, extra slots, slots, queue and RSS once a second in a
    thread."""

    def __init__(self, server: Server):
        self.server = server
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-watch", daemon=True)

    def __enter__(self) -> "Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            try:
                m = self.server.metrics()
                self.samples.append({"t": time.monotonic(), "capacity": m.get("streamtts_capacity"),
                                     "extra": m.get("streamtts_extra_slots"),
                                     "admitted": m.get("streamtts_admitted"), "queued": m.get("streamtts_queued"),
                                     "rss": rss_bytes(self.server.proc.pid)})
            except (OSError, RuntimeError):
                pass

    def summary(self) -> dict:
        def col(k):
            return [s[k] for s in self.samples if s.get(k) is not None]

        caps, extra, adm, q, rss = col("capacity"), col("extra"), col("admitted"), col("queued"), col("rss")
        return {"capacity_min": min(caps, default=None), "capacity_max": max(caps, default=None),
                "capacity_median": statistics.median(caps) if caps else None,
                "capacity_trace": [int(c) for c in caps],
                # slots beyond the capacity that the headroom allowed, sampled with it
                "extra_slots_trace": [int(e) for e in extra],
                "extra_slots_mean": round(statistics.mean(extra), 2) if extra else None,
                "admitted_max": max(adm, default=None), "queued_max": max(q, default=None),
                "admitted_mean": round(statistics.mean(adm), 2) if adm else None,
                "queued_mean": round(statistics.mean(q), 2) if q else None,
                "server_rss_mb_max": round(max(rss) / 2**20, 1) if rss else None,
                "samples": len(self.samples)}


def _ready(server: Server) -> dict:
    with urllib.request.urlopen(server.base + "/ready", timeout=10) as r:
        return json.loads(r.read())


def _warm(server: Server) -> None:
    """One short session (first-call costs), not counted."""
    from streamtts.bench.ws import run_clients

    run_clients(server, ["你好，今天天气很好。"], 0.0)


def run_calls(server: Server, n: int, talk_ratio: float, duration_s: float,
              tolerance_s: float = STALL_TOLERANCE_S, seed: int = 0) -> tuple[list[Call], float]:
    from streamtts.text.chunker import preload

    preload()  # the calls' own chunkers segment words: built here, not on the event loop mid-turn
    url = f"ws://127.0.0.1:{server.port}/v1/stream"
    t0 = time.monotonic()
    deadline = t0 + duration_s
    calls = [Call(i, url, talk_ratio, deadline, seed) for i in range(n)]

    async def main() -> None:
        await asyncio.gather(*(c.run(CONNECT_INTERVAL_S * c.index, tolerance_s) for c in calls))

    asyncio.run(main())
    return calls, time.monotonic() - t0


def summarize(calls: Sequence[Call], wall_s: float, tolerance_s: float) -> dict:
    turns = [t for c in calls for t in c.turns]
    ttfa = [t.ttfa_ms for t in turns if t.ttfa_ms is not None]
    ttfa_chunk = [t.ttfa_chunk_ms for t in turns if t.ttfa_chunk_ms is not None]
    text_time = [1000.0 * (t.t_chunk - t.t_first_text) for t in turns if t.t_chunk and t.t_first_text]
    waits = [t.to_json()["queue_wait_ms"] for t in turns if t.queued]
    ratios = [c.talk_s / (c.t_end - c.t_start) for c in calls if c.t_start and c.t_end and c.t_end > c.t_start]
    return {
        "calls": len(calls), "calls_held": sum(c.held for c in calls),
        "calls_failed": sum(c.failed is not None for c in calls),
        "call_failures": sorted({c.failed for c in calls if c.failed}),
        "turns": len(turns), "turns_held": sum(bool(t.play.get("held")) for t in turns),
        "turns_interrupted": sum(t.interrupted for t in turns),
        "turns_queued": sum(t.queued for t in turns), "turns_refused": sum(t.refused for t in turns),
        "turns_failed": sum(t.failed is not None for t in turns),
        "turn_ttfa_ms_p50": percentile(ttfa, 50), "turn_ttfa_ms_p99": percentile(ttfa, 99),
        "turn_ttfa_ms_max": max(ttfa, default=None),
        "turn_ttfa_chunk_ms_p50": percentile(ttfa_chunk, 50), "turn_ttfa_chunk_ms_p99": percentile(ttfa_chunk, 99),
        # where a turn's TTFA goes: the LLM's text until the first chunk is complete, then the server
        "text_to_first_chunk_ms_p50": percentile(text_time, 50), "text_to_first_chunk_ms_p99": percentile(text_time, 99),
        "turn_ttfa_ms_p99_not_queued": percentile([t.ttfa_ms for t in turns if not t.queued and t.ttfa_ms], 99),
        "turn_ttfa_chunk_ms_p99_not_queued": percentile([t.ttfa_chunk_ms for t in turns
                                                         if not t.queued and t.ttfa_chunk_ms], 99),
        "queue_wait_ms_p50": percentile([w for w in waits if w is not None], 50),
        "queue_wait_ms_max": max((w for w in waits if w is not None), default=None),
        "worst_stall_total_s": max((t.play.get("stall_total_s", 0.0) for t in turns), default=0.0),
        "underruns": sum(t.play.get("underruns", 0) for t in turns),
        "audio_after_cancelled_bytes": sum(t.audio_after_cancelled_bytes for t in turns),
        "cancel_to_cancelled_ms_max": max((t.to_json()["cancel_to_cancelled_ms"] or 0.0 for t in turns
                                           if t.interrupted), default=None),
        "talk_ratio_measured": statistics.mean(ratios) if ratios else None,
        # slots asked for on average (held or waited for): sum of the turns' first text -> cancel over wall
        "slots_asked_mean": sum(t.t_cancel - t.t_first_text for t in turns
                                if t.t_cancel and t.t_first_text) / wall_s if wall_s else None,
        "talk_s": sum(c.talk_s for c in calls), "wall_s": wall_s,
        "per_turn": [t.to_json() for t in turns],
    }


def calls_for(level: Union[int, str], capacity: int) -> int:
    """The calls of a row: ``level`` itself, or for ``"xK"`` K times the server's ``capacity`` at
    the start of the row, rounded up (the VM's speed moves the capacity between runs; the target
    is stated per stream slot)."""
    if isinstance(level, int):
        return level
    return max(1, math.ceil(float(level[1:]) * max(1, capacity) - 1e-9))


def row(level: Union[int, str], engine: str, vocoder: str, talk_ratio: float, duration_s: float,
        capacity: Optional[int] = None, tolerance_s: float = STALL_TOLERANCE_S, seed: int = 0) -> dict:
    """One N on a fresh server: its warm-up, then the calls (``level``: N, or ``"xK"``:
    :func:`calls_for`)."""
    name = row_name(engine, vocoder)
    print(f"{name}: starting the server ({'capacity ' + str(capacity) if capacity else 'live capacity'}) ...",
          file=sys.stderr, flush=True)
    server = Server(engine, vocoder, capacity or 0, queue_size=16, queue_timeout_s=30.0,
                    max_sessions=max(512, 2 * level) if isinstance(level, int) else 512, verbose=True)
    try:
        _warm(server)
        time.sleep(2.0)  # the warm-up's ticks settle in the live figure
        ready = _ready(server)
        n = calls_for(level, int(ready.get("capacity") or 1))
        load_before = [round(x, 2) for x in os.getloadavg()]
        m0, cpu0, self0 = server.metrics(), cpu_seconds(server.proc.pid), _self_cpu()
        rss0 = rss_bytes(server.proc.pid)
        print(f"  {n} calls for {duration_s:g} s (capacity {ready.get('capacity')} at the start) ...",
              file=sys.stderr, flush=True)
        with Watch(server) as watch:
            calls, wall = run_calls(server, n, talk_ratio, duration_s, tolerance_s, seed)
        m1, cpu1, self1 = server.metrics(), cpu_seconds(server.proc.pid), _self_cpu()
        rss1 = rss_bytes(server.proc.pid)
        load_after = [round(x, 2) for x in os.getloadavg()]
        ready_after = _ready(server)
    finally:
        server.stop()

    def delta(key: str) -> float:
        return m1.get(key, 0.0) - m0.get(key, 0.0)

    audio = delta("streamtts_audio_seconds_total")
    out: dict[str, Any] = {"n": n, "level": level, "engine": name, "engine_stages": server.engine_stages,
                           "capacity_pinned": capacity, "capacity_at_start": ready.get("capacity"),
                           "capacity_at_end": ready_after.get("capacity")}
    out.update(summarize(calls, wall, tolerance_s))
    out.update(watch.summary())
    out["capacity_changes"] = capacity_changes(server.output())
    out.update({
        "server_rss_mb_before": round(rss0 / 2**20, 1), "server_rss_mb_after": round(rss1 / 2**20, 1),
        "engine_busy": delta("streamtts_tick_seconds_sum") / wall if wall else None,
        "compute_rtf": delta("streamtts_tick_seconds_sum") / audio if audio else None,
        "mean_batch_rows": (delta("streamtts_batch_rows_sum") / delta("streamtts_batch_rows_count")
                            if delta("streamtts_batch_rows_count") else None),
        "server_cpu_s": cpu1 - cpu0, "client_cpu_s": self1 - self0,
        "server_cpu_share": (cpu1 - cpu0) / wall if wall else None,
        "client_cpu_share": (self1 - self0) / wall if wall else None,
        "load_average_before": load_before, "load_average_after": load_after,
    })
    for key, p99 in (("all_held_within_target", "turn_ttfa_ms_p99"),
                     ("all_held_within_target_from_chunk", "turn_ttfa_chunk_ms_p99")):
        out[key] = out["calls_held"] == n and out[p99] is not None and out[p99] <= TTFA_TARGET_MS
    print(f"  held {out['calls_held']}/{n} calls, {out['turns']} turns ({out['turns_interrupted']} interrupted, "
          f"{out['turns_queued']} queued, {out['turns_refused']} refused), TTFA p50/p99 "
          f"{_f(out['turn_ttfa_ms_p50'])}/{_f(out['turn_ttfa_ms_p99'])} ms, capacity "
          f"{out['capacity_min']}-{out['capacity_max']}", file=sys.stderr, flush=True)
    return out


def capacity_changes(log: str) -> list[str]:
    """The server's capacity changes, with their reasons, from its progress log (``-v``)."""
    return [line.split(": ", 1)[1] for line in log.splitlines() if ": capacity: " in line]


def _self_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _f(v: Optional[float], spec: str = ".0f") -> str:
    return "n/a" if v is None else format(v, spec)


def markdown(rows: Sequence[dict]) -> str:
    lines = ["| calls | held | turns (interrupted) | queued | refused | turn TTFA p50 / p99 ms | from first chunk "
             "p50 / p99 ms | worst stall ms | capacity start / during | server RSS MB | engine busy "
             "| server / client CPU | load before / after |",
             "|---:|---:|---|---:|---:|---|---|---:|---|---:|---:|---|---|"]
    for r in rows:
        cap = (f"{r['capacity_at_start']} / {_f(r['capacity_min'])}-{_f(r['capacity_max'])}"
               + (" (pinned)" if r.get("capacity_pinned") else ""))
        lines.append(
            f"| {r['n']} | {r['calls_held']} | {r['turns']} ({r['turns_interrupted']}) | {r['turns_queued']} "
            f"| {r['turns_refused']} | {_f(r['turn_ttfa_ms_p50'])} / {_f(r['turn_ttfa_ms_p99'])} "
            f"| {_f(r['turn_ttfa_chunk_ms_p50'])} / {_f(r['turn_ttfa_chunk_ms_p99'])} "
            f"| {1000 * r['worst_stall_total_s']:.0f} | {cap} | {_f(r['server_rss_mb_max'], '.0f')} "
            f"| {_f(r['engine_busy'], '.2f')} | {_f(r['server_cpu_share'], '.2f')} / {_f(r['client_cpu_share'], '.2f')} "
            f"| {r['load_average_before'][0]} / {r['load_average_after'][0]} |")
    return "\n".join(lines)


def best(rows: Sequence[dict], key: str = "all_held_within_target") -> Optional[dict]:
    """The largest N at which every call held with turn TTFA p99 within the target (``key``:
    TTFA from the first text, or ``all_held_within_target_from_chunk``: from the first chunk)."""
    ok = [r for r in rows if r[key]]
    if not ok:
        return None
    r = max(ok, key=lambda r: r["n"])
    cap = r["capacity_max"] if r["capacity_max"] is not None else r["capacity_at_start"]
    return {"n": r["n"], "capacity_at_start": r["capacity_at_start"], "capacity_max_during": r["capacity_max"],
            "calls_per_capacity": r["n"] / cap if cap else None,
            "target_calls_per_capacity": 2.0,
            "target_met": bool(cap) and r["n"] >= 2 * cap}


def run(levels: Sequence[Union[int, str]], engine: str = "onnx-int8", vocoder: str = "melgan",
        talk_ratio: float = TALK_RATIO,
        duration_s: float = DURATION_S, json_path: Optional[str] = None, capacity: Optional[int] = None,
        tolerance_s: float = STALL_TOLERANCE_S, seed: int = 0) -> dict:
    if not 0.0 < talk_ratio < 1.0:
        raise ValueError("talk ratio must lie between 0 and 1")
    source = source_version()
    report: dict[str, Any] = {
        "kind": "conversations", "machine": machine(), "source": source, "engine": row_name(engine, vocoder),
        "settings": {"talk_ratio": talk_ratio, "duration_s": duration_s, "token_chars": list(TOKEN_CHARS),
                     "tokens_per_s": list(TOKENS_PER_S), "sentences_per_turn": list(SENTENCES_PER_TURN),
                     "interrupt_every": INTERRUPT_EVERY, "interrupt_after_s": list(INTERRUPT_AFTER_S),
                     "start_buffer_s": START_BUFFER_S, "stall_tolerance_s": tolerance_s,
                     "ttfa_target_ms": TTFA_TARGET_MS, "capacity": capacity or "live", "queue_size": 16,
                     "queue_timeout_s": 30.0, "phrase_cache": False, "seed": seed,
                     "turn_end": "flush; cancel once the last sentence's segment arrived (gives the slot back)"},
        "rows": [],
    }
    for n in levels:
        report["rows"].append(row(n, engine, vocoder, talk_ratio, duration_s, capacity, tolerance_s, seed))
    report["best"] = best(report["rows"])
    report["best_ttfa_from_first_chunk"] = best(report["rows"], "all_held_within_target_from_chunk")
    if source_version() != source:
        report["source_after"] = source_version()
    print(markdown(report["rows"]))
    b = report["best"]
    if b:
        print(f"\nlargest N with every call held and turn TTFA p99 <= {TTFA_TARGET_MS:.0f} ms: {b['n']} calls; "
              f"server capacity {b['capacity_at_start']} at the start, at most {b['capacity_max_during']} "
              f"during the run ({_f(b['calls_per_capacity'], '.1f')} calls per stream slot)")
    else:
        print(f"\nno N had every call held with turn TTFA p99 <= {TTFA_TARGET_MS:.0f} ms")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(report, f, indent=1, ensure_ascii=False)
            f.write("\n")
    return report


__all__ = ["run", "row", "play", "tokens", "Call", "Turn", "markdown", "best"]
