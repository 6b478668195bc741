"""Eager PyTorch engine (CPU or CUDA): the reference implementation of the engine interface."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from engines.base import DecodeBlock, Engine
from streamtts.models.acoustic import DecoderState
from streamtts.pack import VoicePack, ensure_pack


@dataclass
class TorchMemory:
    memory: torch.Tensor  # (1, T, 288)
    keys: torch.Tensor  # (1, T, 64)


@dataclass
class TorchState:
    decoder: DecoderState
    frame: torch.Tensor  # (1, 80) previous output frame (the go frame at first)


class TorchEngine(Engine):
    name = "torch"

    def __init__(self, pack: Optional[VoicePack] = None, device: str = "cpu"):
        pack = pack or ensure_pack()
        self.device = torch.device(device)
        self.model = pack.load_acoustic(self.device)
        self.vocoder = pack.load_vocoder(self.device)
        self.acoustic = self.model.config
        self.vocoder_config = self.vocoder.config

    def _t(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

    @torch.inference_mode()
    def encode(self, ids: np.ndarray, speaker: np.ndarray) -> TorchMemory:
        memory = self.model.encode(self._t(ids.astype(np.int64))[None], self._t(speaker.astype(np.float32))[None])
        return TorchMemory(memory, self.model.decoder.attention.memory_keys(memory))

    @torch.inference_mode()
    def initial_state(self, memory: TorchMemory) -> TorchState:
        dec = self.model.decoder
        return TorchState(dec.initial_state(memory.memory), dec.go_frame(memory.memory))

    @torch.inference_mode()
    def decode(self, memory: TorchMemory, state: TorchState, masks: np.ndarray,
               gate_threshold: float) -> DecodeBlock:
        dec = self.model.decoder
        masks_t = self._t(masks.astype(np.float32))[:, :, None, :]  # (n, 2, 1, 128)
        frames, gates, aligns = [], [], []
        stopped = False
        dstate, frame = state.decoder, state.frame
        for i in range(masks_t.shape[0]):
            out = dec.step(frame, masks_t[i], memory.memory, memory.keys, dstate)
            dstate, frame = out.state, out.frame
            gate = torch.sigmoid(out.gate_logit[0]).item()
            if gate > gate_threshold:
                stopped = True
                break
            frames.append(out.frame[0])
            gates.append(gate)
            aligns.append(out.alignment[0])
        t = memory.memory.shape[1]
        return DecodeBlock(
            frames=torch.stack(frames).cpu().numpy() if frames else np.zeros((0, self.acoustic.n_mels), np.float32),
            gates=np.asarray(gates, dtype=np.float32),
            alignments=torch.stack(aligns).cpu().numpy() if aligns else np.zeros((0, t), np.float32),
            state=TorchState(dstate, frame), stopped=stopped)

    @torch.inference_mode()
    def postnet(self, frames: np.ndarray, at_start: bool, at_end: bool) -> np.ndarray:
        x = self._t(frames.astype(np.float32))[None]
        residual = self.model.postnet(x, at_start, at_end)
        lo = 0 if at_start else self.postnet_radius
        return (x[:, :, lo: lo + residual.shape[2]] + residual)[0].cpu().numpy()

    @torch.inference_mode()
    def vocode(self, mel: np.ndarray, at_start: bool, at_end: bool, offset: int) -> tuple[np.ndarray, int]:
        x = self._t(mel.astype(np.float32))[None]
        if at_start and at_end:
            return self.vocoder(x)[0].cpu().numpy(), offset * self.vocoder_config.hop_length
        audio, first = self.vocoder(x, at_start, at_end, offset)
        return audio[0].cpu().numpy(), first
