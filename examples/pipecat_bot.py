"""A pipecat pipeline speaking through streamtts: two bot turns on one WebSocket, the first
interrupted by the user, each turn written to a WAV file with its word timeline.

How to call (with ``streamtts serve`` running; needs ``pip install 'streamtts[pipecat]'``)::

    python examples/pipecat_bot.py [--url ws://127.0.0.1:8000/v1/stream] [--api-key K]
                                   [--voice V] [--barge-in-after 1.5] [--sample-rate 16000] [-o bot]

There is no LLM and no audio device: the answers are streamed into the pipeline as pipecat's LLM
frames (a few characters a piece), and a small processor at the end of the pipeline writes the
audio of each turn to ``<prefix>-<n>.wav`` where a transport would play it. ``--barge-in-after``
seconds into the first answer's audio an ``InterruptionFrame`` comes, as when the user speaks
over the bot; the second answer then goes out on the same socket.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import wave
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

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
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from loguru import logger  # noqa: E402

from clients.pipecat_service import DEFAULT_URL, StreamTTSService  # noqa: E402

ANSWERS = [
    "好的，我来介绍一下流式语音合成。传统的语音合成要等整段文字都生成以后才开始合成，"
    "而流式合成在第一句话完整时就开始发声。这样，用户几乎感觉不到等待。",
    "好的，我停下来了。请问你想聊点别的什么？",
]


class WavTurns(FrameProcessor):
    """Where a transport would play the audio: each turn's audio to its own WAV file."""

    def __init__(self, prefix: str, rate: int):
        super().__init__()
        self.prefix, self.rate = prefix, rate
        self.turns: dict[str, dict] = {}  # context id -> {"n", "wav", "frames", "words"}
        self.changed = asyncio.Event()
        self.t0 = time.monotonic()

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM:
            self._record(frame)
            self.changed.set()
        await self.push_frame(frame, direction)

    def _record(self, frame) -> None:
        ctx = getattr(frame, "context_id", None)
        if isinstance(frame, TTSStartedFrame):
            n = len(self.turns) + 1
            wav = wave.open(f"{self.prefix}-{n}.wav", "wb")
            wav.setnchannels(1), wav.setsampwidth(2), wav.setframerate(self.rate)
            self.turns[ctx] = {"n": n, "wav": wav, "frames": 0, "words": [], "open": True}
            print(f"{time.monotonic() - self.t0:6.2f} s  turn {n}: started")
        elif ctx in self.turns and self.turns[ctx]["open"]:
            turn = self.turns[ctx]
            if isinstance(frame, TTSAudioRawFrame):
                turn["wav"].writeframes(frame.audio)
                turn["frames"] += len(frame.audio) // 2
            elif isinstance(frame, TTSTextFrame):
                turn["words"].append(frame)
            elif isinstance(frame, TTSStoppedFrame):
                self.close(ctx, "done")

    def audio_s(self, n: int) -> float:
        return next((t["frames"] / self.rate for t in self.turns.values() if t["n"] == n), 0.0)

    def close(self, ctx: str, how: str) -> None:
        turn = self.turns[ctx]
        if not turn["open"]:
            return
        turn["open"] = False
        turn["wav"].close()
        words = turn["words"]
        base = words[0].pts if words else 0
        timeline = " ".join(f"{w.text}@{(w.pts - base) / 1e9:.2f}" for w in words)
        print(f"{time.monotonic() - self.t0:6.2f} s  turn {turn['n']}: {how}, "
              f"{turn['frames'] / self.rate:.2f} s of audio -> {self.prefix}-{turn['n']}.wav")
        print(f"          words: {timeline}")

    async def wait_for(self, condition, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise SystemExit("timed out waiting for the server")
            self.changed.clear()
            try:
                await asyncio.wait_for(self.changed.wait(), 1.0)
            except asyncio.TimeoutError:
                pass


async def speak(worker: PipelineWorker, text: str) -> None:
    """A bot turn as an LLM streams it: 1-3 characters a piece, 30 ms apart."""
    await worker.queue_frame(LLMFullResponseStartFrame())
    for i in range(0, len(text), 3):
        await worker.queue_frame(LLMTextFrame(text[i:i + 3]))
        await asyncio.sleep(0.03)
    await worker.queue_frame(LLMFullResponseEndFrame())


async def main(args) -> None:
    tts = StreamTTSService(url=args.url, api_key=args.api_key,
                           settings=StreamTTSService.Settings(voice=args.voice))
    out = WavTurns(args.output, args.sample_rate)
    worker = PipelineWorker(Pipeline([tts, out]),
                            params=PipelineParams(audio_out_sample_rate=args.sample_rate),
                            cancel_on_idle_timeout=False)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def on_started(_worker, _frame):
        started.set()

    @tts.event_handler("on_heard")
    async def on_heard(_tts, context_id, heard):
        if context_id in out.turns:
            print(f"          server: heard {heard['heard_ms']} ms of {heard['audio_sent_ms']} ms sent, "
                  f"heard_text {heard['heard_text']!r}")

    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    run = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), 60)

    await speak(worker, ANSWERS[0])
    if args.barge_in_after > 0:
        await out.wait_for(lambda: out.audio_s(1) >= args.barge_in_after
                           or any(t["n"] == 1 and not t["open"] for t in out.turns.values()))
        await worker.queue_frame(InterruptionFrame())
        first = next(ctx for ctx, t in out.turns.items() if t["n"] == 1)
        await asyncio.sleep(0.2)  # let the frames already on their way land
        out.close(first, "interrupted")
    else:
        await out.wait_for(lambda: any(t["n"] == 1 and not t["open"] for t in out.turns.values()))

    await speak(worker, ANSWERS[1])
    await out.wait_for(lambda: any(t["n"] == 2 and not t["open"] for t in out.turns.values()))
    await worker.queue_frame(EndFrame())
    await run


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default=DEFAULT_URL)
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--voice", default="biaobei")
    ap.add_argument("--barge-in-after", type=float, default=1.5,
                    help="seconds of the first answer's audio before the user interrupts (0: never)")
    ap.add_argument("--sample-rate", type=int, default=16000)
    ap.add_argument("-o", "--output", default="pipecat-bot", help="WAV file prefix")
    logger.remove()  # pipecat logs every frame at debug level
    logger.add(sys.stderr, level="WARNING")
    asyncio.run(main(ap.parse_args()))
