"""MelGAN generator: 80-band log-mel frames -> 22050 Hz waveform, 256 samples per frame.

Weight norm is folded into plain convolutions when the voice pack is converted, so this is a
stack of ordinary convolutions::

    audio = vocoder(mel (B, 80, N))                       -> (B, N * 256) float in [-1, 1]
    audio = vocoder.synthesize(mel (1, 80, N))            -> (N * 256,) with upstream's silent tail
    audio, first = vocoder(window, at_start, at_end, offset=a)   # a window of a longer mel

Reflection padding happens at the true edges of the utterance only. A window that does not touch
an edge carries real context frames on that side instead, and its output is trimmed to the samples
that depend on nothing outside the window, so windows reproduce the whole-utterance output.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from streamtts.models.config import VocoderConfig

_SLOPE = 0.2  # LeakyReLU slope used throughout the generator


def _same_conv(conv: nn.Conv1d, x: torch.Tensor, at_start: bool, at_end: bool) -> torch.Tensor:
    """Conv with reflection "same" padding applied only at true edges."""
    c = (conv.kernel_size[0] - 1) // 2 * conv.dilation[0]
    if at_start or at_end:
        x = F.pad(x, (c if at_start else 0, c if at_end else 0), mode="reflect")
    return conv(x)


class ResStack(nn.Module):
    """Three residual units with dilations 1, 3, 9: x = shortcut(x) + pointwise(dilated(x))."""

    def __init__(self, channels: int, dilations: tuple[int, ...]):
        super().__init__()
        self.dilations = dilations
        self.dilated = nn.ModuleList(nn.Conv1d(channels, channels, 3, dilation=d) for d in dilations)
        self.pointwise = nn.ModuleList(nn.Conv1d(channels, channels, 1) for _ in dilations)
        self.shortcut = nn.ModuleList(nn.Conv1d(channels, channels, 1) for _ in dilations)

    def forward(self, x: torch.Tensor, at_start: bool = True, at_end: bool = True) -> tuple[torch.Tensor, int]:
        """-> (output, samples lost at the start). An interior side loses `dilation` samples per unit."""
        lost = 0
        for d, dil, pw, sc in zip(self.dilations, self.dilated, self.pointwise, self.shortcut):
            y = pw(F.leaky_relu(_same_conv(dil, F.leaky_relu(x, _SLOPE), at_start, at_end), _SLOPE))
            x = sc(x[..., (0 if at_start else d): x.shape[-1] - (0 if at_end else d)]) + y
            lost += 0 if at_start else d
        return x, lost


class MelGAN(nn.Module):
    # Mel frames of real context an output sample needs on each side: the receptive field is
    # 5.6 frames wide on each side (conv_pre 3, then the upsampled stacks' dilations).
    context_frames = 6

    def __init__(self, config: VocoderConfig):
        super().__init__()
        self.config = config
        ch = config.channels
        self.conv_pre = nn.Conv1d(config.n_mels, ch, 7)
        ups, stacks = [], []
        for rate in config.upsample_rates:
            # kernel 2r with padding r/2 upsamples by exactly r (out = r * in), as trained
            ups.append(nn.ConvTranspose1d(ch, ch // 2, rate * 2, stride=rate, padding=rate // 2))
            ch //= 2
            stacks.append(ResStack(ch, config.res_dilations))
        self.ups = nn.ModuleList(ups)
        self.stacks = nn.ModuleList(stacks)
        self.conv_post = nn.Conv1d(ch, 1, 7)

    def forward(self, mel: torch.Tensor, at_start: bool = True, at_end: bool = True,
                offset: int = 0) -> torch.Tensor | tuple[torch.Tensor, int]:
        """mel (B, 80, W) -> audio (B, S).

        For a whole utterance (both edges) S = W * hop and only the audio is returned. For a window
        whose first frame is frame ``offset`` of the utterance, returns (audio, first) where
        ``first`` is the utterance sample index of audio[:, 0]."""
        # `first`: utterance index, in the current time base, of the first local position
        x = _same_conv(self.conv_pre, (mel + 5.0) / 5.0, at_start, at_end)
        first = offset + (0 if at_start else 3)
        for up, stack in zip(self.ups, self.stacks):
            x, first = self._upsample(up, F.leaky_relu(x, _SLOPE), first, at_start, at_end)
            x, lost = stack(x, at_start, at_end)
            first += lost
        x = _same_conv(self.conv_post, F.leaky_relu(x, _SLOPE), at_start, at_end)
        first += 0 if at_start else 3
        audio = torch.tanh(x).squeeze(1)
        if at_start and at_end:
            return audio
        return audio, first

    @staticmethod
    def _upsample(up: nn.ConvTranspose1d, x: torch.Tensor, first: int, at_start: bool,
                  at_end: bool) -> tuple[torch.Tensor, int]:
        """Transposed conv computed in full, then cropped: by its padding at a true edge (as
        trained), or, inside the utterance, to the positions whose inputs all lie in the window."""
        s, k, p = up.stride[0], up.kernel_size[0], up.padding[0]
        full = F.conv_transpose1d(x, up.weight, up.bias, stride=s)
        left = p if at_start else k - s
        right = p if at_end else k - s
        return full[..., left: full.shape[-1] - right], s * first + left - p

    def synthesize(self, mel: torch.Tensor) -> torch.Tensor:
        """Whole-utterance vocoding as upstream does it: append ``tail_frames`` of silence, vocode,
        drop the tail's audio. mel (1, 80, N) -> (N * hop,)."""
        audio = self.forward(self.with_tail(mel))[0]
        return audio[: mel.shape[2] * self.config.hop_length]

    def with_tail(self, mel: torch.Tensor) -> torch.Tensor:
        """mel (B, 80, N) -> (B, 80, N + tail_frames) with the silent tail appended."""
        cfg = self.config
        return torch.cat((mel, mel.new_full((mel.shape[0], cfg.n_mels, cfg.tail_frames), cfg.tail_value)), dim=2)
