"""Audio encoding for the wire: native float32 audio -> s16le / f32le / G.711 µ-law bytes at the
session's rate, resampled with a streaming soxr resampler.

How to call::

    enc = AudioEncoder("mulaw", 8000)
    frame = enc.encode(piece)                    # piece: float32 @ 22050 Hz; bytes, whole samples
    frame = enc.encode(np.zeros(0), last=True)   # end of a chunk: what the resampler still holds
    frame = enc.silence(3308)                    # a pause given in native samples
    mulaw_decode(frame)                          # -> int16 (for tests and clients)

Pure computation, no I/O: the sans-I/O protocol (``streamtts.protocol``) uses it.
"""

from __future__ import annotations

import numpy as np
import soxr

from streamtts.constants import NATIVE_RATE

__all__ = ["NATIVE_RATE", "FORMATS", "SAMPLE_RATES", "AudioEncoder", "mulaw_encode", "mulaw_decode"]

FORMATS = {"pcm_s16le": 2, "pcm_f32le": 4, "mulaw": 1}  # bytes per sample
SAMPLE_RATES = (8000, 16000, 22050, 24000, 44100, 48000)


def mulaw_encode(audio: np.ndarray) -> bytes:
    """float audio in [-1, 1] -> G.711 µ-law bytes (the classic BIAS/CLIP algorithm on 16-bit)."""
    pcm = np.clip(np.round(np.asarray(audio, np.float32) * 32767.0), -32768, 32767).astype(np.int32)
    sign = (pcm < 0).astype(np.int32) << 7
    mag = np.minimum(np.abs(pcm), 32635) + 0x84
    exponent = np.zeros_like(mag)
    for k in range(1, 8):  # position of the highest set bit of mag >> 7
        exponent += mag >= (128 << k)
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return (~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8).tobytes()


def mulaw_decode(data: bytes) -> np.ndarray:
    """G.711 µ-law bytes -> int16 samples."""
    x = ~np.frombuffer(data, np.uint8).astype(np.int32) & 0xFF
    exponent, mantissa = (x >> 4) & 0x07, x & 0x0F
    mag = (((mantissa << 3) + 0x84) << exponent) - 0x84
    return np.where(x & 0x80, -mag, mag).astype(np.int16)


class AudioEncoder:
    """Native float32 audio -> bytes of ``fmt`` at ``sample_rate``, chunk by chunk.

    ``encode(audio)`` feeds one streaming soxr resampler, so the pieces of a chunk join without a
    click; ``encode(empty, last=True)`` drains it at the end of a chunk (the chunk's audio then has
    round(n * rate / 22050) samples) and the next chunk starts afresh: chunks end and begin in the
    vocoder's silence, so nothing is lost there. ``silence(n)`` is n native samples of silence at
    the output rate, rounding carried over. ``reset()`` drops what is in the resampler (cancel).
    """

    def __init__(self, fmt: str = "pcm_s16le", sample_rate: int = NATIVE_RATE, native_rate: int = NATIVE_RATE):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.format, self.sample_rate, self.native_rate = fmt, int(sample_rate), native_rate
        self.sample_width = FORMATS[fmt]
        self._ratio = self.sample_rate / native_rate
        self._resampler = None if self.sample_rate == native_rate else soxr.ResampleStream(
            native_rate, self.sample_rate, 1, dtype="float32", quality="HQ")
        self._open = False  # the resampler holds samples of the current chunk
        self._silence_frac = 0.0

    def encode(self, audio: np.ndarray, last: bool = False) -> bytes:
        audio = np.asarray(audio, np.float32)
        if self._resampler is not None:
            if len(audio) or (last and self._open):
                audio = self._resampler.resample_chunk(audio, last=last)
                self._open = not last
                if last:
                    self._resampler.clear()
        return self._pack(audio)

    def silence(self, n_native: int) -> bytes:
        exact = n_native * self._ratio + self._silence_frac
        n = int(exact)
        self._silence_frac = exact - n
        return self._pack(np.zeros(n, np.float32))

    def reset(self) -> None:
        if self._resampler is not None:
            self._resampler.clear()
        self._open = False

    def _pack(self, audio: np.ndarray) -> bytes:
        if len(audio) == 0:
            return b""
        if self.format == "pcm_f32le":
            return np.clip(audio, -1.0, 1.0).astype("<f4").tobytes()
        if self.format == "mulaw":
            return mulaw_encode(audio)
        return np.clip(np.round(audio * 32767.0), -32768, 32767).astype("<i2").tobytes()
