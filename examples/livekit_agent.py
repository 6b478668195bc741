"""streamtts as the TTS of a LiveKit Agents voice agent.

How to call (with ``streamtts serve`` running; needs ``pip install '.[livekit]'``)::

    python examples/livekit_agent.py [--url ws://127.0.0.1:8000/v1/stream] [--api-key K]
                                     [--voice V] [-o livekit.wav]

Without a LiveKit server this drives the plugin the way an ``AgentSession`` does: LLM-like text
fragments are pushed into ``tts.stream()`` as they come, and the audio frames and aligned
transcript (one piece per character, timed from the start of the turn's audio) come back while
the text still arrives. The audio goes to a WAV file; the transcript is printed with its times.

In a real agent, hand the TTS to the session; interruptions then close the turn's stream, which
stops that context on the server without reconnecting::

    from livekit.agents import AgentSession
    from clients.livekit_tts import TTS

    session = AgentSession(
        stt=..., llm=...,
        tts=TTS(url="ws://127.0.0.1:8000/v1/stream", voice="Aiyue"),
        use_tts_aligned_transcript=True,   # the transcript follows the audio character by character
    )
    await session.start(agent=my_agent, room=ctx.room)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import wave
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from livekit.agents.types import USERDATA_TIMED_TRANSCRIPT  # noqa: E402

from clients.livekit_tts import TTS  # noqa: E402

ANSWER = ["您好", "，这里", "是流式", "语音合成", "。我可以", "一边接收", "文字，", "一边说话", "。"]


async def main(args) -> None:
    async with TTS(url=args.url, api_key=args.api_key, voice=args.voice) as tts:
        stream = tts.stream()

        async def llm() -> None:  # stands in for the LLM's tokens
            for piece in ANSWER:
                stream.push_text(piece)
                await asyncio.sleep(0.05)
            stream.end_input()

        feeder = asyncio.create_task(llm())
        t0 = time.perf_counter()
        first_audio = None
        with wave.open(args.output, "wb") as wav:
            wav.setnchannels(tts.num_channels)
            wav.setsampwidth(2)
            wav.setframerate(tts.sample_rate)
            async for ev in stream:
                if first_audio is None:
                    first_audio = time.perf_counter() - t0
                wav.writeframes(bytes(ev.frame.data))
                for piece in ev.frame.userdata.get(USERDATA_TIMED_TRANSCRIPT) or []:
                    print(f"{piece.start_time:6.2f}-{piece.end_time:5.2f} s  {piece}")
            audio_s = wav.getnframes() / tts.sample_rate
        await feeder
    print(f"first audio after {first_audio * 1000:.0f} ms; {audio_s:.2f} s of audio in {args.output}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default=os.environ.get("STREAMTTS_URL", "ws://127.0.0.1:8000/v1/stream"))
    p.add_argument("--api-key", default=os.environ.get("STREAMTTS_API_KEY"))
    p.add_argument("--voice", default="biaobei")
    p.add_argument("-o", "--output", default="livekit.wav")
    asyncio.run(main(p.parse_args()))
