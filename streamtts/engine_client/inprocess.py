"""The in-process engine client: the engine core runs in a thread of this process (the engine
thread); transports reach it only through :class:`InProcessEngineClient` and its utterances.

    client = InProcessEngineClient(config, cache=cache, metrics=metrics, models=None)  # None: per config
    client.start(on_ready)    # engine thread: loads, warms up, prewarms the cache, measures capacity, serves
    client.ready              # True once it serves; client.failure holds why it cannot (load, crash, stall)
    client.capacity           # streams it can keep at real time now (configured, or live: capacity.py)
    utt = client.open(UtteranceSpec("biaobei", api="ws"), max_lead_s=2.0)
    client.stop()             # ends the engine thread (joins it)

Inference never runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from engines.base import ModelPair
from streamtts.constants import DEFAULT_SEED, NATIVE_RATE
from streamtts.core.cache import PhraseCache
from streamtts.core.engine_core import EngineCore, scheduler_config_for
from streamtts.core.request import CANCEL, CLOSE, END, FLUSH, TEXT, Request, Status
from streamtts.core.scheduler import BlockSchedule, Plan, RunnerOutput, Scheduler
from streamtts.text import warm_up
from streamtts.text.lexicon import Lexicon
from streamtts.engine_client.admission import Admission
from streamtts.engine_client.capacity import CapacityEstimator, CapacityPolicy, Change, Measure, load_of
from streamtts.engine_client.base import EngineClient, Utterance, UtteranceSpec
from streamtts.engine_client.stream import FRAME_S, Audio, Done, Failed, OutputStream
from streamtts.voices import DEFAULT_VOICE

log = logging.getLogger(__name__)

# Capacity: streams whose summed compute fits this share of the engine thread, leaving room for
# the event loop, the text frontend and bursts. Calibrated at start at two batch sizes (one stream,
# then several at once: batching makes each cheaper than alone), then followed live (capacity.py).
CAPACITY_UTILIZATION = 0.8
CALIBRATION_TEXT = "今天天气很好，我们一起去公园散步吧。欢迎使用流式语音合成。"
CALIBRATION_STREAMS = 4
# Ticks in a row that raise out of planning (a policy bug) before the engine is declared broken.
MAX_FAILED_TICKS = 3


def load_engine(name: str, vocoder: str = "auto") -> ModelPair:
    from engines.registry import create_models

    return create_models(name, vocoder=vocoder)


def read_prewarm(path: Path) -> list[str]:
    """Phrases of a prewarm file: one a line, blank lines and lines starting with # skipped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


class InProcessUtterance(Utterance):
    """An utterance of an engine core in this process: a core request whose sink is its stream."""

    def __init__(self, scheduler: Scheduler, spec: UtteranceSpec, stream: OutputStream):
        self.scheduler, self.stream = scheduler, stream
        self.request = Request(spec.voice, spec.seed, spec.speed, sink=stream.push, api=spec.api,
                               chunker_options=spec.chunker_options or {})
        stream.on_delivered = self._delivered
        self.request.on_idle = stream.poke
        self._closed = False
        scheduler.add_request(self.request)

    def text(self, generation: int, text: str) -> None:
        self.scheduler.command(self.request, TEXT, generation, text)

    def flush(self, generation: int) -> None:
        self.scheduler.command(self.request, FLUSH, generation)

    def end(self, generation: int) -> None:
        self.scheduler.command(self.request, END, generation)

    def cancel(self, generation: int) -> None:
        self.stream.cancel(generation)
        self.scheduler.command(self.request, CANCEL, generation)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.scheduler.command(self.request, CLOSE)

    @property
    def busy(self) -> bool:
        req = self.request
        return req.has_work or req.backlog_s > _EPSILON_S or bool(req.inbox) or self.stream.pending

    @property
    def computing(self) -> bool:
        req = self.request
        if req.status in (Status.FINISHED, Status.FAILED):
            return False
        # `seen` first: the scheduler writes `computing` before `seen`, so a `seen` that counts
        # every command sent comes with a `computing` that took them all into account
        return req.seen < req.sent or req.computing

    @property
    def pending_text(self) -> bool:
        return bool(self.request.chunker.pending)

    def _delivered(self, seconds: float) -> None:
        self.request.delivered(seconds)
        self.scheduler.flow(self.request)


