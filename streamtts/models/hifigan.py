"""HiFiGAN V1 generator (Kong et al. 2020, the original jik876 release): 80-band log-mel frames
-> 22050 Hz waveform, 256 samples per frame. A drop-in alternative to :class:`~streamtts.models.
vocoder.MelGAN` with the same calling convention::

    vocoder = HiFiGAN(HiFiGANConfig())                 # or ensure_hifigan().load()
    audio = vocoder(mel (B, 80, W))                    -> (B, W * 256) float in [-1, 1]
    audio, first = vocoder(window (B, 80, W), at_start, at_end, offset=a)   # a window of a longer mel

The input is the natural-log mel magnitude (log(clamp(x, 1e-5)), n_fft 1024, hop 256, fmax 8000)
as is, which is what our acoustic model predicts: unlike MelGAN there is no (mel + 5) / 5.

Weight norm is folded into plain convolutions when the weights are converted
(:mod:`streamtts.pack.hifigan`); every convolution here has ``padding=0`` and the "same" zero
padding of training is applied by hand, and only at the true edges of the utterance. A window
that does not touch an edge carries :attr:`HiFiGAN.context_frames` real frames on that side
instead, and every layer crops its output to the samples that depend on nothing outside the
window, so windows reproduce the whole-utterance output. For fixed flags, a window of W frames
gives ``S = W * 256 - const`` samples and ``first = offset * 256 + const``.

Layout (V1): conv_pre (k7) -> 4 x [leaky_relu 0.1, ConvTranspose1d (x8, x8, x2, x2), MRF] ->
leaky_relu 0.01 -> conv_post (k7) -> tanh. An MRF is the mean of three ResBlock1s (kernels 3, 7,
11), each three pairs ``x = c2(lrelu(c1_d(lrelu(x)))) + x`` with dilations 1, 3, 5 on c1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

_SLOPE = 0.1  # LeakyReLU slope everywhere but before conv_post (as in the original generator)
_POST_SLOPE = 0.01  # the original calls F.leaky_relu(x) with its default slope before conv_post


def _tuples(value: Any) -> Any:
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


@dataclass(frozen=True)
class HiFiGANConfig:
    """HiFiGAN generator hyper-parameters, named as in the original ``config_v1.json``."""

    n_mels: int = 80
    upsample_initial_channel: int = 512
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    upsample_kernel_sizes: tuple[int, ...] = (16, 16, 4, 4)
    resblock_kernel_sizes: tuple[int, ...] = (3, 7, 11)
    resblock_dilation_sizes: tuple[tuple[int, ...], ...] = ((1, 3, 5), (1, 3, 5), (1, 3, 5))
    sample_rate: int = 22050
    hop_length: int = 256

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HiFiGANConfig":
        known = set(cls.__dataclass_fields__)
        return cls(**{k: _tuples(v) for k, v in data.items() if k in known})


def _radius(conv: nn.Conv1d) -> int:
    """Positions on each side a (padding-free) conv needs: its "same" padding."""
    return (conv.kernel_size[0] - 1) // 2 * conv.dilation[0]


def _conv(conv: nn.Conv1d, x: torch.Tensor, at_start: bool, at_end: bool) -> torch.Tensor:
    """Conv with "same" zero padding applied only at true edges; an interior side loses the padding."""
    pad = _radius(conv)
    if at_start and at_end:  # the whole utterance: let the conv pad (saves a copy per layer)
        return F.conv1d(x, conv.weight, conv.bias, padding=pad, dilation=conv.dilation)
    if at_start or at_end:
        x = F.pad(x, (pad if at_start else 0, pad if at_end else 0))
    return conv(x)


def _crop(x: torch.Tensor, n: int, at_start: bool, at_end: bool) -> torch.Tensor:
    """Drop ``n`` positions on each interior side (none at a true edge)."""
    return x[..., (0 if at_start else n): x.shape[-1] - (0 if at_end else n)]


class ResBlock1(nn.Module):
    """HiFiGAN's "resblock 1": for each dilation d, x = c2(lrelu(c1_d(lrelu(x)))) + x."""

    def __init__(self, channels: int, kernel: int, dilations: tuple[int, ...]):
        super().__init__()
        self.convs1 = nn.ModuleList(nn.Conv1d(channels, channels, kernel, dilation=d) for d in dilations)
        self.convs2 = nn.ModuleList(nn.Conv1d(channels, channels, kernel) for _ in dilations)

    @property
    def radius(self) -> int:
        """Positions an interior side loses through the block (its receptive field radius)."""
        return sum(_radius(c) for c in (*self.convs1, *self.convs2))

    def forward(self, x: torch.Tensor, at_start: bool = True, at_end: bool = True) -> torch.Tensor:
        for c1, c2 in zip(self.convs1, self.convs2):
            xt = _conv(c1, F.leaky_relu(x, _SLOPE), at_start, at_end)
            xt = _conv(c2, F.leaky_relu(xt, _SLOPE), at_start, at_end)
            x = xt + _crop(x, _radius(c1) + _radius(c2), at_start, at_end)  # align the residual
        return x


