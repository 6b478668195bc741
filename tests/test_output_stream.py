"""The output stream: the one place where core outputs become what transports send (pieces,
segments, pacing, flow), and the rule that nothing else reads the core's output types."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import numpy as np
import pytest

from streamtts.core.outputs import AudioOut, FailedOut, FinishedOut, PauseOut, SegmentOut, SpokenSegment
from streamtts.engine_client.stream import FRAME_S, Audio, Done, Failed, OutputStream, Segment

SR = 22050
ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _stream(lead: float = 0.0, clock=None) -> tuple[OutputStream, list[float]]:
    taken: list[float] = []
    stream = OutputStream(SR, max_lead_s=lead, on_delivered=taken.append, clock=clock or Clock())
    return stream, taken


def _all(stream: OutputStream) -> list:
    events = []
    while (event := stream.next()) is not None:
        events.append(event)
        stream.delivered(event)
    return events


def test_audio_is_cut_into_pieces_of_at_most_a_frame_and_keeps_every_sample():
    stream, taken = _stream()
    audio = np.arange(SR * 2 + 7, dtype=np.float32)  # a cached sentence arrives as one array
    stream.push(AudioOut(0, audio, compute_s=0.4))
    events = _all(stream)
    assert all(isinstance(e, Audio) and len(e.samples) <= int(FRAME_S * SR) for e in events)
    assert np.array_equal(np.concatenate([e.samples for e in events]), audio)
    assert [e.position for e in events] == [i * int(FRAME_S * SR) for i in range(len(events))]
    assert sum(e.compute_s for e in events) == pytest.approx(0.4)
    assert sum(taken) == pytest.approx(len(audio) / SR)  # all of it was reported as delivered


def test_segments_carry_their_positions_after_the_silence_before_them():
    stream, _ = _stream()
    stream.push(AudioOut(0, np.ones(1000, np.float32), 0.0))
    stream.push(SegmentOut(0, SpokenSegment("你好。", "你好.", [("你", 0.0, 20.0)], 0)))
    stream.push(PauseOut(0, 500))
    stream.push(AudioOut(0, np.ones(300, np.float32), 0.0))
    stream.push(SegmentOut(0, SpokenSegment("再见。", "再见.", [], 1)))
    stream.push(FinishedOut(0))
    events = _all(stream)
    segments = [e for e in events if isinstance(e, Segment)]
    assert [(s.index, s.start, s.end) for s in segments] == [(0, 0, 1000), (1, 1500, 1800)]
    silence = [e for e in events if isinstance(e, Audio) and e.silence]
    assert len(silence) == 1 and not silence[0].samples.any() and len(silence[0].samples) == 500
    assert isinstance(events[-1], Done) and stream.ended


def test_pacing_holds_audio_to_the_lead_and_releases_it_on_the_listeners_clock():
    clock = Clock()
    stream, _ = _stream(lead=1.0, clock=clock)
    stream.push(AudioOut(0, np.zeros(SR * 3, np.float32), 0.0))  # 3 s at once
    sent = _all(stream)
    assert sum(e.seconds for e in sent) <= 1.0 + 1e-9  # no more than the lead goes out at once
    assert stream.wait_s() > 0 and stream.next() is None
    clock.t += 0.5  # the listener played half a second: about that much more may go
    more = _all(stream)
    assert 0.25 <= sum(e.seconds for e in more) <= 0.5 + 1e-9


def test_a_cancel_drops_older_generations_restarts_pacing_and_counts_the_dropped_as_delivered():
    clock = Clock()
    stream, taken = _stream(lead=0.5, clock=clock)
    stream.push(AudioOut(0, np.zeros(SR * 2, np.float32), 0.0))
    first = _all(stream)
    assert stream.pending  # held back by pacing
    stream.cancel(1)
    assert not stream.pending
    stream.push(AudioOut(0, np.zeros(SR, np.float32), 0.0))  # made before the cancel took effect
    stream.push(AudioOut(1, np.ones(100, np.float32), 0.0))
    after = _all(stream)
    assert [e.generation for e in after] == [1]  # due at once: the listener dropped what it had
    assert sum(taken) == pytest.approx(3.0 + 100 / SR)  # nothing is left on the backlog
    assert sum(e.seconds for e in first) <= 0.5 + 1e-9


def test_a_failure_ends_the_stream_whatever_its_generation():
    stream, _ = _stream()
    stream.cancel(3)
    stream.push(FailedOut(0, "engine_unavailable", "the engine is unavailable"))
    events = _all(stream)
    assert len(events) == 1 and isinstance(events[0], Failed) and events[0].code == "engine_unavailable"
    assert stream.ended


def test_the_async_face_wakes_on_a_push_from_another_thread():
    async def main() -> Audio:
        stream = OutputStream(SR)
        stream.bind(asyncio.get_running_loop())
        loop = asyncio.get_running_loop()
        loop.call_later(0.05, lambda: loop.run_in_executor(None, stream.push, AudioOut(0, np.ones(10, np.float32), 0.0)))
        return await asyncio.wait_for(stream.get(), 30)

    event = asyncio.run(main())
    assert isinstance(event, Audio) and len(event.samples) == 10


# ---- layering: nothing but the core and the stream reads the core's output types ----------------

CORE_OUTPUT_TYPES = {"AudioOut", "SegmentOut", "PauseOut", "FinishedOut", "FailedOut", "Output"}
ALLOWED = {
    "streamtts/engine_client/stream.py",  # the output-stream module
    # The cluster engine client carries the core's outputs between processes: the replica writes
    # them as they come from its core, the front end's client turns them back into outputs for
    # its output stream. Both sit on the engine side of the engine-client seam.
    "streamtts/cluster/replica.py",
    "streamtts/cluster/client.py",
}


def test_only_the_output_stream_module_reads_core_outputs():
    offenders = []
    for package in ("streamtts", "engines", "clients"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in ALLOWED or rel.startswith("streamtts/core/"):  # the core makes them
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module == "streamtts.core.outputs":
                    names = {a.name for a in node.names} & (CORE_OUTPUT_TYPES | {"*"})
                    if names:
                        offenders.append(f"{rel}: {sorted(names)}")
                elif isinstance(node, ast.Import) and any(a.name == "streamtts.core.outputs" for a in node.names):
                    offenders.append(f"{rel}: import streamtts.core.outputs")
    assert not offenders, "modules other than the output stream read core outputs:\n" + "\n".join(offenders)
