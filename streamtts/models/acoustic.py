"""Tacotron2-style acoustic model: text ids + speaker vector -> 80-band log-mel frames.

The model exposes single steps on explicit tensors; the autoregressive loop lives in
:mod:`streamtts.reference`. Shapes (B = batch, T = input symbols, M = 288 memory width)::

    memory = model.encode(ids (B, T) long, speaker (B, 32) float)        -> (B, T, M)
    keys   = model.decoder.attention.memory_keys(memory)                   -> (B, T, 64)
    state  = model.decoder.initial_state(memory)                           -> DecoderState
    out    = model.decoder.step(prev_frame (B, 80), masks (2, B, 128), memory, keys, state)
             # out.frame (B, 80), out.gate_logit (B,), out.alignment (B, T), out.state
    mel    = model.postnet(frames (B, 80, N)) + frames                     -> (B, 80, N)

Prenet dropout (p = 0.5) is part of inference, as the model was trained with it on; the caller
passes the keep-masks (``{0, 1/(1-p)}`` scaled, see :func:`prenet_masks`) so every run and every
engine can be made bit-for-bit reproducible.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import nn
from torch.nn import functional as F

from streamtts.models.config import AcousticConfig


def prenet_masks(config: AcousticConfig, steps: int, batch: int = 1,
                 generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Dropout keep-masks for ``steps`` decoder steps: (steps, 2, batch, prenet_dim) float32,
    each element 0 or 1/(1-p). The same generator state gives the same masks."""
    p = config.prenet_dropout
    keep = torch.rand(steps, 2, batch, config.prenet_dim, generator=generator) >= p
    return keep.to(torch.float32) / (1.0 - p)


