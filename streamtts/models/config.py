"""Model configurations. A config dataclass is each model's only constructor argument, and a
converted voice pack stores them as JSON next to the weights."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    known = {f.name for f in fields(cls)}
    values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known}
    return cls(**values)


@dataclass(frozen=True)
class AcousticConfig:
    """Tacotron2-style acoustic model with a speaker vector (ttskit's "mspk" Mellotron)."""

    n_symbols: int = 145
    symbols_dim: int = 256
    encoder_convs: int = 3
    encoder_kernel: int = 5
    speaker_vector_dim: int = 32  # md5 of the voice name, 32 hex digits
    speaker_dim: int = 32
    n_mels: int = 80
    prenet_dim: int = 128
    prenet_dropout: float = 0.5  # stays on at inference, as in training (masks are explicit inputs)
    attention_rnn_dim: int = 512
    decoder_rnn_dim: int = 512
    attention_dim: int = 64
    location_filters: int = 16
    location_kernel: int = 31
    postnet_dim: int = 256
    postnet_kernel: int = 5
    postnet_convs: int = 5
    gate_threshold: float = 0.8
    max_decoder_steps: int = 1200
    sample_rate: int = 22050
    hop_length: int = 256

    @property
    def memory_dim(self) -> int:
        """Width of one encoder frame after the speaker vector is concatenated (256 + 32)."""
        return self.symbols_dim + self.speaker_dim

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AcousticConfig":
        return _from_dict(cls, data)


@dataclass(frozen=True)
class VocoderConfig:
    """MelGAN generator (weight norm folded into plain convolutions)."""

    n_mels: int = 80
    channels: int = 512
    upsample_rates: tuple[int, ...] = (8, 8, 2, 2)
    res_dilations: tuple[int, ...] = (1, 3, 9)
    sample_rate: int = 22050
    hop_length: int = 256
    # Upstream appends frames of log(1e-5) silence (written there as -11.5129) before vocoding and
    # drops their audio, against a click at the end of an utterance.
    tail_frames: int = 10
    tail_value: float = -11.5129

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VocoderConfig":
        return _from_dict(cls, data)
