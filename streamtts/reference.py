"""Whole-utterance synthesis, the way ttskit runs the model: decode the whole sentence, then the
postnet over all of it, then the vocoder over all of it (eager torch, no streaming).

It is the reference the streaming path (:mod:`streamtts.speaker`) is checked against, and the
``upstream-eager`` baseline of the benchmark. Stages, named by what they do::

    phonemized = phonemize(text)                              # streamtts.text
    decoded    = synth.decode(ids, voice, seed)               # autoregressive loop, explicit masks
    mel        = synth.postnet(decoded.frames)                # (80, N)
    audio      = synth.vocode(mel)                            # (N * 256,) float32, 22050 Hz
    audio      = synth.synthesize(text, voice=..., seed=...)  # all of the above

Stop rule: decoding stops at the first step whose sigmoid(gate) exceeds ``gate_threshold``; that
stop frame is not spoken. The number of steps is capped in proportion to the input length, so a
bad alignment cannot babble for the model's whole 1200-step budget.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from engines.torch_backend import TorchTacotron
from streamtts.models.acoustic import Tacotron2
from streamtts.models.vocoder import MelGAN
from streamtts.pack import VoicePack, ensure_pack
from streamtts.constants import DEFAULT_SEED
from streamtts.text import phonemize
from streamtts.voices import resolve_voice, speaker_vector


@dataclass(frozen=True)
class Decoded:
    frames: torch.Tensor  # (80, N) decoder output before the postnet, stop frame excluded
    gates: torch.Tensor  # (N,) sigmoid(gate) per kept frame
    alignments: torch.Tensor  # (N, T) attention weights per kept frame
    stopped: bool  # True when the gate fired, False when the step cap ended decoding


class Synthesizer:
    """Whole-utterance synthesis with the eager torch engine."""

    def __init__(self, pack: Optional[VoicePack] = None, device: str = "cpu",
                 gate_threshold: Optional[float] = None):
        pack = pack or ensure_pack()
        self.acoustic = TorchTacotron(pack, device)
        self.model: Tacotron2 = self.acoustic.model
        self.vocoder: MelGAN = pack.load_vocoder(device)
        self.config = self.model.config
        self.sample_rate = self.config.sample_rate
        self.hop_length = self.config.hop_length
        self.gate_threshold = self.config.gate_threshold if gate_threshold is None else gate_threshold

    def decode(self, ids: list[int], voice: str, seed: int = DEFAULT_SEED) -> Decoded:
        """Decode the whole utterance in one block (same masks and gate loop as the streaming
        path: the torch backend's batched decoder with one row)."""
        ac = self.acoustic
        row = ac.start(np.asarray(ids, np.int64), speaker_vector(resolve_voice(voice)), seed, self.gate_threshold)
        out = ac.decode_steps([row], row.cap)
        gates = out.gates[:, 0]
        fired = np.flatnonzero(gates > self.gate_threshold)
        keep = int(fired[0]) if len(fired) else len(gates)
        return Decoded(torch.from_numpy(out.frames[:keep, 0].T.copy()), torch.from_numpy(gates[:keep].copy()),
                       torch.from_numpy(out.alignments[:keep, 0].copy()), bool(len(fired)))

    @torch.inference_mode()
    def postnet(self, frames: torch.Tensor) -> torch.Tensor:
        """(80, N) decoder frames -> (80, N) final mel."""
        return frames + self.model.postnet(frames[None])[0]

    @torch.inference_mode()
    def vocode(self, mel: torch.Tensor) -> np.ndarray:
        """(80, N) mel -> (N * hop,) float32 audio in [-1, 1]."""
        if mel.shape[1] == 0:
            return np.zeros(0, dtype=np.float32)
        return self.vocoder.synthesize(mel[None]).float().cpu().numpy()

    def synthesize(self, text: str, voice: str = "biaobei", seed: int = DEFAULT_SEED) -> np.ndarray:
        """Text -> float32 audio at ``sample_rate``. Raises the frontend's typed errors for bad text
        and UnknownVoiceError for an unknown voice."""
        voice = resolve_voice(voice)
        ids = phonemize(text).ids
        decoded = self.decode(ids, voice, seed)
        return self.vocode(self.postnet(decoded.frames))
