"""The scheduler: which requests decode a block now and which mel windows are vocoded. Pure
Python policy, no tensors; the runner (:mod:`streamtts.core.runner`) executes its plans::

    sched = Scheduler(SchedulerConfig())
    sched.add_request(req); sched.command(req, TEXT, 0, "你好。")   # any thread
    plan = sched.schedule(timeout=0.5)           # engine thread; None when nothing is runnable
    out = runner.execute(plan)                   # one batched decoder call, batched vocoder calls
    sched.update(plan, out)                      # routes audio and segments to the requests' sinks

Policy (why):

* Earliest deadline first. A request's deadline is when its listener runs out of audio: when its
  work became due plus the seconds of audio produced since. New speech is due at once, so a
  newcomer's first block goes first (fast first audio), and running streams stay ahead of
  playback in order of need.
* One decoder call a tick for every running chunk (up to ``max_batch`` by deadline). All rows run
  the same number of steps: the smallest block any of them is due for, so a newcomer's short
  first block (24 steps) is never held up behind others' long ones. Rows join and leave between
  blocks; a row stops on its own rule inside the block.
* The vocoder is the expensive stage, so each tick vocodes at most ``vocode_frames`` frames of
  audio. That bounds a tick, and so bounds how long a newcomer waits. Listeners about to run dry
  (less than ``urgent_s`` of audio ahead; newcomers have none) are served first, by deadline;
  the rest of the budget goes to rows with a window of at least ``min_window`` frames, since few
  large windows cost less than many small ones. While a newcomer waits for its first audio, the
  tick serves only the urgent rows, so it stays short. A row is not decoded further ahead of its
  vocoded audio than ``max_lead_frames``.
* A request whose consumer holds ``max_buffered_s`` of audio it has not played is paused (no
  decoding, no vocoding) until it reads (:meth:`flow`).
* Cancel and close take effect at the next ``schedule()`` (within one tick) and free the
  request's runner state; a failure reported by the runner ends only that request.
* An exception while handling one request's commands, planning or results fails that request
  only (``internal``); :meth:`shutdown` fails them all, and every later one at once, when the
  engine cannot go on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Optional

from streamtts.core.outputs import AudioOut, FailedOut, FinishedOut, PauseOut, SegmentOut
from streamtts.core.request import CANCEL, CLOSE, END, FLUSH, TEXT, ChunkProgress, Request, Status
from streamtts.core.timing import pause_samples
from streamtts.text.chunker import EARLY_CUT_CHARS
from streamtts.text.lexicon import Lexicon

log = logging.getLogger(__name__)


@dataclass
class BlockSchedule:
    """Decoder steps per block of a chunk: ``first``, then from ``second`` (at least ``first``)
    doubling up to ``rest``, then ``rest`` for good.

    The first block must exceed the acoustic model's and the vocoder's look-ahead (for Tacotron
    + MelGAN 10 + 6 frames) to yield audio at all; 24 gives ~90 ms of first audio quickly. Larger
    later blocks cost less per step (fewer calls, less vocoder overlap at window edges), but make
    each tick longer, and so the wait of every other stream: a server keeps them as short as the
    vocoder's share of a tick (``SchedulerConfig.vocode_frames``); an offline speaker takes long
    ones."""

    first: int = 24
    rest: int = 32
    second: int = 32

    def size(self, block: int) -> int:
        """Steps of the chunk's ``block``-th block (0 = first)."""
        if block == 0:
            return self.first
        return min(self.rest, max(self.second, self.first) << min(block - 1, 20))

    def sizes(self) -> Iterator[int]:
        block = 0
        while True:
            yield self.size(block)
            block += 1


@dataclass
class SchedulerConfig:
    blocks: BlockSchedule = field(default_factory=BlockSchedule)
    max_batch: int = 64  # rows in one decoder call
    # Frames of audio vocoded per tick, over all requests. Short ticks let a newcomer's first
    # block and rows about to run dry in sooner; the vocoder's cost per frame barely grows at
    # these widths, so throughput stays.
    vocode_frames: int = 32
    urgent_s: float = 0.5  # a listener with less audio ahead than this is served first
    min_window: int = 32  # otherwise a row waits until it has this many frames to vocode
    max_lead_frames: int = 192  # decoded but not yet vocoded frames a row may run ahead
    max_buffered_s: float = 5.0  # pause a request whose consumer holds this much unplayed audio
    # Text of an utterance's first chunk that has waited this long for a punctuation mark or the
    # first chunk's cap is cut at a word boundary (the chunker's cut_early), so slow text (an
    # LLM's tokens) still starts speaking soon; 0: wait for the mark or the cap.
    first_cut_s: float = 0.1
    first_cut_chars: int = EARLY_CUT_CHARS  # speakable chars an early first chunk needs at least
    first_delay: int = 17  # decoder frames before a chunk's first audio frame is exact
    sample_rate: int = 22050
    hop_length: int = 256
    # A real-time listener who ran out of audio while no text came has already heard the silence
    # owed after the last chunk, so it is dropped; a consumer of samples (the library) wants it.
    drop_late_pauses: bool = True


