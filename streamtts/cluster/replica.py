"""The engine replica: a Ray Serve deployment whose every replica holds today's batched engine core
(the in-process client's engine thread: load, warm-up, calibration, live capacity, watchdog).

One streaming call speaks one chunk, cut by the front end (``streamtts.cluster.client``)::

    call = {"chunk": Chunk, "voice": "biaobei", "seed": 0, "speed": 1.0,
            "lead_s": 0.4,      # audio the listener has ahead now: the row's deadline (<= 0: due now)
            "skip": 0,          # samples of this chunk the listener already has (failover)
            "avoid": [...]}     # replicas the router must not pick (they died under this chunk)
    async for piece in handle.options(stream=True).synthesize.remote(call):
        ("r", replica id, pid)              # first: who serves it
        ("a", float32 samples, compute_s)   # audio as the engine makes it, minus the first `skip`
        ("s", SpokenSegment, compute_s)     # the chunk's text and char times, after its audio
        ("f",)                              # the chunk is done
        ("x", code, message)                # it failed (a typed code)

A cancelled call (the front end cancels its response) closes its row at the next engine tick;
the replica's ledger (:meth:`EngineReplica.stats`) keeps when each call saw its cancel and when
its row was last worked on, so the stop is known at the replica, not only at the listener.

Deploy with ``build_app(settings)`` (``serve run streamtts.cluster.replica:build_app``, a Serve
config file, or ``streamtts serve --replicas N``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional

import numpy as np
from ray import serve
from ray.serve.config import RequestRouterConfig

from streamtts.cluster import DEPLOYMENT
from streamtts.core.cache import PhraseCache
from streamtts.core.outputs import AudioOut, FailedOut, FinishedOut, PauseOut, SegmentOut
from streamtts.core.request import CLOSE, END, Request
from streamtts.core.scheduler import Scheduler
from streamtts.engine_client.inprocess import Worker
from streamtts.server.config import ServerConfig
from streamtts.text.lexicon import Lexicon

log = logging.getLogger(__name__)

# Calls kept in the ledger (stats()): the recent ones, for measuring cancels and routing.
LEDGER_SIZE = 512
# Audio is sent in pieces of at least this many seconds (after a call's first piece) ...
HOLD_S = 0.5
# ... unless its listener has less than this much audio left before it runs dry.
URGENT_S = 1.0
# How often each replica reports its capacity and calls to the routers (seconds).
ROUTING_STATS_PERIOD_S = 0.25

# Settings of a replica's engine: the ServerConfig fields a replica uses.
ENGINE_SETTINGS = ("engine", "vocoder", "capacity", "max_batch", "vocode_frames", "block_first", "block_rest",
                   "tick_deadline_s", "torch_threads", "cache_bytes", "prewarm", "lexicon")
# Settings of the deployment itself (deployment_options).
DEPLOY_SETTINGS = ("replicas", "max_ongoing_requests", "max_queued_requests", "num_cpus", "autoscaling_config")


def engine_config(settings: Optional[dict]) -> ServerConfig:
    """The ServerConfig of a replica's engine from plain settings (a Serve config's ``args``)."""
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(ENGINE_SETTINGS) - set(DEPLOY_SETTINGS))
    if unknown:
        raise ValueError(f"unknown replica settings: {', '.join(unknown)} (known: "
                         f"{', '.join(ENGINE_SETTINGS + DEPLOY_SETTINGS)})")
    values = {k: settings[k] for k in ENGINE_SETTINGS if k in settings}
    for key in ("prewarm", "lexicon"):
        if values.get(key) is not None:
            values[key] = Path(values[key])
    # the replica's admission is the front end's: no queue here
    return ServerConfig(static_dir=None, **values)


class ChunkRequest(Request):
    """A core request for exactly one chunk, already cut by the front end: its chunker hands that
    chunk over on END and nothing else, so the replica never cuts text again (re-cutting a chunk's
    text can differ from the cut that made it: the first chunk of an utterance is cut short)."""

    def __init__(self, chunk, voice: str, seed: int, speed: float, sink, api: str = "cluster"):
        self._chunk = chunk
        super().__init__(voice, seed, speed, sink, api=api)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.chunker = _OneChunk(self._chunk)

    def use_lexicon(self, lexicon: Optional[Lexicon]) -> None:
        """The front end cut the chunk with the lexicon; the runner reads it with the core's."""


class _OneChunk:
    def __init__(self, chunk):
        self.chunk, self.lexicon, self.pending = chunk, None, ""

    def push(self, text) -> list:
        return []

    def flush(self) -> list:
        chunk, self.chunk = self.chunk, None
        return [chunk] if chunk is not None else []

    def reset(self) -> None:
        self.chunk = None


