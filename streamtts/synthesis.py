"""Whole-utterance synthesis, the way ttskit runs the model: decode the whole sentence, then the
postnet over all of it, then the vocoder over all of it (eager torch, no streaming).

It is the reference the streaming path (:mod:`streamtts.speech`) is checked against, and the
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
from typing import Iterator, Optional

import numpy as np
import torch

from streamtts.models.acoustic import StepOutput, Tacotron2, prenet_masks
from streamtts.models.vocoder import MelGAN
from streamtts.pack import VoicePack, ensure_pack
from streamtts.pipeline import DEFAULT_SEED, step_cap
from streamtts.text import phonemize
from streamtts.voices import resolve_voice, speaker_vector



@dataclass(frozen=True)
class Decoded:
    frames: torch.Tensor  # (80, N) decoder output before the postnet, stop frame excluded
    gates: torch.Tensor  # (N,) sigmoid(gate) per kept frame
    alignments: torch.Tensor  # (N, T) attention weights per kept frame
    stopped: bool  # True when the gate fired, False when the step cap ended decoding


class Synthesizer:
    """Owns one acoustic model and one vocoder (eager torch)."""

    def __init__(self, pack: Optional[VoicePack] = None, device: str = "cpu",
                 gate_threshold: Optional[float] = None):
        self.pack = pack or ensure_pack()
        self.device = torch.device(device)
        self.model: Tacotron2 = self.pack.load_acoustic(self.device)
        self.vocoder: MelGAN = self.pack.load_vocoder(self.device)
        self.config = self.model.config
        self.sample_rate = self.config.sample_rate
        self.hop_length = self.config.hop_length
        self.gate_threshold = self.config.gate_threshold if gate_threshold is None else gate_threshold

    @torch.inference_mode()
    def steps(self, ids: list[int], voice: str, seed: int = DEFAULT_SEED) -> Iterator[StepOutput]:
        """Yield decoder steps (batch of 1) until the step cap; the caller applies the stop rule."""
        dec = self.model.decoder
        ids_t = torch.tensor([ids], dtype=torch.long, device=self.device)
        spk = speaker_vector(resolve_voice(voice)).to(self.device)[None]
        cap = step_cap(len(ids), self.config.max_decoder_steps)
        masks = prenet_masks(self.config, cap, 1, torch.Generator().manual_seed(seed)).to(self.device)
        memory = self.model.encode(ids_t, spk)
        keys = dec.attention.memory_keys(memory)
        state = dec.initial_state(memory)
        frame = dec.go_frame(memory)
        for i in range(cap):
            out = dec.step(frame, masks[i], memory, keys, state)
            yield out
            frame, state = out.frame, out.state

    def decode(self, ids: list[int], voice: str, seed: int = DEFAULT_SEED) -> Decoded:
        frames, gates, aligns = [], [], []
        stopped = False
        for out in self.steps(ids, voice, seed):
            gate = torch.sigmoid(out.gate_logit[0]).item()
            if gate > self.gate_threshold:
                stopped = True
                break
            frames.append(out.frame[0])
            gates.append(gate)
            aligns.append(out.alignment[0])
        if not frames:  # the gate fired at once: nothing to say
            empty = torch.zeros(self.config.n_mels, 0, device=self.device)
            return Decoded(empty, torch.zeros(0), torch.zeros(0, len(ids)), stopped)
        return Decoded(torch.stack(frames, 1), torch.tensor(gates), torch.stack(aligns), stopped)

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
