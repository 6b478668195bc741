"""Text in, audio out, as a stream: the library API over the engine core.

This is the stream-first API (CLI, benchmark, scripts); it drives the same scheduler and runner
as the server (:mod:`streamtts.core`), one request at a time::

    speaker = Speaker(create_models("auto"))
    for event in speaker.speak("你好，今天天气很好。", voice="biaobei"):
        if isinstance(event, Audio):    event.audio (S,) float32 @ 22050 Hz
        elif isinstance(event, Segment): event.text, event.start_sample, event.end_sample, event.chars

``speak`` also takes an iterable of text fragments (e.g. LLM tokens): each chunk is synthesized as
soon as the chunker knows it is complete. Closing the generator stops all work at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Optional, Union

import numpy as np

from engines.base import ModelPair
from streamtts.constants import DEFAULT_SEED, MAX_SPEED, MIN_SPEED
from streamtts.core.engine_core import EngineCore, scheduler_config_for
from streamtts.core.scheduler import BlockSchedule
from streamtts.core.timing import CharTime
from streamtts.engine_client.base import UtteranceSpec
from streamtts.engine_client.inprocess import InProcessUtterance
from streamtts.engine_client.stream import Audio as StreamAudio
from streamtts.engine_client.stream import Done, Failed, OutputStream
from streamtts.engine_client.stream import Segment as StreamSegment
from streamtts.errors import StreamTTSError
from streamtts.text.lexicon import Lexicon
from streamtts.voices import resolve_voice


@dataclass
class Audio:
    audio: np.ndarray  # (S,) float32 in [-1, 1]
    start_sample: int  # position of audio[0] in the whole utterance


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


class SynthesisError(StreamTTSError):
    """Synthesis of a chunk failed inside the engine."""

    code = "internal"


class Speaker:
    """Speaks text with one engine. Not thread-safe: one ``speak`` at a time per Speaker."""

    def __init__(self, engine: ModelPair, schedule: Optional[BlockSchedule] = None,
                 chunker_options: Optional[dict] = None, lexicon: Optional[Lexicon] = None):
        """``lexicon``: the user lexicon (``Lexicon.load("words.tsv")``) its text is read with."""
        self.engine = engine
        self.schedule = schedule or BlockSchedule(rest=128)
        self.chunker_options = chunker_options or {}
        self.sample_rate = engine.sample_rate
        # no consumer lag to wait for: a generator's caller takes each piece before the next tick
        self.core = EngineCore(engine, config=scheduler_config_for(
            engine, blocks=self.schedule, max_buffered_s=float("inf"), vocode_frames=1 << 30,
            max_lead_frames=1 << 30, drop_late_pauses=False), lexicon=lexicon)

    def speak(self, text: Union[str, Iterable[str]], voice: str = "biaobei", seed: int = DEFAULT_SEED,
              speed: float = 1.0) -> Iterator[Event]:
        """``speed`` (0.5-2.0) scales the spoken rate, pauses and char times included (pitch kept)."""
        voice = resolve_voice(voice)
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed must be within {MIN_SPEED}-{MAX_SPEED}, got {speed}")
        fragments = [text] if isinstance(text, str) else text
        spec = UtteranceSpec(voice, seed, float(speed), chunker_options=self.chunker_options)
        utt = InProcessUtterance(self.core.scheduler, spec, OutputStream(self.sample_rate))
        stream, sr = utt.stream, self.sample_rate
        try:
            for command in _commands(utt, fragments):
                command()
                for event in stream.drain(self.core.step):
                    if isinstance(event, StreamAudio):
                        yield Audio(event.samples, event.position)
                    elif isinstance(event, StreamSegment):
                        t0 = 1000.0 * event.start / sr
                        yield Segment(event.index, event.text, event.normalized, event.start, event.end,
                                      [CharTime(c, t0 + s, t0 + e) for c, s, e in event.chars])
                    elif isinstance(event, Failed):
                        raise SynthesisError(event.message)
                    elif isinstance(event, Done):
                        return
        finally:
            if not stream.ended:  # stopped early: free its work
                utt.close()
                self.core.step()  # frees the request's runner state now

    def synthesize(self, text: str, voice: str = "biaobei", seed: int = DEFAULT_SEED) -> np.ndarray:
        """The whole utterance as one array (the streamed pieces, concatenated)."""
        pieces = [e.audio for e in self.speak(text, voice, seed) if isinstance(e, Audio)]
        return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def _commands(utt: InProcessUtterance, fragments: Iterable[str]) -> Iterator[Callable[[], None]]:
    for fragment in fragments:
        yield lambda fragment=fragment: utt.text(0, fragment)
    yield lambda: utt.end(0)
