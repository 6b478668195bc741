"""The worker thread: owns the engine, runs the scheduler. Inference never runs on the event loop.

    worker = Worker(scheduler, engine_name="auto", prewarm=Path("phrases.txt"), torch_threads=1)
    worker.start()            # loads the engine (unless the scheduler has one), warms up, prewarms
    worker.ready.is_set()     # True once it serves; worker.failure holds the error if loading failed
    worker.stop()             # ends the thread (joins it)
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Optional

from engines.base import Engine
from streamtts.chunker import preload, split_text
from streamtts.constants import DEFAULT_SEED
from streamtts.errors import TextError
from streamtts.server.scheduler import Scheduler
from streamtts.text import warm_up
from streamtts.voices import DEFAULT_VOICE

log = logging.getLogger(__name__)


def load_engine(name: str) -> Engine:
    """An engine by name: engines.registry when present, else the torch engine (torch / auto)."""
    try:
        from engines.registry import create_engine
    except ImportError:  # the registry is optional: the torch engine always works
        if name not in ("torch", "auto"):
            raise ValueError(f"engine {name!r} needs engines.registry; use torch") from None
        from engines.torch_engine import TorchEngine

        return TorchEngine()
    return create_engine(name)


def read_prewarm(path: Path) -> list[str]:
    """Phrases of a prewarm file: one a line, blank lines and lines starting with # skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


class Worker:
    def __init__(self, scheduler: Scheduler, engine_name: str = "auto", prewarm: Optional[Path] = None,
                 torch_threads: int = 0):
        self.scheduler = scheduler
        self.engine_name = engine_name
        self.prewarm = prewarm
        self.torch_threads = torch_threads
        self.ready = threading.Event()
        self.failure: Optional[str] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="streamtts-worker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self.scheduler.wake()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _main(self) -> None:
        try:
            self._load()
        except Exception as exc:  # the server stays up and says so on /ready
            log.exception("engine failed to load")
            self.failure = f"{type(exc).__name__}: {exc}"
            return
        self.ready.set()
        if self.scheduler.metrics is not None:
            self.scheduler.metrics.ready.set(1)
        while not self._stop.is_set():
            job = self.scheduler.schedule(timeout=0.5)
            if job is not None and not self._stop.is_set():
                self.scheduler.step(job)

    def _load(self) -> None:
        sched = self.scheduler
        if self.torch_threads > 0:
            import torch

            torch.set_num_threads(self.torch_threads)  # process-wide; the worker is torch's only user
        if sched.engine is None:
            sched.engine = load_engine(self.engine_name)
        warm_up()  # dictionaries of the text frontend (about a second)
        preload()  # the chunker's word segmenter
        cache, sched.cache = sched.cache, None
        try:
            sched.synthesize_chunk("你好。", DEFAULT_VOICE, DEFAULT_SEED, 1.0)  # first-call costs, not cached
        finally:
            sched.cache = cache
        if self.prewarm is not None:
            phrases = read_prewarm(self.prewarm)
            for phrase in phrases:
                for chunk in split_text(phrase):
                    try:
                        sched.synthesize_chunk(chunk.text, DEFAULT_VOICE, DEFAULT_SEED, 1.0)
                    except TextError:
                        log.warning("prewarm: nothing speakable in %r", chunk.text)
            log.info("prewarmed %d phrases (%d cache entries)", len(phrases), len(cache or ()))