# Backlog counts seconds posted minus seconds delivered, each a sum of piece lengths: what is left
# after everything was delivered is float rounding, not audio.
_EPSILON_S = 1e-6


class Interrupted(Exception):
    """``speak_through`` gave up because ``abort()`` said so (its utterances are closed)."""


def speak_through(core: EngineCore, text: str, voice: str = DEFAULT_VOICE, seed: int = DEFAULT_SEED,
                  speed: float = 1.0, copies: int = 1,
                  abort: Optional[Callable[[], bool]] = None) -> tuple[float, float]:
    """Speak ``text`` through the core in this thread (warm-up, prewarm, calibration), as
    ``copies`` utterances at once (with different seeds after the first); the runner caches the
    chunks when it has a cache. Returns (seconds of audio, seconds it took). ``abort`` is asked
    after every tick: True closes the utterances and raises :class:`Interrupted`."""
    sr = core.engine.sample_rate
    utts = [InProcessUtterance(core.scheduler, UtteranceSpec(voice, seed + i, speed, api="warmup"),
                               OutputStream(sr)) for i in range(copies)]
    for utt in utts:
        utt.text(0, text)
        utt.end(0)
    t0, seconds, finished = time.perf_counter(), 0.0, 0
    while finished < copies:
        core.step()
        if abort is not None and abort():
            for utt in utts:
                utt.close()
            raise Interrupted()
        for utt in utts:  # nobody listens: everything is taken as it comes
            while (event := utt.stream.next()) is not None:
                utt.stream.delivered(event)
                if isinstance(event, Audio) and not event.silence:
                    seconds += event.seconds
                elif isinstance(event, Failed):
                    raise RuntimeError(f"warm-up synthesis failed: {event.message}")
                elif isinstance(event, Done):
                    finished += 1
    return seconds, time.perf_counter() - t0


def cpu_wait_s() -> Optional[float]:
    """Seconds this process's threads have spent runnable but waiting for a CPU (Linux schedstat,
    summed over threads: other processes competing for the cores show here, not in CPU time);
    None where the platform does not say."""
    total = 0
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    for tid in tasks:
        try:
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, ValueError, IndexError):  # a thread that ended meanwhile
            continue
    return total / 1e9


