"""What synthesis hands to a request's sink, tagged with the generation of the text it came from
(a cancel starts a new generation, so a session can drop what belongs to cancelled text).
Torch-free and tiny: the sans-I/O protocol imports it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np


@dataclass
class SpokenSegment:
    """One spoken chunk, reported after the chunk's last audio."""

    text: str  # the chunk as the client sent it
    normalized: str  # what was spoken (the chars of `chars`)
    chars: list[tuple[str, float, float]] = field(default_factory=list)  # (char, start_ms, end_ms) from the chunk's start
    index: int = 0  # the chunk's number within its request


@dataclass
class AudioOut:
    generation: int
    audio: np.ndarray  # (S,) float32 at the engine's sample rate
    compute_s: float  # engine time attributed to it


@dataclass
class SegmentOut:
    generation: int
    segment: SpokenSegment
    compute_s: float = 0.0


@dataclass
class PauseOut:
    generation: int
    samples: int  # silence, in samples at the engine's rate


@dataclass
class FinishedOut:
    generation: int  # everything up to END was spoken


@dataclass
class FailedOut:
    generation: int
    code: str
    message: str


Output = Union[AudioOut, SegmentOut, PauseOut, FinishedOut, FailedOut]
