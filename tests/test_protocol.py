"""The sans-I/O session protocol: messages in, events and messages out. No sockets, no engine."""

from __future__ import annotations

import json

import numpy as np
import pytest

from streamtts.protocol import (AudioEncoder, CancelEvent, EndEvent, FlushEvent, Limits, Session,
                                Segment, StartEvent, State, TextEvent, mulaw_decode, mulaw_encode)


class Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def drain(session: Session) -> list:
    out = []
    while (item := session.next_to_send()) is not None:
        out.append(item)
    return out


def send(session: Session, msg) -> list:
    return session.receive_text(msg if isinstance(msg, str) else json.dumps(msg))


def errors(items) -> list[str]:
    return [m["code"] for m in items if isinstance(m, dict) and m["type"] == "error"]


def tone(n: int, rate: int = 22050, f: float = 440.0) -> np.ndarray:
    return (0.5 * np.sin(2 * np.pi * f * np.arange(n) / rate)).astype(np.float32)


def test_start_sets_options_and_replies_ready():
    s = Session()
    events = send(s, {"type": "start", "voice": "aiyue", "format": "pcm_f32le", "sample_rate": 16000,
                      "speed": 1.25, "seed": 7, "future_field": 1})
    assert s.state is State.READY
    assert events == [StartEvent(s.options)]
    o = s.options
    assert (o.voice, o.format, o.sample_rate, o.speed, o.seed) == ("Aiyue", "pcm_f32le", 16000, 1.25, 7)
    [ready] = drain(s)
    assert ready["type"] == "ready" and ready["session"] == s.id
    assert (ready["voice"], ready["format"], ready["sample_rate"], ready["channels"]) == ("Aiyue", "pcm_f32le", 16000, 1)


def test_mulaw_defaults_to_8k_and_text_without_start_uses_defaults():
    s = Session()
    send(s, {"type": "start", "format": "mulaw"})
    assert s.options.sample_rate == 8000
    s = Session()
    events = send(s, {"type": "text", "text": "你好"})
    assert isinstance(events[0], StartEvent) and events[1] == TextEvent("你好", 0)
    assert s.options.voice == "biaobei" and s.options.sample_rate == 22050 and s.options.format == "pcm_s16le"
    assert drain(s)[0]["type"] == "ready"


@pytest.mark.parametrize("msg,code", [
    ("{not json", "bad_json"),
    ("[" * 100_000 + "]" * 100_000, "message_too_large"),
    ('[1, 2]', "bad_message"),
    ('"text"', "bad_message"),
    ({"text": "你好"}, "bad_message"),
    ({"type": 5}, "bad_message"),
    ({"type": "speak"}, "unknown_type"),
    ({"type": "text"}, "bad_message"),
    ({"type": "text", "text": 12}, "bad_message"),
    ({"type": "text", "text": ""}, "empty_text"),
    ({"type": "text", "text": "你" * 5000}, "text_too_long"),
    ({"type": "text", "text": "😀🎉👍"}, "no_speakable_text"),
    ({"type": "text", "text": "\x00\x07\x1b"}, "no_speakable_text"),
    ('{"type": "text", "text": "\\ud800abc"}', "bad_utf8"),
    ({"type": "start", "voice": "nobody"}, "unknown_voice"),
    ({"type": "start", "voice": 3}, "bad_message"),
    ({"type": "start", "format": "mp3"}, "unknown_format"),
    ({"type": "start", "sample_rate": 11025}, "unsupported_sample_rate"),
    ({"type": "start", "sample_rate": "16000"}, "unsupported_sample_rate"),
    ({"type": "start", "speed": 3.0}, "bad_speed"),
    ({"type": "start", "speed": "fast"}, "bad_speed"),
    ('{"type": "start", "speed": NaN}', "bad_speed"),
    ({"type": "start", "speed": True}, "bad_speed"),
    ({"type": "start", "seed": -1}, "bad_message"),
])
def test_bad_messages_get_typed_errors_and_the_session_goes_on(msg, code):
    s = Session()
    assert send(s, msg) == []
    items = drain(s)
    assert errors(items) == [code]
    assert items[-1]["fatal"] is False and items[-1]["message"]
    assert s.state is State.NEW
    # still usable: a good message afterwards works
    events = send(s, {"type": "text", "text": "你好。"})
    assert events[-1] == TextEvent("你好。", 0)


def test_deep_json_is_bad_json_not_a_crash():
    s = Session(limits=Limits(max_message_bytes=1 << 20))
    send(s, "[" * 200_000 + "]" * 200_000)
    assert errors(drain(s)) == ["bad_json"]


def test_binary_frames_and_invalid_utf8():
    s = Session()
    assert s.receive_bytes(b"\x00\x01") == []
    assert s.receive_text(b'{"type": "text", "text": "\xff\xfe"}') == []
    assert s.receive_text('{"type":"text","text":"好"}'.encode()) [-1] == TextEvent("好", 0)
    assert errors(drain(s)) == ["binary_not_allowed", "bad_utf8"]


