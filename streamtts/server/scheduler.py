"""Block-by-block scheduler: many sessions share one engine in one worker thread.

Every session or HTTP request is a :class:`Job`. The event loop only appends commands to a job
(thread-safe); the worker thread does all the work::

    sched = Scheduler(engine, cache, metrics, max_buffered_s=5.0)
    job = Job(voice="biaobei", seed=0, speed=1.0, sink=post)   # post(output) is called in the worker
    sched.add_request(job)                                     # any thread
    sched.command(job, TEXT, gen, "你好。")                    # TEXT / FLUSH / END / CANCEL / CLOSE
    while running:                                             # worker thread
        job = sched.schedule(timeout=0.5)                      # the job to advance now, or None
        if job is not None:
            sched.step(job)                                    # one decoder block of one chunk

Outputs (``AudioOut``, ``SegmentOut``, ``PauseOut``, ``FinishedOut``, ``FailedOut``) carry the
generation of the text they belong to, so the session can drop those of cancelled text.

Policy (why): a step is one block of one chunk (24 decoder steps for a chunk's first block, 64
later), so no job holds the engine for long. Among jobs with work, the one whose listener runs out
of audio first goes next (earliest deadline: when its work became due plus the seconds of audio
produced since), which serves new utterances first (fast first audio) and keeps running ones
ahead of playback. A job whose client has ``max_buffered_s`` of audio not yet taken is paused
until the client reads (``Job.set_buffered`` / ``Scheduler.flow``). Cancel and close take effect
at the worker's next schedule() (within one block) and close the chunk's generator, which stops
its work.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from engines.base import Engine
from streamtts.chunker import Chunk, SentenceChunker
from streamtts.errors import TextError
from streamtts.pipeline import BlockSchedule, ChunkStream
from streamtts.protocol import SpokenSegment
from streamtts.server.cache import CacheKey, CachedChunk, PhraseCache
from streamtts.speech import char_times, pause_samples
from streamtts.text import Phonemized, phonemize

log = logging.getLogger(__name__)

TEXT, FLUSH, END, CANCEL, CLOSE = "text", "flush", "end", "cancel", "close"
NATIVE_RATE = 22050


@dataclass
class AudioOut:
    generation: int
    audio: np.ndarray  # float32 @ 22050 Hz
    compute_s: float  # worker time it took


@dataclass
class SegmentOut:
    generation: int
    segment: SpokenSegment
    compute_s: float


@dataclass
class PauseOut:
    generation: int
    samples: int  # silence, native samples


@dataclass
class FinishedOut:
    generation: int  # everything up to END was spoken


@dataclass
class FailedOut:
    generation: int
    code: str
    message: str


_ids = itertools.count()


@dataclass
class _Current:
    chunk: Chunk
    ph: Phonemized
    stream: ChunkStream
    pieces: list = field(default_factory=list)  # kept for the cache
    compute_s: float = 0.0
    samples: int = 0


@dataclass(eq=False)
class Job:
    """One session's synthesis. ``sink(output)`` is called in the worker thread."""

    voice: str
    seed: int
    speed: float
    sink: Callable[[Any], None]
    api: str = "ws"
    id: int = field(default_factory=lambda: next(_ids))

    def __post_init__(self) -> None:
        self.inbox: deque = deque()  # commands from the event loop; deque append/popleft are atomic
        self.chunker = SentenceChunker()
        self.chunks: deque[Chunk] = deque()
        self.current: Optional[_Current] = None
        self.generation = 0
        self.ending = False
        self.pause = 0  # native samples of silence owed before the next chunk
        self.t_ref = time.monotonic()  # deadline = t_ref + produced_s
        self.produced_s = 0.0
        self.blocked = False
        self._lock = threading.Lock()
        self._inflight_s = 0.0  # posted by the worker, not yet taken by the session
        self._buffered_s = 0.0  # in the session's outbox, not yet handed to the socket

    # -- flow control, called by the event loop --
    def delivered(self, seconds: float) -> None:
        with self._lock:
            self._inflight_s -= seconds

    def set_buffered(self, seconds: float) -> None:
        self._buffered_s = seconds

    @property
    def backlog_s(self) -> float:
        with self._lock:
            return self._inflight_s + self._buffered_s

    def _posted(self, seconds: float) -> None:
        with self._lock:
            self._inflight_s += seconds

    @property
    def has_work(self) -> bool:
        return self.current is not None or bool(self.chunks) or self.ending


