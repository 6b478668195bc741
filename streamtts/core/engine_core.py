"""One scheduler and one runner around an engine: the single orchestration that the library API
(:mod:`streamtts.speaker`) and the server's worker thread both drive::

    core = EngineCore(create_engine("auto"), cache=None, config=SchedulerConfig(), lexicon=lex)
    core.scheduler.add_request(req); core.scheduler.command(req, TEXT, 0, "你好。")
    while core.step(timeout=0.5) or running:   # one tick: schedule -> execute -> update
        ...

``step`` runs in one thread (the engine's); requests and commands may come from any thread.
``lexicon`` (``streamtts.text.lexicon``; None: none) is the core's user lexicon: every request's
chunker keeps its words whole and the runner reads the chunks with it.
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

from engines.base import ModelPair
from streamtts.core.cache import PhraseCache
from streamtts.core.runner import Runner
from streamtts.core.scheduler import Plan, RunnerOutput, Scheduler, SchedulerConfig
from streamtts.text.lexicon import Lexicon

log = logging.getLogger(__name__)


def scheduler_config_for(engine: ModelPair, **overrides) -> SchedulerConfig:
    """Scheduler settings that match an engine's look-ahead and rates."""
    cfg = SchedulerConfig(**overrides)
    cfg.first_delay = engine.min_first_block
    cfg.sample_rate = engine.sample_rate
    cfg.hop_length = engine.vocoder.hop_length
    if cfg.blocks.first < cfg.first_delay:  # a first block this short would yield no audio
        cfg.blocks.first = cfg.first_delay
    return cfg


class EngineCore:
    def __init__(self, engine: ModelPair, cache: Optional[PhraseCache] = None,
                 config: Optional[SchedulerConfig] = None,
                 on_tick: Optional[Callable[[Plan, RunnerOutput], None]] = None,
                 scheduler: Optional[Scheduler] = None, lexicon: Optional[Lexicon] = None):
        self.engine = engine
        self.lexicon = lexicon
        self.scheduler = scheduler or Scheduler()
        self.scheduler.config = config or scheduler_config_for(engine)
        self.scheduler.lexicon = lexicon  # given to each request it admits, for its chunker
        self.runner = Runner(engine, cache, lexicon)
        self.on_tick = on_tick
        self.busy_since: Optional[float] = None  # monotonic start of the tick running now (watchdog)

    def step(self, timeout: Optional[float] = 0.0) -> bool:
        """Run one tick; False when nothing was runnable within ``timeout`` seconds.

        An exception in executing or routing a plan fails the plan's requests only (``internal``);
        one in planning itself (a policy bug: the scheduler isolates each request's part) is
        raised, for the caller to decide whether the engine can go on."""
        plan = self.scheduler.schedule(timeout)
        if plan is None:
            return False
        self.busy_since = time.monotonic()
        try:
            output = self.runner.execute(plan)
            self.scheduler.update(plan, output)
        except Exception as exc:
            log.exception("engine tick failed")
            self.scheduler.fail_plan(plan, "internal", f"internal error in synthesis ({type(exc).__name__})")
            return True
        finally:
            self.busy_since = None
        if self.on_tick is not None:
            self.on_tick(plan, output)
        return True