class ReplicaWorker(Worker):
    """The engine thread, also noting when each request's row was last worked on (a tick that
    began, decoded or vocoded it): the measure of a cancel's effect."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.row_worked: dict[int, float] = {}  # request id -> monotonic end of its last tick

    def _on_tick(self, plan, out) -> None:
        now = time.monotonic()
        for rid in itertools.chain((b.request for b in plan.begin), plan.decode, (r for r, _ in plan.vocode)):
            self.row_worked[rid] = now
        super()._on_tick(plan, out)


class EngineReplica:
    """One engine core per replica; see the module docstring."""

    def __init__(self, settings: Optional[dict] = None):
        config = engine_config(settings)
        lexicon = Lexicon.load(config.lexicon) if config.lexicon is not None else None
        cache = PhraseCache(config.cache_bytes) if config.cache_bytes > 0 else None
        self.scheduler = Scheduler()
        self.worker = ReplicaWorker(self.scheduler, config, cache, None, None, lexicon)
        loaded = threading.Event()
        self.worker.on_ready = loaded.set
        self.worker.start()
        loaded.wait()  # Serve routes to a replica once its constructor returned
        if self.worker.failure is not None:
            raise RuntimeError(f"the engine replica failed to start: {self.worker.failure}")
        try:
            self.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # constructed outside Serve (a direct test of the class)
            self.replica_id = f"local-{os.getpid()}"
        self.sample_rate = self.worker.engine.sample_rate
        self.active: dict[int, dict] = {}  # request id -> its ledger record, while the call runs
        self.ledger: deque[dict] = deque(maxlen=LEDGER_SIZE)
        self.calls = self.cancels = 0
        self.hold_samples = int(HOLD_S * self.sample_rate)

    # ---- Serve hooks ----------------------------------------------------------------------------
    def record_routing_stats(self) -> dict[str, Any]:
        """What the routers rank replicas by (streamtts.cluster.router)."""
        return {"capacity": self.worker.capacity, "calls": len(self.active), "pid": os.getpid(),
                "ready": self.worker.failure is None}

    def check_health(self) -> None:
        if self.worker.failure is not None:  # Serve replaces this replica
            raise RuntimeError(self.worker.failure)

    def __del__(self) -> None:
        worker = getattr(self, "worker", None)
        if worker is not None:
            worker.stop(timeout=2.0)

    # ---- calls ------------------------------------------------------------------------------------
    async def synthesize(self, call: dict):
        """One chunk's audio and segment, as they are computed (see the module docstring)."""
        loop = asyncio.get_running_loop()
        # Bounded by the chunk: the core posts its audio, one segment and one end, no more.
        outs: asyncio.Queue = asyncio.Queue()

        def sink(out) -> None:  # engine thread
            loop.call_soon_threadsafe(outs.put_nowait, out)

        req = ChunkRequest(call["chunk"], call["voice"], int(call["seed"]), float(call["speed"]), sink)
        req.t_ref = time.monotonic() + float(call.get("lead_s", 0.0))  # its listener's deadline
        skip = int(call.get("skip", 0))
        record = {"call": req.id, "voice": req.voice, "seed": req.seed, "text": str(call["chunk"].text),
                  "skip": skip, "received": time.monotonic(), "cancelled": None, "ended": None,
                  "worked": None, "outcome": "running", "samples": 0}
        self.calls += 1
        self.active[req.id] = record
        self.ledger.append(record)
        self.scheduler.add_request(req)
        self.scheduler.command(req, END, 0)
        try:
            yield ("r", self.replica_id, os.getpid())
            held, held_n, held_s, sent_any = [], 0, 0.0, False
            while True:
                out = await outs.get()
                if isinstance(out, AudioOut):
                    n = len(out.audio)
                    req.delivered(n / self.sample_rate)  # taken off the core: this replica's flow
                    audio = out.audio[skip:] if skip else out.audio
                    skip = max(0, skip - n)
                    if len(audio):
                        held.append(audio)
                        held_n += len(audio)
                        held_s += out.compute_s * len(audio) / max(1, n)
                    # Every yield is a Ray object with its own cost: audio is sent in pieces of
                    # at least HOLD_S, except the first (time to first audio) and whenever the
                    # listener would run dry before the piece grew (its deadline is close).
                    if held and (not sent_any or held_n >= self.hold_samples
                                 or req.deadline - time.monotonic() < URGENT_S):
                        record["samples"] += held_n
                        yield ("a", np.concatenate(held) if len(held) > 1 else held[0], held_s)
                        held, held_n, held_s, sent_any = [], 0, 0.0, True
                    continue
                if held:  # what is held goes before the segment or the end
                    record["samples"] += held_n
                    yield ("a", np.concatenate(held) if len(held) > 1 else held[0], held_s)
                    held, held_n, held_s = [], 0, 0.0
                if isinstance(out, SegmentOut):
                    yield ("s", out.segment, out.compute_s)
                elif isinstance(out, FinishedOut):
                    record["outcome"] = "done"
                    yield ("f",)
                    return
                elif isinstance(out, FailedOut):
                    record["outcome"] = out.code
                    yield ("x", out.code, out.message)
                    return
                elif isinstance(out, PauseOut):  # one chunk has no pause before it; never sent
                    req.delivered(out.samples / self.sample_rate)
        except (asyncio.CancelledError, GeneratorExit):
            record["cancelled"] = time.monotonic()
            record["outcome"] = "cancelled"
            self.cancels += 1
            raise
        finally:
            self.scheduler.command(req, CLOSE)  # applied before the next tick is planned
            record["ended"] = time.monotonic()
            self.active.pop(req.id, None)
            self._settle(req.id, record)

    def _settle(self, rid: int, record: dict) -> None:
        """Fill in when the row was last worked on, once the engine has dropped it."""
        async def settle() -> None:
            deadline = time.monotonic() + 30.0
            while rid in self.scheduler.requests or any(r.id == rid for r in list(self.scheduler._new)):
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.005)
            await asyncio.sleep(0)
            # a tick that held the row when it was dropped ends after it: wait for the core
            while self.worker.core is not None and self.worker.core.busy_since is not None \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
            record["worked"] = self.worker.row_worked.pop(rid, None)
            record["settled"] = True

        asyncio.get_running_loop().create_task(settle())

    async def stats(self, target: Optional[dict] = None) -> dict:
        """This replica's counters and recent calls (``target`` {"replica": id} routes it here)."""
        return {"replica": self.replica_id, "pid": os.getpid(), "capacity": self.worker.capacity,
                "active": len(self.active), "calls": self.calls, "cancels": self.cancels,
                "engine": self.worker.engine.name, "ledger": [dict(r) for r in self.ledger]}