class Scheduler:
    def __init__(self, engine: Optional[Engine], cache: Optional[PhraseCache] = None, metrics=None,
                 max_buffered_s: float = 5.0, schedule: Optional[BlockSchedule] = None):
        self.engine = engine
        self.cache = cache
        self.metrics = metrics
        self.max_buffered_s = max_buffered_s
        self.block_schedule = schedule or BlockSchedule()
        self._jobs: list[Job] = []  # worker thread only
        self._new: deque[Job] = deque()
        self._cond = threading.Condition()
        self._dirty = False

    # ---- any thread ---------------------------------------------------------------------------

    def add_request(self, job: Job) -> None:
        self._new.append(job)
        self.wake()

    def command(self, job: Job, kind: str, *args) -> None:
        job.inbox.append((kind, *args))
        self.wake()

    def flow(self, job: Job) -> None:
        """The session's backlog shrank: resume the job if it was paused for it."""
        if job.blocked and job.backlog_s < self.max_buffered_s:
            self.wake()

    def wake(self) -> None:
        with self._cond:
            self._dirty = True
            self._cond.notify()

    @property
    def jobs(self) -> int:
        return len(self._jobs) + len(self._new)

    # ---- worker thread ------------------------------------------------------------------------

    def schedule(self, timeout: Optional[float] = None) -> Optional[Job]:
        """The job to step next; waits up to ``timeout`` s for one (None: no job is runnable)."""
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            while self._new:
                self._jobs.append(self._new.popleft())
            for job in list(self._jobs):
                self._drain(job)
            job = self._pick()
            if job is not None:
                return job
            with self._cond:
                if not self._dirty:
                    left = None if end is None else end - time.monotonic()
                    if left is not None and left <= 0:
                        return None
                    self._cond.wait(left)
                self._dirty = False

    def step(self, job: Job) -> None:
        """Advance ``job`` by one unit: a block of its chunk, a cache hit, or its end."""
        try:
            if job.current is not None:
                self._advance(job)
            elif job.chunks:
                self._begin(job)
            elif job.ending:
                self._remove(job)
                self._post(job, FinishedOut(job.generation))
        except Exception as exc:  # a bug: fail this job only, the others go on
            log.exception("synthesis failed for job %s", job.id)
            self._remove(job)
            self._post(job, FailedOut(job.generation, "internal", f"synthesis failed: {type(exc).__name__}"))

    def synthesize_chunk(self, text: str, voice: str, seed: int, speed: float) -> Optional[CachedChunk]:
        """Synthesize one chunk whole (prewarm); cached when there is a cache."""
        ph = phonemize(text)
        stream = ChunkStream(self.engine, ph.ids, voice, seed, schedule=BlockSchedule(5000, 5000), speed=speed)
        audio = np.concatenate([p.audio for p in stream] or [np.zeros(0, np.float32)])
        item = CachedChunk(audio, self._chars(ph, stream, speed))
        if self.cache is not None:
            self.cache.put(CacheKey(ph.normalized, voice, seed, speed), item)
        return item

    def _drain(self, job: Job) -> None:
        had_work = job.has_work
        while job.inbox:
            kind, *args = job.inbox.popleft()
            if kind == CLOSE:
                self._remove(job)
                return
            if kind == CANCEL:
                self._close_current(job)
                job.chunks.clear()
                job.chunker.reset()
                job.pause = 0
                job.generation = args[0]
                job.t_ref, job.produced_s = time.monotonic(), 0.0
            elif args[0] != job.generation:
                continue  # sent before a cancel that has already been applied
            elif kind == TEXT:
                job.chunks.extend(job.chunker.push(args[1]))
            elif kind in (FLUSH, END):
                job.chunks.extend(job.chunker.flush())
                job.ending = job.ending or kind == END
        if job.has_work and not had_work:
            now = time.monotonic()
            if job.t_ref + job.produced_s < now:  # its listener has run out of audio
                job.t_ref, job.produced_s = now, 0.0
                job.pause = 0  # the silence has already happened

    def _pick(self) -> Optional[Job]:
        best, runnable = None, 0
        for job in self._jobs:
            if not job.has_work:
                continue
            job.blocked = job.backlog_s >= self.max_buffered_s
            if job.blocked:
                continue
            runnable += 1
            if best is None or job.t_ref + job.produced_s < best.t_ref + best.produced_s:
                best = job
        if self.metrics is not None:
            self.metrics.queue_depth.set(runnable)
        return best

    def _begin(self, job: Job) -> None:
        t0 = time.perf_counter()
        chunk = job.chunks.popleft()
        try:
            ph = phonemize(chunk.text)
        except TextError:
            return  # nothing speakable left after normalization: nothing to say
        if job.pause:
            self._post_audio(job, PauseOut(job.generation, job.pause), job.pause)
            job.pause = 0
        key = CacheKey(ph.normalized, job.voice, job.seed, job.speed)
        hit = self.cache.get(key) if self.cache is not None else None
        if self.metrics is not None and self.cache is not None:
            (self.metrics.cache_hits if hit is not None else self.metrics.cache_misses).inc()
        if hit is not None:
            self._post_audio(job, AudioOut(job.generation, hit.audio, time.perf_counter() - t0), len(hit.audio))
            self._post(job, SegmentOut(job.generation, SpokenSegment(chunk.text, ph.normalized, list(hit.chars)), 0.0))
            job.pause = pause_samples(chunk.pause_ms, job.speed, NATIVE_RATE)
            return
        stream = ChunkStream(self.engine, ph.ids, job.voice, job.seed, schedule=self.block_schedule, speed=job.speed)
        job.current = _Current(chunk, ph, stream, compute_s=time.perf_counter() - t0)
        self._advance(job)  # the first block now: first audio as soon as possible

    def _advance(self, job: Job) -> None:
        cur = job.current
        t0 = time.perf_counter()
        piece = next(cur.stream, None)
        dt = time.perf_counter() - t0
        cur.compute_s += dt
        if piece is not None:
            cur.samples += len(piece.audio)
            if self.cache is not None:
                cur.pieces.append(piece.audio)
            self._post_audio(job, AudioOut(job.generation, piece.audio, dt), len(piece.audio))
            return
        job.current = None
        chars = self._chars(cur.ph, cur.stream, job.speed)
        if self.cache is not None:
            audio = np.concatenate(cur.pieces) if cur.pieces else np.zeros(0, np.float32)
            self.cache.put(CacheKey(cur.ph.normalized, job.voice, job.seed, job.speed), CachedChunk(audio, chars))
            if self.metrics is not None:
                self.metrics.cache_bytes.set(self.cache.bytes)
        if self.metrics is not None and cur.samples:
            rtf = cur.compute_s / (cur.samples / NATIVE_RATE)
            self.metrics.rtf.observe(rtf)
            self.metrics.last_rtf.set(rtf)
        self._post(job, SegmentOut(job.generation, SpokenSegment(cur.chunk.text, cur.ph.normalized, list(chars)), dt))
        job.pause = pause_samples(cur.chunk.pause_ms, job.speed, NATIVE_RATE)

    @staticmethod
    def _chars(ph: Phonemized, stream: ChunkStream, speed: float) -> tuple:
        frame_ms = 1000.0 * stream.hop / NATIVE_RATE / speed
        return tuple((c.char, c.start_ms, c.end_ms) for c in char_times(ph, stream.alignments, 0.0, frame_ms))

    def _post_audio(self, job: Job, out, samples: int) -> None:
        seconds = samples / NATIVE_RATE
        job.produced_s += seconds
        job._posted(seconds)
        if self.metrics is not None:
            self.metrics.audio_seconds.inc(seconds)
        self._post(job, out)

    def _post(self, job: Job, out) -> None:
        try:
            job.sink(out)
        except Exception:  # the session's loop is gone (server shutting down): drop the job
            log.debug("sink of job %s failed", job.id, exc_info=True)
            self._remove(job)

    def _close_current(self, job: Job) -> None:
        if job.current is not None:
            job.current.stream.close()
            job.current = None

    def _remove(self, job: Job) -> None:
        self._close_current(job)
        job.chunks.clear()
        job.ending = False
        if job in self._jobs:
            self._jobs.remove(job)
