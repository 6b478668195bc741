"""The runner: executes a scheduler plan on an acoustic model and a vocoder, batched.

    runner = Runner(engine, cache=None, lexicon=None)   # engines.base.ModelPair; optional PhraseCache
                                                        # and user lexicon (streamtts.text.lexicon)
    output = runner.execute(plan)                       # streamtts.core.scheduler.Plan -> RunnerOutput

Per tick: start the planned chunks (phonemize, look up the phrase cache, encode), run ONE decoder
call for every planned row, then vocode the planned windows in batched calls. It holds each
chunk's arrays (rows, mel, alignments); the scheduler sees only counts.

Failures stay with their request: when a batched call raises, its rows are retried one by one
and only the rows that fail again are reported failed (the rest of the batch carries on).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from engines.base import AcousticRow, ModelPair, MelOut
from streamtts.core.cache import CacheKey, CachedChunk, PhraseCache
from streamtts.text.markup_chunker import effective_speed, shown_chars
from streamtts.core.outputs import SpokenSegment
from streamtts.core.scheduler import Begin, Plan, RowResult, RunnerOutput
from streamtts.core.stream import MelStream
from streamtts.core.timing import char_times
from streamtts.errors import StreamTTSError, TextError
from streamtts.text import Phonemized, phonemize
from streamtts.text.lexicon import Lexicon
from streamtts.voices import speaker_vector

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ChunkRun:
    begin: Begin
    ph: Phonemized
    row: AcousticRow
    stream: MelStream
    speed: float = 1.0  # the chunk's own: the request's times its SSML prosody rate
    alignments: list = field(default_factory=list)
    pieces: list = field(default_factory=list)  # kept for the phrase cache


class Runner:
    def __init__(self, engine: ModelPair, cache: Optional[PhraseCache] = None,
                 lexicon: Optional[Lexicon] = None):
        self.engine = engine
        self.cache = cache
        self.lexicon = lexicon  # the user lexicon chunks are read with (None: none)
        self.chunks: dict[int, ChunkRun] = {}  # request id -> the chunk it is speaking

    def execute(self, plan: Plan) -> RunnerOutput:
        t0 = time.perf_counter()
        out = RunnerOutput()
        for rid in plan.free:
            self.chunks.pop(rid, None)
        res = out.rows
        for b in plan.begin:
            res[b.request] = self._begin(b)
        rows = [rid for rid in plan.decode if rid in self.chunks and rid not in _failed(res)]
        self._decode(rows, plan.steps, res)
        t1 = time.perf_counter()
        todo = [(rid, n) for rid, n in plan.vocode if rid in self.chunks and rid not in _failed(res)]
        self._vocode(todo, res)
        t2 = time.perf_counter()
        for rid in set(plan.decode) | {rid for rid, _ in plan.vocode}:
            run = self.chunks.get(rid)
            if run is None:
                continue
            r = res.setdefault(rid, RowResult())
            r.ready, r.acoustic_done = run.stream.ready, run.row.finished
            if run.stream.done and r.failed is None:
                r.segment = self._segment(rid, run)
        # each row's share of the tick: its decoding by rows, its vocoding by frames
        frames = sum(r.frames for r in res.values()) or 1
        for rid, r in res.items():
            r.compute_s += (t1 - t0) / max(1, len(rows)) * (rid in rows) + (t2 - t1) * r.frames / frames
        out.seconds = time.perf_counter() - t0
        return out

    # -- stages --------------------------------------------------------------------------------
    def _begin(self, b: Begin) -> RowResult:
        try:
            ph = phonemize(b.text, self.lexicon)
        except TextError:
            return RowResult(skipped=True)  # nothing speakable left after normalization
        speed = effective_speed(b.speed, getattr(b.text, "rate", 1.0))
        lead_ms = getattr(b.text, "lead_ms", 0)  # an SSML break before the chunk's speech
        lead = [np.zeros(int(self.engine.vocoder.sample_rate * lead_ms / 1000), np.float32)] if lead_ms else []
        key = self._key(ph, b, speed)
        hit = self.cache.get(key) if self.cache is not None else None
        if hit is not None:
            seg = SpokenSegment(str(b.text), ph.normalized, shown_chars(hit.chars, ph, lead_ms), b.index)
            hop = self.engine.vocoder.hop_length
            return RowResult(audio=lead + [hit.audio], frames=len(hit.audio) // hop, acoustic_done=True,
                             segment=seg)
        try:
            row = self.engine.acoustic.start(np.asarray(ph.ids, np.int64), speaker_vector(b.voice), b.seed)
        except Exception as exc:  # noqa: BLE001 - this chunk's failure, not the others'
            return RowResult(failed=_failure(exc, "encoding"))
        v = self.engine.vocoder
        stream = MelStream(v.n_mels, v.hop_length, v.context, v.tail_frames, v.tail_value, speed)
        self.chunks[b.request] = ChunkRun(b, ph, row, stream, speed)
        return RowResult(audio=lead)

    def _decode(self, rids: list[int], steps: int, res: dict[int, RowResult]) -> None:
        if not rids or steps <= 0:
            return
        runs = [self.chunks[rid] for rid in rids]
        try:
            outs = self.engine.acoustic.decode([r.row for r in runs], steps)
        except Exception:  # noqa: BLE001 - find the failing row(s) and keep the others going
            if len(rids) == 1:
                raise_into(res, rids[0], self.chunks, "decoding")
                return
            log.warning("batched decode of %d rows failed; retrying them one by one", len(rids), exc_info=True)
            for rid in rids:
                self._decode([rid], steps, res)
            return
        for run, mel_out in zip(runs, outs):
            self._add(run, mel_out)

    @staticmethod
    def _add(run: ChunkRun, out: MelOut) -> None:
        run.stream.add(out.mel, out.finished)
        if len(out.alignments):
            run.alignments.append(out.alignments)

    def _vocode(self, todo: list[tuple[int, int]], res: dict[int, RowResult]) -> None:
        jobs = []
        for rid, n in todo:
            run = self.chunks[rid]
            w = run.stream.window(n)
            if w is not None:
                jobs.append((rid, n, run, w))
        if not jobs:
            return
        try:
            audio = self.engine.vocoder.vocode([w for _, _, _, w in jobs])
        except Exception:  # noqa: BLE001
            if len(jobs) == 1:
                raise_into(res, jobs[0][0], self.chunks, "vocoding")
                return
            log.warning("batched vocoder call of %d windows failed; retrying them one by one", len(jobs),
                        exc_info=True)
            for rid, n, _, _ in jobs:
                self._vocode([(rid, n)], res)
            return
        for (rid, n, run, w), (samples, first) in zip(jobs, audio):
            before = run.stream.frames_out
            piece = run.stream.take(w, samples, first, n)
            r = res.setdefault(rid, RowResult())
            r.audio.append(piece)
            r.frames += run.stream.frames_out - before
            if self.cache is not None:
                run.pieces.append(piece)

    def _segment(self, rid: int, run: ChunkRun) -> SpokenSegment:
        del self.chunks[rid]
        b, ph = run.begin, run.ph
        align = np.concatenate(run.alignments) if run.alignments else np.zeros((0, len(ph.ids)), np.float32)
        v = self.engine.vocoder
        frame_ms = 1000.0 * v.hop_length / v.sample_rate / run.speed
        chars = [(c.char, c.start_ms, c.end_ms, c.index)
                 for c in char_times(ph.normalized, ph.char_index, align, 0.0, frame_ms)]
        if self.cache is not None:
            audio = np.concatenate(run.pieces) if run.pieces else np.zeros(0, np.float32)
            self.cache.put(self._key(ph, b, run.speed), CachedChunk(audio, tuple(chars)))
        return SpokenSegment(str(b.text), ph.normalized, shown_chars(chars, ph, getattr(b.text, "lead_ms", 0)),
                             b.index)

    def _key(self, ph: Phonemized, b: Begin, speed: float) -> CacheKey:
        return CacheKey(ph.normalized, b.voice, b.seed, speed, self.engine.name, tuple(ph.ids))


def _failed(res: dict[int, RowResult]) -> set[int]:
    return {rid for rid, r in res.items() if r.failed is not None}


def _failure(exc: BaseException, stage: str) -> tuple[str, str]:
    if isinstance(exc, StreamTTSError):
        return exc.code, exc.message
    log.error("%s failed", stage, exc_info=exc)
    return "internal", f"synthesis failed while {stage}: {type(exc).__name__}"


def raise_into(res: dict[int, RowResult], rid: int, chunks: dict, stage: str) -> None:
    """Record the exception being handled as request ``rid``'s failure and drop its state."""
    chunks.pop(rid, None)
    res.setdefault(rid, RowResult()).failed = _failure(sys.exc_info()[1], stage)
