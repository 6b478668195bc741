"""Streaming synthesis: chunk-exact against whole-utterance synthesis, cancellable, bounded."""

from __future__ import annotations

import gc
import os
import weakref

import numpy as np
import pytest

from streamtts.pipeline import BlockSchedule, ChunkStream
from streamtts.speech import Audio, Segment, Speaker
from streamtts.text import phonemize

SENTENCE = "今天天气很好，我们一起去公园散步吧。"


@pytest.fixture(scope="module")
def engine(pack):
    from engines.torch_engine import TorchEngine

    return TorchEngine(pack)


@pytest.fixture(scope="module")
def reference(synth):
    ids = phonemize(SENTENCE).ids
    decoded = synth.decode(ids, "biaobei", 5)
    return ids, decoded, synth.vocode(synth.postnet(decoded.frames))


@pytest.mark.parametrize("first,rest", [(6, 12), (8, 16), (24, 64), (5000, 5000)])
def test_streamed_pcm_equals_whole_utterance(engine, reference, first, rest):
    ids, decoded, whole = reference
    stream = ChunkStream(engine, ids, "biaobei", 5, schedule=BlockSchedule(first, rest))
    pieces = list(stream)
    assert [p.start_sample for p in pieces] == list(np.cumsum([0] + [len(p.audio) for p in pieces[:-1]]))
    audio = np.concatenate([p.audio for p in pieces])
    assert len(audio) == len(whole) == decoded.frames.shape[1] * 256
    assert np.abs(audio - whole).max() <= 1e-3
    if first < 100:
        assert len(pieces) > 1, "audio must leave before the utterance is fully decoded"


def test_first_audio_leaves_before_decoding_ends(engine, reference):
    ids, decoded, _ = reference
    stream = ChunkStream(engine, ids, "biaobei", 5, schedule=BlockSchedule(24, 64))
    first = next(iter(stream))
    assert len(first.audio) > 0
    assert stream.decoder_steps < decoded.frames.shape[1] / 2
    stream.close()


def test_cancel_mid_utterance_stops_all_work(engine, reference):
    ids, decoded, _ = reference
    stream = ChunkStream(engine, ids, "biaobei", 5, schedule=BlockSchedule(8, 8))
    it = iter(stream)
    next(it), next(it)
    steps_at_cancel = stream.decoder_steps
    stream.close()
    with pytest.raises(StopIteration):
        next(it)
    assert stream.decoder_steps == steps_at_cancel < decoded.frames.shape[1]
    # nothing keeps the cancelled generator's frames alive
    ref = weakref.ref(it)
    del it, stream
    gc.collect()
    assert ref() is None


def test_speaker_closing_mid_text_stops_at_once(engine):
    speaker = Speaker(engine)
    gen = speaker.speak("第一句话。第二句话。第三句话。", voice="Aiyue")
    seen = [next(gen) for _ in range(2)]
    assert all(isinstance(e, Audio) for e in seen)
    gen.close()
    with pytest.raises(StopIteration):
        next(gen)


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


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_long_text_streams_in_bounded_memory(pack):
    """20,000 characters pulled one at a time: resident memory does not grow with the chunks
    already spoken (the speaker keeps neither their audio nor their frames)."""
    from engines.registry import create_engine

    base = "这是一段很长的文本，用来检查流式合成不会把所有内容都留在内存里。"
    text = (base * (20000 // len(base) + 1))[:20000]
    gen = Speaker(create_engine("onnx-int8", pack)).speak(iter(text))  # one character at a time
    segments, audio_samples = 0, 0
    try:
        for event in gen:
            if isinstance(event, Audio):
                audio_samples += len(event.audio)
            elif isinstance(event, Segment):
                segments += 1
                if segments == 6:  # warm: dictionaries loaded, buffers allocated
                    rss_warm, samples_warm = _rss_bytes(), audio_samples
                if segments == 36:
                    rss_end, samples_end = _rss_bytes(), audio_samples
                    break
    finally:
        gen.close()
    spoken = 4 * (samples_end - samples_warm)  # bytes of float32 audio spoken in between
    assert spoken > 6_000_000
    assert rss_end - rss_warm < spoken / 2, (rss_end - rss_warm, spoken)
