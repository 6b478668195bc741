"""Streaming synthesis through the engine core: chunk-exact against whole-utterance synthesis,
batched streams equal to solo ones, cancellable, bounded."""

from __future__ import annotations

import ctypes
import gc
import os
from collections import deque

import numpy as np
import pytest

from streamtts.core.engine_core import EngineCore, scheduler_config_for
from streamtts.core.outputs import AudioOut, FinishedOut, PauseOut
from streamtts.core.request import END, TEXT, Request
from streamtts.core.scheduler import BlockSchedule
from streamtts.speaker import Audio, Segment, Speaker
from streamtts.text import phonemize

SENTENCE = "今天天气很好，我们一起去公园散步吧。"


@pytest.fixture(scope="module")
def engine(pack):
    from engines.registry import create_models

    return create_models("torch", vocoder="melgan", pack=pack)


@pytest.fixture(scope="module")
def int8_engine(pack):
    from engines.registry import create_models

    return create_models("onnx-int8", vocoder="melgan", pack=pack)


def whole_chunks(synth, text: str, voice: str, seed: int) -> list[np.ndarray]:
    """Whole-utterance audio of each chunk of ``text`` (decode all, postnet all, vocode all)."""
    from streamtts.text.chunker import split_text

    out = []
    for chunk in split_text(text):
        decoded = synth.decode(phonemize(chunk.text).ids, voice, seed)
        out.append(synth.vocode(synth.postnet(decoded.frames)))
    return out


def speech_of(events) -> list[np.ndarray]:
    """Per chunk, the audio between its start and its Segment (pauses excluded)."""
    audio = np.concatenate([e.audio for e in events if isinstance(e, Audio)])
    return [audio[s.start_sample: s.end_sample] for s in events if isinstance(s, Segment)]


@pytest.mark.parametrize("first,rest,vocode_frames", [(6, 12, 5), (24, 64, 40), (24, 128, 9), (5000, 5000, 1 << 30)])
def test_streamed_pcm_equals_whole_utterance(engine, synth, first, rest, vocode_frames):
    core = EngineCore(engine, config=scheduler_config_for(
        engine, blocks=BlockSchedule(first, rest), vocode_frames=vocode_frames, max_buffered_s=float("inf"),
        drop_late_pauses=False))
    outs: deque = deque()
    req = Request("biaobei", 5, 1.0, sink=outs.append)
    core.scheduler.add_request(req)
    core.scheduler.command(req, TEXT, 0, SENTENCE)
    core.scheduler.command(req, END, 0)
    pieces = []
    while not any(isinstance(o, FinishedOut) for o in outs):
        assert core.step(), "the core stalled before the end"
    pieces = [o.audio for o in outs if isinstance(o, AudioOut)]
    want = whole_chunks(synth, SENTENCE, "biaobei", 5)
    got = np.concatenate(pieces)
    assert len(got) == sum(len(w) for w in want)
    assert np.abs(got - np.concatenate(want)).max() <= 1e-3
    assert sum(isinstance(o, PauseOut) for o in outs) == len(want) - 1
    if first < 100:
        assert len(pieces) > 2 * len(want), "audio must leave before each chunk is fully decoded"


