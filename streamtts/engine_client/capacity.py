"""Live capacity: how many streams the engine can keep at real time now, from what it does.

Pure policy (no I/O, no threads, no tensors; the caller passes the clock), fed by the engine
thread::

    est = CapacityEstimator(CapacityPolicy())            # or CapacityEstimator(pinned=8): never changes
    est.measured(now, [Measure(1, audio_s, took_s, wait), Measure(4, ...)])   # calibration, at start
    change = est.tick(now, compute_s, audio_s, streams, slack_s)            # every engine tick
    est.extra(now, slack_s, newcomers, load)             # slots beyond capacity the headroom allows now
    if est.remeasure_due(now): ...speak a calibration on the idle engine, then est.measured(...)
    est.capacity                                         # streams to admit; never below 1

The model. A stream at real time consumes one second of audio a second, so N streams need
``N * k(N)`` of the engine thread, where ``k(n)`` is the compute per second of audio while ``n``
streams share the engine. Batching spreads a tick's fixed cost over the rows that share it, so
``k(n) = p + f / n``: a per-stream cost ``p`` and a shared cost ``f``, i.e. N streams cost
``p * N + f``, up to the largest calibrated batch; beyond it the cost per stream is taken as
flat (no batching gain is assumed that was not seen). The shape (``p``, ``f``) comes from the last calibration, spoken at two batch sizes
on an idle engine; the level comes from the ticks: ``s`` = compute the ticks took over the
compute the shape predicts for the audio they made, in a window that decays with
``half_life_s`` (the calibration counts in it as ticks of its own, so the first live ticks do not
swing it). Slower ticks (other processes taking the CPU, longer texts, a slower vocoder path)
raise ``s``. The capacity is the largest N with ``s * (p * N + f) <= utilization``.

Changes, so that admission does not oscillate: the estimate must stay below the capacity by
more than ``lower_tolerance`` (a share of the utilization's headroom, which tick-time noise
would otherwise eat into) for ``lower_after_s`` of ticks before it is lowered (at once, to the
estimate), and above capacity + 1 + ``raise_margin`` for ``raise_after_s`` before it is raised,
by one. Independently of the
model, an engine thread busy for ``saturated`` of the last ``busy_window_s`` while a running
stream has less than ``low_slack_s`` of audio ahead of its listener is overloaded (streams that
started less than ``settle_s`` ago do not count: see :func:`load_of`): held for
``lower_after_s``, that lowers the capacity by one and blocks raising for ``overload_cooldown_s``.
Lowering only stops new admissions; admitted streams keep their slots.

Extra slots. The capacity counts every admitted stream as computing at real time. Conversation
turns are not: they come in bursts, compute ahead of their listeners, and then hold their slots
while more text comes or their audio plays out. So while every settled playing stream with work has
at least ``extra_slack_s`` of audio ahead of its listener, and at most ``extra_newcomers`` streams
wait for their first audio, ``extra_share`` of the capacity more may be admitted (:meth:`extra`); a
pinned capacity has none. They are bounded by what the streams' text in hand still needs: within
each of ``extra_horizons_s``, the audio each stream must make before its listener runs dry (its
text's audio, estimated from its length, less what it has ahead), plus a newcomer's for the whole
horizon, must fit the utilization. Turns that compute ahead of their listeners leave room; many
long texts that start together do not, however much audio each has in hand for the moment. Earliest
deadline first serves a newcomer's first block before the streams that are ahead, and those have
the audio in hand to wait; as soon as one runs low the extra slots go, until enough are given back.
An overload closes them for ``extra_cooldown_s`` and halves their share, which then grows back over
``extra_regain_s``: back off fast, come back gradually, as a congestion window does. A burst of
turns that overloads the engine once costs seconds of extra slots, not the minute that the
capacity's own cool-down lasts.

An idle engine has no ticks, so a figure made under load would stay. A calibration whose
process waited for a CPU for more than ``contended`` of its wall time (other processes competed),
or whose wait is unknown, or a capacity that ticks lowered since the last calibration, is
suspect: once the engine has been idle for ``idle_s`` and ``remeasure_after_s`` has passed since
that calibration, the caller speaks a calibration again. Each suspect result doubles the wait
(up to ``remeasure_max_s``); a clean one ends re-measuring until ticks lower the figure again. So
a quiet machine never re-measures, and a loaded one spends one short calibration per
``remeasure_max_s`` at most.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from streamtts.core.request import Status


@dataclass(frozen=True)
class Measure:
    """One calibration point: ``streams`` utterances spoken at once, flat out, on an idle engine;
    ``audio_s`` of audio in ``took_s`` of wall time. ``cpu_wait_s``: time this process's threads
    spent runnable but waiting for a CPU meanwhile (None: the platform does not say)."""

    streams: int
    audio_s: float
    took_s: float
    cpu_wait_s: Optional[float] = None

    @property
    def cost(self) -> float:
        """Compute seconds per second of audio."""
        return self.took_s / max(self.audio_s, 1e-9)

    @property
    def contended(self) -> Optional[float]:
        """Share of the wall time spent waiting for a CPU (None: unknown)."""
        return None if self.cpu_wait_s is None else self.cpu_wait_s / max(self.took_s, 1e-9)


@dataclass
class CapacityPolicy:
    utilization: float = 0.8  # share of the engine thread admitted streams may use (events, bursts)
    half_life_s: float = 4.0  # of the tick window: short to follow load, long enough for one slow tick
    lower_tolerance: float = 0.15  # lowered when the estimate is below capacity / (1 + this)
    lower_after_s: float = 3.0  # a lower estimate held this long (with ticks) lowers the capacity
    raise_after_s: float = 15.0  # a higher one held this long raises it, by one stream
    raise_margin: float = 0.25  # of a stream: the next capacity must fit with this much to spare
    busy_window_s: float = 2.0  # the engine thread's busy share is taken over this much wall time
    saturated: float = 0.95  # busy share above which the engine has no headroom left
    low_slack_s: float = 0.5  # a running stream with less audio ahead than this is about to run dry
    overload_cooldown_s: float = 60.0  # after an overload, no raise for this long
    contended: float = 0.1  # a calibration that waited for a CPU more than this share is suspect
    idle_s: float = 5.0  # re-measure only after the engine has had no tick for this long
    remeasure_after_s: float = 10.0  # first wait after a suspect calibration; doubles each time
    remeasure_max_s: float = 600.0
    max_capacity: int = 1024
    extra_share: float = 1.0  # of the capacity: slots beyond it while the engine has headroom
    extra_slack_s: float = 0.5  # ... that is, while every playing stream has this much audio ahead
    extra_newcomers: int = 2  # ... and at most this many streams wait for their first audio
    # ... and within each of these horizons, the audio that the streams' text in hand must make
    # for their listeners not to run dry, plus a newcomer's that needs audio all along, fits the
    # utilization: long streams that start together need theirs at once, turns seldom do
    extra_horizons_s: tuple = (2.0, 4.0, 8.0)
    # After an overload the extra slots close for ``extra_cooldown_s``, then reopen at half the
    # share they had, which grows back to ``extra_share`` over ``extra_regain_s`` without another:
    # turns come in bursts, and one burst must not cost the extra slots for a minute.
    extra_cooldown_s: float = 10.0
    extra_regain_s: float = 40.0
    # A stream whose text came less than this ago has little audio ahead by construction (its
    # first blocks have just been sent): its slack says nothing about overload or headroom.
    settle_s: float = 1.0


# Speech per character of text at speed 1, to tell how much audio a stream's text in hand will
# make before it is synthesized (the voices speak about five characters a second, punctuation's
# pauses included); an estimate, used only to judge the headroom for extra slots.
SPEECH_S_PER_CHAR = 0.2


@dataclass(frozen=True)
class Load:
    """The engine's streams at one tick, as :meth:`CapacityEstimator.tick` and
    :meth:`CapacityEstimator.extra` take them (:func:`load_of`)."""

    streams: int  # requests with work
    newcomers: int  # ... of which have made no audio yet
    slack_s: Optional[float]  # least audio ahead of its listener of a settled playing stream; None: none
    # per stream with work: (audio ahead of its listener, audio its text in hand will still make)
    needs: tuple = ()

    def due_s(self, horizon_s: float) -> float:
        """Audio the streams must make within ``horizon_s`` for their listeners not to run dry."""
        return sum(min(owed, max(0.0, horizon_s - ahead)) for ahead, owed in self.needs)


def owed_s(req, frame_s: float) -> float:
    """Audio that ``req``'s text in hand will still make: its current chunk less what it has
    emitted, the chunks cut after it and the text not cut yet (:data:`SPEECH_S_PER_CHAR`)."""
    per_char = SPEECH_S_PER_CHAR / max(req.speed, 1e-3)
    owed = (sum(len(c.text) for c in req.chunks) + len(req.chunker.pending)) * per_char
    cur = req.current
    if cur is not None:
        owed += max(0.0, len(cur.chunk.text) * per_char - cur.audio_frames * frame_s)
    return owed


def load_of(now: float, requests: Iterable, settle_s: float, frame_s: Optional[float] = None) -> Load:
    """The :class:`Load` of the scheduler's ``requests`` (streamtts.core.request.Request). Slack
    counts only playing streams whose text came ``settle_s`` or more ago: one that has just started
    has only its first block ahead, and many calls starting turns would otherwise look like an
    engine falling behind. ``needs`` (every stream with work) only with ``frame_s``, the seconds
    of audio per decoder frame."""
    streams = newcomers = 0
    slack = None
    needs = []
    for req in requests:
        if not req.has_work:
            continue
        streams += 1
        if req.produced_s == 0:
            newcomers += 1
        elif req.status is Status.RUNNING and now - req.t_ref >= settle_s:
            left = req.deadline - now
            slack = left if slack is None else min(slack, left)
        if frame_s is not None:
            needs.append((max(0.0, req.deadline - now) if req.produced_s else 0.0, owed_s(req, frame_s)))
    return Load(streams, newcomers, slack, tuple(needs))


@dataclass(frozen=True)
class Change:
    capacity: int
    previous: int
    reason: str


class CapacityEstimator:
    def __init__(self, policy: Optional[CapacityPolicy] = None, pinned: Optional[int] = None):
        self.policy = policy or CapacityPolicy()
        self.pinned = max(1, int(pinned)) if pinned else None
        self.capacity = self.pinned or 0  # 0 until the first calibration; from then on at least 1
        self.p, self.f = 1.0, 0.0  # shape: N streams cost p * N + f of the engine, before the level s
        self.n_max = 1  # the largest batch calibrated: no batching gain is extrapolated beyond it
        self._st = self._sk = 0.0  # decayed: compute the ticks took, compute the shape predicts
        self._t = None  # time the sums were last decayed to
        self._busy: deque = deque()  # (time, compute) of recent ticks
        self._low_since = self._high_since = self._overload_since = None
        self._no_raise_until = -math.inf
        # extra slots: the share of ``extra_share`` they had when the last overload closed them,
        # and when they reopen (from then on the share grows back: :meth:`_extra_scale`)
        self._extra_kept, self._extra_from = 1.0, -math.inf
        self.last_tick = -math.inf
        self.last_measure: Optional[float] = None
        self.suspect = False  # the figure may be an artifact of load that has gone
        self._wait = self.policy.remeasure_after_s

    # ---- the model ----------------------------------------------------------------------------
    def cost(self, streams: float) -> float:
        """Predicted compute per second of audio with ``streams`` sharing the engine, before the
        level: ``p + f / streams``, flat beyond the largest calibrated batch."""
        return self.p + self.f / min(max(1.0, streams), self.n_max)

    @property
    def level(self) -> float:
        """Observed compute over predicted compute (1: as calibrated; 2: ticks take twice as long)."""
        return self._st / self._sk if self._sk > 0 else 1.0

    @property
    def estimate(self) -> float:
        """Streams the engine keeps at real time now, with the utilization's headroom (a real)."""
        budget = self.policy.utilization / self.level  # of the engine, in calibrated compute
        beyond = budget / self.cost(self.n_max)  # streams, if at least the largest calibrated batch
        if beyond >= self.n_max:
            return beyond
        return max(0.0, (budget - self.f) / self.p)

    def _target(self) -> int:
        return int(min(self.policy.max_capacity, max(1, math.floor(self.estimate + 1e-9))))

    def _decay(self, now: float) -> None:
        if self._t is not None and now > self._t:
            k = 0.5 ** ((now - self._t) / self.policy.half_life_s)
            self._st *= k
            self._sk *= k
        self._t = now if self._t is None else max(self._t, now)

    # ---- inputs -------------------------------------------------------------------------------
    def measured(self, now: float, measures: Sequence[Measure]) -> Optional[Change]:
        """A calibration on the idle engine (its result, even when the capacity stays; None when
        pinned or empty): the shape from its points (two batch sizes fit both
        costs; one point keeps the shared share of the last shape), the window restarted from it,
        and the capacity set to what it gives, up or down (nobody is waiting on an idle engine's
        decision, and a deliberate measure is the best evidence there is)."""
        pts = [m for m in measures if m.audio_s > 0 and m.took_s > 0]
        if not pts or self.pinned:
            return None
        pts.sort(key=lambda m: m.streams)
        lo, hi = pts[0], pts[-1]
        if hi.streams > lo.streams:
            f = (lo.cost - hi.cost) / (1 / lo.streams - 1 / hi.streams)
            p = hi.cost - f / hi.streams
            if f < 0:  # batching cannot make a stream dearer: noise; take the dearer point
                p, f = max(lo.cost, hi.cost), 0.0
        else:  # keep the last shape's split between shared and per-stream cost
            share = self.f / (self.p * hi.streams + self.f) if self.p > 0 else 0.0
            p, f = hi.cost * (1 - share), hi.cost * share * hi.streams
        floor_p = hi.cost / 4  # a shared cost is never the whole cost: keep the per-stream part real
        if p < floor_p:
            p, f = floor_p, (hi.cost - floor_p) * hi.streams
        self.p, self.f = p, f
        self.n_max = max(self.n_max if hi.streams == lo.streams else 1, hi.streams)
        self._t = now
        self._st = sum(m.took_s for m in pts)  # the calibration's ticks, as the window's first
        self._sk = sum(m.audio_s * self.cost(m.streams) for m in pts)
        self._low_since = self._high_since = self._overload_since = None
        waits = [m.contended for m in pts]
        busy = any(w is None or w > self.policy.contended for w in waits)
        first = self.last_measure is None
        self.last_measure = now
        self.suspect = busy
        self._wait = min(self.policy.remeasure_max_s, self._wait * 2) if busy and not first else \
            self.policy.remeasure_after_s
        shown = ", ".join("unknown" if w is None else f"{w:.0%}" for w in waits)
        previous = self.capacity
        self._set(self._target(), "")
        return Change(self.capacity, previous, f"calibrated, waited for a CPU: {shown}"
                      + (" (suspect: measured again when idle)" if busy else ""))

    def tick(self, now: float, compute_s: float, audio_s: float, streams: int,
             slack_s: Optional[float] = None) -> Optional[Change]:
        """One engine tick: ``compute_s`` of wall time that made ``audio_s`` of synthesized audio
        (phrase-cache audio excluded: it costs nothing, and the next stream may not hit it) while
        ``streams`` requests had work; ``slack_s``: the least audio any settled playing stream has
        ahead of its listener (None: none; :func:`load_of`). A capacity change, if any."""
        p = self.policy
        self.last_tick = now
        if self.pinned:
            return None
        self._decay(now)
        self._st += compute_s
        self._sk += audio_s * self.cost(streams)
        self._busy.append((now, compute_s))
        while self._busy and self._busy[0][0] < now - p.busy_window_s:
            self._busy.popleft()
        busy = sum(c for _, c in self._busy) / p.busy_window_s
        overloaded = busy >= p.saturated and slack_s is not None and slack_s < p.low_slack_s
        target = self._target()

        if overloaded:
            self._overload_since = now if self._overload_since is None else self._overload_since
        else:
            self._overload_since = None
        if self._overload_since is not None and now - self._overload_since >= p.lower_after_s \
                and self.capacity > 1:
            self._overload_since = None
            self._no_raise_until = now + p.overload_cooldown_s
            self._extra_kept = self._extra_scale(now) / 2
            self._extra_from = now + p.extra_cooldown_s
            return self._set(min(self.capacity - 1, target), "overloaded: streams about to run dry",
                             lowered=True)

        if self.estimate * (1 + p.lower_tolerance) < self.capacity:
            self._high_since = None
            self._low_since = now if self._low_since is None else self._low_since
            if now - self._low_since >= p.lower_after_s:
                self._low_since = None
                return self._set(target, "ticks slower", lowered=True)
            return None
        self._low_since = None
        if self.estimate >= self.capacity + 1 + p.raise_margin and now >= self._no_raise_until \
                and self.capacity < p.max_capacity:
            self._high_since = now if self._high_since is None else self._high_since
            if now - self._high_since >= p.raise_after_s:
                self._high_since = now  # the next step up waits as long again
                return self._set(self.capacity + 1, "ticks faster")
        else:
            self._high_since = None
        return None

    def extra(self, now: float, slack_s: Optional[float], newcomers: int, load: Optional[Load] = None) -> int:
        """Slots beyond the capacity that the headroom allows now: ``slack_s`` is the least audio any
        playing stream with work has ahead of its listener (None: none is playing), ``newcomers``
        the streams with work that have no audio yet; ``load`` (:func:`load_of` with ``needs``;
        None: not judged) bounds them by the newcomers that the audio due within each horizon
        (``extra_horizons_s``) leaves room for."""
        p = self.policy
        if self.pinned or not self.capacity or self._overload_since is not None:
            return 0
        if newcomers > p.extra_newcomers or (slack_s is not None and slack_s < p.extra_slack_s):
            return 0
        extra = int(p.extra_share * self._extra_scale(now) * self.capacity + 1e-9)
        if load is not None and extra > 0 and p.extra_horizons_s:
            # engine seconds per second of audio now; a newcomer needs audio all along a horizon
            k = self.level * self.cost(load.streams + 1)
            room = min((p.utilization * t / k - load.due_s(t)) / t for t in p.extra_horizons_s)
            # and no more newcomers at once than the gate above allows to wait for first audio:
            # slots that open all together would let that many in before the next tick looks
            room = min(room, p.extra_newcomers - newcomers)
            extra = min(extra, max(0, load.streams + math.floor(room + 1e-9) - self.capacity))
        return extra

    def _extra_scale(self, now: float) -> float:
        """The share of ``extra_share`` open now: none during the cool-down after an overload,
        then what was kept, growing back to all of it over ``extra_regain_s``."""
        if now < self._extra_from:
            return 0.0
        regained = (now - self._extra_from) / self.policy.extra_regain_s if self.policy.extra_regain_s > 0 else 1.0
        return min(1.0, self._extra_kept + regained)

    def remeasure_due(self, now: float) -> bool:
        """The engine is idle and its figure is suspect and old enough: speak a calibration."""
        p = self.policy
        return (not self.pinned and self.suspect and self.last_measure is not None
                and now - self.last_tick >= p.idle_s and now - self.last_measure >= self._wait)

    def measure_failed(self, now: float) -> None:
        """A re-measure was given up (work arrived): try again after the usual wait."""
        self.last_measure = now

    def _set(self, capacity: int, reason: str, lowered: bool = False) -> Optional[Change]:
        capacity = int(min(self.policy.max_capacity, max(1, capacity)))
        if lowered:
            self.suspect = True  # an idle engine checks whether the cause has gone
        if capacity == self.capacity:
            return None
        previous, self.capacity = self.capacity, capacity
        return Change(capacity, previous, reason)