def deployment_options(settings: dict) -> dict:
    """The Serve options of the deployment: replicas, the concurrency cap, CPUs, the router."""
    from streamtts.cluster.router import LoadRouter

    capacity = int(settings.get("capacity") or 0)
    # a replica's calls are its streams (one chunk at a time per utterance): the cap matches the
    # replica's capacity when it is pinned; measured capacities stay under the default cap, and
    # the front end admits no more than the replicas' live capacities add up to
    max_ongoing = int(settings.get("max_ongoing_requests") or (capacity if capacity else 32))
    return dict(
        num_replicas=int(settings.get("replicas", 1)),
        max_ongoing_requests=max_ongoing,
        # calls waiting in a handle for a replica slot; beyond it the handle refuses (server_busy)
        max_queued_requests=int(settings.get("max_queued_requests", 64)),
        # the replica's methods run on its own event loop, not on a loop thread of their own: they
        # never block (the engine has its thread), and each piece of a call then leaves the
        # replica without a hop between threads
        ray_actor_options={"num_cpus": float(settings.get("num_cpus", 1)),
                           "runtime_env": {"env_vars": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"}}},
        request_router_config=RequestRouterConfig(request_router_class=LoadRouter,
                                                  request_routing_stats_period_s=ROUTING_STATS_PERIOD_S),
        # scaling down or redeploying: a replica's calls (chunks) finish before it goes
        graceful_shutdown_timeout_s=60.0,
        graceful_shutdown_wait_loop_s=0.5,
        health_check_period_s=2.0,
        health_check_timeout_s=30.0,
    )


def build_app(args: Optional[dict] = None):
    """The Serve application: ``settings`` as in :func:`engine_config`, plus ``replicas``,
    ``max_ongoing_requests``, ``max_queued_requests`` and ``num_cpus`` (per replica)."""
    settings = dict(args or {})
    engine_config(settings)  # bad settings fail here, not in every replica
    deployment = serve.deployment(EngineReplica, name=DEPLOYMENT)
    options = deployment_options(settings)
    autoscaling = settings.pop("autoscaling_config", None)
    if autoscaling:
        options.pop("num_replicas")
        options["autoscaling_config"] = autoscaling
    engine_settings = {k: settings[k] for k in ENGINE_SETTINGS if k in settings}
    return deployment.options(**options).bind(engine_settings)
