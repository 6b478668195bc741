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

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Union

import numpy as np

from engines.base import ModelPair
from streamtts.constants import DEFAULT_SEED, MAX_SPEED, MIN_SPEED
from streamtts.core.engine_core import EngineCore, scheduler_config_for
from streamtts.core.outputs import AudioOut, FailedOut, FinishedOut, PauseOut, SegmentOut
from streamtts.core.request import CLOSE, END, TEXT, Request, Status
from streamtts.core.scheduler import BlockSchedule
from streamtts.core.timing import CharTime
from streamtts.errors import StreamTTSError
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
                 chunker_options: Optional[dict] = None):
        self.engine = engine
        self.schedule = schedule or BlockSchedule(rest=128)
        self.chunker_options = chunker_options or {}
        self.sample_rate = engine.sample_rate
        # no consumer lag to wait for: a generator's caller takes each piece before the next tick
        self.core = EngineCore(engine, config=scheduler_config_for(
            engine, blocks=self.schedule, max_buffered_s=float("inf"), vocode_frames=1 << 30,
            max_lead_frames=1 << 30, drop_late_pauses=False))

    def speak(self, text: Union[str, Iterable[str]], voice: str = "biaobei", seed: int = DEFAULT_SEED,
              speed: float = 1.0) -> Iterator[Event]:
        """``speed`` (0.5-2.0) scales the spoken rate, pauses and char times included (pitch kept)."""
        voice = resolve_voice(voice)
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise ValueError(f"speed must be within {MIN_SPEED}-{MAX_SPEED}, got {speed}")
        fragments = [text] if isinstance(text, str) else text
        outputs: deque = deque()
        req = Request(voice, seed, float(speed), sink=outputs.append, chunker_options=self.chunker_options)
        sched = self.core.scheduler
        sched.add_request(req)
        position = 0  # samples emitted so far, pauses included
        start = 0  # where the current chunk's speech began
        sr = self.sample_rate
        try:
            for kind, *args in _commands(fragments):
                sched.command(req, kind, 0, *args)
                while self.core.step():
                    while outputs:
                        out = outputs.popleft()
                        if isinstance(out, PauseOut):
                            yield Audio(np.zeros(out.samples, np.float32), position)
                            position += out.samples
                            start = position
                        elif isinstance(out, AudioOut):
                            yield Audio(out.audio, position)
                            position += len(out.audio)
                        elif isinstance(out, SegmentOut):
                            seg = out.segment
                            t0 = 1000.0 * start / sr
                            yield Segment(seg.index, seg.text, seg.normalized, start, position,
                                          [CharTime(c, t0 + s, t0 + e) for c, s, e in seg.chars])
                            start = position
                        elif isinstance(out, FailedOut):
                            raise SynthesisError(out.message)
                        elif isinstance(out, FinishedOut):
                            return
        finally:
            if req.status not in (Status.FINISHED, Status.FAILED):  # stopped early: free its work
                sched.command(req, CLOSE)
                self.core.step()  # frees the request's runner state now

    def synthesize(self, text: str, voice: str = "biaobei", seed: int = DEFAULT_SEED) -> np.ndarray:
        """The whole utterance as one array (the streamed pieces, concatenated)."""
        pieces = [e.audio for e in self.speak(text, voice, seed) if isinstance(e, Audio)]
        return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def _commands(fragments: Iterable[str]) -> Iterator[tuple]:
    for fragment in fragments:
        yield (TEXT, fragment)
    yield (END,)
