"""The small interface every inference backend implements.

Arrays cross it as numpy (float32 / int64), batch of one utterance; states are opaque to callers.
The streaming pipeline (:mod:`streamtts.pipeline`) drives an engine like this::

    mem   = engine.encode(ids (T,) int64, speaker (32,) float32)
    state = engine.initial_state(mem)
    block = engine.decode(mem, state, masks (n, 2, 128), gate_threshold)   # up to n steps
            # block.frames (k, 80), block.gates (k,), block.alignments (k, T), block.stopped
    mel   = engine.postnet(frames (80, W), at_start, at_end)        # final mel of the exact range
    audio, first = engine.vocode(mel (80, W), at_start, at_end, offset)

``postnet`` and ``vocode`` work on windows of an utterance and are exact: padding only at true
edges, real context elsewhere (see :mod:`streamtts.models`).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamtts.models.config import AcousticConfig, VocoderConfig


@dataclass
class DecodeBlock:
    frames: np.ndarray  # (k, 80) decoder frames before the postnet; the stop frame is not included
    gates: np.ndarray  # (k,) sigmoid(gate) of the kept frames
    alignments: np.ndarray  # (k, T) attention weights of the kept frames
    state: Any  # to pass to the next decode() call
    stopped: bool  # the gate fired within this block


class Engine(abc.ABC):
    name: str = "?"
    acoustic: AcousticConfig
    vocoder_config: VocoderConfig

    @property
    def postnet_radius(self) -> int:
        """Decoder frames of context the postnet needs on each side."""
        return (self.acoustic.postnet_kernel - 1) // 2 * self.acoustic.postnet_convs

    # Mel frames of context the vocoder needs on each side (5.6 frames for the trained MelGAN).
    vocoder_context: int = 6

    @abc.abstractmethod
    def encode(self, ids: np.ndarray, speaker: np.ndarray) -> Any: ...

    @abc.abstractmethod
    def initial_state(self, memory: Any) -> Any: ...

    @abc.abstractmethod
    def decode(self, memory: Any, state: Any, masks: np.ndarray, gate_threshold: float) -> DecodeBlock: ...

    @abc.abstractmethod
    def postnet(self, frames: np.ndarray, at_start: bool, at_end: bool) -> np.ndarray: ...

    @abc.abstractmethod
    def vocode(self, mel: np.ndarray, at_start: bool, at_end: bool, offset: int) -> tuple[np.ndarray, int]: ...
