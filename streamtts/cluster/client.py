"""The cluster engine client: the same :class:`EngineClient` as the in-process one, its engine
cores being the replicas of a Ray Serve deployment (``streamtts.cluster.replica``)::

    client = ClusterEngineClient(config, address="127.0.0.1:6379", metrics=metrics, lexicon=lex)
    client.start(on_ready)            # connects; ready once a replica reports in
    utt = client.open(UtteranceSpec("biaobei"), max_lead_s=2.0)   # as with the in-process client

Each utterance is cut into chunks here (the request's own chunker), and each chunk is one
streaming call to the replica with the most headroom (``streamtts.cluster.router``). The rules a
core request follows are kept here, so the stream a transport reads is the same:

* chunks are spoken one after another; the silence owed after a chunk goes before the next
  chunk's first audio; a listener that ran dry while no text came skips it;
* a chunk is sent once the listener holds less than ``max_buffered_s`` unplayed audio, with its
  deadline (the audio the listener has ahead) for the replica's earliest-deadline-first order;
* cancel, close, or a consumer gone: the running call is cancelled explicitly (the replica then
  drops the row at its next tick);
* admission: the replicas' live capacities summed, less the streams the cluster's other front
  ends hold (``streamtts.cluster.fronts``), so front ends behind one load balancer share them;
* a replica that dies mid-chunk: the chunk goes to another replica with the samples already sent
  skipped (synthesis is deterministic for text, voice, seed and speed), so the listener hears the
  same audio after a gap; only when no replica is left does the utterance fail
  (``engine_unavailable``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import Callable, Optional

from streamtts.cluster import APP_NAME, DEPLOYMENT
from streamtts.cluster.fronts import FrontEnds, share
from streamtts.cluster.metrics import ClusterMetrics
from streamtts.constants import NATIVE_RATE
from streamtts.core.outputs import AudioOut, FailedOut, FinishedOut, PauseOut, SegmentOut, SpokenSegment
from streamtts.core.timing import pause_samples
from streamtts.engine_client.admission import Admission
from streamtts.engine_client.base import EngineClient, Utterance, UtteranceSpec
from streamtts.engine_client.stream import FRAME_S, OutputStream
from streamtts.text.chunker import preload
from streamtts.text.markup_chunker import MarkupChunker

log = logging.getLogger(__name__)

# After a replica failed under a chunk, how long the chunk may look for another before the
# utterance fails (replicas Serve starts again take far longer: they are not waited for).
FAILOVER_TIMEOUT_S = 1.5
# A call no replica has taken while none is known for this long fails (no replica is left).
NO_REPLICA_GRACE_S = 0.3
POLL_S = 0.25  # how often admission and /metrics follow the replicas' reports
_EPSILON_S = 1e-6


class ClusterStats:
    """Counters of the front end's cluster path (``/metrics``; tests and the benchmark read them)."""

    def __init__(self) -> None:
        self.calls = self.failovers = self.cancels = self.failed = 0
        self.gaps: deque[float] = deque(maxlen=256)  # seconds from a replica's death to audio again


