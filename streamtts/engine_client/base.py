"""The engine client: the one way a transport talks to an engine, wherever the engine runs.

A transport opens an utterance, sends it text commands, and reads its :class:`OutputStream`;
it asks for a stream slot through the client's :class:`Admission`. It never sees the scheduler,
the requests or the engine thread, so an implementation whose engine runs in another process or
on another machine plugs in without touching a transport::

    client = InProcessEngineClient(config)          # or a remote implementation
    client.start(on_ready)                          # loads the engine (in its own thread)
    async with client.admission.slot(queue=False):
        utt = client.open(UtteranceSpec(voice, seed, speed, api="http"), max_lead_s=2.0)
        utt.text(0, "你好。"); utt.end(0)
        while not isinstance(event := await utt.stream.get(), (Done, Failed)):
            write(event); utt.stream.delivered(event)
        utt.close()

Commands carry the generation of the text they belong to: ``cancel(g)`` starts generation ``g``,
and later text must carry it (the sans-I/O session keeps the count).
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Callable, Optional

from streamtts.constants import DEFAULT_SEED
from streamtts.engine_client.admission import Admission
from streamtts.engine_client.stream import FRAME_S, OutputStream


@dataclass(frozen=True)
class UtteranceSpec:
    """What the engine needs to know of an utterance before its text."""

    voice: str
    seed: int = DEFAULT_SEED
    speed: float = 1.0
    api: str = "lib"  # which front door it came through (metrics and logs)
    chunker_options: Optional[dict] = None  # the sentence chunker's settings (library callers)


class Utterance(abc.ABC):
    """One utterance's handle: commands in, its :attr:`stream` out. Commands may come from any
    thread; the stream is read by one consumer."""

    stream: OutputStream

    @abc.abstractmethod
    def text(self, generation: int, text: str) -> None:
        """More text (a fragment, or a parsed SSML document)."""

    @abc.abstractmethod
    def flush(self, generation: int) -> None:
        """Speak what is pending now, without waiting for a sentence's end."""

    @abc.abstractmethod
    def end(self, generation: int) -> None:
        """No more text: speak the rest, then the stream ends with Done."""

    @abc.abstractmethod
    def cancel(self, generation: int) -> None:
        """Drop everything not yet delivered; text of ``generation`` may follow."""

    @abc.abstractmethod
    def close(self) -> None:
        """The consumer is gone: free the utterance's work at once (idempotent)."""

    @property
    @abc.abstractmethod
    def busy(self) -> bool:
        """Audio of it is being made, or is on its way to the listener."""

    @property
    @abc.abstractmethod
    def computing(self) -> bool:
        """The engine has work of it left: text not yet synthesized (a chunk under way or waiting,
        text waiting for its sentence's end, commands not yet read). False once everything sent
        so far is audio, though that audio may still be on its way to the listener: what a stream
        slot counts. A consumer is woken (its stream's wake) when it turns False."""

    @property
    @abc.abstractmethod
    def pending_text(self) -> bool:
        """Text waits for its sentence's end before it is spoken."""


class EngineClient(abc.ABC):
    """Admission, utterances and the engine's health, for every transport."""

    admission: Admission
    sample_rate: int

    @abc.abstractmethod
    def start(self, on_ready: Optional[Callable[[], None]] = None) -> None:
        """Bring the engine up; ``on_ready`` is called (from any thread) once it serves or failed."""

    @abc.abstractmethod
    def stop(self, timeout: float = 10.0) -> None:
        """Stop the engine."""

    @property
    @abc.abstractmethod
    def ready(self) -> bool:
        """The engine serves."""

    @property
    @abc.abstractmethod
    def failure(self) -> Optional[str]:
        """Why the engine cannot serve (load failure, crash, stall), or None."""

    @property
    @abc.abstractmethod
    def capacity(self) -> int:
        """Streams the engine keeps at real time (configured, or measured)."""

    @property
    @abc.abstractmethod
    def name(self) -> str:
        """The engine's models, e.g. ``onnx-int8+melgan``."""

    @abc.abstractmethod
    def open(self, spec: UtteranceSpec, max_lead_s: float = 0.0, piece_s: float = FRAME_S) -> Utterance:
        """A new utterance. Its stream paces audio to ``max_lead_s`` ahead of the listener (0: no
        pacing) in pieces of at most ``piece_s``. An engine that has failed fails it at once
        (its stream ends with Failed ``engine_unavailable``)."""