@dataclass
class Begin:
    request: int  # request id
    text: str  # the chunk's text
    voice: str
    seed: int
    speed: float
    index: int  # chunk number within the request


@dataclass
class Plan:
    steps: int = 0  # decoder steps of this tick's block
    begin: list[Begin] = field(default_factory=list)  # chunks to start (then decode with the rest)
    decode: list[int] = field(default_factory=list)  # request ids decoding a block now
    vocode: list[tuple[int, int]] = field(default_factory=list)  # (request id, at most this many frames)
    free: list[int] = field(default_factory=list)  # request ids whose runner state must go
    finished: list[int] = field(default_factory=list)  # request ids that ended while planning

    def __bool__(self) -> bool:
        return bool(self.begin or self.decode or self.vocode or self.free or self.finished)


@dataclass
class RowResult:
    """What the runner did for one request in a tick."""

    audio: list = field(default_factory=list)  # float32 arrays, in order
    frames: int = 0  # frames of audio in `audio`
    ready: int = 0  # frames of audio that can be made exact now (not yet vocoded)
    acoustic_done: bool = False
    segment: object = None  # SpokenSegment once the chunk's last audio is out
    skipped: bool = False  # nothing speakable in the chunk
    failed: Optional[tuple[str, str]] = None  # (code, message)
    compute_s: float = 0.0


@dataclass
class RunnerOutput:
    rows: dict[int, RowResult] = field(default_factory=dict)
    seconds: float = 0.0  # wall time of the tick