def test_batched_streams_equal_their_solo_synthesis(int8_engine):
    """Four requests spoken at once share every decoder call and vocoder call; each one's audio
    equals the same request spoken alone (same seed) to float rounding."""
    jobs = [("今天天气很好。", "biaobei", 1, 1.0), ("我们一起去公园散步吧，好不好？", "Aiyue", 2, 1.0),
            ("欢迎使用流式语音合成。", "Xiaogang", 3, 1.3), ("你好。", "biaobei", 4, 0.8)]
    engine = int8_engine  # its rows are quantized per row: batching changes nothing
    core = EngineCore(engine)
    sinks = [deque() for _ in jobs]
    reqs = [Request(v, seed, speed, sink=sink.append) for (_, v, seed, speed), sink in zip(jobs, sinks)]
    for req, (text, *_ ) in zip(reqs, jobs):
        core.scheduler.add_request(req)
        core.scheduler.command(req, TEXT, 0, text)
        core.scheduler.command(req, END, 0)
    batch_rows = []
    core.on_tick = lambda plan, out: batch_rows.append(len(plan.decode))
    while not all(any(isinstance(o, FinishedOut) for o in sink) for sink in sinks):
        for req, sink in zip(reqs, sinks):  # a listener that takes everything at once
            req.delivered(sum(len(o.audio) for o in sink if isinstance(o, AudioOut)) / 22050 - req.produced_s + req.backlog_s)
        assert core.step(), "the core stalled"
    assert max(batch_rows) == len(jobs), "the requests were not batched"
    for (text, voice, seed, speed), sink in zip(jobs, sinks):
        alone = Speaker(engine).speak(text, voice=voice, seed=seed, speed=speed)
        want = np.concatenate([e.audio for e in alone if isinstance(e, Audio)])
        got = np.concatenate([o.audio if isinstance(o, AudioOut) else np.zeros(o.samples, np.float32)
                              for o in sink if isinstance(o, (AudioOut, PauseOut))])
        assert len(got) == len(want), text
        assert np.abs(got - want).max() <= 1e-3, text


def test_first_audio_leaves_before_decoding_ends(engine, synth):
    speaker = Speaker(engine, schedule=BlockSchedule(24, 64))
    gen = speaker.speak(SENTENCE.split("，")[1], voice="biaobei", seed=5)
    first = next(gen)
    assert isinstance(first, Audio) and len(first.audio) > 0
    [run] = speaker.core.runner.chunks.values()
    total = synth.decode(phonemize(SENTENCE.split("，")[1]).ids, "biaobei", 5).frames.shape[1]
    assert run.row.steps < total / 2
    gen.close()


def test_closing_mid_utterance_stops_all_work(engine):
    speaker = Speaker(engine, schedule=BlockSchedule(24, 24))
    gen = speaker.speak("第一句话比较长，要说好一会儿才能说完。第二句话。第三句话。", voice="Aiyue")
    seen = [next(gen) for _ in range(2)]
    assert all(isinstance(e, Audio) for e in seen)
    [run] = speaker.core.runner.chunks.values()
    steps = run.row.steps
    gen.close()
    with pytest.raises(StopIteration):
        next(gen)
    assert not speaker.core.runner.chunks and not speaker.core.scheduler.requests
    assert run.row.steps == steps, "decoding went on after close"
    del run, seen, gen
    gc.collect()
    assert speaker.core.step() is False  # nothing left to run

def test_speaker_emits_segments_with_char_times(engine):
    events = list(Speaker(engine).speak("你好。今天天气很好！", voice="biaobei"))
    segments = [e for e in events if isinstance(e, Segment)]
    assert [s.text for s in segments] == ["你好。", "今天天气很好！"]
    audio = [e for e in events if isinstance(e, Audio)]
    total = sum(len(a.audio) for a in audio)
    assert segments[-1].end_sample == total
    assert segments[1].start_sample > segments[0].end_sample  # a pause after the full stop
    chars = segments[1].chars
    assert "".join(c.char for c in chars) == "今天天气很好"
    for a, b in zip(chars, chars[1:]):
        assert a.start_ms < a.end_ms <= b.start_ms
    assert segments[1].start_sample / 22.05 <= chars[0].start_ms
    assert chars[-1].end_ms <= segments[1].end_sample / 22.05 + 1


def test_token_stream_gives_the_same_audio_as_whole_text(engine):
    text = "我用Python写代码。它运行得很好，真不错！"
    whole = Speaker(engine).synthesize(text, "biaobei")
    tokens = [text[i:i + 2] for i in range(0, len(text), 2)]
    pieces = [e.audio for e in Speaker(engine).speak(iter(tokens), "biaobei") if isinstance(e, Audio)]
    assert np.abs(np.concatenate(pieces) - whole).max() <= 1e-3


