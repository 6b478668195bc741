"""The engine scheduler driven by a fake runner (vLLM v1 style): pure-Python bookkeeping in place of
tensors and a model, so each test checks, in milliseconds, what a user of the server would see --
order and routing of audio, segments, pauses and ends -- and the batching policy behind it."""

from __future__ import annotations

import copy
import threading
import time
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamtts.text.chunker import split_text
from streamtts.core.outputs import AudioOut, FailedOut, FinishedOut, PauseOut, SegmentOut, SpokenSegment
from streamtts.core.request import CANCEL, CLOSE, END, FLUSH, TEXT, Request, Status
from streamtts.core.scheduler import BlockSchedule, RowResult, RunnerOutput, Scheduler, SchedulerConfig

FRAMES_PER_CHAR = 4  # a chunk's audio: this many frames per char of its text
CHUNKER = {"max_chars": 120, "first_max_chars": 120}  # chunks end at sentence ends in these tests


@dataclass
class FakeChunk:
    serial: int  # index of its Begin in FakeRunner.begins (also the value of its audio samples)
    total: int  # frames of audio of the whole chunk
    decoded: int = 0  # decoder frames run
    vocoded: int = 0  # frames of audio emitted
    blocks: int = 0


class FakeRunner:
    """The runner's contract (streamtts.core.runner.Runner.execute) as bookkeeping only.

    A chunk has FRAMES_PER_CHAR frames of audio per char of its text. Its decoder runs
    ``total + first_delay`` frames (the look-ahead past its end); audio frame j is exact once
    decoder frame ``j + first_delay`` exists (the rule the scheduler assumes), all of it once
    decoding is done. Every sample of a chunk's audio is its Begin's serial number, so a test can
    route any sample back to the request and chunk it was made for. A chunk whose text holds
    "BADSTART" fails when it begins, one holding "FAIL" at its second block. Each plan is checked
    against the runner's contract and recorded."""

    def __init__(self, cfg: SchedulerConfig):
        self.cfg = cfg
        self.rows: dict[int, FakeChunk] = {}
        self.begins = []  # every Begin received, by serial
        self.plans = []  # every plan received (copies)

    def exact(self, ch: FakeChunk) -> int:
        return min(ch.total, max(0, ch.decoded - self.cfg.first_delay))

    def done(self, ch: FakeChunk) -> bool:
        return ch.decoded >= ch.total + self.cfg.first_delay

    def execute(self, plan) -> RunnerOutput:
        cfg = self.cfg
        self.plans.append(copy.deepcopy(plan))
        assert len(plan.decode) == len(set(plan.decode)) <= cfg.max_batch
        assert {b.request for b in plan.begin} <= set(plan.decode)
        assert (plan.steps > 0) == bool(plan.decode)
        assert sum(n for _, n in plan.vocode) <= cfg.vocode_frames
        assert all(n > 0 for _, n in plan.vocode)
        assert len({rid for rid, _ in plan.vocode}) == len(plan.vocode)
        for rid in plan.free:
            self.rows.pop(rid, None)
        res: dict[int, RowResult] = {}
        for b in plan.begin:
            assert b.request not in self.rows, "a new chunk begun over one the runner still holds"
            serial = len(self.begins)
            self.begins.append(b)
            if "BADSTART" in b.text:
                res[b.request] = RowResult(failed=("internal", "boom"))
            elif not any(c.isalnum() for c in b.text):
                res[b.request] = RowResult(skipped=True)
            else:
                self.rows[b.request] = FakeChunk(serial, FRAMES_PER_CHAR * len(b.text))
                res[b.request] = RowResult()
        for rid in plan.decode:
            ch = self.rows.get(rid)
            if ch is None:
                assert rid in res, f"row {rid} planned for decoding, but the runner holds no chunk for it"
                continue
            assert not self.done(ch), "a finished row planned for decoding"
            if "FAIL" in self.begins[ch.serial].text and ch.blocks >= 1:
                del self.rows[rid]
                res[rid] = RowResult(failed=("internal", "boom"))
                continue
            ch.decoded = min(ch.decoded + plan.steps, ch.total + cfg.first_delay)
            ch.blocks += 1
        for rid, n in plan.vocode:
            ch = self.rows.get(rid)
            if ch is None:
                continue
            k = min(n, self.exact(ch) - ch.vocoded)
            if k > 0:
                r = res.setdefault(rid, RowResult())
                r.audio.append(np.full(k * cfg.hop_length, ch.serial, np.float32))
                r.frames += k
                ch.vocoded += k
        for rid in set(plan.decode) | {rid for rid, _ in plan.vocode}:
            ch = self.rows.get(rid)
            if ch is None:
                continue
            r = res.setdefault(rid, RowResult())
            r.ready, r.acoustic_done = self.exact(ch) - ch.vocoded, self.done(ch)
            if r.acoustic_done and ch.vocoded == ch.total:
                b = self.begins[ch.serial]
                r.segment = SpokenSegment(b.text, b.text, [], b.index)
                del self.rows[rid]
        return RunnerOutput(res)


