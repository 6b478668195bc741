"""MelGAN generator: 80-band log-mel frames -> 22050 Hz waveform, 256 samples per frame.

Weight norm is folded into plain convolutions when the voice pack is converted, so this is a
stack of ordinary convolutions::

    audio = vocoder(mel (B, 80, N))             -> (B, N * 256) float in [-1, 1]
    audio = vocoder.synthesize(mel (1, 80, N))  -> (N * 256,) with upstream's silent tail trick

Reflection padding happens at the true edges of the signal only (``pad=True``); a streaming caller
passes real context frames instead and uses ``pad=False``.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from streamtts.models.config import VocoderConfig

_SLOPE = 0.2  # LeakyReLU slope used throughout the generator


class ResStack(nn.Module):
    """Three residual units with dilations 1, 3, 9: x = shortcut(x) + pointwise(dilated(x))."""

    def __init__(self, channels: int, dilations: tuple[int, ...]):
        super().__init__()
        self.dilations = dilations
        self.dilated = nn.ModuleList(nn.Conv1d(channels, channels, 3, dilation=d) for d in dilations)
        self.pointwise = nn.ModuleList(nn.Conv1d(channels, channels, 1) for _ in dilations)
        self.shortcut = nn.ModuleList(nn.Conv1d(channels, channels, 1) for _ in dilations)

    def forward(self, x: torch.Tensor, pad: bool = True) -> torch.Tensor:
        for d, dil, pw, sc in zip(self.dilations, self.dilated, self.pointwise, self.shortcut):
            y = F.leaky_relu(x, _SLOPE)
            if pad:
                y = F.pad(y, (d, d), mode="reflect")
            else:  # without padding the block is 2*d samples shorter: trim the shortcut to match
                x = x[..., d:-d]
            x = sc(x) + pw(F.leaky_relu(dil(y), _SLOPE))
        return x


class MelGAN(nn.Module):
    def __init__(self, config: VocoderConfig):
        super().__init__()
        self.config = config
        ch = config.channels
        self.conv_pre = nn.Conv1d(config.n_mels, ch, 7)
        ups, stacks = [], []
        for rate in config.upsample_rates:
            kernel = rate * 2
            # kernel 2r with padding r/2 upsamples by exactly r (out = r * in), as trained
            ups.append(nn.ConvTranspose1d(ch, ch // 2, kernel, stride=rate, padding=rate // 2))
            ch //= 2
            stacks.append(ResStack(ch, config.res_dilations))
        self.ups = nn.ModuleList(ups)
        self.stacks = nn.ModuleList(stacks)
        self.conv_post = nn.Conv1d(ch, 1, 7)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, 80, N) -> audio (B, N * hop), reflection padding at both ends."""
        x = F.pad((mel + 5.0) / 5.0, (3, 3), mode="reflect")
        x = self.conv_pre(x)
        for up, stack in zip(self.ups, self.stacks):
            x = stack(up(F.leaky_relu(x, _SLOPE)))
        x = F.pad(F.leaky_relu(x, _SLOPE), (3, 3), mode="reflect")
        return torch.tanh(self.conv_post(x)).squeeze(1)

    def synthesize(self, mel: torch.Tensor) -> torch.Tensor:
        """Whole-utterance vocoding as upstream does it: append ``tail_frames`` of silence, vocode,
        drop the tail's audio. mel (1, 80, N) -> (N * hop,)."""
        cfg = self.config
        tail = mel.new_full((mel.shape[0], cfg.n_mels, cfg.tail_frames), cfg.tail_value)
        audio = self.forward(torch.cat((mel, tail), dim=2))[0]
        return audio[: mel.shape[2] * cfg.hop_length]
