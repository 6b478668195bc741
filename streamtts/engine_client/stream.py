"""The output stream of one utterance: the only place where the engine core's outputs become what
a transport sends. Every consumer (the WebSocket session, the OpenAI handler, Wyoming, ``Speaker``,
warm-up and calibration, the benchmarks) reads the same events, cut and paced the same way::

    stream = OutputStream(sample_rate=22050, max_lead_s=2.0, on_delivered=utterance.delivered)
    stream.push(out)               # any thread: what the engine core posts (the utterance's sink)
    event = stream.next()          # consumer: Audio, Segment, Done or Failed; None: nothing due
    stream.wait_s()                # > 0: audio is held back by pacing for this long
    ...write the event...
    stream.delivered(event)        # it left this process: flow control and the listener's clock
    stream.cancel(generation)      # what older generations still hold is dropped, pacing restarts

    event = await stream.get()     # the async face (wakes on push and on the pacing clock)
    for event in stream.drain(step): ...   # the sync face: ``step()`` runs the engine meanwhile

Rules every transport shares:

* **Pieces.** Audio (and the silence between chunks) comes in pieces of at most ``piece_s``, so
  pacing keeps its lead to a piece, and a cached sentence that arrives as one array still streams.
* **Pacing.** A piece is due only while the listener, modelled as a player that starts at the
  first audio and plays in real time (:class:`streamtts.audio.pacing.Pacer`), stays within
  ``max_lead_s`` of what was delivered; ``max_lead_s`` 0 turns pacing off.
* **Delivered** means written to the transport: the consumer calls :meth:`delivered` after its
  write returns. What is posted and not yet delivered (queued here, or in a transport's buffer)
  is the utterance's backlog, which pauses its synthesis at the scheduler's bound. Pieces dropped
  by a cancel count as delivered: nobody will take them.
* **Generations.** A cancel starts a new generation; outputs of older ones are dropped, here or
  when they arrive later.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Union

import numpy as np

from streamtts.audio.pacing import Pacer
from streamtts.core.outputs import AudioOut, FailedOut, FinishedOut, PauseOut, SegmentOut

FRAME_S = 0.25  # longest piece of audio handed to a transport, in seconds


@dataclass
class Audio:
    """A piece of speech, or of silence between chunks (``samples`` zeros, ``silence`` True)."""

    generation: int
    samples: np.ndarray  # (S,) float32 at the engine's rate
    position: int  # samples of this stream before it, silences included
    silence: bool = False
    compute_s: float = 0.0  # engine time attributed to it
    seconds: float = 0.0


@dataclass
class Segment:
    """A chunk's audio is complete: its text and per-character times."""

    generation: int
    index: int  # the chunk's number within the utterance
    text: str  # the chunk as the client sent it
    normalized: str  # what was spoken (the characters of ``chars``)
    start: int  # stream position of its first sample (after the silence before it)
    end: int  # stream position after its last sample
    chars: list[tuple[str, float, float]] = field(default_factory=list)  # (char, start_ms, end_ms) from ``start``
    compute_s: float = 0.0


@dataclass
class Done:
    """Everything up to the utterance's end was spoken."""

    generation: int


@dataclass
class Failed:
    """The utterance failed in the engine (a typed code: engine_unavailable, internal, ...)."""

    generation: int
    code: str
    message: str


Event = Union[Audio, Segment, Done, Failed]