def test_control_chars_are_dropped_and_whitespace_fragments_pass():
    s = Session()
    assert send(s, {"type": "text", "text": "你\x00好\x1b"})[-1] == TextEvent("你好", 0)
    assert send(s, {"type": "text", "text": " "}) == [TextEvent(" ", 0)]
    assert send(s, {"type": "text", "text": "。"}) == [TextEvent("。", 0)]


def test_limits_per_message_and_per_session():
    s = Session(limits=Limits(max_message_bytes=100, max_text_chars=10, max_session_chars=15))
    send(s, {"type": "text", "text": "一二三四五六七八九十"})
    send(s, {"type": "text", "text": "一二三四五六"})  # would make 16 > 15
    send(s, {"type": "text", "text": "a" * 200})
    assert errors(drain(s)) == ["text_too_long", "message_too_large"]
    assert send(s, {"type": "text", "text": "一二三四五"})[-1].text == "一二三四五"  # exactly 15


def test_text_after_end_and_start_twice():
    s = Session()
    send(s, {"type": "start"})
    send(s, {"type": "start"})
    assert send(s, {"type": "end"}) == [EndEvent(0)]
    assert s.state is State.ENDING
    send(s, {"type": "text", "text": "还有"})
    send(s, {"type": "flush"})
    assert errors(drain(s)) == ["bad_message", "text_after_end", "bad_message"]


def test_rate_limit_drops_a_flood_with_one_error_per_run():
    clock = Clock()
    s = Session(limits=Limits(rate=10, burst=20), clock=clock)
    accepted = sum(1 for _ in range(200) if send(s, {"type": "flush"}))
    assert accepted == 20
    assert errors(drain(s)) == ["rate_limited"]
    clock.t += 1.0  # 10 more tokens
    assert sum(1 for _ in range(50) if send(s, {"type": "flush"})) == 10
    assert errors(drain(s)) == ["rate_limited"]
    s.receive_bytes(b"x")  # binary floods are limited too: no error beyond the one per run
    assert errors(drain(s)) == []


def feed_chunk(s: Session, gen: int, audio: np.ndarray, pieces: int = 3, text="你好。"):
    for part in np.array_split(audio, pieces):
        s.audio(gen, part, compute_s=0.01)
    s.segment(gen, _segment(text, text.replace("。", "."), [("你", 0.0, 100.0), ("好", 100.0, 5000.0)]))


@pytest.mark.parametrize("fmt,rate,width", [("pcm_s16le", 22050, 2), ("pcm_s16le", 16000, 2), ("pcm_f32le", 48000, 4),
                                            ("mulaw", 8000, 1), ("pcm_s16le", 24000, 2), ("pcm_f32le", 44100, 4)])
def test_audio_lengths_match_the_rate_and_segments_time_it(fmt, rate, width):
    s = Session()
    send(s, {"type": "start", "format": fmt, "sample_rate": rate})
    send(s, {"type": "text", "text": "你好。你好。"})
    n = 22050  # one second per chunk
    feed_chunk(s, 0, tone(n))
    s.pause(0, 3308)  # 150 ms
    feed_chunk(s, 0, tone(n))
    send(s, {"type": "end"})
    s.finished(0)
    items = drain(s)
    frames = [m for m in items if isinstance(m, bytes)]
    assert all(len(f) % width == 0 for f in frames), "frames never split a sample"
    total = sum(len(f) for f in frames) // width
    assert abs(total - round(rate * (2 + 3308 / 22050))) <= 2
    seg0, seg1 = [m for m in items if isinstance(m, dict) and m["type"] == "segment"]
    assert seg0["index"] == 0 and seg1["index"] == 1
    assert seg0["audio_start_ms"] == 0 and abs(seg0["audio_end_ms"] - 1000) <= 0.2
    assert abs(seg1["audio_start_ms"] - 1150) <= 0.3 and abs(seg1["audio_end_ms"] - 2150) <= 0.3
    assert seg1["chars"][0] == {"char": "你", "start_ms": seg1["audio_start_ms"], "end_ms": round(seg1["audio_start_ms"] + 100, 1)}
    assert seg1["chars"][1]["end_ms"] == seg1["audio_end_ms"]  # clamped to the chunk's audio
    # each segment is sent after the last audio frame of its chunk
    before = sum(len(m) for m in items[:items.index(seg0)] if isinstance(m, bytes)) // width
    assert abs(1000.0 * before / rate - seg0["audio_end_ms"]) <= 0.1
    done = items[-1]
    assert done["type"] == "done" and done["segments"] == 2
    assert abs(done["audio_ms"] - 1000.0 * total / rate) <= 0.1
    assert done["rtf"] == pytest.approx(0.06 / (2 + 3308 / 22050), rel=1e-3)
    assert s.state is State.CLOSED and s.close_code == 1000