class Scheduler:
    def __init__(self, config: Optional[SchedulerConfig] = None):
        self.config = config or SchedulerConfig()
        self.requests: dict[int, Request] = {}  # engine thread only
        self._new: deque[Request] = deque()
        self._free: list[int] = []
        self._cond = threading.Condition()
        self._dirty = False
        self.closed: Optional[tuple[str, str]] = None  # (code, message) once shut down
        self.lexicon: Optional[Lexicon] = None  # the core's user lexicon (EngineCore sets it)
        self._cut_due: Optional[float] = None  # when the next first-chunk cut may be tried

    def shutdown(self, code: str, message: str) -> None:
        """The engine cannot go on (any thread): fail every request now and every later one on
        arrival. Requests are failed from the calling thread; a stuck engine thread that comes
        back later finds them removed."""
        self.closed = (code, message)
        reqs = list(self.requests.values()) + list(self._new)
        self._new.clear()
        for req in reqs:
            self._fail(req, code, message)
        self.wake()

    # ---- any thread ---------------------------------------------------------------------------
    def fail_plan(self, plan: Plan, code: str, message: str) -> None:
        """Engine thread: a tick failed as a whole; fail the requests it concerned."""
        ids = {b.request for b in plan.begin} | set(plan.decode) | {rid for rid, _ in plan.vocode}
        for rid in sorted(ids):
            req = self.requests.get(rid)
            if req is not None:
                self._fail(req, code, message)

    def add_request(self, req: Request) -> None:
        if self.closed is not None:
            self._fail(req, *self.closed)
            return
        self._new.append(req)
        self.wake()

    def command(self, req: Request, kind: str, *args) -> None:
        req.sent += 1  # before the append: a command read is always counted as sent
        req.inbox.append((kind, *args))
        self.wake()

    def flow(self, req: Request) -> None:
        """The consumer took audio: resume the request if it was paused for it."""
        # Not only when PAUSED: the engine may have found the backlog full just before this read
        # and be about to mark it paused and wait; a wake it does not need costs one replan.
        if req.status not in (Status.FINISHED, Status.FAILED) and req.backlog_s < self.config.max_buffered_s:
            self.wake()

    def wake(self) -> None:
        with self._cond:
            self._dirty = True
            self._cond.notify()

    @property
    def size(self) -> int:
        return len(self.requests) + len(self._new)

    # ---- engine thread ------------------------------------------------------------------------
    def schedule(self, timeout: Optional[float] = 0.0) -> Optional[Plan]:
        """The plan of the next tick; waits up to ``timeout`` s (None: forever) for one. A plan that
        only finished requests (their FinishedOut posted) is returned too: that is progress."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            plan = self._plan()
            if plan:
                return plan
            with self._cond:
                if not self._dirty:
                    now = time.monotonic()
                    left = None if end is None else end - now
                    if left is not None and left <= 0:
                        return None
                    if self._cut_due is not None:  # wake to cut a first chunk that waited long enough
                        due = max(0.0, self._cut_due - now)
                        left = due if left is None else min(left, due)
                    self._cond.wait(left)
                self._dirty = False

    def _plan(self) -> Plan:
        while self._new:
            req = self._new.popleft()
            req.use_lexicon(self.lexicon)  # before its text: chunks are cut as the runner reads them
            self.requests[req.id] = req
        for req in list(self.requests.values()):
            self._guarded(req, self._drain, req)
        cut_s = self.config.first_cut_s
        self._cut_due = min((r.first_text_at + cut_s for r in self.requests.values()
                             if r.first_text_at is not None and not r.cut_tried), default=None)
        plan = Plan(free=self._free)
        self._free = []
        cfg = self.config
        live = []
        for req in list(self.requests.values()):
            if self._guarded(req, self._classify, req, plan):
                live.append(req)
        live.sort(key=lambda r: r.deadline)
        decoding: list[Request] = []
        for req in live:
            if self._guarded(req, self._wants_block, req) and len(decoding) < cfg.max_batch:
                decoding.append(req)
        live = [r for r in live if r.id in self.requests]
        if decoding:
            plan.steps = min(cfg.blocks.size(r.current.blocks) for r in decoding)
        for req in decoding:
            cur = req.current
            if not cur.begun:
                cur.begun = True
                plan.begin.append(Begin(req.id, cur.chunk.text, req.voice, req.seed, req.speed, cur.index))
            plan.decode.append(req.id)
        self._plan_vocoder(plan, live)
        for req in self.requests.values():
            self._publish(req, req.has_work or bool(req.chunker.pending))
        return plan

    @staticmethod
    def _publish(req: Request, computing: bool) -> None:
        """Tell the consumer's thread whether the request has text left to synthesize."""
        was, req.computing = req.computing, computing
        req.seen = req.read
        if was and not computing and req.on_idle is not None:
            req.on_idle()

    def _classify(self, req: Request, plan: Plan) -> bool:
        """Status of a request this tick; True when it has work the tick may plan."""
        if not req.has_work:
            req.status = Status.IDLE
            return False
        if req.current is None and not req.chunks:  # ending, all spoken
            self._finish(req)
            plan.finished.append(req.id)
            return False
        if req.backlog_s >= self.config.max_buffered_s:
            req.status = Status.PAUSED
            return False
        req.status = Status.RUNNING
        return True

    def _wants_block(self, req: Request) -> bool:
        """Start its next chunk if none is current; True when its chunk needs decoding now."""
        cur = req.current
        if cur is None:
            chunk = req.chunks.popleft()
            req.chunk_count += 1
            cur = req.current = ChunkProgress(chunk, req.chunk_count - 1)
        return not (cur.acoustic_done or cur.ready >= self.config.max_lead_frames)

    def _guarded(self, req: Request, fn, *args):
        """``fn(*args)`` for one request; an exception fails that request only (returns None)."""
        try:
            return fn(*args)
        except Exception as exc:
            log.exception("request %s failed in the scheduler", req.id)
            if req.id in self.requests:
                self._fail(req, "internal", f"internal error ({type(exc).__name__}); the session "
                                            "can start again")
            return None

    def _plan_vocoder(self, plan: Plan, live: list[Request]) -> None:
        """Give out the tick's vocoder budget: first to rows whose listener is about to run dry
        (newcomers included), by deadline; then, unless a newcomer waits for its first audio (its
        tick stays short), to rows with a window of at least ``min_window`` frames or at the end of
        their chunk: few large windows cost less than many small ones (less context overlap,
        larger batched calls)."""
        cfg = self.config
        now = time.monotonic()
        budget = cfg.vocode_frames
        expect = {}
        for req in live:
            cur = req.current
            n = cur.ready
            if req.id in plan.decode:
                n += plan.steps if cur.blocks else max(0, plan.steps - cfg.first_delay)
            if n > 0 or cur.acoustic_done:
                expect[req.id] = max(n, 1)
        urgent = [r for r in live if r.id in expect and r.deadline - now < cfg.urgent_s]
        newcomer = any(r.produced_s == 0 for r in urgent)
        rest = [] if newcomer else [r for r in live if r.id in expect and r not in urgent and (
            r.current.acoustic_done or expect[r.id] >= cfg.min_window)]
        for req in urgent + rest:
            if budget <= 0:
                break
            n = min(budget, expect[req.id])
            plan.vocode.append((req.id, n))
            budget -= n

    def _drain(self, req: Request) -> None:
        had_work = req.has_work
        got_text = False
        while req.inbox:
            kind, *args = req.inbox.popleft()
            req.read += 1
            if kind == CLOSE:
                self._remove(req, Status.FINISHED)
                return
            if kind == CANCEL:
                self._drop_current(req)
                req.chunks.clear()
                req.chunker.reset()
                req.pause = 0
                req.generation = args[0]
                req.t_ref, req.produced_s = time.monotonic(), 0.0
            elif args[0] != req.generation:
                continue  # sent before a cancel that has already been applied
            elif kind == TEXT:
                req.chunks.extend(req.chunker.push(args[1]))
                got_text = True
            elif kind in (FLUSH, END):
                req.chunks.extend(req.chunker.flush())
                req.ending = req.ending or kind == END
        self._cut_first(req, got_text)
        if req.has_work and not had_work:
            now = time.monotonic()
            if req.deadline < now:  # its listener has run out of audio: due now
                req.t_ref, req.produced_s = now, 0.0
                if self.config.drop_late_pauses:
                    req.pause = 0

    def _cut_first(self, req: Request, got_text: bool) -> None:
        """Cut the utterance's first chunk early once its text has waited ``first_cut_s`` (see
        SchedulerConfig). A try that finds no cut is tried again when more text comes."""
        chunker, cut_s = req.chunker, self.config.first_cut_s
        if cut_s <= 0 or not chunker.pending or not chunker.at_start:
            req.first_text_at = None
            return
        now = time.monotonic()
        if req.first_text_at is None:
            req.first_text_at, req.cut_tried = now, False
        elif got_text:
            req.cut_tried = False
        if req.cut_tried or now - req.first_text_at < cut_s:
            return
        chunks = chunker.cut_early(self.config.first_cut_chars)
        if chunks:
            req.chunks.extend(chunks)
            req.first_text_at = None
        else:
            req.cut_tried = True

    def update(self, plan: Plan, output: RunnerOutput) -> None:
        """Route a tick's results to the requests' sinks."""
        for rid, res in output.rows.items():
            req = self.requests.get(rid)
            if req is None or req.current is None:
                continue  # closed or cancelled while the tick ran: its results are dropped
            if res.failed is not None:
                self._fail(req, *res.failed)
                continue
            self._guarded(req, self._route, req, res, rid in plan.decode)

    def _route(self, req: Request, res: RowResult, decoded: bool) -> None:
        sr = self.config.sample_rate
        cur = req.current
        # the silence owed goes before the chunk's first audio, whichever tick brings it (a
        # first block no longer than the look-ahead, or a vocoder budget spent on others)
        if req.pause and cur.audio_frames == 0 and (res.audio or res.segment is not None):
            self._post_audio(req, PauseOut(req.generation, req.pause), req.pause)
            req.pause = 0
        if decoded:
            cur.blocks += 1
        cur.ready, cur.acoustic_done = res.ready, res.acoustic_done
        share = res.compute_s / max(1, len(res.audio))
        for audio in res.audio:
            self._post_audio(req, AudioOut(req.generation, audio, share), len(audio))
        cur.audio_frames += res.frames
        if res.skipped:
            req.current = None
        elif res.segment is not None:
            self._post(req, SegmentOut(req.generation, res.segment, 0.0))
            req.current = None
            req.pause = pause_samples(cur.chunk.pause_ms, req.speed, sr)

    # ---- bookkeeping --------------------------------------------------------------------------
    def _post_audio(self, req: Request, out, samples: int) -> None:
        seconds = samples / self.config.sample_rate
        req.produced_s += seconds
        req.posted(seconds)
        self._post(req, out)

    def _post(self, req: Request, out) -> None:
        try:
            req.sink(out)
        except Exception:  # the consumer is gone (its loop closed): drop the request
            log.debug("sink of request %s failed", req.id, exc_info=True)
            self._remove(req, Status.FINISHED)

    def _finish(self, req: Request) -> None:
        self._remove(req, Status.FINISHED)
        self._post(req, FinishedOut(req.generation))

    def _fail(self, req: Request, code: str, message: str) -> None:
        self._remove(req, Status.FAILED)
        self._post(req, FailedOut(req.generation, code, message))

    def _drop_current(self, req: Request) -> None:
        if req.current is not None:
            if req.current.begun:
                self._free.append(req.id)
            req.current = None

    def _remove(self, req: Request, status: Status) -> None:
        self._drop_current(req)
        req.chunks.clear()
        req.ending = False
        req.status = status
        self.requests.pop(req.id, None)