class Worker:
    def __init__(self, scheduler: Scheduler, config, cache: Optional[PhraseCache] = None, metrics=None,
                 engine: Optional[ModelPair] = None, lexicon: Optional[Lexicon] = None):
        self.scheduler = scheduler
        self.lexicon = lexicon  # the user lexicon of this engine's frontend (None: none)
        self.config = config  # streamtts.server.config.ServerConfig
        self.cache = cache
        self.metrics = metrics
        self.engine = engine
        self.core: Optional[EngineCore] = None
        self.capacity = config.capacity or 0
        # --capacity N pins it; otherwise it is calibrated at start and followed live
        policy = CapacityPolicy(utilization=CAPACITY_UTILIZATION, extra_share=config.extra_slots)
        self.estimator = CapacityEstimator(policy, pinned=config.capacity or None)
        # called (engine thread) with each new capacity once it serves: admission takes it
        self.on_capacity: Optional[Callable[[int], None]] = None
        # called (engine thread) when the slots beyond the capacity that the headroom allows change
        self.on_extra: Optional[Callable[[int], None]] = None
        self.extra = 0
        self._measuring = False  # calibration ticks are not the live load
        self._hits = self._misses = 0
        # called once it serves, or once it cannot (load failure, crash, stall): see `failure`
        self.on_ready: Optional[Callable[[], None]] = None
        self.ready = threading.Event()
        self.failure: Optional[str] = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="streamtts-engine", daemon=True)
        self._watchdog = threading.Thread(target=self._watch, name="streamtts-watchdog", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._watchdog.start()

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
            self._give_up(f"failed to load: {type(exc).__name__}: {exc}")
            return
        self.ready.set()
        if self.metrics is not None:
            self.metrics.ready.set(1)
            self.metrics.capacity.set(self.capacity)
        if self.on_ready is not None:
            self.on_ready()
        try:
            self._serve()
        except BaseException as exc:  # nothing may end this thread unnoticed
            self._give_up(f"the engine thread stopped: {type(exc).__name__}: {exc}")
            raise

    def _serve(self) -> None:
        failed = 0
        while not self._stop.is_set() and self.failure is None:
            try:
                if not self.core.step(timeout=0.5) and self.estimator.remeasure_due(time.monotonic()):
                    self._remeasure()
                failed = 0
            except Exception as exc:
                failed += 1
                log.exception("engine tick failed (%d in a row)", failed)
                if failed >= MAX_FAILED_TICKS:
                    self._give_up(f"{failed} engine ticks in a row failed: {type(exc).__name__}: {exc}")

    def _watch(self) -> None:
        """A tick running past ``tick_deadline_s`` means the engine hangs: give up on it (the
        thread cannot be killed, but nobody waits on it any more)."""
        deadline = self.config.tick_deadline_s
        while not self._stop.wait(min(1.0, deadline / 4)):
            core = self.core  # loading's first calls may be slow: only a serving engine is watched
            since = core.busy_since if core is not None and self.ready.is_set() else None
            if since is not None and time.monotonic() - since > deadline and self.failure is None:
                log.error("engine tick running for more than %g s: the engine is stuck", deadline)
                self._give_up(f"an engine tick ran for more than {deadline:g} s")
            if self.failure is not None:
                return

    def _give_up(self, reason: str) -> None:
        """The engine cannot serve: every request and session waiting on it gets a typed error
        (``engine_unavailable``), ``/ready`` answers 503 and ``/metrics`` shows it."""
        if self.failure is not None:
            return
        self.failure = reason
        self.ready.clear()
        if self.metrics is not None:
            self.metrics.ready.set(0)
            self.metrics.engine_failed.set(1)
        self.scheduler.shutdown("engine_unavailable", f"the engine is unavailable: {reason}")
        if self.on_ready is not None:  # the server lets queued sessions in, to tell them
            self.on_ready()

    def _load(self) -> None:
        cfg = self.config
        if self.engine is None:
            self.engine = load_engine(cfg.engine, cfg.vocoder)
        threads = cfg.torch_threads or (1 if self.engine.acoustic.name == "torch" else 0)
        if threads > 0:
            import torch

            torch.set_num_threads(threads)  # process-wide; this thread is torch's only user
        sched_cfg = scheduler_config_for(
            self.engine, blocks=BlockSchedule(cfg.block_first, cfg.block_rest), max_batch=cfg.max_batch,
            vocode_frames=cfg.vocode_frames, max_buffered_s=cfg.max_buffered_s,
            first_cut_s=cfg.first_chunk_wait_s)
        self.core = EngineCore(self.engine, None, sched_cfg, on_tick=self._on_tick, scheduler=self.scheduler,
                               lexicon=self.lexicon)
        warm_up(self.lexicon)  # dictionaries of the text frontend and the lexicon's word segmenter
        speak_through(self.core, "你好。")  # first-call costs, not cached
        if not self.capacity:
            # one stream, then several at once: two batch sizes give the model its shared cost
            self._calibrate((1, CALIBRATION_STREAMS))
        self.core.runner.cache = self.cache
        if self.cache is not None:
            self._hits, self._misses = self.cache.hits, self.cache.misses
        if cfg.prewarm is not None:
            phrases = read_prewarm(cfg.prewarm)
            for phrase in phrases:
                try:
                    speak_through(self.core, phrase)
                except RuntimeError as exc:
                    log.warning("prewarm: %r: %s", phrase, exc)
            log.info("prewarmed %d phrases (%d cache entries)", len(phrases), len(self.cache or ()))

    # ---- capacity -----------------------------------------------------------------------------
    def _calibrate(self, sizes, abort: Optional[Callable[[], bool]] = None) -> None:
        """Speak the calibration text at each batch size in ``sizes`` on this (idle) engine and
        give the estimator the result. Raises Interrupted when ``abort`` says so."""
        measures = []
        self._measuring = True
        try:
            for copies in sizes:
                wait0 = cpu_wait_s()
                audio_s, took_s = speak_through(self.core, CALIBRATION_TEXT, copies=copies, abort=abort)
                wait1 = cpu_wait_s()
                waited = None if wait0 is None or wait1 is None else max(0.0, wait1 - wait0)
                measures.append(Measure(copies, audio_s, took_s, waited))
        finally:
            self._measuring = False
        self._apply(self.estimator.measured(time.monotonic(), measures), measures)

    def _remeasure(self) -> None:
        """The engine is idle and its figure was made under load (or ticks lowered it): calibrate
        again, without the phrase cache (cached audio costs nothing). Work arriving meanwhile ends
        the measure at once; it shares the ticks until then."""
        cache, self.core.runner.cache = self.core.runner.cache, None
        sched = self.scheduler
        try:
            self._calibrate((CALIBRATION_STREAMS,), abort=lambda: any(
                r.api != "warmup" and (r.has_work or r.inbox) for r in sched.requests.values()))
        except Interrupted:
            self.estimator.measure_failed(time.monotonic())
            log.debug("capacity re-measure given up: work arrived")
        except Exception:  # a measure is optional: serving goes on with the figure it has
            self.estimator.measure_failed(time.monotonic())
            log.warning("capacity re-measure failed", exc_info=True)
        finally:
            self.core.runner.cache = cache

    def _apply(self, change: Optional[Change], measures=()) -> None:
        """Publish a new capacity: /ready and the gauge read it here, admission on its loop."""
        if change is None:
            return
        self.capacity = change.capacity
        if change.capacity == change.previous:  # a calibration that confirmed the figure
            log.info("capacity: %d streams, unchanged: %s (%s)", change.capacity, change.reason,
                     "; ".join(f"{m.streams} at once: RTF {m.cost:.3f}" for m in measures))
            return
        if measures:
            detail = "; ".join(f"{m.streams} at once: RTF {m.cost:.3f}" for m in measures)
            log.info("capacity: %d streams (was %d): %s (%s; --capacity pins it)", change.capacity,
                     change.previous, change.reason, detail)
        else:
            log.info("capacity: %d streams (was %d): %s", change.capacity, change.previous, change.reason)
        if not self.ready.is_set():
            return  # on_ready hands admission the figure
        if self.metrics is not None:
            self.metrics.capacity.set(change.capacity)
        if self.on_capacity is not None:
            self.on_capacity(change.capacity)

    def _feed(self, plan: Plan, out: RunnerOutput) -> None:
        """The tick, to the capacity estimator: its time, the audio it synthesized (vocoded rows
        only: phrase-cache hits cost nothing), and the load (capacity.load_of)."""
        now = time.monotonic()
        vocoded = {rid for rid, _ in plan.vocode}
        frames = sum(r.frames for rid, r in out.rows.items() if rid in vocoded)
        audio_s = frames * self.engine.vocoder.hop_length / self.engine.sample_rate
        load = load_of(now, self.scheduler.requests.values(), self.estimator.policy.settle_s,
                       self.engine.vocoder.hop_length / self.engine.sample_rate)
        self._apply(self.estimator.tick(now, out.seconds, audio_s, max(1, load.streams), load.slack_s))
        extra = self.estimator.extra(now, load.slack_s, load.newcomers, load)
        if extra != self.extra:
            self.extra = extra
            if self.metrics is not None:
                self.metrics.extra_slots.set(extra)
            if self.on_extra is not None:
                self.on_extra(extra)

    def _on_tick(self, plan: Plan, out: RunnerOutput) -> None:
        if not self._measuring:
            self._feed(plan, out)
        m = self.metrics
        if m is None or (self._measuring and self.ready.is_set()):
            return  # an idle re-measure is not traffic
        frames = sum(r.frames for r in out.rows.values())
        audio_s = frames * self.engine.vocoder.hop_length / self.engine.sample_rate
        m.audio_seconds.inc(audio_s)
        m.tick_seconds.observe(out.seconds)
        if plan.decode:
            m.batch_rows.observe(len(plan.decode))
        if audio_s > 0:
            m.last_rtf.set(out.seconds / audio_s)
            m.rtf.observe(out.seconds / audio_s)
        m.queue_depth.set(sum(1 for r in self.scheduler.requests.values() if r.has_work))
        if self.cache is not None:
            m.cache_bytes.set(self.cache.bytes)
            hits, misses = self.cache.hits, self.cache.misses
            m.cache_hits.inc(hits - self._hits)
            m.cache_misses.inc(misses - self._misses)
            self._hits, self._misses = hits, misses


class InProcessEngineClient(EngineClient):
    """The engine core in a thread of this process (:class:`Worker`), behind the client API."""

    def __init__(self, config, cache: Optional[PhraseCache] = None, metrics=None,
                 models: Optional[ModelPair] = None, lexicon: Optional[Lexicon] = None):
        self.config = config  # streamtts.server.config.ServerConfig (or one with its fields)
        self.scheduler = Scheduler()
        self.worker = Worker(self.scheduler, config, cache, metrics, models, lexicon)
        self.sample_rate = NATIVE_RATE
        # until the engine is loaded (and its capacity known) sessions wait in the queue
        self.admission = Admission(config.capacity or 1, config.queue_size, config.queue_timeout_s)

    def start(self, on_ready: Optional[Callable[[], None]] = None) -> None:
        try:
            loop: Optional[asyncio.AbstractEventLoop] = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if not self.config.capacity:
            self.admission.capacity = 0  # nobody is admitted before the capacity is measured

        def on_loop(fn: Callable[[int], None], value: int) -> None:
            """From the engine thread to the admission, which lives on the event loop."""
            if loop is not None:
                loop.call_soon_threadsafe(fn, value)
            else:
                fn(value)

        def ready() -> None:  # engine thread: capacity known, or loading failed (then let all see it)
            on_loop(self.admission.set_capacity, self.worker.capacity if self.worker.failure is None else 1 << 20)
            if on_ready is not None:
                on_ready()

        def capacity_changed(capacity: int) -> None:  # engine thread, once it serves
            if self.worker.failure is None:
                on_loop(self.admission.set_capacity, capacity)

        def extra_changed(extra: int) -> None:  # engine thread
            if self.worker.failure is None:
                on_loop(self.admission.set_extra, extra)

        self.worker.on_ready = ready
        self.worker.on_capacity = capacity_changed
        self.worker.on_extra = extra_changed
        self.worker.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.worker.stop(timeout)

    @property
    def ready(self) -> bool:
        return self.worker.ready.is_set()

    @property
    def failure(self) -> Optional[str]:
        return self.worker.failure

    @property
    def capacity(self) -> int:
        return self.worker.capacity

    @property
    def name(self) -> str:
        return self.worker.engine.name if self.worker.engine is not None else self.config.engine

    def open(self, spec: UtteranceSpec, max_lead_s: float = 0.0, piece_s: float = FRAME_S) -> InProcessUtterance:
        stream = OutputStream(self.sample_rate, max_lead_s=max_lead_s, piece_s=piece_s)
        try:
            stream.bind(asyncio.get_running_loop())
        except RuntimeError:  # a caller without a loop reads with next() or drain()
            pass
        return InProcessUtterance(self.scheduler, spec, stream)