def test_streaming_resampler_has_no_seams():
    audio = tone(22050, f=300.0)
    whole, pieces = AudioEncoder("pcm_f32le", 16000), AudioEncoder("pcm_f32le", 16000)
    a = np.frombuffer(whole.encode(audio) + whole.encode(np.zeros(0, np.float32), last=True), "<f4")
    parts = b"".join(pieces.encode(p) for p in np.array_split(audio, 17)) + pieces.encode(np.zeros(0), last=True)
    b = np.frombuffer(parts, "<f4")
    assert len(a) == len(b) == 16000
    assert np.abs(a - b).max() < 1e-5
    ref = 0.5 * np.sin(2 * np.pi * 300.0 * np.arange(16000) / 16000)
    assert np.abs(b[200:-200] - ref[200:-200]).max() < 0.01  # a clean tone: no clicks at piece edges


def test_mulaw_round_trip():
    x = np.linspace(-1, 1, 4001, dtype=np.float32)
    y = mulaw_decode(mulaw_encode(x)).astype(np.float32) / 32768
    assert np.abs(y - x).max() < 0.03  # µ-law: coarse for loud samples, fine for quiet ones
    assert mulaw_encode(np.zeros(3)) == b"\xff\xff\xff"
    quiet = np.float32(0.001)
    assert abs(mulaw_decode(mulaw_encode(np.array([quiet])))[0] / 32768 - quiet) < 0.0003


def test_cancel_drops_queued_audio_and_results_of_the_cancelled_text():
    s = Session()
    send(s, {"type": "text", "text": "很长的一段话。"})
    drain(s)
    s.audio(0, tone(5000))
    s.audio(0, tone(5000))
    assert s.buffered_seconds > 0
    first = s.next_to_send()  # one frame already went out before the cancel
    assert isinstance(first, bytes)
    events = send(s, {"type": "cancel"})
    assert events == [CancelEvent(1)] and s.generation == 1
    assert s.buffered_seconds == 0
    s.audio(0, tone(5000))  # late results of the cancelled text
    s.segment(0, _segment("很长的一段话。", "很长的一段话.", []))
    items = drain(s)
    assert [m if isinstance(m, bytes) else m["type"] for m in items] == ["cancelled"], "nothing of the cancelled text after `cancelled`"
    # the session goes on with the next generation
    assert send(s, {"type": "text", "text": "好。"}) == [TextEvent("好。", 1)]
    s.audio(1, tone(2205))
    s.segment(1, _segment("好。", "好.", []))
    items = drain(s)
    assert isinstance(items[0], bytes) and items[-1]["type"] == "segment" and items[-1]["index"] == 0
    # times count audio actually sent: the dropped frames of the cancelled text are not in them
    sent_before = len(first) // 2
    assert items[-1]["audio_start_ms"] == pytest.approx(1000 * sent_before / 22050, abs=0.1)


def test_cancel_after_end_still_finishes():
    s = Session()
    send(s, {"type": "text", "text": "你好。"})
    send(s, {"type": "end"})
    assert send(s, {"type": "cancel"}) == [CancelEvent(1)]
    s.finished(0)  # stale
    assert s.state is State.ENDING
    s.finished(1)
    items = drain(s)
    assert [m["type"] for m in items] == ["ready", "cancelled", "done"]
    assert items[-1]["ttfa_ms"] is None and items[-1]["audio_ms"] == 0


def test_ttfa_runs_from_first_text_to_first_audio_sent():
    clock = Clock()
    s = Session(clock=clock)
    send(s, {"type": "text", "text": "你好"})
    clock.t += 0.5
    send(s, {"type": "text", "text": "。"})
    clock.t += 0.25
    s.audio(0, tone(1000))
    clock.t += 0.25  # queued, handed to the socket later
    drain(s)
    assert s.ttfa_s == pytest.approx(1.0) and s.ttfa_observed == [pytest.approx(1.0)]
    send(s, {"type": "cancel"})
    send(s, {"type": "text", "text": "再见。"})
    clock.t += 0.2
    s.audio(1, tone(1000))
    drain(s)
    assert s.ttfa_observed[-1] == pytest.approx(0.2) and s.ttfa_s == pytest.approx(1.0)


def test_flush_and_fatal_failure():
    s = Session()
    assert send(s, {"type": "flush"})[-1] == FlushEvent(0)
    s.fail("too_many_sessions", "full")
    items = drain(s)
    assert items[-1] == {"type": "error", "code": "too_many_sessions", "message": "full", "fatal": True}
    assert s.state is State.CLOSED and s.close_code == 1013
    assert send(s, {"type": "text", "text": "你好"}) == []
    assert drain(s) == []


def _segment(text: str, normalized: str, chars: list) -> Segment:
    """A chunk's segment event as the output stream hands it over (positions are the session's)."""
    return Segment(0, 0, text, normalized, 0, 0, chars)
