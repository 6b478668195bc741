"""One scheduler and one runner around an engine: the single orchestration that the library API
(:mod:`streamtts.speech`) and the server's worker thread both drive::

    core = SpeechEngine(create_engine("auto"), cache=None, config=SchedulerConfig())
    core.scheduler.add_request(req); core.scheduler.command(req, TEXT, 0, "你好。")
    while core.step(timeout=0.5) or running:   # one tick: schedule -> execute -> update
        ...

``step`` runs in one thread (the engine's); requests and commands may come from any thread.
"""

from __future__ import annotations

from typing import Callable, Optional

from engines.base import Engine
from streamtts.core.cache import PhraseCache
from streamtts.core.runner import Runner
from streamtts.core.scheduler import Plan, RunnerOutput, Scheduler, SchedulerConfig


def scheduler_config_for(engine: Engine, **overrides) -> SchedulerConfig:
    """Scheduler settings that match an engine's look-ahead and rates."""
    cfg = SchedulerConfig(**overrides)
    cfg.first_delay = engine.min_first_block
    cfg.sample_rate = engine.sample_rate
    cfg.hop_length = engine.vocoder.hop_length
    if cfg.blocks.first < cfg.first_delay:  # a first block this short would yield no audio
        cfg.blocks.first = cfg.first_delay
    return cfg


class SpeechEngine:
    def __init__(self, engine: Engine, cache: Optional[PhraseCache] = None,
                 config: Optional[SchedulerConfig] = None,
                 on_tick: Optional[Callable[[Plan, RunnerOutput], None]] = None,
                 scheduler: Optional[Scheduler] = None):
        self.engine = engine
        self.scheduler = scheduler or Scheduler()
        self.scheduler.config = config or scheduler_config_for(engine)
        self.runner = Runner(engine, cache)
        self.on_tick = on_tick

    def step(self, timeout: Optional[float] = 0.0) -> bool:
        """Run one tick; False when nothing was runnable within ``timeout`` seconds."""
        plan = self.scheduler.schedule(timeout)
        if plan is None:
            return False
        output = self.runner.execute(plan)
        self.scheduler.update(plan, output)
        if self.on_tick is not None:
            self.on_tick(plan, output)
        return True