class ClusterEngineClient(EngineClient):
    def __init__(self, config, address: str = "auto", metrics=None, lexicon=None,
                 app_name: str = APP_NAME, deployment: str = DEPLOYMENT):
        self.config = config
        self.address, self.app_name, self.deployment = address, app_name, deployment
        self.metrics, self.lexicon = metrics, lexicon
        self.sample_rate = NATIVE_RATE
        self.admission = Admission(1, config.queue_size, config.queue_timeout_s)
        self.admission.capacity = 0  # nobody is admitted before a replica reports its capacity
        self.stats = ClusterStats()
        self.fronts = FrontEnds()
        self._others = 0  # streams the other front ends hold
        self._exchange_failed = False
        self.handle = None
        self.loop: Optional[asyncio.AbstractEventLoop] = None
        self._failure: Optional[str] = None
        self._ready = False
        self._stop = threading.Event()
        self._gauges = ClusterMetrics(metrics, self) if metrics is not None else None

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self, on_ready: Optional[Callable[[], None]] = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.loop.create_task(self._connect(on_ready))

    async def _connect(self, on_ready) -> None:
        try:
            await asyncio.to_thread(self.warm_up)
            handle = await asyncio.to_thread(self._connect_sync)
            # The handle's router runs on this loop, not on a loop thread of its own: every piece
            # of every call then reaches its session without a hop between threads.
            handle._init(_run_router_in_separate_loop=False)
            # the first call makes the handle's router, which then follows the replicas
            await asyncio.wait_for(handle.stats.remote({}), timeout=600)
            self.handle = handle
        except Exception as exc:
            log.exception("cannot reach the cluster")
            self._failure = f"cannot reach the Ray cluster at {self.address}: {type(exc).__name__}: {exc}"
            self.admission.set_capacity(1 << 20)  # let everyone in, to be told
            if on_ready is not None:
                on_ready()
            return
        told = False
        while not self._stop.is_set():
            await self._exchange()
            self._follow()
            if self._ready and not told:
                told = True
                if on_ready is not None:
                    on_ready()
            await asyncio.sleep(POLL_S)

    async def _exchange(self) -> None:
        """The streams the other front ends hold (``streamtts.cluster.fronts``); on a failed
        exchange the last known figure stands."""
        try:
            self._others = await asyncio.to_thread(self.fronts.exchange, self.admission.admitted)
        except Exception as exc:
            if not self._exchange_failed:
                log.warning("cannot share admission with other front ends: %s: %s", type(exc).__name__, exc)
            self._exchange_failed = True
        else:
            self._exchange_failed = False

    def warm_up(self) -> None:
        """Build the chunker's word segmenter (its dictionaries load on first use, about a second
        on the event loop): otherwise the first early cut of a first chunk would stall every
        session of this front end once."""
        preload(self.lexicon)

    def _connect_sync(self):
        import ray
        from ray import serve

        if not ray.is_initialized():
            ray.init(address=self.address, namespace="serve", logging_level=logging.WARNING,
                     log_to_driver=False, configure_logging=False)
        from ray.serve.handle import DeploymentHandle

        serve.get_deployment_handle(self.deployment, app_name=self.app_name)  # the app exists
        # a handle of this client's own: the process's cached one may be in use, its router set up
        return DeploymentHandle(self.deployment, self.app_name)

    def _follow(self) -> None:
        """Admission and readiness from the replicas' latest reports."""
        replicas = self.replicas()
        total = sum(int(s.get("capacity") or 0) for s in replicas.values() if s.get("ready", True))
        self._ready = total > 0
        if self._ready:
            self.admission.set_capacity(share(total, self._others))
        if self._gauges is not None:
            self._gauges.update(replicas, self.admission.capacity if self._ready else 0, self._others)

    def replicas(self) -> dict[str, dict]:
        from streamtts.cluster.registry import live

        return live()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self.handle is not None:  # the others need not wait for this key to go stale; a
            # cluster already gone must not hold the shutdown up
            leave = threading.Thread(target=self._leave, daemon=True)
            leave.start()
            leave.join(min(timeout, 1.0))

    def _leave(self) -> None:
        try:
            self.fronts.leave()
        except Exception:
            pass

    @property
    def ready(self) -> bool:
        return self._ready and self._failure is None

    @property
    def failure(self) -> Optional[str]:
        return self._failure

    @property
    def capacity(self) -> int:
        return self.admission.capacity if self._ready else 0

    @property
    def name(self) -> str:
        return f"cluster:{self.config.engine}+{self.config.vocoder} x{len(self.replicas())}"

    def open(self, spec: UtteranceSpec, max_lead_s: float = 0.0, piece_s: float = FRAME_S) -> "ClusterUtterance":
        stream = OutputStream(self.sample_rate, max_lead_s=max_lead_s, piece_s=piece_s)
        loop = asyncio.get_running_loop()
        stream.bind(loop)
        utt = ClusterUtterance(self, spec, stream, loop)
        if self._failure is not None:
            stream.push(FailedOut(0, "engine_unavailable", f"the engine is unavailable: {self._failure}"))
        return utt


