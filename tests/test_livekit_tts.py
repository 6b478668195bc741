"""The LiveKit Agents TTS (clients/livekit_tts) driven through LiveKit's own classes against a real
`streamtts serve` (the shared onnx-int8 + MelGAN server, default --max-lead 2): a spoken turn
from incremental text with aligned transcripts that line up with the audio, two turns at once on
one socket, an interruption that stops the audio within the lead and a next turn on the same
socket, `synthesize()`, and a refused voice."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

pytest.importorskip("livekit.agents", reason="needs the livekit extra: pip install '.[livekit]'")

from livekit import rtc  # noqa: E402
from livekit.agents import APIError  # noqa: E402
from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT  # noqa: E402

from clients.livekit_tts import TTS, StreamTTSError  # noqa: E402
from support.fixtures import API_KEY  # noqa: E402

RATE = 22050
MAX_LEAD_S = 2.0  # the server's default --max-lead
DEADLINE_S = 120.0  # a state that never comes fails here; a slow, shared machine does not


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, DEADLINE_S))


async def _feed(stream, pieces, gap_s=0.03):
    """Text as an LLM sends it: fragments that cut through words and sentences."""
    for piece in pieces:
        stream.push_text(piece)
        await asyncio.sleep(gap_s)
    stream.end_input()


async def _collect(stream):
    """(audio as int16, timed transcript pieces, SynthesizedAudio events) of a whole stream."""
    events, timed = [], []
    async for ev in stream:
        events.append(ev)
        timed += ev.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT) or []
    pcm = np.concatenate([np.frombuffer(ev.frame.data, np.int16) for ev in events]) if events else np.zeros(0, np.int16)
    return pcm, timed, events


def _rms(pcm, start_s, end_s):
    part = pcm[int(start_s * RATE):int(end_s * RATE)].astype(np.float64)
    return float(np.sqrt(np.mean(part ** 2))) if part.size else 0.0


def test_stream_turn_aligned_transcript(int8_server):
    sentences = ["今天天气很好。", "我们一起去公园散步吧。"]
    pieces = ["今天", "天气很", "好。我", "们一起去", "公园", "散步吧", "。"]

    async def main():
        async with TTS(url=int8_server.ws_url, api_key=API_KEY) as engine:
            stream = engine.stream()
            feeder = asyncio.create_task(_feed(stream, pieces))
            pcm, timed, events = await _collect(stream)
            await feeder
            return pcm, timed, events, engine.connects

    pcm, timed, events, connects = run(main())
    duration = pcm.size / RATE
    assert connects == 1
    assert duration > 1.5, duration
    assert all(ev.frame.sample_rate == RATE and ev.frame.num_channels == 1 for ev in events)
    assert len({ev.segment_id for ev in events}) == 1 and events[-1].is_final
    # the transcript is the text as sent, one piece per spoken character, punctuation riding along
    assert "".join(timed) == "".join(sentences)
    assert [str(t) for t in timed[:3]] == ["今", "天", "天"]
    starts = [t.start_time for t in timed]
    assert starts == sorted(starts)
    assert all(0 <= t.start_time <= t.end_time <= duration + 1e-3 for t in timed), \
        [(str(t), t.start_time, t.end_time) for t in timed]
    # the times line up with the audio: the characters are speech, the pause between the two
    # sentences (after 好。, before 我) is near silence, and the audio ends soon after the last one
    first = timed[:len("今天天气很好")]
    second = timed[len(first):]
    gap = (first[-1].end_time, second[0].start_time)
    assert gap[1] - gap[0] > 0.1, gap
    speech = np.mean([_rms(pcm, t.start_time, t.end_time) for t in timed])
    pause = _rms(pcm, gap[0] + 0.03, gap[1] - 0.03)
    assert pause < 0.2 * speech, (pause, speech, gap)
    assert duration - second[-1].end_time < 1.0
    assert first[0].start_time < 0.5


def test_two_turns_at_once_share_one_socket(int8_server):
    texts = ["你好。", "欢迎光临。"]

    async def main():
        async with TTS(url=int8_server.ws_url, api_key=API_KEY) as engine:
            streams = [engine.stream() for _ in texts]
            feeders = [asyncio.create_task(_feed(s, [t[:2], t[2:]])) for s, t in zip(streams, texts)]
            results = await asyncio.gather(*(_collect(s) for s in streams))
            await asyncio.gather(*feeders)
            return results, engine.connects, len(engine.connections)

    results, connects, open_sockets = run(main())
    assert connects == 1 and open_sockets == 1
    for text, (pcm, timed, _) in zip(texts, results):
        assert pcm.size > 0.3 * RATE
        assert "".join(timed) == text  # each stream got its own context's transcript


def test_interruption_stops_within_the_lead_and_the_socket_goes_on(int8_server):
    long_text = ("春天来了，公园里的花都开了，红的像火，粉的像霞，白的像雪。"
                 "孩子们在草地上放风筝，老人们在树下下棋聊天。"
                 "湖面上有几只小船，微风吹过，水面泛起一圈圈涟漪。")

    async def main():
        async with TTS(url=int8_server.ws_url, api_key=API_KEY) as engine:
            stream = engine.stream()
            stream.push_text(long_text)
            stream.end_input()
            received_s, first_at = 0.0, None
            async for ev in stream:
                first_at = first_at or time.monotonic()
                received_s += ev.frame.duration
                if received_s >= 1.0:
                    break
            closed_at = time.monotonic()
            await stream.aclose()  # LiveKit's interruption of a turn
            (conn,) = engine.connections
            (context_id,) = conn.stats
            stats = conn.stats[context_id]
            while stats.closed_event is None:  # the server's reply to close_context
                assert time.monotonic() - closed_at < 60, "no context_closed after close_context"
                await asyncio.sleep(0.02)
            # what a player that started with the first audio had played when the turn was cut
            played_s = closed_at - first_at
            interrupted = (stats, played_s, conn)

            # the next turn: same socket, no reconnect
            nxt = engine.stream()
            nxt.push_text("好的，我们换个话题。")
            nxt.end_input()
            pcm, timed, _ = await _collect(nxt)
            return interrupted, pcm, timed, engine.connects, engine.connections

    (stats, played_s, conn), pcm, timed, connects, connections = run(main())
    assert stats.closed_event["type"] == "context_closed" and stats.closed_event["reason"] == "closed", stats.closed_event
    assert "heard_ms" in stats.closed_event
    # nothing after the server's reply, and all the audio of the turn that reached the socket
    # (what the stream took, and what was on its way when close_context went out) is at most the
    # server's lead ahead of that player (plus one 0.25 s frame)
    assert stats.after_closed_bytes == 0
    sent_s = (stats.audio_bytes + stats.late_bytes) / 2 / RATE
    assert sent_s - played_s <= MAX_LEAD_S + 0.25 + 0.1, (sent_s, played_s)
    assert sent_s < 8.0  # far from the whole turn: the interruption stopped it
    assert connects == 1 and connections == [conn]
    assert pcm.size > 0.5 * RATE and "".join(timed) == "好的，我们换个话题。"


def _real_time_sink():
    """A LiveKit AudioOutput that plays what the session gives it at real time, to nowhere, and
    reports where it was when it was cleared (an interruption), as a room's audio output does."""
    from livekit.agents.voice import io

    class Sink(io.AudioOutput):
        def __init__(self):
            super().__init__(label="real-time sink", capabilities=io.AudioOutputCapabilities(pause=False))
            self.pushed_s, self.started = 0.0, None
            self.cleared = asyncio.Event()
            self.finished: list = []  # (playback position, interrupted) per segment

        async def capture_frame(self, frame):
            await super().capture_frame(frame)
            if self.started is None:
                self.started = time.monotonic()
                self.on_playback_started(created_at=time.time())
            self.pushed_s += frame.duration

        def flush(self):
            super().flush()
            if self.started is not None:
                asyncio.get_running_loop().create_task(self._play_out())

        def clear_buffer(self):
            if self.started is not None:  # a segment is playing
                self.cleared.set()

        async def _play_out(self):
            try:
                await asyncio.wait_for(self.cleared.wait(), max(0.0, self.started + self.pushed_s - time.monotonic()))
                position, interrupted = min(self.pushed_s, time.monotonic() - self.started), True
            except asyncio.TimeoutError:
                position, interrupted = self.pushed_s, False
            self.started, self.pushed_s = None, 0.0
            self.cleared.clear()
            self.finished.append((position, interrupted))
            self.on_playback_finished(playback_position=position, interrupted=interrupted)

    return Sink()


