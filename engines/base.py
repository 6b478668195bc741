"""The two stages every backend implements: an acoustic model and a vocoder (numpy at the edges).

A backend (torch, onnx, onnx-int8, cuda, tensorrt: engines/registry.py) implements either or
both, and any vocoder pairs with any acoustic model: the runner (:mod:`streamtts.core.runner`)
only sees these two interfaces. No torch here, so the scheduler side stays light.

Acoustic model: text ids + voice -> rows; then decoder blocks for a *batch* of rows::

    row  = acoustic.start(ids (T,) int64, speaker (32,) float32, seed)   # encoder memory, state
    outs = acoustic.decode([row, ...], steps)     # ONE batched call, each row <= steps decoder steps
    outs[i].mel (80, k)          final mel frames that became exact in this call (may be k = 0)
    outs[i].alignments (s, T)    attention weights of the s decoder frames kept in this call
    outs[i].finished             the row stopped (its own stop rule) and its last mel is out
    acoustic.lookahead           decoder frames past a mel frame before it is final

Each row carries its own state, stop rule and step cap (for Tacotron: prenet dropout masks from
the row's seed, the gate threshold and a cap by input length, all inside the adapter). Rows stop
independently: one row ending never ends another.

Vocoder: exact mel windows -> exact audio, batched over windows::

    audio = vocoder.vocode([MelWindow(mel (80, W), at_start, at_end, offset), ...])
    audio[i] = (samples (S,) float32, first)    # `first`: utterance sample index of samples[0]

A window carries real context frames wherever it does not touch a true edge of the utterance
(``at_start`` / ``at_end``), and its output is only the samples that depend on nothing outside
it, so windows reproduce whole-utterance audio. ``context`` is how many frames a sample needs on
each side. :meth:`Vocoder.vocode` joins the windows with two interior sides end to end into one
call, and groups the others by their edge flags, padded to one width (zeros on an interior side,
whose samples are cropped away), so a batch is a few backend calls.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np


@dataclass(eq=False)
class AcousticRow:
    """One utterance in the acoustic model. Created by ``start``, advanced by ``decode``."""

    n_ids: int  # T, input symbols
    cap: int  # at most this many decoder steps
    steps: int = 0  # decoder steps run so far (the stop step included)
    frames_out: int = 0  # final mel frames returned so far
    finished: bool = False
    stopped_by_gate: bool = False
    private: Any = field(default=None, repr=False)  # the backend's per-row state


@dataclass
class MelOut:
    mel: np.ndarray  # (n_mels, k) final mel frames, continuing the row's previous ones
    alignments: np.ndarray  # (s, T) attention weights of the decoder frames of this call
    finished: bool


class AcousticModel(abc.ABC):
    name: str = "?"
    n_mels: int = 80
    hop_length: int = 256
    sample_rate: int = 22050

    @property
    @abc.abstractmethod
    def lookahead(self) -> int:
        """Decoder frames needed past a mel frame before that frame is final."""

    @abc.abstractmethod
    def start(self, ids: np.ndarray, speaker: np.ndarray, seed: int) -> AcousticRow: ...

    @abc.abstractmethod
    def decode(self, rows: Sequence[AcousticRow], steps: int) -> list[MelOut]:
        """Advance every row by up to ``steps`` decoder steps in one batched call."""


@dataclass
class MelWindow:
    mel: np.ndarray  # (n_mels, W) float32
    at_start: bool  # mel[:, 0] is the utterance's first frame
    at_end: bool  # mel[:, -1] is its last frame (tail included)
    offset: int  # utterance frame index of mel[:, 0]


class Vocoder(abc.ABC):
    name: str = "?"
    n_mels: int = 80
    hop_length: int = 256
    sample_rate: int = 22050
    context: int = 0  # mel frames of real context a sample needs on each side
    # Frames of ``tail_value`` appended after an utterance's last frame before vocoding (and their
    # audio dropped): MelGAN's upstream does it against a click at the end.
    tail_frames: int = 0
    tail_value: float = 0.0

    @abc.abstractmethod
    def _run(self, mel: np.ndarray, at_start: bool, at_end: bool) -> tuple[np.ndarray, int]:
        """mel (B, n_mels, W) windows starting at frame 0 -> (audio (B, S), first sample index)."""

    def vocode(self, windows: Sequence[MelWindow]) -> list[tuple[np.ndarray, int]]:
        """Audio of each window, with the utterance sample index of its first sample."""
        out: list = [None] * len(windows)
        interior = [i for i, w in enumerate(windows) if not w.at_start and not w.at_end]
        if interior:
            self._vocode_joined([windows[i] for i in interior], interior, out)
        groups: dict[tuple, list[int]] = {}
        for i, w in enumerate(windows):
            if out[i] is not None:
                continue
            # a window with both true edges cannot be padded: only equal widths share a call
            key = (w.at_start, w.at_end, w.mel.shape[1] if w.at_start and w.at_end else 0)
            groups.setdefault(key, []).append(i)
        for (at_start, at_end, _), idx in groups.items():
            width = max(windows[i].mel.shape[1] for i in idx)
            left = not at_start and at_end  # pad on the interior side
            batch = np.zeros((len(idx), self.n_mels, width), np.float32)
            for b, i in enumerate(idx):
                m = windows[i].mel
                if left:
                    batch[b, :, width - m.shape[1]:] = m
                else:
                    batch[b, :, :m.shape[1]] = m
            audio, first0 = self._run(batch, at_start, at_end)
            for b, i in enumerate(idx):
                w = windows[i]
                cut = (width - w.mel.shape[1]) * self.hop_length
                samples = audio[b, cut:] if left else audio[b, :audio.shape[1] - cut]
                out[i] = (np.ascontiguousarray(samples, np.float32), w.offset * self.hop_length + first0)
        return out

    def _vocode_joined(self, windows: Sequence[MelWindow], idx: list[int], out: list) -> None:
        """Windows with two interior sides, joined end to end into one call. Each window carries
        the context its own exact samples need, so a sample that depends on a neighbour's frames
        lies in the context that is cropped anyway: joining is exact, wastes nothing on padding,
        and one long sequence is the cheapest shape for the convolutions."""
        hop = self.hop_length
        joined = np.concatenate([w.mel for w in windows], axis=1)[None]
        audio, first0 = self._run(np.ascontiguousarray(joined, np.float32), False, False)
        lost = joined.shape[2] * hop - audio.shape[1]  # samples an interior window loses in all
        start = 0  # frame of the joined sequence where the window starts
        for i, w in zip(idx, windows):
            n = w.mel.shape[1] * hop - lost
            out[i] = (np.ascontiguousarray(audio[0, start * hop: start * hop + n], np.float32),
                      w.offset * hop + first0)
            start += w.mel.shape[1]


@dataclass
class ModelPair:
    """An acoustic model and a vocoder that speak the same mel (bands, hop, sample rate)."""

    acoustic: AcousticModel
    vocoder: Vocoder

    def __post_init__(self) -> None:
        a, v = self.acoustic, self.vocoder
        if (a.n_mels, a.hop_length, a.sample_rate) != (v.n_mels, v.hop_length, v.sample_rate):
            raise ValueError(f"{a.name} and {v.name} do not share mel settings")

    @property
    def name(self) -> str:
        return f"{self.acoustic.name}+{self.vocoder.name}"

    @property
    def sample_rate(self) -> int:
        return self.vocoder.sample_rate

    @property
    def min_first_block(self) -> int:
        """Decoder steps before the first audio sample can be exact."""
        return self.acoustic.lookahead + self.vocoder.context + 1
