"""The load and the listener of the capacity benchmark (:mod:`streamtts.bench.capacity`,
:mod:`streamtts.bench.ws`): each stream's text and its LLM-like fragments, what its player saw
(:class:`StreamLog`), the real-time player's underruns (:func:`player`), and the per-row stream
fields (:func:`summarize`). Pure Python, no engine; definitions in bench_capacity's docstring."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Optional, Sequence

from streamtts.bench.engines import percentile

SR = 22050
FRAGMENT_CHARS = 3
FRAGMENT_INTERVAL_S = 0.030
START_BUFFER_S = 0.200
STALL_TOLERANCE_S = 0.020
SENTENCES_PER_STREAM = 3
STAGGER_S = 2.0


# ---- the load ----------------------------------------------------------------------------------

def stream_texts(n: int, sentences: int = SENTENCES_PER_STREAM, text: Optional[str] = None) -> list[str]:
    """Stream i's text: ``sentences`` test sentences picked with seed i (or ``text`` for all)."""
    if text:
        return [text] * n
    from streamtts.evaluation.sentences import TEST_SENTENCES

    return ["".join(random.Random(1000 + i).sample(TEST_SENTENCES, sentences)) for i in range(n)]


def fragments(text: str, size: int = FRAGMENT_CHARS) -> list[str]:
    return [text[i:i + size] for i in range(0, len(text), size)]


@dataclass
class StreamLog:
    """What one stream's player saw (times: time.monotonic())."""

    index: int
    text: str = ""
    t_first_text: Optional[float] = None
    t_chunk: Optional[float] = None  # the fragment that completed the first chunk was sent
    t_first_audio: Optional[float] = None
    t_done: Optional[float] = None
    pieces: list = field(default_factory=list)  # (arrival, samples): audio and pauses, in order
    speech_samples: int = 0
    segments: int = 0
    failed: Optional[str] = None
    # WebSocket only
    admitted: bool = True
    queued: bool = False  # got a `queued` event
    queue_wait_s: Optional[float] = None

    def mark_text(self, t: float, got_chunk: bool) -> None:
        if self.t_first_text is None:
            self.t_first_text = t
        if got_chunk and self.t_chunk is None:
            self.t_chunk = t

    def add_audio(self, t: float, samples: int, speech: bool) -> None:
        if samples <= 0:
            return
        if self.t_first_audio is None:
            self.t_first_audio = t
        self.pieces.append((t, samples))
        if speech:
            self.speech_samples += samples

    @property
    def arrived_s(self) -> float:
        return sum(n for _, n in self.pieces) / SR


def player(log: StreamLog, start_buffer_s: float = START_BUFFER_S) -> dict:
    """Underruns of a real-time player that starts ``start_buffer_s`` after the first audio and,
    when a piece is late, waits for it and goes on from there."""
    underruns, total, longest, pos, shift, first_at = 0, 0.0, 0.0, 0, 0.0, None
    if log.t_first_audio is not None:
        start = log.t_first_audio + start_buffer_s
        for t, n in log.pieces:
            due = start + pos / SR + shift
            if t > due:
                if first_at is None:
                    first_at = pos / SR
                underruns += 1
                total += t - due
                longest = max(longest, t - due)
                shift += t - due
            pos += n
    return {"underruns": underruns, "stall_total_s": total, "stall_max_s": longest, "first_underrun_at_s": first_at}


def _ms(t: Optional[float], t0: Optional[float]) -> Optional[float]:
    return None if t is None or t0 is None else 1000.0 * (t - t0)


def summarize(logs: Sequence[StreamLog], tolerance_s: float = STALL_TOLERANCE_S,
              start_buffer_s: float = START_BUFFER_S) -> dict:
    """The per-row stream fields (see the module docstring) over ``logs``."""
    plays = [player(lg, start_buffer_s) for lg in logs]
    held = [lg.t_done is not None and lg.failed is None and p["stall_total_s"] <= tolerance_s
            for lg, p in zip(logs, plays)]
    ttfa_text = [_ms(lg.t_first_audio, lg.t_first_text) for lg in logs]
    ttfa_chunk = [_ms(lg.t_first_audio, lg.t_chunk) for lg in logs]
    return {
        "streams": len(logs),
        "streams_finished": sum(lg.t_done is not None for lg in logs),
        "streams_failed": sum(lg.failed is not None for lg in logs),
        "streams_held": sum(held),
        "ttfa_text_ms_p50": percentile(ttfa_text, 50),
        "ttfa_text_ms_p99": percentile(ttfa_text, 99),
        "ttfa_chunk_ms_p50": percentile(ttfa_chunk, 50),
        "ttfa_chunk_ms_p99": percentile(ttfa_chunk, 99),
        "worst_stall_s": max((p["stall_max_s"] for p in plays), default=0.0),
        "worst_stall_total_s": max((p["stall_total_s"] for p in plays), default=0.0),
        "underruns": sum(p["underruns"] for p in plays),
        # streams whose first underrun came in the first 0.3 s of their audio: the gap after the
        # (short) first block
        "streams_underrun_at_start": sum(p["first_underrun_at_s"] is not None and p["first_underrun_at_s"] < 0.3
                                  for p in plays),
        "audio_s": sum(sum(n for _, n in lg.pieces) for lg in logs) / SR,
        "speech_s": sum(lg.speech_samples for lg in logs) / SR,
        "per_stream": [{"index": lg.index, "held": h, "ttfa_text_ms": a, "ttfa_chunk_ms": b,
                        "audio_s": sum(n for _, n in lg.pieces) / SR, "finished": lg.t_done is not None,
                        "failed": lg.failed,
                        "admitted": lg.admitted, "queued": lg.queued, "queue_wait_s": lg.queue_wait_s, **p}
                       for lg, h, a, b, p in zip(logs, held, ttfa_text, ttfa_chunk, plays)],
    }