def test_agent_session_interruption_keeps_what_was_heard(int8_server):
    """The whole LiveKit pipeline: AgentSession.say() through the plugin into a sink playing at
    real time, interrupted mid-turn. The assistant message LiveKit keeps is cut where the
    listener was, from the plugin's character times; the next turn reuses the socket."""
    from livekit.agents import Agent, AgentSession

    text = ("春天来了，公园里的花都开了，红的像火，粉的像霞，白的像雪。"
            "孩子们在草地上放风筝，老人们在树下下棋聊天。")
    nxt = "好的，我们换个话题。"
    timed: list = []

    class Tapped(Agent):
        async def tts_node(self, text_in, model_settings):  # the default node, its transcript noted
            async for frame in Agent.default.tts_node(self, text_in, model_settings):
                timed.extend(frame.userdata.get(USERDATA_TIMED_TRANSCRIPT) or [])
                yield frame

    async def main():
        async with TTS(url=int8_server.ws_url, api_key=API_KEY) as engine:
            session = AgentSession(tts=engine, use_tts_aligned_transcript=True, resume_false_interruption=False)
            sink = _real_time_sink()
            session.output.audio = sink
            await session.start(agent=Tapped(instructions="speak"))
            try:
                handle = session.say(text)
                while sink.started is None or time.monotonic() - sink.started < 1.5:  # into the turn
                    await asyncio.sleep(0.02)
                handle.interrupt()
                await handle
                first_timed = list(timed)
                await session.say(nxt)
            finally:
                await session.aclose()
            messages = [(m.text_content, m.interrupted) for m in session.history.items
                        if getattr(m, "type", "") == "message" and m.role == "assistant"]
            return messages, sink.finished, first_timed, engine.connects

    messages, finished, first_timed, connects = run(main())
    (heard, interrupted), (said, second_interrupted) = messages
    (position, was_interrupted), (_, second_cut) = finished
    assert interrupted and was_interrupted and said == nxt and not second_interrupted and not second_cut
    assert heard and text.startswith(heard) and len(heard) < len(text), heard
    # the cut follows the character times: what ended well before the sink's position is in it,
    # nothing that started well after it is
    kept = len(heard)
    assert "".join(first_timed).startswith(heard)
    pieces, at = [], 0
    for piece in first_timed:
        pieces.append((at, at + len(piece), piece))
        at += len(piece)
    for start, end, piece in pieces:
        if piece.end_time <= position - 0.5:
            assert end <= kept, (piece, position, heard)
        if start < kept:
            assert piece.start_time <= position + 0.5, (piece, position, heard)
    assert connects == 1