class OutputStream:
    def __init__(self, sample_rate: int, max_lead_s: float = 0.0, piece_s: float = FRAME_S,
                 on_delivered: Optional[Callable[[float], None]] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.sample_rate = sample_rate
        self.piece = max(1, int(piece_s * sample_rate))
        self.pacer = Pacer(max_lead_s)
        self.on_delivered = on_delivered  # the utterance's flow report (seconds written)
        self.clock = clock
        self.generation = 0
        self.position = 0  # samples handed out so far, silences included
        self.ended = False  # Done or Failed was handed out
        self._inbox: deque = deque()  # core outputs, appended by any thread
        self._events: deque[Event] = deque()  # cut into pieces, in order, not yet handed out
        self._segment_start: Optional[int] = None  # where the current chunk's speech began
        self._wake: Optional[asyncio.Event] = None
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self.notify: Optional[Callable[[], None]] = None  # called after every push (any thread)

    # ---- producer (any thread) ----------------------------------------------------------------
    def push(self, out) -> None:
        """An output of the engine core (``AudioOut``, ``SegmentOut``, ``PauseOut``, ``FinishedOut``
        or ``FailedOut``), from whichever thread runs the engine."""
        self._inbox.append(out)
        self._signal()  # raises once the loop is closed: the engine takes the consumer as gone

    def poke(self) -> None:
        """Wake the consumer without an output (any thread): the utterance's state changed."""
        try:
            self._signal()
        except RuntimeError:  # the loop is closed: nobody to wake
            pass

    def _signal(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._wake.set)
        if self.notify is not None:
            self.notify()

    # ---- consumer -------------------------------------------------------------------------------
    def next(self, now: Optional[float] = None) -> Optional[Event]:
        """The next event, or None: nothing has come, or audio is held back by pacing."""
        self._take_inbox()
        if not self._events:
            return None
        head = self._events[0]
        if isinstance(head, Audio) and self.wait_s(now) > 0:
            return None
        self._events.popleft()
        if isinstance(head, (Done, Failed)):
            self.ended = True
        return head

    def wait_s(self, now: Optional[float] = None) -> float:
        """Seconds until the next audio piece is due (0: the next event may go now, or none is queued)."""
        self._take_inbox()
        if not self._events or not isinstance(self._events[0], Audio):
            return 0.0
        return self.pacer.wait_s(self.clock() if now is None else now, self._events[0].seconds)

    def delivered(self, event: Event, now: Optional[float] = None) -> None:
        """``event`` was written to the transport: the listener's clock and flow control advance."""
        if isinstance(event, Audio):
            if event.generation == self.generation:  # a cancel since: the listener dropped it
                self.pacer.sent(event.seconds, self.clock() if now is None else now)
            self._report(event.seconds)

    def cancel(self, generation: int) -> None:
        """A cancel: drop what older generations hold; the listener drops what it had, so pacing
        starts again from nothing."""
        self.generation = generation
        self._take_inbox()
        self.pacer.reset()
        self._segment_start = None

    @property
    def pending(self) -> bool:
        """Events are queued here (due or held back by pacing)."""
        self._take_inbox()
        return bool(self._events)

    @property
    def queued_s(self) -> float:
        """Seconds of audio queued here, not yet handed out."""
        self._take_inbox()
        return sum(e.seconds for e in self._events if isinstance(e, Audio))

    # ---- async face -------------------------------------------------------------------------------
    def bind(self, loop: asyncio.AbstractEventLoop, wake: Optional[asyncio.Event] = None) -> asyncio.Event:
        """Wake ``wake`` (an asyncio.Event of ``loop``) on every push; returns it."""
        self._loop, self._wake = loop, wake or asyncio.Event()
        return self._wake

    async def get(self) -> Event:
        """The next event, waiting for the engine and for the pacing clock (needs :meth:`bind`)."""
        if self._wake is None:
            self.bind(asyncio.get_running_loop())
        while True:
            self._wake.clear()
            event = self.next()
            if event is not None:
                return event
            wait = self.wait_s()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=wait or None)
            except asyncio.TimeoutError:
                pass

    # ---- sync face --------------------------------------------------------------------------------
    def drain(self, step: Callable[[], bool]) -> Iterator[Event]:
        """Events as they come, in the calling thread: ``step()`` runs the engine (one tick; False
        when it had nothing to do) while none is due. Ends after Done or Failed, or when the engine
        has nothing more to do."""
        while not self.ended:
            event = self.next()
            if event is not None:
                yield event
                self.delivered(event)
                continue
            if not step() and not self.pending:
                return
            wait = self.wait_s()
            if wait > 0:
                time.sleep(wait)

    # ---- cutting ------------------------------------------------------------------------------
    def _report(self, seconds: float) -> None:
        if self.on_delivered is not None and seconds > 0:
            self.on_delivered(seconds)

    def _take_inbox(self) -> None:
        while self._inbox:
            self._cut(self._inbox.popleft())
        if self._events and self._events[0].generation != self.generation:
            self._drop_old()

    def _drop_old(self) -> None:
        kept: deque[Event] = deque()
        for event in self._events:
            if event.generation == self.generation:
                kept.append(event)
            elif isinstance(event, Audio):
                self._report(event.seconds)  # never sent: taken off the backlog
        self._events = kept

    def _cut(self, out) -> None:
        sr = self.sample_rate
        if isinstance(out, FailedOut):  # the utterance as a whole failed, whatever its generation
            self._events.append(Failed(self.generation, out.code, out.message))
            return
        if out.generation != self.generation:  # made for text that was cancelled since
            if isinstance(out, (AudioOut, PauseOut)):
                self._report((len(out.audio) if isinstance(out, AudioOut) else out.samples) / sr)
            return
        if isinstance(out, (AudioOut, PauseOut)):
            silence = isinstance(out, PauseOut)
            n = out.samples if silence else len(out.audio)
            if silence:
                self._segment_start = None
            elif self._segment_start is None:
                self._segment_start = self.position
            for i in range(0, n, self.piece):
                k = min(self.piece, n - i)
                samples = np.zeros(k, np.float32) if silence else out.audio[i:i + k]
                share = 0.0 if silence else out.compute_s * k / n
                self._events.append(Audio(out.generation, samples, self.position, silence, share, k / sr))
                self.position += k
        elif isinstance(out, SegmentOut):
            seg = out.segment
            start = self.position if self._segment_start is None else self._segment_start
            self._events.append(Segment(out.generation, seg.index, seg.text, seg.normalized, start,
                                        self.position, list(seg.chars), out.compute_s))
            self._segment_start = None
        elif isinstance(out, FinishedOut):
            self._events.append(Done(out.generation))
