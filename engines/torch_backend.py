"""Eager PyTorch backend (CPU or CUDA): the reference implementation of both stages.

How to call::

    acoustic = TorchTacotron(pack)                 # engines.tacotron.TacotronModel
    vocoder  = TorchVocoder(pack.load_vocoder())   # any module with our window convention
    engine   = ModelPair(acoustic, vocoder)           # engines.base

The decoder runs a block of steps for the whole batch and checks each row's stop rule on the
host after every step only to end the block early once every row is done (on a GPU a sync per
step would cost more than it saves, see the cuda backend).
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from engines.base import Vocoder
from engines.tacotron import DecodeBatch, DecodeResult, TacotronModel
from streamtts.models.acoustic import DecoderState
from streamtts.pack import VoicePack, ensure_pack


class TorchTacotron(TacotronModel):
    name = "torch"

    def __init__(self, pack: Optional[VoicePack] = None, device: str = "cpu"):
        pack = pack or ensure_pack()
        self.device = torch.device(device)
        self.model = pack.load_acoustic(self.device)
        self.config = self.model.config

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    @staticmethod
    def _np(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy()

    @torch.inference_mode()
    def _encode(self, ids: np.ndarray, speaker: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        memory = self.model.encode(self._t(ids), self._t(speaker))
        return self._np(memory), self._np(self.model.decoder.attention.memory_keys(memory))

    @torch.inference_mode()
    def _decode(self, batch: DecodeBatch) -> DecodeResult:
        dec = self.model.decoder
        memory, keys = self._t(batch.memory), self._t(batch.keys)
        pad = self._t(batch.pad) if batch.pad.any() else None  # no mask: the solo arithmetic exactly
        state = DecoderState(*(self._t(s) for s in batch.state))
        frame = self._t(batch.prev_frame)
        masks = self._t(batch.masks)
        done = np.zeros(len(batch.limit), bool)
        frames, gates, aligns = [], [], []
        for i in range(masks.shape[0]):
            out = dec.step(frame, masks[i], memory, keys, state, pad)
            state, frame = out.state, out.frame
            gate = torch.sigmoid(out.gate_logit)
            frames.append(frame)
            gates.append(gate)
            aligns.append(out.alignment)
            done |= (self._np(gate) > batch.threshold) | (i + 1 >= batch.limit)
            if done.all():
                break
        return DecodeResult(self._np(torch.stack(frames)), self._np(torch.stack(gates)),
                            self._np(torch.stack(aligns)), tuple(self._np(s) for s in state), self._np(frame))

    @torch.inference_mode()
    def _postnet(self, frames: np.ndarray, at_start: bool, at_end: bool) -> np.ndarray:
        x = self._t(frames)
        residual = self.model.postnet(x, at_start, at_end)
        lo = 0 if at_start else self.lookahead
        return self._np(x[:, :, lo: lo + residual.shape[2]] + residual)


class TorchVocoder(Vocoder):
    """Wraps a vocoder module that follows our window convention: ``module(mel)`` for a whole
    utterance, ``module(mel, at_start, at_end, offset) -> (audio, first)`` for a window, plus
    ``config.hop_length``/``sample_rate``/``n_mels`` and ``context_frames``."""

    def __init__(self, module: torch.nn.Module, name: str, device: str = "cpu"):
        self.device = torch.device(device)
        self.module = module.to(self.device)
        self.name = name
        cfg = module.config
        self.n_mels, self.hop_length, self.sample_rate = cfg.n_mels, cfg.hop_length, cfg.sample_rate
        self.context = int(module.context_frames)
        self.tail_frames = int(getattr(cfg, "tail_frames", 0))
        self.tail_value = float(getattr(cfg, "tail_value", 0.0))

    @torch.inference_mode()
    def _run(self, mel: np.ndarray, at_start: bool, at_end: bool) -> tuple[np.ndarray, int]:
        x = torch.from_numpy(mel).to(self.device)
        if at_start and at_end:
            return self.module(x).cpu().numpy(), 0
        audio, first = self.module(x, at_start, at_end, 0)
        return audio.cpu().numpy(), int(first)