def test_synthesize_chunked(int8_server):
    async def main():
        async with TTS(url=int8_server.ws_url, api_key=API_KEY) as engine:
            frame = await engine.synthesize("你好，世界。").collect()
            again = await engine.synthesize("再见。").collect()
            return frame, again, engine.connects

    frame, again, connects = run(main())
    assert isinstance(frame, rtc.AudioFrame) and frame.sample_rate == RATE
    assert frame.duration > 0.5 and again.duration > 0.2
    assert connects == 1


def test_new_options_take_a_new_socket(int8_server):
    async def main():
        async with TTS(url=int8_server.ws_url, api_key=API_KEY) as engine:
            await engine.synthesize("你好。").collect()
            (old,) = engine.connections
            engine.update_options(voice="Aiyue", speed=1.2)
            frame = await engine.synthesize("你好。").collect()
            (new,) = engine.connections
            return old, new, frame, engine.connects

    old, new, frame, connects = run(main())
    assert old.closed and connects == 2 and new is not old
    assert new.ready["voice"] == "Aiyue" and new.ready["speed"] == 1.2
    assert frame.duration > 0.2


def test_unknown_voice_is_a_clear_error(int8_server):
    async def main():
        async with TTS(url=int8_server.ws_url, api_key=API_KEY, voice="nobody") as engine:
            stream = engine.stream()
            stream.push_text("你好。")
            stream.end_input()
            async for _ in stream:
                pass

    with pytest.raises(APIError) as info:
        run(main())
    assert isinstance(info.value, StreamTTSError) and info.value.code == "unknown_voice"
    assert not info.value.retryable


def test_bad_options_raise_at_once():
    with pytest.raises(ValueError):
        TTS(sample_rate=12345)
    with pytest.raises(ValueError):
        TTS(speed=3.0)


def test_example_runs(int8_server, tmp_path):
    import subprocess
    import sys
    import wave

    from support.servers import ROOT

    out = tmp_path / "lk.wav"
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "livekit_agent.py"), "--url", int8_server.ws_url,
                        "--api-key", API_KEY, "-o", str(out)], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "first audio after" in r.stdout and " s  您" in r.stdout
    with wave.open(str(out), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, RATE)
        assert w.getnframes() > RATE
