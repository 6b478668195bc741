"""Live capacity: admission follows what the engine keeps up with now, not what it measured once.

The estimator's policy (streamtts/engine_client/capacity.py) with fake ticks and a fake clock;
then one real server, started while busy processes take the CPU, that raises its /ready capacity
once they are gone."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time

import pytest

from streamtts.core.request import Request, Status
from streamtts.engine_client.capacity import SPEECH_S_PER_CHAR, CapacityEstimator, CapacityPolicy, Load, Measure, load_of
from streamtts.text.chunker import Chunk

# Fake engine: one stream costs 0.1 s of compute per second of audio alone, four at once 0.075
# each (a shared cost of 0.1 per tick spread over them). Capacity at 0.8: (0.8 - f) / p.
P, F = 1 / 15, 1 / 30  # 1 stream: P + F = 0.1; 4 streams: P + F / 4 = 0.075


def calibration(scale: float = 1.0, wait: float | None = 0.0) -> list[Measure]:
    """The start-up calibration of the fake engine, ``scale`` times slower (other processes)."""
    return [Measure(1, 10.0, 10.0 * (P + F) * scale, wait), Measure(4, 40.0, 40.0 * (P + F / 4) * scale, wait)]


def quiet_estimator(**policy) -> tuple[CapacityEstimator, float]:
    est = CapacityEstimator(CapacityPolicy(**policy))
    est.measured(0.0, calibration())
    return est, 0.0


def run_ticks(est: CapacityEstimator, t0: float, seconds: float, scale: float, streams: int,
              slack: float | None = 2.0, tick: float = 0.1) -> tuple[float, list]:
    """Ticks of ``tick`` s for ``seconds`` of fake time at ``scale`` times the calibrated cost,
    with ``streams`` streams: each tick makes the audio that its compute buys."""
    changes, t = [], t0
    cost = (P + F / min(streams, 4)) * scale
    while t < t0 + seconds:
        t += tick
        c = est.tick(t, tick, tick / cost, streams, slack)
        if c is not None:
            changes.append((t, c))
    return t, changes


def test_calibration_at_two_batch_sizes_gives_the_modelled_capacity():
    est, _ = quiet_estimator()
    assert est.f == pytest.approx(F) and est.p == pytest.approx(P)
    # beyond the largest calibrated batch no further batching gain: 0.8 / 0.075
    assert est.capacity == 10 and est.estimate == pytest.approx(0.8 / (P + F / 4))
    assert not est.suspect  # a quiet calibration is not measured again


def test_sustained_slow_ticks_lower_it_fast_one_slow_tick_does_not():
    est, t = quiet_estimator()
    t, changes = run_ticks(est, t, 5.0, 1.0, 6)
    assert changes == [] and est.capacity == 10
    # one tick ten times as slow as usual (a stall: swapping, a neighbour's burst): no change
    c = est.tick(t + 1.0, 1.0, 0.1 / (P + F / 4), 6, 2.0)
    t, changes = run_ticks(est, t + 1.0, 5.0, 1.0, 6)
    assert c is None and changes == [] and est.capacity == 10
    # the engine gets three times as slow and stays so: lowered within seconds, in big steps,
    # down to what fits (0.8 / (3 * 0.075) = 3.6) within the lowering tolerance
    t, changes = run_ticks(est, t, 30.0, 3.0, 6)
    assert changes and changes[0][0] - (t - 30.0) < 6.0 and changes[0][1].capacity <= 7
    assert est.capacity in (3, 4) and est.capacity <= est.estimate * (1 + est.policy.lower_tolerance)
    assert all(c.capacity < c.previous for _, c in changes)
    assert est.suspect  # an idle engine will check whether the cause has gone


def test_recovers_after_a_transient_slow_period_raising_slowly():
    est, t = quiet_estimator()
    t, _ = run_ticks(est, t, 20.0, 3.0, 6)
    low = est.capacity
    assert low < 10
    t0 = t
    t, changes = run_ticks(est, t, 300.0, 1.0, 6)
    ups = changes
    assert est.capacity == 10
    assert all(c.capacity == c.previous + 1 for _, c in ups)  # one stream at a time
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(ups)]
    assert ups[0][0] - t0 >= 15.0 and all(g >= 15.0 - 1e-6 for g in gaps)


def test_hysteresis_an_estimate_near_the_boundary_does_not_flap():
    est, t = quiet_estimator()
    # tick times wandering by 5 % either way: the estimate moves around 10.7 (capacity 10), never
    # far enough for a change either way
    changes = []
    for i in range(3000):
        t += 0.1
        scale = 0.95 if (i // 50) % 2 else 1.05
        c = est.tick(t, 0.1, 0.1 / ((P + F / 4) * scale), 6, 2.0)
        if c is not None:
            changes.append(c)
    assert changes == [] and est.capacity == 10


def test_overload_with_a_stream_about_to_run_dry_lowers_before_it_underruns():
    est, t = quiet_estimator()
    # the model still says 10 (ticks as calibrated), but the engine is busy all the time and a
    # playing stream has little audio left: lower now, and do not raise again at once
    changes = []
    for _ in range(60):
        t += 0.1
        c = est.tick(t, 0.1, 0.1 / (P + F / 4), 10, 0.2)
        if c is not None:
            changes.append(c)
    assert [c.capacity for c in changes] == [9]
    t, ups = run_ticks(est, t, 30.0, 1.0, 6, tick=0.05)
    assert ups == [] and est.capacity == 9


def test_extra_slots_only_while_every_playing_stream_has_audio_in_hand():
    est, t = quiet_estimator()
    t, _ = run_ticks(est, t, 5.0, 1.0, 6)
    assert est.extra(t, 2.0, 0) == 10  # headroom: as many again
    assert est.extra(t, None, 2) == 10  # nobody plays yet, two wait for their first audio
    assert est.extra(t, 0.3, 0) == 0  # a listener is about to run dry
    assert est.extra(t, 2.0, 3) == 0  # too many still wait for their first audio
    # a pinned capacity means what it says
    assert CapacityEstimator(CapacityPolicy(), pinned=3).extra(t, 5.0, 0) == 0


def overload(est: CapacityEstimator, t: float) -> float:
    """Ticks that keep the engine busy while a settled stream runs low, until the capacity drops."""
    before = est.capacity
    while est.capacity == before:
        t += 0.1
        est.tick(t, 0.1, 0.1 / (P + F / 4), 10, 0.2)
    return t


def test_an_overload_closes_the_extra_slots_for_seconds_then_they_come_back_gradually():
    # Turns come in bursts: one burst that overloads the engine must not cost the extra slots for
    # the rest of the minute, and a second one soon after must cost more than the first.
    est, t = quiet_estimator()
    t, _ = run_ticks(est, t, 5.0, 1.0, 6)
    assert est.extra(t, 2.0, 0) == 10
    t = overload(est, t)
    assert est.capacity == 9 and est.extra(t, 2.0, 0) == 0
    policy = est.policy
    t, _ = run_ticks(est, t, policy.extra_cooldown_s - 1.0, 1.0, 6)
    assert est.extra(t, 2.0, 0) == 0  # still cooling down
    t, _ = run_ticks(est, t, 1.5, 1.0, 6)
    half = est.extra(t, 2.0, 0)
    assert 0 < half < est.capacity and half == pytest.approx(est.capacity / 2, abs=1)
    t, _ = run_ticks(est, t, policy.extra_regain_s, 1.0, 6)
    assert est.extra(t, 2.0, 0) == est.capacity  # all of it again, while the capacity stays lowered
    assert est.capacity == 9
    # two overloads in a row: a quarter after the second cool-down
    t = overload(est, t)
    t, _ = run_ticks(est, t, policy.extra_cooldown_s + 0.5, 1.0, 6)
    t = overload(est, t)
    t, _ = run_ticks(est, t, policy.extra_cooldown_s + 0.5, 1.0, 6)
    assert 0 < est.extra(t, 2.0, 0) <= est.capacity // 4 + 1


def test_a_turn_that_has_just_started_is_not_taken_for_an_engine_falling_behind():
    # Calls start turns all the time; each has only its first block ahead for a moment. Its slack
    # must not count as overload or close the extra slots; an older stream's low slack must.
    now = 100.0

    def stream(age_s: float, ahead_s: float, produced: bool = True) -> Request:
        req = Request("biaobei", 0, 1.0, sink=lambda _: None)
        req.chunks.append(object())  # text to speak: it has work
        req.status = Status.RUNNING
        req.t_ref = now - age_s
        req.produced_s = age_s + ahead_s if produced else 0.0
        return req

    settle = CapacityPolicy().settle_s
    young, old, waiting = stream(0.2, 0.1), stream(settle + 5.0, 2.0), stream(0.1, 0.0, produced=False)
    load = load_of(now, [young, old, waiting], settle)
    assert (load.streams, load.newcomers, load.slack_s) == (3, 1, pytest.approx(2.0))
    est, t = quiet_estimator()
    t, _ = run_ticks(est, t, 5.0, 1.0, 6)
    assert est.extra(t, load.slack_s, load.newcomers) == est.capacity
    behind = stream(settle + 5.0, 0.2)
    load = load_of(now, [young, old, behind], settle)
    assert load.slack_s == pytest.approx(0.2) and est.extra(t, load.slack_s, load.newcomers) == 0
    idle = stream(settle + 5.0, -3.0)
    idle.chunks.clear()  # nothing to say: neither a stream nor a slack
    assert load_of(now, [idle], settle) == Load(0, 0, None)


def test_no_extra_slots_when_the_server_is_told_so():
    # `--extra-slots 0` (ServerConfig.extra_slots): a live capacity with nothing beyond it
    from streamtts.engine_client.inprocess import Worker
    from streamtts.server.config import ServerConfig

    est = Worker(None, ServerConfig(extra_slots=0.0)).estimator
    est.measured(0.0, calibration())
    t, _ = run_ticks(est, 0.0, 5.0, 1.0, 6)
    assert est.capacity == 10 and est.extra(t, 2.0, 0) == 0
    assert Worker(None, ServerConfig()).estimator.policy.extra_share == 1.0


def test_pinned_capacity_never_changes():
    est = CapacityEstimator(CapacityPolicy(), pinned=3)
    assert est.measured(0.0, calibration(scale=5.0, wait=9.0)) is None
    t, changes = run_ticks(est, 0.0, 60.0, 10.0, 6, slack=0.0)
    t, more = run_ticks(est, t, 60.0, 0.1, 6)
    assert changes == more == [] and est.capacity == 3
    assert not est.remeasure_due(t + 1000)


def test_never_below_one():
    est, t = quiet_estimator()
    run_ticks(est, t, 60.0, 1000.0, 1, slack=0.0)
    assert est.capacity == 1 and est.estimate < 1
    est2 = CapacityEstimator(CapacityPolicy())
    est2.measured(0.0, calibration(scale=1000.0, wait=50.0))
    assert est2.capacity == 1


def test_a_start_under_load_is_measured_again_when_idle_and_recovers():
    est = CapacityEstimator(CapacityPolicy())
    # others took the CPU: the calibration ran four times as slow and waited for a CPU most of
    # the time
    loaded = [Measure(m.streams, m.audio_s, m.took_s, m.took_s * 0.7) for m in calibration(scale=4.0)]
    est.measured(0.0, loaded)
    assert est.capacity == 2 and est.suspect
    assert not est.remeasure_due(5.0)  # not at once: the load may still be there
    assert est.remeasure_due(10.0)
    # still loaded at the second try: the wait doubles
    est.measured(10.0, [loaded[1]])
    assert est.capacity == 2 and not est.remeasure_due(25.0) and est.remeasure_due(30.0)
    # a tick meanwhile: the engine is not idle, no measure
    est.tick(29.0, 0.1, 1.0, 1, 2.0)
    assert not est.remeasure_due(30.0) and est.remeasure_due(34.0)
    # quiet now: one measure sets it (up at once), and re-measuring stops
    change = est.measured(34.0, [calibration()[1]])
    assert change is not None and change.capacity == 10 and est.capacity == 10
    assert not est.suspect and not est.remeasure_due(10_000.0)


def test_unknown_cpu_wait_is_checked_with_a_growing_wait():
    est = CapacityEstimator(CapacityPolicy(remeasure_max_s=600.0))
    est.measured(0.0, calibration(wait=None))
    assert est.capacity == 10 and est.suspect
    t, waits = 0.0, []
    for _ in range(9):
        step = 1.0
        while not est.remeasure_due(t + step):
            step += 1.0
        waits.append(step)
        t += step
        est.measured(t, [calibration(wait=None)[1]])
    assert waits[:3] == [10.0, 20.0, 40.0] and waits[-1] == 600.0  # bounded: no constant burn


def test_capacity_figure_uses_headroom():
    est = CapacityEstimator(CapacityPolicy(utilization=0.4))
    est.measured(0.0, calibration())
    assert est.capacity == 5  # 0.4 / 0.075


# ---- a real server ----------------------------------------------------------------------------

BUSY = "while True: pass"


def _ready(server) -> dict:
    status, body = server.get("/ready", check=False, timeout=10.0)
    return json.loads(body) if status == 200 else {}


def test_server_started_under_cpu_load_raises_its_capacity_once_the_load_is_gone(pack):
    """Busy processes (more than the cores) run while the server calibrates; after /ready they
    are stopped, and the idle server measures again and admits more. Waits on state with
    generous deadlines, never on a wall-clock window."""
    from support.servers import ProcessServer

    hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range((os.cpu_count() or 2) + 2)]
    try:
        server = ProcessServer("--cache-mb", "0").__enter__()
    finally:
        for hog in hogs:
            hog.kill()
        for hog in hogs:
            hog.wait(30)
    try:
        start = server.ready["capacity"]
        log = server.output()
        assert "suspect" in log, log[-3000:]  # the calibration saw the competition for the CPU
        deadline = time.monotonic() + 240.0
        now = start
        while now <= start and time.monotonic() < deadline:
            time.sleep(1.0)
            now = _ready(server).get("capacity", now)
        assert now > start, f"capacity stayed {start}:\n{server.output()[-4000:]}"
        assert server.metrics()["streamtts_capacity"] == now
    finally:
        server.__exit__(None, None, None)
        print(server.output()[-4000:])  # the capacity log, for a run with -s


def test_many_long_streams_starting_together_get_no_extra_slots_turns_ahead_of_their_listeners_do():
    # The extra slots bet that admitted streams are ahead of their listeners or between bursts of
    # text. Long texts that all start at once need their audio now and for seconds to come: the
    # audio due within the horizons leaves no room for another stream, where streams ahead of
    # their listeners with little left to say leave nearly the whole share.
    now = 100.0
    sentence = "今天天气很好，我们一起去公园散步吧。"  # 18 characters

    def stream(age_s: float, ahead_s: float, text: str) -> Request:
        req = Request("biaobei", 0, 1.0, sink=lambda _: None)
        req.chunks.append(Chunk(text, 0, 0, 0, len(text)))
        req.status = Status.RUNNING
        req.t_ref = now - age_s
        req.produced_s = age_s + ahead_s
        return req

    def load(streams):
        return load_of(now, streams, CapacityPolicy().settle_s, frame_s=256 / 22050)

    est, t = quiet_estimator()
    t, _ = run_ticks(est, t, 5.0, 1.0, 6)
    assert est.capacity == 10
    # twelve long streams (two in extra slots already), each with 0.6 s in hand
    burst = load([stream(1.5, 0.6, sentence * 2) for _ in range(12)])
    owed = 2 * len(sentence) * SPEECH_S_PER_CHAR
    assert burst.streams == 12 and burst.needs[0] == (pytest.approx(0.6), pytest.approx(owed))
    assert burst.due_s(2.0) == pytest.approx(12 * 1.4) and burst.due_s(8.0) == pytest.approx(12 * owed)

    def room(load: Load) -> int:  # further streams admission takes now
        return est.capacity + est.extra(t, load.slack_s, load.newcomers, load) - load.streams

    assert est.extra(t, burst.slack_s, burst.newcomers) == 10  # the other gates alone: ten more
    assert room(burst) <= 0
    # ten turns well ahead of their listeners, with a few characters left each
    ahead = [stream(3.0, 3.0, sentence[:5]) for _ in range(10)]
    calm = load(ahead)
    # (as many newcomers at once as may wait for their first audio: the next ticks judge again)
    assert calm.due_s(2.0) == 0.0 and room(calm) == est.policy.extra_newcomers
    # and seven more that have just started a sentence each: room for fewer
    busy = load(ahead + [stream(0.3, 0.0, sentence) for _ in range(7)])
    assert 0 < room(busy) < room(calm)