class HiFiGAN(nn.Module):
    """HiFiGAN V1 generator with weight norm folded (state dict keys as in the original release,
    less ``weight_g``/``weight_v``: ``conv_pre``, ``ups.i``, ``resblocks.{3i+j}.convs{1,2}.n``,
    ``conv_post``)."""

    # HiFiGAN has no silent tail (MelGAN's upstream appends one against an end click).
    tail_frames = 0
    tail_value = 0.0

    def __init__(self, config: HiFiGANConfig):
        super().__init__()
        self.config = config
        if math.prod(config.upsample_rates) != config.hop_length:
            raise ValueError("the upsample rates must multiply to hop_length")
        ch = config.upsample_initial_channel
        self.conv_pre = nn.Conv1d(config.n_mels, ch, 7)
        self.ups = nn.ModuleList()
        self.resblocks = nn.ModuleList()
        for u, k in zip(config.upsample_rates, config.upsample_kernel_sizes):
            if (k - u) % 2:
                raise ValueError("upsample kernel - rate must be even (out = rate * in)")
            # padding (k - u) / 2 makes out = u * in exactly, as trained
            self.ups.append(nn.ConvTranspose1d(ch, ch // 2, k, stride=u, padding=(k - u) // 2))
            ch //= 2
            for kr, dil in zip(config.resblock_kernel_sizes, config.resblock_dilation_sizes):
                self.resblocks.append(ResBlock1(ch, kr, dil))
        self.conv_post = nn.Conv1d(ch, 1, 7)
        self.num_kernels = len(config.resblock_kernel_sizes)
        # output samples an interior side of a window loses (the receptive field radius; the same
        # on both sides), and the mel frames of real context that covers, rounded up (13 for V1)
        self.radius_samples = self._radius_samples()
        self.context_frames = -(-self.radius_samples // config.hop_length)

    def _radius_samples(self) -> int:
        """Receptive field radius of an output sample, in output samples (3258 for V1)."""
        r = _radius(self.conv_pre)
        for i, up in enumerate(self.ups):
            s, p = up.stride[0], up.padding[0]
            # see _upsample: inside the utterance a transposed conv keeps the full positions
            # [k - s, s * L), which is k - s - p = p more on each side than the trained crop
            mrf = max(rb.radius for rb in self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels])
            r = r * s + p + mrf
        return r + _radius(self.conv_post)

    def forward(self, mel: torch.Tensor, at_start: bool = True, at_end: bool = True,
                offset: int = 0) -> torch.Tensor | tuple[torch.Tensor, int]:
        """mel (B, 80, W) -> audio (B, S).

        For a whole utterance (both edges) S = W * hop and only the audio is returned. For a window
        whose first frame is frame ``offset`` of the utterance, returns (audio, first) where
        ``first`` is the utterance sample index of audio[:, 0]."""
        # `first`: utterance index, in the current time base, of the first local position
        x = _conv(self.conv_pre, mel, at_start, at_end)
        first = offset + (0 if at_start else _radius(self.conv_pre))
        for i, up in enumerate(self.ups):
            x, first = _upsample(up, F.leaky_relu(x, _SLOPE), first, at_start, at_end)
            blocks = self.resblocks[i * self.num_kernels:(i + 1) * self.num_kernels]
            lost = max(rb.radius for rb in blocks)
            total = None
            for rb in blocks:
                # blocks with a smaller kernel keep more positions: crop all to the widest's
                y = _crop(rb(x, at_start, at_end), lost - rb.radius, at_start, at_end)
                total = y if total is None else total + y
            x = total / self.num_kernels
            first += 0 if at_start else lost
        x = _conv(self.conv_post, F.leaky_relu(x, _POST_SLOPE), at_start, at_end)
        first += 0 if at_start else _radius(self.conv_post)
        audio = torch.tanh(x).squeeze(1)
        if at_start and at_end:
            return audio
        return audio, first


def _upsample(up: nn.ConvTranspose1d, x: torch.Tensor, first: int, at_start: bool,
              at_end: bool) -> tuple[torch.Tensor, int]:
    """Transposed conv computed in full, then cropped: by its padding at a true edge (as trained),
    or, inside the utterance, to the positions whose inputs all lie in the window (full index
    j >= k - s on the left, j < s * L on the right). Same as MelGAN's."""
    s, k, p = up.stride[0], up.kernel_size[0], up.padding[0]
    full = F.conv_transpose1d(x, up.weight, up.bias, stride=s)
    left = p if at_start else k - s
    right = p if at_end else k - s
    return full[..., left: full.shape[-1] - right], s * first + left - p
