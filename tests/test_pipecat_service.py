"""clients/pipecat_service.py driven by pipecat's own Pipeline, PipelineWorker and WorkerRunner
against the real server (the shared int8_server, tests/support/): one socket for every turn,
a spoken turn with its word timestamps, a barge-in that stops the server's audio within its
lead, the next turn on the same socket, and examples/pipecat_bot.py end to end."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import wave
from pathlib import Path

import pytest

pytest.importorskip("pipecat", reason="the pipecat extra: pip install '.[pipecat]'")

from pipecat.frames.frames import (  # noqa: E402
    EndFrame,
    InterruptionFrame,
    LLMFullResponseEndFrame,
    LLMFullResponseStartFrame,
    LLMTextFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline  # noqa: E402
from pipecat.processors.aggregators.llm_context import LLMContext  # noqa: E402
from pipecat.processors.aggregators.llm_response_universal import LLMAssistantAggregator  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from support.fixtures import API_KEY  # noqa: E402

from clients.pipecat_service import StreamTTSService  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RATE = 24000  # the pipeline's output rate: the server resamples to it
MAX_LEAD_S = 2.0  # the server's default --max-lead
FRAME_S = 0.25  # the longest audio frame the server sends
TURN_1 = "你好，欢迎使用流式语音合成。今天天气很好，我们去公园散步吧！"
LONG = "春天来了，公园里的花都开了，红的、黄的、白的，一片连着一片。" * 4
TURN_3 = "好的，我停下来了。请问还有什么问题？"


def tokens(text: str, n: int = 3):
    """The text as an LLM streams it: a few characters a piece."""
    return [text[i:i + n] for i in range(0, len(text), n)]


class Recorder(FrameProcessor):
    """The end of the pipeline: every downstream frame, with the pipeline clock when it came."""

    def __init__(self):
        super().__init__()
        self.frames: list[tuple[int, object]] = []
        self.changed = asyncio.Event()

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self.frames.append((self.get_clock().get_time(), frame))
            self.changed.set()
        await self.push_frame(frame, direction)

    def of(self, kind, context_id=None) -> list:
        return [f for _, f in self.frames
                if isinstance(f, kind) and (context_id is None or getattr(f, "context_id", None) == context_id)]

    def audio_s(self, context_id) -> float:
        return sum(len(f.audio) for f in self.of(TTSAudioRawFrame, context_id)) / 2 / RATE

    async def wait_for(self, condition, what: str, timeout: float = 90.0):
        """Wait on state (frames that came), with a deadline only a broken service reaches."""
        deadline = time.monotonic() + timeout
        while not condition():
            left = deadline - time.monotonic()
            if left <= 0:
                kinds = sorted({type(f).__name__ for _, f in self.frames})
                raise AssertionError(f"no {what} within {timeout:g} s (frames so far: {kinds})")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))
            except asyncio.TimeoutError:
                pass


async def say(worker, text: str, gap_s: float = 0.02):
    """One bot turn as an LLM produces it."""
    await worker.queue_frame(LLMFullResponseStartFrame())
    for piece in tokens(text):
        await worker.queue_frame(LLMTextFrame(piece))
        await asyncio.sleep(gap_s)
    await worker.queue_frame(LLMFullResponseEndFrame())


def said(context: LLMContext) -> list[str]:
    """The assistant messages of the LLM context."""
    return [m["content"] if isinstance(m["content"], str) else "".join(p.get("text", "") for p in m["content"])
            for m in context.get_messages() if m.get("role") == "assistant"]


def check_words(rec: Recorder, ctx: str, text: str, full: bool):
    """The turn's word frames: its text in order, timed on its audio's clock."""
    words = rec.of(TTSTextFrame, ctx)
    assert words, "no word timestamps"
    spoken = "".join(w.text for w in words)
    if full:
        assert spoken == text, (spoken, text)
    else:
        assert text.startswith(spoken), (spoken, text)
    assert all(w.includes_inter_frame_spaces for w in words)  # CJK: no spaces added between words
    pts = [w.pts for w in words]
    assert pts == sorted(pts), "word times go backwards"
    audio = rec.of(TTSAudioRawFrame, ctx)
    # The first audio frame of the context sets pipecat's word clock: the first word (the
    # first character, spoken at once) is timed at it, up to the frame's trip to the recorder.
    first_audio_at = next(t for t, f in rec.frames if f is audio[0])
    assert abs(pts[0] - first_audio_at) / 1e9 < 0.5, (pts[0], first_audio_at)
    last_word_s = (pts[-1] - pts[0]) / 1e9
    return last_word_s, rec.audio_s(ctx)


def test_turns_interruption_and_timestamps_on_one_socket(int8_server):
    asyncio.run(asyncio.wait_for(_conversation(int8_server), 240))


async def _conversation(server):
    tts = StreamTTSService(url=server.ws_url, api_key=API_KEY,
                           settings=StreamTTSService.Settings(voice="biaobei"))
    connections, heard = [], {}

    @tts.event_handler("on_connected")
    async def on_connected(service):
        connections.append(service._websocket)

    @tts.event_handler("on_heard")
    async def on_heard(service, context_id, what):
        heard[context_id] = what

    rec = Recorder()
    context = LLMContext()  # what the bot said, as pipecat's assistant aggregator writes it down
    worker = PipelineWorker(Pipeline([tts, rec, LLMAssistantAggregator(context)]), params=PipelineParams(audio_out_sample_rate=RATE),
                            cancel_on_idle_timeout=False)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def on_started(_worker, _frame):
        started.set()

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(started.wait(), 60)

        # 1. A spoken turn: started, audio, words, stopped.
        await say(worker, TURN_1)
        await rec.wait_for(lambda: rec.of(TTSStoppedFrame), "TTSStoppedFrame of turn 1")
        ctx1 = rec.of(TTSStartedFrame)[0].context_id
        assert rec.of(TTSStoppedFrame)[0].context_id == ctx1
        last_word_s, audio_s = check_words(rec, ctx1, TURN_1, full=True)
        assert audio_s > 3.0, audio_s  # 34 characters of speech
        assert last_word_s <= audio_s, (last_word_s, audio_s)
        # The last character starts near the end of the audio, not seconds before it: the
        # word clock is the audio's (the last char plus the closing pause are under 1.5 s).
        assert last_word_s > audio_s - 1.5, (last_word_s, audio_s)
        assert heard[ctx1]["audio_sent_ms"] == pytest.approx(audio_s * 1000, abs=1.0)
        await rec.wait_for(lambda: said(context), "the assistant message of turn 1")
        assert said(context) == [TURN_1]

        # 2. A long turn, interrupted once its audio has started.
        await say(worker, LONG, gap_s=0.005)
        await rec.wait_for(lambda: len(rec.of(TTSStartedFrame)) >= 2, "TTSStartedFrame of turn 2")
        ctx2 = rec.of(TTSStartedFrame)[1].context_id
        assert ctx2 != ctx1
        await rec.wait_for(lambda: rec.audio_s(ctx2) >= 1.0 and rec.of(TTSTextFrame, ctx2),
                           "a second of audio and the first words of turn 2")
        await worker.queue_frame(InterruptionFrame())
        await rec.wait_for(lambda: ctx2 in heard, "context_closed of turn 2")
        assert rec.audio_s(ctx2) < 10.0  # far from the whole answer
        assert not rec.of(TTSStoppedFrame, ctx2)  # interrupted, not finished
        # What reached the socket after the barge-in is within the server's lead (plus the
        # frame in flight): the server stopped, the pipeline dropped it.
        assert tts.stale_audio_s <= MAX_LEAD_S + FRAME_S, tts.stale_audio_s
        assert heard[ctx2]["audio_sent_ms"] - heard[ctx2]["heard_ms"] <= (MAX_LEAD_S + FRAME_S) * 1000
        # The context keeps what was spoken of the interrupted answer: its words so far.
        await rec.wait_for(lambda: len(said(context)) >= 2, "the assistant message of turn 2")
        spoken2 = "".join(w.text for w in rec.of(TTSTextFrame, ctx2))
        assert said(context)[1] == spoken2 and LONG.startswith(spoken2) and len(spoken2) < len(LONG)

        # 3. The next turn, on the same socket.
        await say(worker, TURN_3)
        await rec.wait_for(lambda: len(rec.of(TTSStoppedFrame)) >= 2, "TTSStoppedFrame of turn 3")
        ctx3 = rec.of(TTSStoppedFrame)[1].context_id
        assert ctx3 not in (ctx1, ctx2)
        last_word_s, audio_s = check_words(rec, ctx3, TURN_3, full=True)
        assert audio_s - 1.5 < last_word_s <= audio_s, (last_word_s, audio_s)
        assert len(connections) == 1 and tts._websocket is connections[0], "reconnected"
        await rec.wait_for(lambda: len(said(context)) >= 3, "the assistant message of turn 3")
        assert said(context)[2] == TURN_3
    finally:
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(run, 60)


def test_example_bot_writes_the_turns(int8_server, tmp_path):
    """examples/pipecat_bot.py: a pipeline with the service writes each turn to a WAV file."""
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "pipecat_bot.py"), "--url", int8_server.ws_url,
                        "--api-key", API_KEY, "--barge-in-after", "0.6", "-o", str(tmp_path / "bot")],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    first, second = tmp_path / "bot-1.wav", tmp_path / "bot-2.wav"
    with wave.open(str(first)) as a, wave.open(str(second)) as b:
        assert a.getframerate() == b.getframerate() == 16000
        assert a.getnframes() > 0.5 * 16000  # the interrupted answer: cut, but heard a while
        assert b.getnframes() > 1.0 * 16000  # the whole second answer
    assert "interrupted" in r.stdout and "words:" in r.stdout


def _segment(text: str, spoken: str, start_ms: float, step_ms: float = 100.0) -> dict:
    chars = [{"char": c, "start_ms": start_ms + i * step_ms, "end_ms": start_ms + (i + 1) * step_ms}
             for i, c in enumerate(spoken)]
    return {"type": "segment", "text": text, "normalized": spoken, "chars": chars,
            "audio_start_ms": start_ms, "audio_end_ms": start_ms + len(spoken) * step_ms + 50.0}


def test_segment_words_keep_the_written_text_and_the_audio_clock():
    """A segment's chars become pipecat words: one per hanzi, punctuation on the word before,
    a Latin word or number whole, a normalized span (3 read 三) as written, at the time of the
    audio received for the context (whatever stream position the server counts from)."""
    from clients.pipecat_words import segment_word_times

    seg = _segment("我有3个apple，好吗？", "我有三个apple好吗", start_ms=5000.0)
    # The context has 1.2 s of audio when the segment comes: the server's positions run 5 s ahead
    # (a per-socket count), the words are placed in the context's own audio.
    words = segment_word_times(seg, received_ms=seg["audio_end_ms"] - 5000.0)
    assert [w for w, _ in words] == ["我", "有", "3", "个", "apple，", "好", "吗？"]
    assert [round(t, 3) for _, t in words] == [0.0, 0.1, 0.2, 0.3, 0.4, 0.9, 1.0]
    assert "".join(w for w, _ in words) == seg["text"]
    assert segment_word_times({**seg, "chars": []}, 0.0) == []


def test_a_call_longer_than_the_socket_budget_moves_to_a_fresh_socket(int8_server):
    """The server limits the text of one socket (--max-session-chars): a turn that would run
    past it, on a service told a small budget, opens a new socket between turns and speaks."""
    asyncio.run(asyncio.wait_for(_budget(int8_server), 180))


async def _budget(server):
    tts = StreamTTSService(url=server.ws_url, api_key=API_KEY, socket_chars=len(TURN_3) + 5)
    connections = []

    @tts.event_handler("on_connected")
    async def on_connected(service):
        connections.append(service._websocket)

    rec = Recorder()
    worker = PipelineWorker(Pipeline([tts, rec]), params=PipelineParams(audio_out_sample_rate=RATE),
                            cancel_on_idle_timeout=False)
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    try:
        for n in (1, 2):
            await say(worker, TURN_3)
            await rec.wait_for(lambda: len(rec.of(TTSStoppedFrame)) >= n, f"TTSStoppedFrame of turn {n}")
        for stopped in rec.of(TTSStoppedFrame):
            assert rec.audio_s(stopped.context_id) > 1.0
        assert len(connections) == 2 and connections[0] is not connections[1]
    finally:
        await worker.queue_frame(EndFrame())
        await asyncio.wait_for(run, 60)