class ConvBN(nn.Module):
    """Conv1d ("same" zero padding) followed by BatchNorm1d in inference mode."""

    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, padding=(kernel - 1) // 2)
        self.norm = nn.BatchNorm1d(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Encoder(nn.Module):
    def __init__(self, cfg: AcousticConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.n_symbols, cfg.symbols_dim)
        self.convs = nn.ModuleList(
            ConvBN(cfg.symbols_dim, cfg.symbols_dim, cfg.encoder_kernel) for _ in range(cfg.encoder_convs))
        self.lstm = nn.LSTM(cfg.symbols_dim, cfg.symbols_dim // 2, batch_first=True, bidirectional=True)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) long -> (B, T, 256)."""
        x = self.embedding(ids).transpose(1, 2)
        for conv in self.convs:
            x = F.relu(conv(x))
        out, _ = self.lstm(x.transpose(1, 2))
        return out


class Attention(nn.Module):
    """Location-sensitive attention."""

    def __init__(self, cfg: AcousticConfig):
        super().__init__()
        self.query = nn.Linear(cfg.attention_rnn_dim, cfg.attention_dim, bias=False)
        self.memory = nn.Linear(cfg.memory_dim, cfg.attention_dim, bias=False)
        self.v = nn.Linear(cfg.attention_dim, 1, bias=False)
        self.location_conv = nn.Conv1d(2, cfg.location_filters, cfg.location_kernel,
                                       padding=(cfg.location_kernel - 1) // 2, bias=False)
        self.location_dense = nn.Linear(cfg.location_filters, cfg.attention_dim, bias=False)

    def memory_keys(self, memory: torch.Tensor) -> torch.Tensor:
        """memory (B, T, M) -> keys (B, T, 64); computed once per utterance."""
        return self.memory(memory)

    def forward(self, query: torch.Tensor, memory: torch.Tensor, keys: torch.Tensor,
                weights: torch.Tensor, weights_cum: torch.Tensor,
                mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, 512), previous weights and their running sum (B, T) -> context (B, M), weights (B, T).

        ``mask`` (B, T) bool marks padded positions when utterances of different lengths share a batch."""
        location = self.location_conv(torch.stack((weights, weights_cum), dim=1)).transpose(1, 2)
        energies = self.v(torch.tanh(self.query(query).unsqueeze(1) + self.location_dense(location) + keys))
        energies = energies.squeeze(-1)
        if mask is not None:
            energies = energies.masked_fill(mask, float("-inf"))
        new_weights = torch.softmax(energies, dim=1)
        context = torch.bmm(new_weights.unsqueeze(1), memory).squeeze(1)
        return context, new_weights


class DecoderState(NamedTuple):
    """Everything the decoder carries from one step to the next (all (B, ·) float tensors)."""

    attention_hidden: torch.Tensor  # (B, 512)
    attention_cell: torch.Tensor  # (B, 512)
    decoder_hidden: torch.Tensor  # (B, 512)
    decoder_cell: torch.Tensor  # (B, 512)
    attention_weights: torch.Tensor  # (B, T)
    attention_weights_cum: torch.Tensor  # (B, T)
    attention_context: torch.Tensor  # (B, M)


class StepOutput(NamedTuple):
    frame: torch.Tensor  # (B, 80) mel frame before the postnet
    gate_logit: torch.Tensor  # (B,) stop when sigmoid(gate_logit) > threshold
    alignment: torch.Tensor  # (B, T) attention weights of this step
    state: DecoderState


class Decoder(nn.Module):
    def __init__(self, cfg: AcousticConfig):
        super().__init__()
        self.cfg = cfg
        self.prenet = nn.ModuleList([nn.Linear(cfg.n_mels, cfg.prenet_dim, bias=False),
                                     nn.Linear(cfg.prenet_dim, cfg.prenet_dim, bias=False)])
        self.attention_rnn = nn.LSTMCell(cfg.prenet_dim + cfg.memory_dim, cfg.attention_rnn_dim)
        self.attention = Attention(cfg)
        self.decoder_rnn = nn.LSTMCell(cfg.attention_rnn_dim + cfg.memory_dim, cfg.decoder_rnn_dim)
        self.mel_proj = nn.Linear(cfg.decoder_rnn_dim + cfg.memory_dim, cfg.n_mels)
        self.gate_proj = nn.Linear(cfg.decoder_rnn_dim + cfg.memory_dim, 1)

    def initial_state(self, memory: torch.Tensor) -> DecoderState:
        """All-zero state for a memory of shape (B, T, M)."""
        b, t, m = memory.shape
        z = memory.new_zeros
        return DecoderState(z(b, self.cfg.attention_rnn_dim), z(b, self.cfg.attention_rnn_dim),
                            z(b, self.cfg.decoder_rnn_dim), z(b, self.cfg.decoder_rnn_dim),
                            z(b, t), z(b, t), z(b, m))

    def go_frame(self, memory: torch.Tensor) -> torch.Tensor:
        """The all-zero frame that starts decoding: (B, 80)."""
        return memory.new_zeros(memory.shape[0], self.cfg.n_mels)

    def step(self, prev_frame: torch.Tensor, masks: torch.Tensor, memory: torch.Tensor,
             keys: torch.Tensor, state: DecoderState,
             mask: Optional[torch.Tensor] = None) -> StepOutput:
        """One autoregressive step. prev_frame (B, 80); masks (2, B, 128) prenet keep-masks."""
        x = prev_frame
        for layer, keep in zip(self.prenet, masks):
            x = F.relu(layer(x)) * keep
        att_h, att_c = self.attention_rnn(torch.cat((x, state.attention_context), -1),
                                          (state.attention_hidden, state.attention_cell))
        context, weights = self.attention(att_h, memory, keys, state.attention_weights,
                                          state.attention_weights_cum, mask)
        dec_h, dec_c = self.decoder_rnn(torch.cat((att_h, context), -1),
                                        (state.decoder_hidden, state.decoder_cell))
        out = torch.cat((dec_h, context), dim=1)
        new_state = DecoderState(att_h, att_c, dec_h, dec_c, weights,
                                 state.attention_weights_cum + weights, context)
        return StepOutput(self.mel_proj(out), self.gate_proj(out).squeeze(1), weights, new_state)


class Postnet(nn.Module):
    """Five convolutions predicting a residual for the decoder's mel frames."""

    def __init__(self, cfg: AcousticConfig):
        super().__init__()
        dims = [cfg.n_mels] + [cfg.postnet_dim] * (cfg.postnet_convs - 1) + [cfg.n_mels]
        self.convs = nn.ModuleList(ConvBN(a, b, cfg.postnet_kernel) for a, b in zip(dims[:-1], dims[1:]))

    @property
    def radius(self) -> int:
        """Frames of context each output frame needs on each side (2 per conv: 10)."""
        return sum((c.conv.kernel_size[0] - 1) // 2 for c in self.convs)

    def forward(self, frames: torch.Tensor, at_start: bool = True, at_end: bool = True) -> torch.Tensor:
        """frames (B, 80, W) -> residual (B, 80, W').

        Every conv zero-pads its input, as trained, but only at a true edge of the utterance
        (``at_start``/``at_end``). Elsewhere the window carries real context frames and loses
        ``radius`` frames on that side, so a window's output equals the same frames of the whole
        utterance's output: W' = W - radius * (not at_start) - radius * (not at_end)."""
        x = frames
        last = len(self.convs) - 1
        for i, layer in enumerate(self.convs):
            c = (layer.conv.kernel_size[0] - 1) // 2
            x = F.pad(x, (c if at_start else 0, c if at_end else 0))
            x = layer.norm(F.conv1d(x, layer.conv.weight, layer.conv.bias))
            if i != last:
                x = torch.tanh(x)
        return x


class Tacotron2(nn.Module):
    def __init__(self, config: AcousticConfig):
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.speaker_proj = nn.Linear(config.speaker_vector_dim, config.speaker_dim)
        self.decoder = Decoder(config)
        self.postnet = Postnet(config)

    def encode(self, ids: torch.Tensor, speaker: torch.Tensor) -> torch.Tensor:
        """ids (B, T) long, speaker (B, 32) float -> memory (B, T, 288)."""
        text = self.encoder(ids)
        spk = self.speaker_proj(speaker).unsqueeze(1).expand(-1, text.shape[1], -1)
        return torch.cat((text, spk), dim=2)
