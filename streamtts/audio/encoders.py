"""The ``response_format`` encoders of ``POST /v1/audio/speech``: 24 kHz s16le mono PCM in,
bytes of the format out, streamed (every packet the encoder yields goes out with the next call).

    enc = StreamEncoder("mp3")           # one per request: mp3 | opus | aac | flac | wav | pcm
    head = enc.start()                   # container header (b"" for mp3 and pcm)
    data = enc.encode(pcm_bytes)         # what the muxer produced for this audio (may be b"")
    tail = enc.finish()                  # the encoder's delayed packets and the trailer

mp3 (MPEG-1/2 Layer III frames, no ID3 tag), opus (Ogg Opus), aac (ADTS) and flac are encoded by
PyAV (FFmpeg's libmp3lame, libopus, aac and flac); wav is a header for a stream of unknown length
followed by the PCM, and pcm is the PCM itself. The muxer writes into a list through a file-like
object without ``seek``, so it never waits for the end to go back and patch a header.

Encoding a real-time stream costs a small fraction of a core, far below synthesizing it, so it
runs on the event loop.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Optional

import numpy as np

SAMPLE_RATE = 24000  # OpenAI's speech endpoint sends 24 kHz mono in every format


@dataclass(frozen=True)
class Format:
    content_type: str
    container: Optional[str] = None  # FFmpeg muxer (None: written here)
    codec: Optional[str] = None
    bit_rate: int = 0  # bits per second (0: the codec's own; flac is lossless)
    options: tuple = ()  # muxer options
    bytes_per_s: int = 2 * SAMPLE_RATE  # about, for sizing socket buffers in seconds of audio


FORMATS = {
    # no ID3v2 tag and no Xing frame: a stream is MPEG frames from its first byte
    "mp3": Format("audio/mpeg", "mp3", "libmp3lame", 64000, (("id3v2_version", "0"), ("write_xing", "0")), 8000),
    # Ogg pages of at most 100 ms: the muxer holds no more than that before it writes
    "opus": Format("audio/ogg", "ogg", "libopus", 32000, (("page_duration", "100000"),), 4000),
    "aac": Format("audio/aac", "adts", "aac", 64000, (), 8000),
    "flac": Format("audio/flac", "flac", "flac", 0, (), 24000),  # sizing only: speech packs below pcm's rate
    "wav": Format("audio/wav"),
    "pcm": Format("audio/pcm"),
}


def wav_header(sample_rate: int = SAMPLE_RATE) -> bytes:
    """A 16-bit mono WAV header for a stream of unknown length: the sizes are 0xFFFFFFFF."""
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVE" + b"fmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16) +
            b"data" + struct.pack("<I", 0xFFFFFFFF))


class _Sink:
    """The muxer's output file: what it writes is kept until the caller takes it."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


class StreamEncoder:
    """One response's encoder (not thread-safe; one per request). See the module docstring."""

    def __init__(self, fmt: str, sample_rate: int = SAMPLE_RATE):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.format, self.sample_rate = fmt, sample_rate
        self.spec = FORMATS[fmt]
        self._container = self._stream = None
        self._sink = _Sink()
        self._pts = 0
        self._closed = False

    @property
    def content_type(self) -> str:
        return self.spec.content_type

    def start(self) -> bytes:
        if self.format == "wav":
            return wav_header(self.sample_rate)
        if self.spec.container is None:
            return b""
        import av  # imported here: only the compressed formats need FFmpeg

        # flush_packets: the muxer hands every packet to the sink at once, not in 32 KiB blocks
        self._container = av.open(self._sink, "w", format=self.spec.container,
                                  options={"flush_packets": "1", **dict(self.spec.options)})
        self._stream = self._container.add_stream(self.spec.codec, rate=self.sample_rate)
        self._stream.layout = "mono"
        if self.spec.bit_rate:
            self._stream.bit_rate = self.spec.bit_rate
        self._container.start_encoding()
        return self._sink.take()

    def encode(self, pcm: bytes) -> bytes:
        """``pcm``: s16le mono at ``sample_rate`` (any whole number of samples)."""
        if self._container is None:
            return pcm
        if not pcm:
            return b""
        import av

        samples = np.frombuffer(pcm, "<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate, frame.pts = self.sample_rate, self._pts
        self._pts += samples.shape[1]
        for packet in self._stream.encode(frame):  # PyAV re-frames to the codec's frame size
            self._container.mux(packet)
        return self._sink.take()

    def finish(self) -> bytes:
        """Flush the encoder and write the trailer; the encoder is done after this."""
        if self._container is None or self._closed:
            return b""
        self._closed = True
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._sink.take()

    def close(self) -> None:
        """Free the encoder without a trailer (the client went away)."""
        if self._container is not None and not self._closed:
            self._closed = True
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 -- only freeing; the response is gone anyway
                pass
