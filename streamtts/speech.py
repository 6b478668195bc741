"""Text in, audio out, as a stream: chunker -> frontend -> chunk-exact synthesis -> pieces.

This is the stream-first API every front end uses (CLI, server, benchmark); writing a file is a
thin wrapper around it::

    speaker = Speaker(engine)
    for event in speaker.speak("你好，今天天气很好。", voice="biaobei"):
        if isinstance(event, Audio):    event.audio (S,) float32 @ 22050 Hz
        elif isinstance(event, Segment): event.text, event.start_sample, event.end_sample, event.chars

``speak`` also takes an iterable of text fragments (e.g. LLM tokens): each chunk is synthesized as
soon as the chunker knows it is complete. Closing the generator stops all work at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Union

import numpy as np

from engines.base import Engine
from streamtts.chunker import Chunk, SentenceChunker
from streamtts.errors import NoSpeakableTextError
from streamtts.pipeline import DEFAULT_SEED, BlockSchedule, ChunkStream
from streamtts.text import Phonemized, phonemize
from streamtts.voices import resolve_voice


@dataclass
class Audio:
    audio: np.ndarray  # (S,) float32 in [-1, 1]
    start_sample: int  # position of audio[0] in the whole utterance


@dataclass
class CharTime:
    char: str
    start_ms: float
    end_ms: float


@dataclass
class Segment:
    """Emitted after a chunk's last audio piece."""

    index: int
    text: str  # the chunk as given
    normalized: str  # what was spoken
    start_sample: int
    end_sample: int  # excludes the pause that follows
    chars: list[CharTime] = field(default_factory=list)


Event = Union[Audio, Segment]


def pause_samples(pause_ms: int, speed: float, sample_rate: int) -> int:
    """Samples of silence after a chunk: its punctuation's pause, scaled with the speaking rate."""
    return int(sample_rate * pause_ms / 1000 / speed)


def char_times(ph: Phonemized, alignments: np.ndarray, start_ms: float, frame_ms: float) -> list[CharTime]:
    """Per-character times from the attention alignment (frames x ids): each frame is given to the
    character of the id it attends to most; a character spans its first to last such frame, and
    characters never overlap or go back in time."""
    if len(alignments) == 0:
        return []
    owner = [ph.char_index[i] for i in alignments.argmax(axis=1)]
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for f, c in enumerate(owner):
        if c >= 0:
            first.setdefault(c, f)
            last[c] = f
    out: list[CharTime] = []
    prev_end = 0
    for c in sorted(first):
        if not ph.normalized[c].isalnum():  # punctuation has ids but is not a spoken char
            continue
        s = max(first[c], prev_end)
        e = max(last[c] + 1, s + 1)
        prev_end = e
        out.append(CharTime(ph.normalized[c], start_ms + s * frame_ms, start_ms + e * frame_ms))
    return out


class Speaker:
    """Speaks text with one engine. Not thread-safe: one ``speak`` at a time per engine."""

    def __init__(self, engine: Engine, schedule: Optional[BlockSchedule] = None,
                 chunker_options: Optional[dict] = None):
        self.engine = engine
        self.schedule = schedule or BlockSchedule()
        self.chunker_options = chunker_options or {}
        self.sample_rate = engine.vocoder_config.sample_rate

    def speak(self, text: Union[str, Iterable[str]], voice: str = "biaobei", seed: int = DEFAULT_SEED,
              gate_threshold: Optional[float] = None, speed: float = 1.0) -> Iterator[Event]:
        """``speed`` (0.5-2.0) scales the spoken rate, pauses and char times included (pitch kept)."""
        voice = resolve_voice(voice)
        fragments = [text] if isinstance(text, str) else text
        chunker = SentenceChunker(**self.chunker_options)
        position = 0  # samples emitted so far, pauses included
        pending_pause = 0
        for chunk in self._chunks(chunker, fragments):
            try:
                ph = phonemize(chunk.text)
            except NoSpeakableTextError:
                continue
            if pending_pause:
                yield Audio(np.zeros(pending_pause, np.float32), position)
                position += pending_pause
            stream = ChunkStream(self.engine, ph.ids, voice, seed, gate_threshold, self.schedule, speed=speed)
            start = position
            try:
                for piece in stream:
                    yield Audio(piece.audio, position)
                    position += len(piece.audio)
            finally:
                stream.close()
            frame_ms = 1000.0 * stream.hop / self.sample_rate / speed
            yield Segment(chunk.index, chunk.text, ph.normalized, start, position,
                          char_times(ph, stream.alignments, 1000.0 * start / self.sample_rate, frame_ms))
            pending_pause = pause_samples(chunk.pause_ms, speed, self.sample_rate)

    @staticmethod
    def _chunks(chunker: SentenceChunker, fragments: Iterable[str]) -> Iterator[Chunk]:
        for fragment in fragments:
            yield from chunker.push(fragment)
        yield from chunker.flush()

    def synthesize(self, text: str, voice: str = "biaobei", seed: int = DEFAULT_SEED) -> np.ndarray:
        """The whole utterance as one array (the streamed pieces, concatenated)."""
        pieces = [e.audio for e in self.speak(text, voice, seed) if isinstance(e, Audio)]
        return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
