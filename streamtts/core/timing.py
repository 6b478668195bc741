"""Times of speech: per-character times from the attention alignment, pauses between chunks."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class CharTime:
    char: str
    start_ms: float
    end_ms: float
    index: int = -1  # the char's index in the normalized text


def pause_samples(pause_ms: int, speed: float, sample_rate: int) -> int:
    """Samples of silence after a chunk: its punctuation's pause, scaled with the speaking rate."""
    return int(sample_rate * pause_ms / 1000 / speed)


def char_times(normalized: str, char_index: list[int], alignments: np.ndarray, start_ms: float,
               frame_ms: float) -> list[CharTime]:
    """Per-character times from the attention alignment (frames x ids): each frame is given to the
    character of the id it attends to most (``char_index[id]``, -1 for none); a character spans
    its first to last such frame, and characters never overlap or go back in time."""
    if len(alignments) == 0:
        return []
    owner = [char_index[i] for i in alignments.argmax(axis=1)]
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for f, c in enumerate(owner):
        if c >= 0:
            first.setdefault(c, f)
            last[c] = f
    out: list[CharTime] = []
    prev_end = 0
    for c in sorted(first):
        if not normalized[c].isalnum():  # punctuation has ids but is not a spoken char
            continue
        s = max(first[c], prev_end)
        e = max(last[c] + 1, s + 1)
        prev_end = e
        out.append(CharTime(normalized[c], start_ms + s * frame_ms, start_ms + e * frame_ms, c))
    return out