class ClusterUtterance(Utterance):
    """An utterance whose chunks are calls to the replicas (see the module docstring). Its state
    lives on the event loop; commands from other threads are posted there."""

    def __init__(self, client: ClusterEngineClient, spec: UtteranceSpec, stream: OutputStream,
                 loop: asyncio.AbstractEventLoop):
        self.client, self.spec, self.stream, self.loop = client, spec, stream, loop
        self.chunker = MarkupChunker(spec.speed, lexicon=client.lexicon, **(spec.chunker_options or {}))
        self.chunks: deque = deque()
        self.generation = 0
        self.ending = False
        self.first_text_at: Optional[float] = None  # when the first chunk's text began to wait
        self.over = False  # finished, failed or closed: later commands are ignored
        self.pause = 0  # samples of silence owed before the next chunk's speech
        self.t_ref, self.produced_s = time.monotonic(), 0.0  # deadline = t_ref + produced_s
        self.inflight_s = 0.0  # posted to the stream, not yet delivered
        self.speaking = False  # a chunk's call is under way
        self.task: Optional[asyncio.Task] = None
        self.wake = asyncio.Event()
        stream.on_delivered = self._delivered

    # ---- commands (any thread) -----------------------------------------------------------------
    def _on_loop(self, fn, *args) -> None:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            fn(*args)
        else:
            self.loop.call_soon_threadsafe(fn, *args)

    def text(self, generation: int, text: str) -> None:
        self._on_loop(self._text, generation, text)

    def flush(self, generation: int) -> None:
        self._on_loop(self._flush, generation, False)

    def end(self, generation: int) -> None:
        self._on_loop(self._flush, generation, True)

    def cancel(self, generation: int) -> None:
        self.stream.cancel(generation)
        self._on_loop(self._cancel, generation)

    def close(self) -> None:
        self._on_loop(self._close)

    @property
    def busy(self) -> bool:
        return self.has_work or self.inflight_s > _EPSILON_S or self.stream.pending

    @property
    def computing(self) -> bool:
        # (its state lives on the loop, the consumer's thread: a change there is followed by the
        # consumer's next look, after the output that came with it woke it)
        return not self.over and (bool(self.chunks) or self.speaking or bool(self.chunker.pending))

    @property
    def pending_text(self) -> bool:
        return bool(self.chunker.pending)

    @property
    def has_work(self) -> bool:
        return bool(self.chunks) or self.speaking or self.ending

    # ---- on the loop ----------------------------------------------------------------------------
    def _text(self, generation: int, text: str) -> None:
        if self.over or generation != self.generation:
            return
        self._add(self.chunker.push(text))
        self._cut_first()

    def _cut_first(self) -> None:
        """As the in-process scheduler does (SchedulerConfig.first_cut_s): the first chunk's text
        that has waited long enough for its end is cut at a word boundary; a timer tries once
        the wait is over, and every later text tries again."""
        chunker, cut_s = self.chunker, self.client.config.first_chunk_wait_s
        if self.over or cut_s <= 0 or not chunker.pending or not chunker.at_start:
            self.first_text_at = None
            return
        now = time.monotonic()
        if self.first_text_at is None:
            self.first_text_at = now
            self.loop.call_later(cut_s, self._cut_first)
        elif now - self.first_text_at >= cut_s - 0.005:  # a timer may fire a hair early
            chunks = chunker.cut_early()
            if chunks:
                self.first_text_at = None
                self._add(chunks)

    def _flush(self, generation: int, end: bool) -> None:
        if self.over or generation != self.generation:
            return
        self._add(self.chunker.flush(), end)

    def _add(self, chunks: list, end: bool = False) -> None:
        had_work = self.has_work
        self.chunks.extend(chunks)
        self.ending = self.ending or end
        if self.has_work and not had_work:
            now = time.monotonic()
            if self.t_ref + self.produced_s < now:  # its listener has run out of audio: due now
                self.t_ref, self.produced_s = now, 0.0
                self.pause = 0  # and has heard the silence owed
        self._run()

    def _cancel(self, generation: int) -> None:
        if self.over:
            return
        self._halt()
        self.chunks.clear()
        self.chunker.reset()
        self.pause = 0
        self.generation = generation
        self.t_ref, self.produced_s = time.monotonic(), 0.0
        self._run()

    def _close(self) -> None:
        self.over = True
        self._halt()
        self.chunks.clear()

    def _halt(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()  # cancels the chunk's call, which cancels the replica's generator
            self.client.stats.cancels += 1
        self.task = None
        self.speaking = False

    def _run(self) -> None:
        self.wake.set()
        if self.task is None or self.task.done():
            if self.has_work and not self.over:
                self.task = self.loop.create_task(self._drive())

    def _delivered(self, seconds: float) -> None:
        self.inflight_s -= seconds
        self.wake.set()

    def _post(self, out, samples: int = 0) -> None:
        if samples:
            seconds = samples / self.client.sample_rate
            self.produced_s += seconds
            self.inflight_s += seconds
        self.stream.push(out)

    async def _drive(self) -> None:
        limit = self.client.config.max_buffered_s
        while not self.over:
            if self.chunks:
                while self.inflight_s >= limit:  # the listener holds enough: wait for it to read
                    self.wake.clear()
                    await self.wake.wait()
                chunk = self.chunks.popleft()
                self.speaking = True
                ok = await self._speak(chunk, self.generation)
                self.speaking = False
                if not self.chunks:
                    self.stream.poke()  # nothing left to compute: its slot may go
                if not ok:
                    self.over = True
                    return
            elif self.ending:
                self.over = True
                self._post(FinishedOut(self.generation))
                return
            else:
                return

    async def _first_piece(self, pieces):
        """The call's first piece; NoReplica once no replica is left to take it (the handle would
        wait for Serve to start one, which takes far longer than a listener waits)."""
        nxt = asyncio.ensure_future(pieces.__anext__())
        empty_since: Optional[float] = None
        try:
            while True:
                done, _ = await asyncio.wait({nxt}, timeout=0.05)
                if done:
                    return nxt.result()
                if self.client.replicas():
                    empty_since = None
                    continue
                now = time.monotonic()
                empty_since = empty_since or now
                if now - empty_since > NO_REPLICA_GRACE_S:
                    raise NoReplica()
        finally:
            if not nxt.done():
                nxt.cancel()

    async def _speak(self, chunk, generation: int) -> bool:
        """One chunk through the replicas: True once spoken, False when the utterance failed."""
        client, sr = self.client, self.client.sample_rate
        sent, avoid = 0, []
        first_failure: Optional[float] = None
        while True:
            call = {"chunk": chunk, "voice": self.spec.voice, "seed": self.spec.seed, "speed": self.spec.speed,
                    "lead_s": self.t_ref + self.produced_s - time.monotonic(), "skip": sent, "avoid": avoid}
            replica = None
            response = None
            try:
                client.stats.calls += 1
                # Straight to the replica's gRPC server, not as a Ray actor task: each piece then
                # skips Ray's object machinery on both sides, which is on the path to first audio.
                response = client.handle.options(stream=True, _by_reference=False).synthesize.remote(call)
                pieces = response.__aiter__()
                while True:
                    if replica is None:  # not yet taken by a replica: one must still exist
                        piece = await self._first_piece(pieces)
                    else:
                        try:
                            piece = await pieces.__anext__()
                        except StopAsyncIteration:
                            break
                    kind = piece[0]
                    if kind == "r":
                        replica = piece[1]
                    elif kind == "a":
                        if first_failure is not None:
                            client.stats.gaps.append(time.monotonic() - first_failure)
                            first_failure = None
                        if self.pause:
                            self._post(PauseOut(generation, self.pause), self.pause)
                            self.pause = 0
                        audio = piece[1]
                        sent += len(audio)
                        self._post(AudioOut(generation, audio, piece[2]), len(audio))
                    elif kind == "s":
                        if self.pause:
                            self._post(PauseOut(generation, self.pause), self.pause)
                            self.pause = 0
                        seg: SpokenSegment = piece[1]
                        seg.index = chunk.index
                        self._post(SegmentOut(generation, seg, piece[2]))
                        self.pause = pause_samples(chunk.pause_ms, self.spec.speed, sr)
                    elif kind == "f":
                        return True
                    elif kind == "x":
                        client.stats.failed += 1
                        self._post(FailedOut(generation, piece[1], piece[2]))
                        return False
                raise ConnectionError("the replica's stream ended before the chunk did")
            except asyncio.CancelledError:
                if response is not None:
                    response.cancel()
                raise
            except NoReplica:
                client.stats.failed += 1
                self._post(FailedOut(generation, "engine_unavailable",
                                     "the engine is unavailable: no engine replica is left"))
                return False
            except Exception as exc:  # the replica died, or the handle could not reach one
                if _busy(exc):
                    client.stats.failed += 1
                    self._post(FailedOut(generation, "server_busy",
                                         "every engine replica is at its capacity; try again shortly"))
                    return False
                now = time.monotonic()
                first_failure = first_failure or now
                client.stats.failovers += 1
                if replica is not None:
                    avoid.append(replica)
                left = [r for r in client.replicas() if r not in avoid]
                log.warning("chunk %r: replica %s failed (%s: %s); %d left", str(chunk.text)[:20], replica,
                            type(exc).__name__, exc, len(left))
                if not left or now - first_failure > FAILOVER_TIMEOUT_S:  # nothing to fail over to
                    client.stats.failed += 1
                    self._post(FailedOut(generation, "engine_unavailable",
                                         "the engine is unavailable: no engine replica is left"))
                    return False
                await asyncio.sleep(0.02)


class NoReplica(Exception):
    """No replica is left to take a call (Serve would hold it until one is started)."""


def _busy(exc: BaseException) -> bool:
    try:
        from ray.serve.exceptions import BackPressureError
    except ImportError:  # pragma: no cover
        return False
    return isinstance(exc, BackPressureError)
