"""Streaming synthesis of one chunk (sentence): PCM leaves as soon as it is final.

Per chunk: encode once, decode in blocks (a small first block, larger later ones), and after each
block run the postnet and the vocoder on the part of the utterance whose receptive field is now
complete, with exactly the context they need. The concatenated pieces equal the whole-utterance
synthesis of the same chunk (same seed) to float rounding.

How to call::

    pipe = ChunkStream(engine, ids, voice="biaobei", seed=0)
    for piece in pipe:          # piece.audio (S,) float32 at 22050 Hz, piece.start_sample
        ...
    pipe.alignments             # (N, T) attention weights of every spoken frame, when done

``speed`` (0.5-2.0, default 1.0) changes the spoken rate without changing the pitch: the final mel
is resampled along time (linear interpolation between frames, frame j taken at position
j * speed) before the vocoder, so the chunk lasts about 1/speed as long. 1.0 leaves the mel as is.

Closing the iterator early (``pipe.close()`` or dropping it) stops all work for the chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, Optional

import numpy as np
import torch

from engines.base import Engine
from streamtts.constants import DEFAULT_SEED, MAX_SPEED, MIN_SPEED  # noqa: F401  (re-exported)
from streamtts.models.acoustic import prenet_masks
from streamtts.voices import resolve_voice, speaker_vector

# Measured on the 16 test sentences (2 voices): speech runs at 3.7-4.8 decoder frames per input
# symbol; 10 per symbol leaves room for slow speech but stops a bad alignment from babbling on.
FRAMES_PER_SYMBOL = 10
MIN_STEP_CAP = 50


def step_cap(n_symbols: int, max_decoder_steps: int) -> int:
    return min(max_decoder_steps, max(MIN_STEP_CAP, FRAMES_PER_SYMBOL * n_symbols))


@dataclass
class AudioPiece:
    audio: np.ndarray  # (S,) float32 in [-1, 1]
    start_sample: int  # index of audio[0] within the chunk's audio


@dataclass
class BlockSchedule:
    """Decoder steps per block: ``first``, then from ``second`` (at least ``first``) doubling up
    to ``rest``, then ``rest`` for good.

    The first block must exceed the postnet's and the vocoder's look-ahead (10 + 6 frames) to
    yield audio at all; 24 gives ~90 ms of first audio quickly. Growing blocks keep each block's
    compute shorter than the audio already emitted (no underrun at a real-time listener), while
    large later blocks cut the overlap the vocoder recomputes at window edges. Measured with
    onnx-int8 on the 16 test sentences (2-core CPU): rest 64 -> RTF 0.147, rest 128 -> 0.134,
    TTFA unchanged (25 ms); a first block of 16 delays first audio to the second block (189 ms)."""

    first: int = 24
    rest: int = 128
    second: int = 32

    def sizes(self) -> Iterator[int]:
        yield self.first
        size = max(self.second, self.first)
        while size < self.rest:
            yield size
            size *= 2
        while True:
            yield self.rest


@dataclass
class ChunkStream:
    engine: Engine
    ids: list[int]
    voice: str = "biaobei"
    seed: int = DEFAULT_SEED
    gate_threshold: Optional[float] = None
    schedule: BlockSchedule = field(default_factory=BlockSchedule)
    speed: float = 1.0

    def __post_init__(self) -> None:
        self.voice = resolve_voice(self.voice)
        if not MIN_SPEED <= self.speed <= MAX_SPEED:
            raise ValueError(f"speed must be within {MIN_SPEED}-{MAX_SPEED}, got {self.speed}")
        cfg = self.engine.acoustic
        if self.gate_threshold is None:
            self.gate_threshold = cfg.gate_threshold
        self.cap = step_cap(len(self.ids), cfg.max_decoder_steps)
        self.frames = np.zeros((0, cfg.n_mels), np.float32)  # decoder frames so far (N, 80)
        self.alignments = np.zeros((0, len(self.ids)), np.float32)
        self.stopped_by_gate = False
        self.decoder_steps = 0
        self._iter = self._run()

    def __iter__(self) -> Iterator[AudioPiece]:
        return self._iter

    def __next__(self) -> AudioPiece:
        return next(self._iter)

    def close(self) -> None:
        self._iter.close()

    @property
    def hop(self) -> int:
        return self.engine.vocoder_config.hop_length

    def _run(self) -> Iterator[AudioPiece]:
        eng, cfg, vcfg = self.engine, self.engine.acoustic, self.engine.vocoder_config
        masks = prenet_masks(cfg, self.cap, 1, torch.Generator().manual_seed(self.seed))[:, :, 0, :].numpy()
        memory = eng.encode(np.asarray(self.ids, np.int64), speaker_vector(self.voice))
        state = eng.initial_state(memory)
        r, ctx = eng.postnet_radius, eng.vocoder_context
        mel = np.zeros((cfg.n_mels, 0), np.float32)  # final mel frames computed so far
        smel = mel  # the same, time-scaled by 1/speed (mel itself at speed 1.0)
        audio_done = 0  # samples emitted
        done = False
        sizes = self.schedule.sizes()
        while not done:
            n = min(next(sizes), self.cap - self.decoder_steps)
            block = eng.decode(memory, state, masks[self.decoder_steps: self.decoder_steps + n], self.gate_threshold)
            state = block.state
            self.decoder_steps += n if not block.stopped else len(block.frames) + 1
            self.frames = np.concatenate((self.frames, block.frames))
            self.alignments = np.concatenate((self.alignments, block.alignments))
            done = block.stopped or self.decoder_steps >= self.cap
            self.stopped_by_gate = block.stopped
            total = len(self.frames)
            if total == 0:
                continue
            # postnet: final frames [len(mel), total - r) now, or up to the end when done
            lo = mel.shape[1]
            hi = total if done else total - r
            if hi > lo:
                ws = max(0, lo - r)
                out = eng.postnet(self.frames[ws:total].T, ws == 0, done)
                out_start = ws if ws == 0 else ws + r
                mel = np.concatenate((mel, out[:, lo - out_start: hi - out_start]), axis=1)
            if self.speed != 1.0:
                smel = _stretch(mel, smel, self.speed, done)
            else:
                smel = mel
            # vocoder: the tail of silence belongs to the utterance once it has ended
            source = np.concatenate((smel, np.full((cfg.n_mels, vcfg.tail_frames), vcfg.tail_value,
                                                   np.float32)), axis=1) if done else smel
            end_sample = smel.shape[1] * self.hop if done else (source.shape[1] - ctx) * self.hop
            if end_sample <= audio_done:
                continue
            ws = max(0, audio_done // self.hop - ctx)
            audio, first = eng.vocode(source[:, ws:], ws == 0, done, ws)
            if first > audio_done:  # a bug, not a user error: the context constant is too small
                raise RuntimeError(f"vocoder window starts at {first} > {audio_done}")
            piece = audio[audio_done - first: end_sample - first]
            yield AudioPiece(piece.astype(np.float32, copy=False), audio_done)
            audio_done += len(piece)


def _stretch(mel: np.ndarray, out: np.ndarray, speed: float, done: bool) -> np.ndarray:
    """Extend ``out`` (the time-scaled mel so far) with the frames that ``mel`` (final frames so
    far) now determines. Frame j is mel at position j * speed, linearly interpolated; it is known
    once both neighbours are. At the end the length is round(M / speed), the last positions
    clamped to the last frame (for speed <= 2 no frame computed earlier lies past that length)."""
    m = mel.shape[1]
    if m == 0:
        return out
    if done:
        k = max(1, int(np.floor(m / speed + 0.5)))
    else:
        k = int(np.floor((m - 1) / speed)) + 1 if m >= 2 else 0
    have = out.shape[1]
    if k <= have:
        return out
    pos = np.minimum(np.arange(have, k, dtype=np.float64) * speed, m - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, m - 1)
    w = (pos - lo).astype(np.float32)
    new = mel[:, lo] * (1.0 - w) + mel[:, hi] * w
    return np.concatenate((out, new.astype(np.float32)), axis=1)
