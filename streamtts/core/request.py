"""Request state: one session's (or one call's) synthesis, as explicit data the scheduler reads.

A request takes text over time (``TEXT``/``FLUSH``/``END`` commands, tagged with a generation),
cuts it into chunks with the sentence chunker (keeping the words of its core's user lexicon
whole: the scheduler gives it the lexicon when it admits it), and speaks the chunks one after
another. The scheduler owns everything here except the inbox, which any thread may append to,
and the flow-control counters, which the consumer updates as it takes audio::

    req = Request(voice="biaobei", seed=0, speed=1.0, sink=post)   # post(output) in the engine thread
    scheduler.add_request(req)
    scheduler.command(req, TEXT, generation, "你好。")             # TEXT / FLUSH / END / CANCEL / CLOSE
    req.delivered(seconds)                                         # the consumer wrote it to its transport
"""

from __future__ import annotations

import enum
import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Optional

from streamtts.text.chunker import Chunk
from streamtts.text.lexicon import Lexicon
from streamtts.text.markup_chunker import MarkupChunker

TEXT, FLUSH, END, CANCEL, CLOSE = "text", "flush", "end", "cancel", "close"

_ids = itertools.count(1)


class Status(enum.Enum):
    IDLE = "idle"  # admitted, no text to speak right now
    RUNNING = "running"  # has work the scheduler may plan
    PAUSED = "paused"  # has work, but its consumer holds too much unplayed audio
    FINISHED = "finished"  # everything up to END was spoken, or closed
    FAILED = "failed"


@dataclass
class ChunkProgress:
    """The scheduler's view of the chunk being spoken (counts only; the arrays live in the runner)."""

    chunk: Chunk
    index: int  # chunk number within the request
    begun: bool = False  # the runner has started it (phonemized, looked up, encoded)
    blocks: int = 0  # decoder blocks run
    acoustic_done: bool = False  # no more decoding needed
    ready: int = 0  # frames of audio the runner can make exact now
    audio_frames: int = 0  # frames of audio emitted


@dataclass(eq=False)
class Request:
    voice: str
    seed: int
    speed: float
    sink: Callable[[object], None]
    api: str = "lib"
    chunker_options: dict = field(default_factory=dict)
    id: int = field(default_factory=lambda: next(_ids))

    def __post_init__(self) -> None:
        self.inbox: deque = deque()  # commands from other threads (deque append/popleft are atomic)
        # plain text fragments, or whole SSML documents (streamtts.text.ssml) as TEXT commands
        self.chunker = MarkupChunker(self.speed, **self.chunker_options)
        self.chunks: deque[Chunk] = deque()
        self.current: Optional[ChunkProgress] = None
        self.chunk_count = 0
        self.generation = 0
        self.ending = False
        # when the first chunk's text began to wait for its end (the scheduler may cut it early),
        # and whether a cut was tried on the text there is now
        self.first_text_at: Optional[float] = None
        self.cut_tried = False
        # Whether it has text left to synthesize, as the scheduler last planned it, for the
        # consumer's thread: commands sent (consumer) and read (scheduler); `computing` and
        # `seen` (commands it accounts for) are written by the scheduler, in that order.
        self.sent = 0
        self.read = 0
        self.computing = False
        self.seen = 0
        self.on_idle: Optional[Callable[[], None]] = None  # called when `computing` turns False
        self.status = Status.IDLE
        self.pause = 0  # samples of silence owed before the next chunk
        self.t_ref = time.monotonic()  # deadline = t_ref + produced_s: when its listener runs dry
        self.produced_s = 0.0
        self._lock = threading.Lock()
        self._inflight_s = 0.0  # posted to the sink, not yet written to its transport

    def use_lexicon(self, lexicon: Optional[Lexicon]) -> None:
        """Cut text keeping ``lexicon``'s words whole (the engine core's; None: no user lexicon).
        Called before any text reaches the chunker."""
        if lexicon is not self.chunker.lexicon:
            self.chunker = MarkupChunker(self.speed, lexicon=lexicon, **self.chunker_options)

    @property
    def has_work(self) -> bool:
        return self.current is not None or bool(self.chunks) or self.ending

    @property
    def deadline(self) -> float:
        return self.t_ref + self.produced_s

    # -- flow control (any thread) ------------------------------------------------------------
    def delivered(self, seconds: float) -> None:
        with self._lock:
            self._inflight_s -= seconds

    @property
    def backlog_s(self) -> float:
        with self._lock:
            return self._inflight_s

    def posted(self, seconds: float) -> None:
        with self._lock:
            self._inflight_s += seconds
