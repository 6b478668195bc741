"""Live playback with the client library and sounddevice; each character is printed as it is heard.

How to call (with ``streamtts serve`` running)::

    python examples/live_playback.py ["要说的话"] [--url ws://127.0.0.1:8000/v1/stream] [--api-key K]
                                     [--voice V] [-o fallback.wav]

Audio packets go into a callback OutputStream (clients.say.Player: a thread-safe ring buffer; an
underrun plays silence) that starts with the first packet. The printed text follows the audio
clock: the frames the device has played, compared with the ``segment`` char times. Without an
output device (or PortAudio), the audio is written to ``-o`` instead and the segments are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a source checkout

from clients.client import DEFAULT_URL, StreamClient  # noqa: E402
from clients.say import Player, play_rate, find_output_device, write_wav  # noqa: E402

TEXT = "你好，欢迎使用流式语音合成。文字一边生成，声音一边播放，几乎没有等待。"


async def show_chars(c: StreamClient, player: Player) -> None:
    """Print each character when the device has played up to its start time."""
    shown = 0
    while True:
        chars = [ch for seg in c.segments for ch in seg["chars"]]
        heard_ms = 1000.0 * player.frames_played / player.sample_rate
        while shown < len(chars) and chars[shown]["start_ms"] <= heard_ms:
            print(chars[shown]["char"], end="", flush=True)
            shown += 1
        await asyncio.sleep(0.01)


async def main(args: argparse.Namespace) -> None:
    info, reason = find_output_device()
    player = None
    if info is not None:
        try:
            player = Player(play_rate(info))
        except Exception as exc:  # noqa: BLE001 - busy device, unsupported rate, ...
            reason = str(exc)
    if player is None:
        print(f"no audio output device ({reason}); writing {args.output} instead")
    rate = player.sample_rate if player else 22050
    async with StreamClient(args.url, api_key=args.api_key, voice=args.voice, sample_rate=rate) as c:
        if player is None:
            pcm = [chunk async for chunk in c.stream(args.text)]
            write_wav(Path(args.output), b"".join(pcm), c.sample_rate)
            for seg in c.segments:
                print(f"{seg['audio_start_ms']:8.0f} ms  {seg['text']}")
            print(f"wrote {args.output}: {c.audio_ms / 1000:.2f} s, TTFA {c.ttfa_ms:.0f} ms")
            return
        printer = asyncio.create_task(show_chars(c, player))
        try:
            async for chunk in c.stream(args.text):
                player.feed(chunk)
            player.finish()
            await asyncio.to_thread(player.wait, c.audio_ms / 1000 + 5)
        finally:
            printer.cancel()
            player.close()
        print(f"\nplayed {c.audio_ms / 1000:.2f} s, TTFA {c.ttfa_ms:.0f} ms, {player.underruns} underruns")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description="stream text to speech and play it live")
    p.add_argument("text", nargs="?", default=TEXT)
    p.add_argument("--url", default=os.environ.get("STREAMTTS_URL", DEFAULT_URL))
    p.add_argument("--api-key", default=os.environ.get("STREAMTTS_API_KEY"))
    p.add_argument("--voice", default=None)
    p.add_argument("-o", "--output", default="live.wav", help="WAV file when there is no audio device")
    asyncio.run(main(p.parse_args()))
