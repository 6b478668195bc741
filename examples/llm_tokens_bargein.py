"""Voice-agent pattern: LLM tokens stream into the WebSocket as they are generated, audio comes
back while the model is still "typing"; the user barges in mid-way (cancel), then a new answer.

How to call (with ``streamtts serve`` running)::

    python examples/llm_tokens_bargein.py [--url ws://127.0.0.1:8000/v1/stream] [--api-key K]
                                          [--voice V] [--barge-in-after 1.2] [-o bargein]

The token stream is simulated (random 20-80 ms per token). The barge-in comes ``--barge-in-after``
seconds after the first audio, as if the user spoke over the playback. Audio of the two answers
goes to ``<prefix>-1.wav`` and ``<prefix>-2.wav``; the timeline is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
import wave
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from clients.client import DEFAULT_URL, StreamClient  # noqa: E402

ANSWER = ("好的，我来介绍一下流式语音合成。传统的语音合成要等整段文字都生成以后才开始合成，"
          "而流式合成在第一句话完整时就开始发声。这样，用户几乎感觉不到等待。"
          "另外，当用户打断时，系统会立刻停止说话，丢掉还没说完的内容。")
SECOND = "好的，我停下来了。请问你想聊点别的什么？"


async def llm_tokens(text: str, log):
    """A fake LLM: 1-3 characters per token, 20-80 ms apart."""
    rng = random.Random(7)
    i = 0
    while i < len(text):
        n = rng.randint(1, 3)
        await asyncio.sleep(rng.uniform(0.02, 0.08))
        yield text[i:i + n]
        i += n
        log.tokens_sent = i


class Timeline:
    def __init__(self):
        self.t0 = time.perf_counter()
        self.tokens_sent = 0

    def __call__(self, what: str) -> None:
        print(f"{1000 * (time.perf_counter() - self.t0):7.0f} ms  {what}", flush=True)


def write_wav(path: Path, pcm: bytes, rate: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)


async def main(args: argparse.Namespace) -> None:
    log = Timeline()
    async with StreamClient(args.url, api_key=args.api_key, voice=args.voice,
                            on_segment=lambda s: log(f"segment {s['index']}: {s['text']}")) as c:
        log(f"session {c.ready['session']} ready ({c.ready['voice']}, {c.sample_rate} Hz)")

        # 1. the answer streams in token by token; the user interrupts while it plays
        pcm, first_audio = [], None
        async for chunk in c.stream(llm_tokens(ANSWER, log)):
            if first_audio is None:
                first_audio = time.perf_counter()
                log(f"first audio (TTFA {c.ttfa_ms:.0f} ms after the first token was sent; "
                    f"{log.tokens_sent} of {len(ANSWER)} chars generated so far)")
            pcm.append(chunk)
            if time.perf_counter() - first_audio >= args.barge_in_after:
                log(f"user barges in: cancel ({log.tokens_sent}/{len(ANSWER)} chars generated, "
                    f"{c.audio_ms / 1000:.2f} s of audio received)")
                t = time.perf_counter()
                await c.cancel()
                log(f"cancelled in {1000 * (time.perf_counter() - t):.0f} ms; no more audio of that answer")
        write_wav(Path(f"{args.output}-1.wav"), b"".join(pcm), c.sample_rate)

        # 2. a new answer on the same session
        pcm = [chunk async for chunk in c.stream(llm_tokens(SECOND, log))]
        log(f"second answer: TTFA {c.ttfa_ms:.0f} ms, {c.audio_ms / 1000:.2f} s of audio, server {c.done}")
        write_wav(Path(f"{args.output}-2.wav"), b"".join(pcm), c.sample_rate)
    print(f"wrote {args.output}-1.wav (interrupted) and {args.output}-2.wav")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=os.environ.get("STREAMTTS_URL", DEFAULT_URL))
    p.add_argument("--api-key", default=os.environ.get("STREAMTTS_API_KEY"))
    p.add_argument("--voice", default=None)
    p.add_argument("--barge-in-after", type=float, default=1.2, help="seconds of playback before the user speaks")
    p.add_argument("-o", "--output", default="bargein", help="prefix of the WAV files")
    asyncio.run(main(p.parse_args()))