def seconds_of(out, sr: int) -> float:
    if isinstance(out, AudioOut):
        return len(out.audio) / sr
    if isinstance(out, PauseOut):
        return out.samples / sr
    return 0.0


class Harness:
    def __init__(self, **overrides):
        self.cfg = SchedulerConfig(**overrides)
        self.sched = Scheduler(self.cfg)
        self.fake = FakeRunner(self.cfg)
        self.outs: dict[int, list] = {}  # request id -> what its sink got

    def request(self, consume: bool = True, add: bool = True, cls=Request) -> Request:
        """A request whose sink keeps its outputs; ``consume``: its consumer takes audio at once.
        Setting ``req.gone`` makes its sink raise, as when the consumer's loop has closed."""
        outs: list = []

        def sink(out):
            if getattr(req, "gone", False):
                raise RuntimeError("event loop is closed")
            outs.append(out)
            if consume:
                req.delivered(seconds_of(out, self.cfg.sample_rate))

        req = cls(voice="v", seed=0, speed=1.0, sink=sink, chunker_options=CHUNKER)
        self.outs[req.id] = outs
        if add:
            self.sched.add_request(req)
        return req

    def say(self, req: Request, text: str, gen: int = 0, end: bool = True, flush: bool = False) -> None:
        self.sched.command(req, TEXT, gen, text)
        if end or flush:
            self.sched.command(req, END if end else FLUSH, gen)

    def tick(self):
        plan = self.sched.schedule(timeout=0)
        if plan is not None:
            self.sched.update(plan, self.fake.execute(plan))
        return plan

    def run(self, limit: int = 10_000) -> int:
        for n in range(limit):
            if self.tick() is None:
                return n
        raise AssertionError("the scheduler never went idle")

    def heard(self, req: Request) -> list[tuple]:
        """What a request's listener got, audio of one chunk merged: ("audio", text, frames),
        ("segment", text), ("pause", samples), ("finished",), ("failed", code). Checks that every
        sample of its audio was made for this request."""
        events: list[tuple] = []
        hop = self.cfg.hop_length
        for out in self.outs[req.id]:
            if isinstance(out, AudioOut):
                serials = np.unique(out.audio)
                assert len(serials) == 1 and len(out.audio) % hop == 0
                b = self.fake.begins[int(serials[0])]
                assert b.request == req.id, f"audio of request {b.request} reached request {req.id}"
                if events and events[-1][:2] == ("audio", b.text):
                    events[-1] = ("audio", b.text, events[-1][2] + len(out.audio) // hop)
                else:
                    events.append(("audio", b.text, len(out.audio) // hop))
            elif isinstance(out, SegmentOut):
                events.append(("segment", out.segment.text))
            elif isinstance(out, PauseOut):
                events.append(("pause", out.samples))
            elif isinstance(out, FinishedOut):
                events.append(("finished",))
            else:
                events.append(("failed", out.code))
        return events

    def speech(self, text: str) -> list[tuple]:
        """What a listener should hear for ``text`` said whole and ended."""
        sr = self.cfg.sample_rate
        events: list[tuple] = []
        pause = 0
        for chunk in split_text(text, **CHUNKER):
            if pause:
                events.append(("pause", pause))
            events += [("audio", chunk.text, FRAMES_PER_CHAR * len(chunk.text)), ("segment", chunk.text)]
            pause = int(sr * chunk.pause_ms / 1000 / 1.0)
        return events + [("finished",)]


def in_plan(plan, rid: int) -> bool:
    return (rid in plan.decode or rid in {v for v, _ in plan.vocode}
            or rid in {b.request for b in plan.begin})


# ---- order and routing --------------------------------------------------------------------------

def test_each_request_hears_its_own_chunks_in_order_with_pauses_and_an_end():
    h = Harness()
    texts = {}
    reqs = []
    for i in range(4):
        req = h.request()
        texts[req.id] = [f"第{i}位。", f"今天天气很好，我是{i}号。", "再见。"]
        h.say(req, "".join(texts[req.id]))
        reqs.append(req)
    h.run()
    for req in reqs:
        assert h.heard(req) == h.speech("".join(texts[req.id]))
        assert [o.segment.index for o in h.outs[req.id] if isinstance(o, SegmentOut)] == [0, 1, 2]
        assert all(o.generation == 0 for o in h.outs[req.id])
        assert req.status is Status.FINISHED
    assert not h.fake.rows and not h.sched.requests


def test_text_arriving_in_fragments_is_spoken_as_it_completes():
    h = Harness()
    req = h.request()
    h.say(req, "你好", end=False)
    assert h.run() == 0  # no chunk complete yet: nothing to plan
    assert req.status is Status.IDLE and h.outs[req.id] == []
    h.say(req, "。今天", end=False)
    h.run()
    assert h.heard(req) == h.speech("你好。")[:-1]
    h.say(req, "很好。")  # and END
    h.run()
    assert h.heard(req) == h.speech("你好。今天很好。")


def test_the_tick_that_only_ends_a_request_counts_as_progress():
    # an engine loop `while not finished: assert step()` must see the FinishedOut, not a stall
    h = Harness()
    req = h.request()
    h.say(req, "你好。")
    while not any(isinstance(o, FinishedOut) for o in h.outs[req.id]):
        assert h.tick() is not None, "the scheduler stalled before the end"
    last = h.fake.plans[-1]
    assert last.finished == [req.id] and not (last.begin or last.decode or last.vocode or last.free)
    assert h.tick() is None


@pytest.mark.parametrize("first", [17, 20])
def test_the_pause_between_chunks_survives_a_first_block_without_audio(first):
    # scheduler_config_for lets the first block be as short as the look-ahead: then a chunk's first
    # tick yields no audio, and the silence owed before it must still come, once, before its audio.
    h = Harness(blocks=BlockSchedule(first=first), first_delay=17, drop_late_pauses=False)
    req = h.request()
    h.say(req, "你好。今天天气很好。")
    h.run()
    assert h.heard(req) == h.speech("你好。今天天气很好。")


def test_the_pause_survives_a_first_tick_whose_vocoder_budget_went_to_others():
    h = Harness(vocode_frames=8, drop_late_pauses=False)
    first = h.request()
    h.say(first, "你好。今天天气很好。")
    others = [h.request() for _ in range(3)]
    for req in others:
        h.say(req, "这是一句很长很长的话。")
    h.run()
    assert h.heard(first) == h.speech("你好。今天天气很好。")
    for req in others:
        assert h.heard(req) == h.speech("这是一句很长很长的话。")


# ---- batching and fairness ----------------------------------------------------------------------

def test_every_running_row_decodes_in_every_tick():
    h = Harness(vocode_frames=100_000, blocks=BlockSchedule(rest=64))
    reqs = [h.request() for _ in range(6)]
    for i, req in enumerate(reqs):
        h.say(req, "天" * (5 + 7 * i) + "。")
    ticks = 0
    while True:
        plan = h.sched.schedule(timeout=0)
        if plan is None:
            break
        if ticks == 0:
            assert sorted(b.request for b in plan.begin) == sorted(r.id for r in reqs)
        running = {rid for rid, ch in h.fake.rows.items() if not h.fake.done(ch)}
        assert running <= set(plan.decode)
        h.sched.update(plan, h.fake.execute(plan))
        ticks += 1
    for req in reqs:
        assert h.heard(req)[-1] == ("finished",)
    # blocks grow 24, 32, 64, 64, ... while no newcomer asks for a short one
    steps = [p.steps for p in h.fake.plans if p.decode]
    assert steps[:4] == [24, 32, 64, 64]


def test_a_small_batch_goes_by_deadline_and_starves_no_one():
    h = Harness(max_batch=2, vocode_frames=100_000)
    reqs = [h.request() for _ in range(4)]
    for req in reqs:
        h.say(req, "长" * 40 + "。")
    decoded_at: dict[int, list[int]] = {r.id: [] for r in reqs}
    tick = 0
    while True:
        plan = h.sched.schedule(timeout=0)
        if plan is None:
            break
        waiting = [r for r in reqs if r.status is Status.RUNNING and r.id not in plan.decode
                   and r.current is not None and not r.current.acoustic_done
                   and r.current.ready < h.cfg.max_lead_frames]
        if waiting:
            assert len(plan.decode) == 2
            ahead = max(h.sched.requests[rid].deadline for rid in plan.decode)
            assert ahead <= min(r.deadline for r in waiting)  # earliest deadlines decode
        for rid in plan.decode:
            decoded_at[rid].append(tick)
        h.sched.update(plan, h.fake.execute(plan))
        tick += 1
    for req in reqs:
        ticks = decoded_at[req.id]
        assert ticks[0] <= 1  # everyone starts within a tick or two
        assert max(b - a for a, b in zip(ticks, ticks[1:])) <= 3  # and is never left waiting long
        assert h.heard(req) == h.speech("长" * 40 + "。")


def test_a_newcomer_goes_first_with_a_short_first_block():
    h = Harness(max_batch=1)
    old = h.request()
    h.say(old, "这是一段很长的话" * 12 + "。")
    for _ in range(4):
        plan = h.tick()
    assert plan.decode == [old.id] and plan.steps == h.cfg.blocks.rest > h.cfg.blocks.first
    old.produced_s += 30.0  # its listener has half a minute of audio in hand
    new = h.request()
    h.say(new, "你好。")
    plan = h.tick()
    assert plan.decode == [new.id] and [b.request for b in plan.begin] == [new.id]
    assert plan.steps == h.cfg.blocks.first
    assert plan.vocode[0][0] == new.id
    assert any(isinstance(o, AudioOut) for o in h.outs[new.id])  # first audio in its first tick
    h.run()
    assert h.heard(new) == h.speech("你好。")
    assert h.heard(old) == h.speech("这是一段很长的话" * 12 + "。")


def test_a_newcomer_sets_the_block_of_a_shared_decoder_call():
    h = Harness(blocks=BlockSchedule(rest=64))
    old = h.request()
    h.say(old, "这是一段很长的话" * 12 + "。")
    for _ in range(4):
        plan = h.tick()
    assert plan.steps == 64
    new = h.request()
    h.say(new, "你好。")
    plan = h.tick()
    assert plan.decode[0] == new.id and set(plan.decode) == {old.id, new.id}
    assert plan.steps == h.cfg.blocks.first
    assert h.tick().steps == h.cfg.blocks.second  # then both grow again
    h.run()
    assert h.heard(new) == h.speech("你好。")
    assert h.heard(old) == h.speech("这是一段很长的话" * 12 + "。")


def test_the_vocoder_budget_is_shared_by_deadline():
    h = Harness(vocode_frames=40)
    olds = [h.request() for _ in range(3)]
    for req in olds:
        h.say(req, "很长的一句话" * 6 + "。")
    for _ in range(6):
        h.tick()
    assert all(req.current.ready > 0 for req in olds)  # audio waits for the vocoder
    for i, req in enumerate(olds):
        req.produced_s += 10.0 * (i + 1)
    new = h.request()
    h.say(new, "你好。")
    plan = h.sched.schedule(timeout=0)
    assert plan.vocode[0] == (new.id, h.cfg.blocks.first - h.cfg.first_delay)
    order = [h.sched.requests[rid].deadline for rid, _ in plan.vocode]
    assert order == sorted(order)
    h.sched.update(plan, h.fake.execute(plan))
    assert h.heard(new) == [("audio", "你好。", h.cfg.blocks.first - h.cfg.first_delay)]
    h.run()
    for p in h.fake.plans:
        assert sum(n for _, n in p.vocode) <= 40
    assert h.heard(new) == h.speech("你好。")
    for req in olds:
        assert h.heard(req) == h.speech("很长的一句话" * 6 + "。")


def test_no_row_decodes_far_ahead_of_its_audio():
    h = Harness(vocode_frames=16)
    req = h.request()
    h.say(req, "天" * 200 + "。")
    while (plan := h.tick()) is not None:
        if req.current is not None:
            assert req.current.ready < h.cfg.max_lead_frames + h.cfg.blocks.rest
    assert h.heard(req) == h.speech("天" * 200 + "。")


# ---- join, leave, cancel, close -----------------------------------------------------------------

def test_requests_join_and_leave_between_blocks():
    h = Harness()
    long = h.request()
    h.say(long, "这是一段很长的话" * 6 + "。")
    short = h.request()
    h.say(short, "好。")
    h.tick()
    h.tick()
    joiner = h.request()
    h.say(joiner, "我来了。")
    plan = h.tick()
    assert joiner.id in {b.request for b in plan.begin} and joiner.id in plan.decode
    assert long.id in plan.decode
    h.run()
    last = max(i for i, p in enumerate(h.fake.plans) if in_plan(p, short.id))
    assert last < 3 < len(h.fake.plans) - 1  # "好。" is spoken in its first ticks, then leaves the plans
    assert short.id not in h.sched.requests
    assert h.heard(short) == h.speech("好。")
    assert h.heard(joiner) == h.speech("我来了。")
    assert h.heard(long) == h.speech("这是一段很长的话" * 6 + "。")


def test_cancel_frees_the_slot_and_only_new_audio_follows():
    h = Harness(max_batch=2)
    a, b, c = h.request(), h.request(), h.request()
    for req in (a, b, c):
        h.say(req, "这是一段很长的话" * 4 + "。", end=False, flush=True)
    c.t_ref += 100.0  # c's listener is far ahead: a and b hold the batch, c waits
    for _ in range(3):
        plan = h.tick()
        assert set(plan.decode) == {a.id, b.id}
    assert a.id in h.fake.rows
    h.sched.command(a, CANCEL, 1)
    seen = len(h.outs[a.id])
    plan = h.tick()
    assert a.id in plan.free and a.id not in h.fake.rows
    assert not in_plan(plan, a.id)
    assert set(plan.decode) == {b.id, c.id}  # its slot went to the one waiting
    assert len(h.outs[a.id]) == seen  # no more old audio
    h.say(a, "新的话。", gen=1)
    h.sched.command(b, END, 0)
    h.sched.command(c, END, 0)
    h.run()
    after = h.outs[a.id][seen:]
    assert after and all(o.generation == 1 for o in after)
    assert all(h.fake.begins[int(o.audio[0])].text == "新的话。" for o in after if isinstance(o, AudioOut))
    old, *rest = h.heard(a)  # part of the cancelled text, then all of the new
    assert old[:2] == ("audio", "这是一段很长的话" * 4 + "。") and 0 < old[2] < FRAMES_PER_CHAR * 33
    assert rest == h.speech("新的话。")
    assert h.heard(b) == h.speech("这是一段很长的话" * 4 + "。")
    assert h.heard(c) == h.speech("这是一段很长的话" * 4 + "。")


def test_close_frees_the_request_for_good():
    h = Harness(max_batch=2)
    a, b, c = h.request(), h.request(), h.request()
    for req in (a, b, c):
        h.say(req, "这是一段很长的话" * 4 + "。")
    for _ in range(3):
        h.tick()
    closed = next(h.sched.requests[rid] for rid in h.fake.plans[-1].decode)
    seen = len(h.outs[closed.id])
    h.sched.command(closed, CLOSE)
    plan = h.tick()
    assert closed.id in plan.free and closed.id not in h.fake.rows
    assert len(plan.decode) == 2 and closed.id not in plan.decode
    h.say(closed, "还有话。")  # a late command of a closed request does nothing
    h.run()
    start = next(i for i, p in enumerate(h.fake.plans) if closed.id in p.free)
    assert not any(in_plan(p, closed.id) for p in h.fake.plans[start:])
    assert len(h.outs[closed.id]) == seen and closed.status is Status.FINISHED
    for req in (a, b, c):
        if req is not closed:
            assert h.heard(req) == h.speech("这是一段很长的话" * 4 + "。")


def test_commands_of_a_cancelled_generation_are_ignored():
    h = Harness()
    req = h.request()
    h.say(req, "旧的话。", gen=0, end=False)
    h.sched.command(req, CANCEL, 1)  # queued behind it: the old text is never spoken
    h.run()
    assert h.outs[req.id] == [] and h.fake.begins == []
    h.say(req, "迟到的旧话。", gen=0)  # late commands of generation 0
    h.sched.command(req, FLUSH, 0)
    assert h.run() == 0 and req.status is Status.IDLE and h.outs[req.id] == []
    h.say(req, "新的话。", gen=1)
    h.run()
    assert h.heard(req) == h.speech("新的话。")
    assert all(o.generation == 1 for o in h.outs[req.id])
    assert [b.text for b in h.fake.begins] == ["新的话。"]


# ---- flow control and failures --------------------------------------------------------------------

def test_a_consumer_that_does_not_read_pauses_only_its_request():
    h = Harness(max_buffered_s=0.3, vocode_frames=16)
    slow = h.request(consume=False)
    fast = h.request()
    text = "这是一段很长的话" * 4 + "。"
    h.say(slow, text)
    h.say(fast, text)
    paused_ticks = 0
    while (plan := h.tick()) is not None:
        if slow.status is Status.PAUSED:
            assert slow.backlog_s >= 0.3 and not in_plan(plan, slow.id)
            paused_ticks += 1
    assert paused_ticks > 0
    assert h.heard(fast) == h.speech(text)
    assert slow.status is Status.PAUSED and h.heard(slow)[-1][0] == "audio"
    assert h.sched.schedule(timeout=0) is None  # nothing to do until it reads
    while slow.status is not Status.FINISHED:
        slow.delivered(slow.backlog_s)  # it takes what it holds
        h.sched.flow(slow)
        assert h.run() > 0
    assert h.heard(slow) == h.speech(text)


class RacyRequest(Request):
    """Its consumer reads all it holds in the instant after the engine found it over its buffer
    (``race``, once), so the read and its ``flow()`` come before the engine marks it paused."""

    race = None

    @property
    def backlog_s(self) -> float:
        value = Request.backlog_s.fget(self)
        if self.race is not None and value > 0:
            race, self.race = self.race, None
            race()
        return value


def test_a_read_racing_the_pause_decision_still_wakes_the_engine():
    h = Harness(max_buffered_s=0.2)
    req = h.request(consume=False, cls=RacyRequest)
    h.say(req, "这是一段很长的话" * 6 + "。")
    h.run()
    assert req.status is Status.PAUSED
    # the engine waits; the consumer reads and wakes it (as in a server)
    reader = threading.Timer(0.1, lambda: (req.delivered(req.backlog_s), h.sched.flow(req)))
    reader.start()
    plan = h.sched.schedule(timeout=3.0)
    reader.join()
    assert plan is not None
    h.sched.update(plan, h.fake.execute(plan))
    while req.backlog_s < 0.2:
        h.tick()
    assert req.status is Status.RUNNING  # the next plan pauses it

    def consumer_reads():
        req.delivered(Request.backlog_s.fget(req))
        h.sched.flow(req)

    req.race = consumer_reads
    t0, timeout = time.monotonic(), 3.0
    plan = h.sched.schedule(timeout=timeout)
    assert plan is not None and req.id in plan.decode + [rid for rid, _ in plan.vocode]
    assert time.monotonic() - t0 < timeout / 2  # woken by the read, not by the timeout
    h.sched.update(plan, h.fake.execute(plan))
    while req.status is not Status.FINISHED:
        req.delivered(req.backlog_s)
        h.sched.flow(req)
        h.run()
    assert h.heard(req) == h.speech("这是一段很长的话" * 6 + "。")


def test_a_consumer_that_went_away_drops_only_its_request():
    h = Harness()
    gone, stays = h.request(), h.request()
    text = "这是一段很长的话" * 6 + "。"
    h.say(gone, text)
    h.say(stays, text)
    h.tick()
    gone.gone = True
    h.tick()  # its sink raises: the request is dropped
    assert gone.id not in h.sched.requests
    start = len(h.fake.plans)
    h.run()
    assert gone.id in h.fake.plans[start].free
    assert not any(in_plan(p, gone.id) for p in h.fake.plans[start:])
    assert h.heard(stays) == h.speech(text)
    assert not h.fake.rows


@pytest.mark.parametrize("bad", ["今天FAIL了很多次。", "BADSTART。"])
def test_one_failing_request_does_not_touch_the_others(bad):
    h = Harness()
    reqs = [h.request() for _ in range(3)]
    failing = reqs[1]
    texts = {r.id: ["第一句话。", "第二句话说得长一些。"] for r in reqs}
    texts[failing.id] = ["开头。", bad, "不会说的话。"]
    for req in reqs:
        h.say(req, "".join(texts[req.id]))
    h.run()
    outs = h.outs[failing.id]
    assert [type(o) for o in outs].count(FailedOut) == 1 and isinstance(outs[-1], FailedOut)
    assert (outs[-1].code, outs[-1].message) == ("internal", "boom")
    assert not any(isinstance(o, FinishedOut) for o in outs)
    assert ("segment", "开头。") in h.heard(failing)
    assert not any(e[:2] == ("audio", "不会说的话。") for e in h.heard(failing))
    assert failing.status is Status.FAILED
    for req in reqs:
        if req is not failing:
            assert h.heard(req) == h.speech("".join(texts[req.id]))
    assert not h.fake.rows


# ---- waiting ---------------------------------------------------------------------------------------

def test_schedule_returns_none_promptly_when_nothing_is_runnable():
    h = Harness()
    t0 = time.monotonic()
    assert h.sched.schedule(timeout=0) is None
    req = h.request()
    h.say(req, "没有句号", end=False)  # text, but no complete chunk
    assert h.sched.schedule(timeout=0.05) is None
    assert time.monotonic() - t0 < 20 * 0.05  # the timeout, not a hang (generous for a busy machine)
    assert req.status is Status.IDLE


@pytest.mark.parametrize("how", ["command", "add_request", "flow"])
def test_a_command_from_another_thread_wakes_a_waiting_schedule(how):
    h = Harness(max_buffered_s=0.05)
    req = h.request(consume=False, add=how != "add_request")
    if how == "flow":
        h.say(req, "这是一段很长的话。")
        h.run()
        assert req.status is Status.PAUSED

    def poke():
        time.sleep(0.1)
        if how == "command":
            h.say(req, "你好。")
        elif how == "add_request":
            h.say(req, "你好。")
            h.sched.add_request(req)
        else:
            req.delivered(req.backlog_s)
            h.sched.flow(req)

    thread = threading.Thread(target=poke)
    t0 = time.monotonic()
    thread.start()
    plan = h.sched.schedule(timeout=5.0)
    waited = time.monotonic() - t0
    thread.join()
    assert plan is not None and req.id in plan.decode + [rid for rid, _ in plan.vocode]
    assert waited < 2.5


# ---- random interleavings ---------------------------------------------------------------------------

FRAGMENTS = ["你好", "。", "今天天气", "，", "很好！", "FAIL", "BADSTART", "！！", " ", "ok", "\n"]
OPS = st.one_of(
    st.tuples(st.just("text"), st.integers(0, 2), st.sampled_from(FRAGMENTS)),
    st.tuples(st.sampled_from(["flush", "end", "cancel", "close", "read"]), st.integers(0, 2)),
    st.tuples(st.just("tick"), st.integers(1, 4)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(OPS, max_size=40), st.integers(1, 3), st.sampled_from([8, 128]))
def test_random_interleavings_end_every_request_once(ops, max_batch, vocode_frames):
    h = Harness(max_batch=max_batch, vocode_frames=vocode_frames, max_buffered_s=0.5)
    reqs = [h.request(consume=i != 2) for i in range(3)]  # request 2's consumer reads only on "read"
    gen = [0, 0, 0]
    closed_at: dict[int, int] = {}  # request -> outputs it had when closed
    new_since: dict[int, tuple[int, int]] = {}  # request -> (outputs, begins) at its last cancel
    for op in ops:
        kind, *args = op
        if kind == "tick":
            for _ in range(args[0]):
                h.tick()
            continue
        i = args[0]
        req = reqs[i]
        if kind == "text":
            h.sched.command(req, TEXT, gen[i], args[1])
        elif kind in ("flush", "end"):
            h.sched.command(req, FLUSH if kind == "flush" else END, gen[i])
        elif kind == "cancel":
            gen[i] += 1
            h.sched.command(req, CANCEL, gen[i])
            new_since[i] = (len(h.outs[req.id]), len(h.fake.begins))
        elif kind == "close":
            h.sched.command(req, CLOSE)
            closed_at.setdefault(i, len(h.outs[req.id]))
        else:
            req.delivered(req.backlog_s)
            h.sched.flow(req)
    for i, req in enumerate(reqs):
        h.sched.command(req, END, gen[i])
    for _ in range(100):
        h.run()
        if not h.sched.requests:
            break
        for req in reqs:
            req.delivered(req.backlog_s)
            h.sched.flow(req)
    assert not h.sched.requests and not h.fake.rows
    for i, req in enumerate(reqs):
        outs = h.outs[req.id]
        h.heard(req)  # routing: every sample is this request's
        ends = [o for o in outs if isinstance(o, (FinishedOut, FailedOut))]
        if i in closed_at:
            assert len(outs) == closed_at[i] and len(ends) <= 1
        else:
            assert len(ends) == 1
        if ends:
            assert outs[-1] is ends[0]
        if i in new_since:
            seen, begins = new_since[i]
            assert all(o.generation == gen[i] for o in outs[seen:])
            assert all(int(o.audio[0]) >= begins for o in outs[seen:] if isinstance(o, AudioOut))
        # each chunk's audio is whole and comes before its segment; a pause only between chunks
        open_serial, frames, last = None, 0, None
        for o in outs:
            if isinstance(o, AudioOut):
                serial = int(o.audio[0])
                if serial != open_serial:  # a new chunk (the one before was cancelled or spoken)
                    assert open_serial is None or i in new_since
                    open_serial, frames = serial, 0
                frames += len(o.audio) // h.cfg.hop_length
            elif isinstance(o, SegmentOut):
                if open_serial is not None:
                    assert h.fake.begins[open_serial].text == o.segment.text
                    assert frames == FRAMES_PER_CHAR * len(o.segment.text)
                open_serial = None
            elif isinstance(o, PauseOut):
                assert isinstance(last, SegmentOut)
            last = o


# ---- faults in the scheduler itself ---------------------------------------------------------------

class ExplodingChunker:
    """A chunker that raises on a given text (a bug reached by one request's input)."""

    def __init__(self, inner, bad: str):
        self.inner, self.bad = inner, bad

    def push(self, text):
        if self.bad in text:
            raise ValueError("chunker bug")
        return self.inner.push(text)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_an_exception_in_scheduling_fails_only_that_request():
    h = Harness()
    bad, good = h.request(), h.request()
    bad.chunker = ExplodingChunker(bad.chunker, "炸")
    h.say(bad, "这句话会炸。")
    h.say(good, "这句话说完。")
    h.run()
    assert isinstance(h.outs[bad.id][-1], FailedOut) and h.outs[bad.id][-1].code == "internal"
    assert bad.status is Status.FAILED and bad.id not in h.sched.requests
    assert h.heard(good) == h.speech("这句话说完。")


def test_shutdown_fails_every_request_now_and_later():
    h = Harness()
    running, idle = h.request(), h.request()
    h.say(running, "这是一段很长的话" * 6 + "。")
    h.tick()
    h.sched.shutdown("engine_unavailable", "stuck")
    late = h.request()
    for req in (running, idle, late):
        assert isinstance(h.outs[req.id][-1], FailedOut) and h.outs[req.id][-1].code == "engine_unavailable"
        assert req.status is Status.FAILED
    assert not h.sched.requests
    h.run()  # one more tick frees the runner's state of the running one; then nothing
    assert h.fake.plans[-1].free == [running.id] and not h.fake.rows


def test_a_first_chunk_whose_text_stalls_is_cut_at_a_word_boundary_after_the_wait():
    # an LLM that stops mid-sentence: the words so far are spoken once the first chunk has
    # waited first_cut_s for its punctuation; the rest of the sentence follows as usual
    h = Harness(first_cut_s=0.05)
    req = h.request()
    h.say(req, "我们明天一起去", end=False)
    assert h.run() == 0 and h.outs[req.id] == []  # not yet: the wait has not passed
    plan = h.sched.schedule(timeout=30.0)  # the scheduler wakes itself when the wait is over
    assert plan is not None and [b.text for b in plan.begin] == ["我们明天一起"]
    h.sched.update(plan, h.fake.execute(plan))
    h.run()
    h.say(req, "公园散步吧。")
    h.run()
    spoken = [e[1] for e in h.heard(req) if e[0] == "segment"]
    assert spoken == ["我们明天一起", "去公园散步吧。"]
    assert h.heard(req)[-1] == ("finished",)


def test_no_early_cut_when_it_is_off_or_the_chunk_is_not_the_first():
    h = Harness(first_cut_s=0.0)
    req = h.request()
    h.say(req, "我们明天一起去", end=False)
    assert h.sched.schedule(timeout=0.3) is None  # waits for the punctuation
    h2 = Harness(first_cut_s=0.05)
    req2 = h2.request()
    h2.say(req2, "你好。我们明天一起去", end=False)
    h2.run()
    assert h2.sched.schedule(timeout=0.3) is None  # "你好。" was the first chunk: the rest waits
    assert [e[1] for e in h2.heard(req2) if e[0] == "segment"] == ["你好。"]


def test_computing_turns_false_once_the_text_is_synthesized_and_wakes_the_consumer():
    h = Harness()
    req = h.request()
    woken = []
    req.on_idle = lambda: woken.append(True)
    h.say(req, "你好。今天", end=False)
    assert req.seen < req.sent  # sent, not yet read: the consumer counts it as work
    h.tick()
    assert req.seen == req.sent and req.computing  # a chunk under way
    h.run()
    assert req.computing and not woken  # "今天" waits for its sentence's end: still work to come
    h.say(req, "很好。", end=False, flush=True)
    h.run()
    assert not req.computing and woken == [True]  # all of it is audio now
