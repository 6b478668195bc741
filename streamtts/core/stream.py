"""Final mel in, exact vocoder windows out: the streaming bookkeeping of one chunk (numpy only).

The acoustic model hands over final mel frames as they become exact; this class says which
window of them the vocoder should run next so that every sample it emits equals the same sample of
whole-utterance synthesis (real context on interior sides, padding only at true edges)::

    ms = MelStream(n_mels=80, hop=256, context=6, tail_frames=10, tail_value=-11.5, speed=1.0)
    ms.add(mel (80, k), finished)          # as the acoustic model produces it
    ms.ready                               # frames of audio that can be made exact now
    w = ms.window(max_frames)              # engines.base.MelWindow or None (nothing ready)
    piece = ms.take(w, audio, first)       # the new exact samples; ms.samples_out advances
    ms.done                                # all audio of the chunk is out

``speed`` (0.5-2.0) changes the spoken rate without changing the pitch: the final mel is
resampled along time (frame j taken at position j * speed, linear interpolation) before the
vocoder, so the chunk lasts about 1/speed as long. 1.0 leaves the mel as is.
"""

from __future__ import annotations

import numpy as np

from engines.base import MelWindow


class MelStream:
    def __init__(self, n_mels: int, hop: int, context: int, tail_frames: int = 0,
                 tail_value: float = 0.0, speed: float = 1.0):
        self.n_mels, self.hop, self.context = n_mels, hop, context
        self.tail_frames, self.tail_value, self.speed = tail_frames, tail_value, speed
        self.mel = np.zeros((n_mels, 0), np.float32)  # final mel frames so far
        self.smel = self.mel  # the same, time-scaled by 1/speed (mel itself at speed 1.0)
        self.finished = False  # the acoustic model is done with this chunk
        self.frames_out = 0  # frames of audio emitted (samples_out = frames_out * hop)
        self._source = self.mel  # smel, plus the silent tail once finished

    def add(self, mel: np.ndarray, finished: bool) -> None:
        if mel.shape[1]:
            self.mel = np.concatenate((self.mel, mel), axis=1)
        self.finished = self.finished or finished
        self.smel = self.mel if self.speed == 1.0 else stretch(self.mel, self.smel, self.speed, self.finished)
        if self.finished and self.tail_frames:
            tail = np.full((self.n_mels, self.tail_frames), self.tail_value, np.float32)
            self._source = np.concatenate((self.smel, tail), axis=1)
        else:
            self._source = self.smel

    @property
    def samples_out(self) -> int:
        return self.frames_out * self.hop

    @property
    def _end(self) -> int:
        """Frames of audio that are exact now (the tail's own audio is never emitted)."""
        if self.finished:
            return self.smel.shape[1]
        return max(0, self._source.shape[1] - self.context)

    @property
    def ready(self) -> int:
        return max(0, self._end - self.frames_out)

    @property
    def done(self) -> bool:
        return self.finished and self.frames_out >= self.smel.shape[1]

    def window(self, max_frames: int | None = None) -> MelWindow | None:
        """The window that makes the next ``min(ready, max_frames)`` frames of audio exact."""
        n = self.ready if max_frames is None else min(self.ready, max_frames)
        if n <= 0:
            return None
        target = self.frames_out + n
        ws = max(0, self.frames_out - self.context)
        we = min(self._source.shape[1], target + self.context)
        at_end = self.finished and we == self._source.shape[1]
        return MelWindow(np.ascontiguousarray(self._source[:, ws:we]), ws == 0, at_end, ws)

    def take(self, window: MelWindow, audio: np.ndarray, first: int, max_frames: int | None = None) -> np.ndarray:
        """The exact new samples out of a window's audio; must follow ``window(max_frames)``."""
        n = self.ready if max_frames is None else min(self.ready, max_frames)
        lo, hi = self.samples_out, (self.frames_out + n) * self.hop
        if first > lo or first + len(audio) < hi:  # a bug: the context constant is too small
            raise RuntimeError(f"vocoder window covers [{first}, {first + len(audio)}), need [{lo}, {hi})")
        self.frames_out += n
        return audio[lo - first: hi - first]


def stretch(mel: np.ndarray, out: np.ndarray, speed: float, done: bool) -> np.ndarray:
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