@pytest.mark.parametrize("text", ["。。。！！", "   ", "😀🎉", ""])
def test_nothing_speakable_yields_no_audio_and_no_error(engine, text):
    assert list(Speaker(engine).speak(text)) == []


def _live_rss_bytes() -> int:
    """Resident memory once the allocator has handed back what it holds free.

    Raw RSS is not a measure of live memory here: glibc raises its mmap threshold after a large
    block is freed, so the vocoder's and ONNX Runtime's large temporaries (no arena) come from the
    heap afterwards, and how much of the heap is resident at a given instant swings widely with
    fragmentation and top-of-heap trimming, with no trend over what was spoken.
    ``malloc_trim(0)`` returns every free page of every arena to the system, so what stays resident
    is what is in use (native allocations included, unlike tracemalloc)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except AttributeError:
        pytest.skip("needs glibc's malloc_trim to tell memory in use from memory the allocator keeps")
    gc.collect()
    trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_long_text_streams_in_bounded_memory(int8_engine):
    """20,000 characters pulled one at a time: resident memory does not grow with the chunks
    already spoken (the speaker keeps neither their audio nor their frames).

    Measured as memory in use (:func:`_live_rss_bytes`) after a warm-up and 30 segments later.
    Keeping the audio would grow it by the bytes spoken, keeping the final mel by about a third
    of that (80 float32 per 256 samples), so an eighth of the bytes spoken catches either."""
    base = "这是一段很长的文本，用来检查流式合成不会把所有内容都留在内存里。"
    text = (base * (20000 // len(base) + 1))[:20000]
    gen = Speaker(int8_engine).speak(iter(text))  # one character at a time
    segments, audio_samples = 0, 0
    try:
        for event in gen:
            if isinstance(event, Audio):
                audio_samples += len(event.audio)
            elif isinstance(event, Segment):
                segments += 1
                if segments == 6:  # warm: dictionaries loaded, buffers allocated
                    rss_warm, samples_warm = _live_rss_bytes(), audio_samples
                if segments == 36:
                    rss_end, samples_end = _live_rss_bytes(), audio_samples
                    break
    finally:
        gen.close()
    spoken = 4 * (samples_end - samples_warm)  # bytes of float32 audio spoken in between
    assert spoken > 6_000_000
    assert rss_end - rss_warm < spoken / 8, (rss_end - rss_warm, spoken)


def test_a_failing_row_fails_only_its_own_request(int8_engine):
    """A backend error in a batched decoder call: the runner retries the rows one by one, the
    failing request gets one typed error and nothing more, the others are spoken in full."""
    from engines.base import ModelPair
    from streamtts.core.outputs import FailedOut

    good, bad = ["今天天气很好。", "欢迎使用。"], "这一句会让后端出错。"
    n_bad = len(phonemize(bad).ids)
    assert n_bad not in {len(phonemize(t).ids) for t in good}

    class Flaky:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def decode(self, rows, steps):
            if any(r.n_ids == n_bad for r in rows):
                raise RuntimeError("backend fault")
            return self.inner.decode(rows, steps)

    engine = ModelPair(Flaky(int8_engine.acoustic), int8_engine.vocoder)
    core = EngineCore(engine)
    sinks = [deque() for _ in range(3)]
    for text, sink in zip(good + [bad], sinks):
        req = Request("biaobei", 0, 1.0, sink=sink.append)
        core.scheduler.add_request(req)
        core.scheduler.command(req, TEXT, 0, text)
        core.scheduler.command(req, END, 0)
    while core.step():
        pass
    failed = [o for o in sinks[2] if isinstance(o, FailedOut)]
    assert len(failed) == 1 and failed[0].code == "internal" and isinstance(sinks[2][-1], FailedOut)
    for text, sink in zip(good, sinks):
        got = np.concatenate([o.audio for o in sink if isinstance(o, AudioOut)])
        want = Speaker(int8_engine).synthesize(text, "biaobei")
        assert isinstance(sink[-1], FinishedOut) and len(got) == len(want)
        assert np.abs(got - want).max() <= 1e-3
