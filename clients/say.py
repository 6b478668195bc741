"""``streamtts say``: speak text through a streamtts server, playing it as it streams.

How to call::

    streamtts say "你好，欢迎使用。" [--url ws://127.0.0.1:8000/v1/stream] [--voice V] [-o out.wav]
                  [--api-key K] [--speed 1.0]
    python -m clients.say "你好。" ...                    # the same without the streamtts CLI

    from clients.say import say
    result = say("你好。", url="ws://...", output=None)   # SayResult(ttfa_ms, audio_s, path, played, ...)

Playback is a ``sounddevice`` callback stream that starts with the first audio packet; packets go
through a thread-safe :class:`RingBuffer` to the callback, and an underrun plays silence. With
``-o``, or when there is no output device (PortAudio missing, or no default output), the audio is
written to a WAV file instead (``say.wav`` without ``-o``). Prints the time to first audio (from
sending the text to the first audio byte) and the audio duration. ``--url`` and ``--api-key``
default to ``$STREAMTTS_URL`` and ``$STREAMTTS_API_KEY``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import threading
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence


__all__ = ["RingBuffer", "Player", "SayResult", "find_output_device", "say", "say_async", "add_arguments",
           "run", "main", "write_wav", "play_rate", "FALLBACK_WAV", "SERVER_RATES"]

DEFAULT_URL = "ws://127.0.0.1:8000/v1/stream"  # same as clients.client.DEFAULT_URL
FALLBACK_WAV = Path("say.wav")
SERVER_RATES = (8000, 16000, 22050, 24000, 44100, 48000)  # sample rates the server can send
WIDTH = 2  # pcm_s16le


class RingBuffer:
    """Thread-safe FIFO of bytes between the network (``write``) and the audio callback (``read``)."""

    def __init__(self, capacity: int = 1 << 20):
        self._buf = bytearray(capacity)
        self._start = 0
        self._size = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return self._size

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._size + len(data) > len(self._buf):  # grow: audio is never dropped
                new = bytearray(max(2 * len(self._buf), self._size + len(data)))
                new[:self._size] = self._peek(self._size)
                self._buf, self._start = new, 0
            end = (self._start + self._size) % len(self._buf)
            first = min(len(data), len(self._buf) - end)
            self._buf[end:end + first] = data[:first]
            self._buf[:len(data) - first] = data[first:]
            self._size += len(data)

    def read(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer when fewer are buffered)."""
        with self._lock:
            n = min(n, self._size)
            out = self._peek(n)
            self._start = (self._start + n) % len(self._buf)
            self._size -= n
            return out

    def clear(self) -> None:
        with self._lock:
            self._start = self._size = 0

    def _peek(self, n: int) -> bytes:
        first = min(n, len(self._buf) - self._start)
        return bytes(self._buf[self._start:self._start + first]) + bytes(self._buf[:n - first])


class Player:
    """16-bit mono playback through a sounddevice callback stream (or any ``stream_factory``).

    player = Player(22050); player.feed(pcm) ...; player.finish(); player.wait(); player.close()
    """

    def __init__(self, sample_rate: int, device=None, stream_factory=None):
        self.sample_rate = sample_rate
        self.ring = RingBuffer()
        self.underruns = 0  # callbacks that found too little audio (silence played instead)
        self.frames_played = 0
        self.started = False
        self._finished = False
        self._drained = threading.Event()
        if stream_factory is None:
            import sounddevice

            stream_factory = sounddevice.RawOutputStream
        self.stream = stream_factory(samplerate=sample_rate, channels=1, dtype="int16", device=device,
                                     callback=self.callback)

    def callback(self, outdata, frames: int, time_info, status) -> None:
        """Audio thread: copy from the ring, pad with silence on underrun."""
        want = frames * WIDTH
        data = self.ring.read(want)
        outdata[:len(data)] = data
        if len(data) < want:
            outdata[len(data):want] = bytes(want - len(data))
            if not self._finished:
                self.underruns += 1
            elif not len(self.ring):
                self._drained.set()
        self.frames_played += len(data) // WIDTH

    def feed(self, pcm: bytes) -> None:
        """Queue audio; the stream starts with the first packet."""
        self.ring.write(pcm)
        if not self.started:
            self.started = True
            self.stream.start()

    def finish(self) -> None:
        """No more audio comes: the next empty callback means everything was played."""
        self._finished = True
        if not self.started:
            self._drained.set()

    def wait(self, timeout: Optional[float] = None) -> bool:
        """Block until the buffered audio was played (plus the device's output latency)."""
        ok = self._drained.wait(timeout)
        time.sleep(float(getattr(self.stream, "latency", 0.0) or 0.0))
        return ok

    def stop_now(self) -> None:
        """Barge-in: silence at once."""
        self.ring.clear()

    def close(self) -> None:
        try:
            if self.started:
                self.stream.stop()
        finally:
            self.stream.close()


def find_output_device() -> tuple[Optional[dict], str]:
    """(the default output device's info, "") or (None, why there is none)."""
    try:
        import sounddevice
    except OSError as exc:  # the PortAudio library is missing
        return None, f"PortAudio is not available: {exc} (Debian/Ubuntu: apt-get install libportaudio2)"
    except ImportError as exc:
        return None, f"sounddevice is not installed: {exc}"
    try:
        info = sounddevice.query_devices(kind="output")
    except Exception as exc:  # noqa: BLE001 - PortAudioError, ValueError: no default output
        return None, f"{type(exc).__name__}: {exc}"
    if not info or int(info.get("max_output_channels", 0)) < 1:
        return None, "the default device has no output channels"
    return dict(info), ""


def play_rate(info: dict) -> int:
    rate = int(round(float(info.get("default_samplerate") or 48000)))
    return rate if rate in SERVER_RATES else 48000


def write_wav(path: Path, pcm: bytes, sample_rate: int) -> None:
    """16-bit mono WAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(WIDTH)
        w.setframerate(sample_rate)
        w.writeframes(pcm)


@dataclass
class SayResult:
    ttfa_ms: Optional[float]  # client-side: text sent -> first audio byte received
    audio_s: float  # seconds of audio
    sample_rate: int
    path: Optional[Path]  # the WAV written (None when played)
    played: bool
    fallback_reason: str = ""  # why no device was used, when it fell back to a file
    underruns: int = 0
    done: dict = field(default_factory=dict)  # the server's `done` message (server ttfa_ms, rtf)


async def say_async(text: str, url: str = DEFAULT_URL, voice: Optional[str] = None,
                    output: Optional[Path] = None, api_key: Optional[str] = None, speed: Optional[float] = None,
                    log=print) -> SayResult:
    """Speak ``text``: play it (``output`` None and a device exists) or write ``output`` / say.wav."""
    from clients.client import StreamClient

    info, reason = (None, "") if output is not None else find_output_device()
    player = None
    if info is not None:
        try:
            player = Player(play_rate(info))
        except Exception as exc:  # noqa: BLE001 - the device cannot be opened (busy, bad rate)
            info, reason = None, f"cannot open the output device: {type(exc).__name__}: {exc}"
    if output is None and player is None:
        output = FALLBACK_WAV
        log(f"no audio output device ({reason}); writing {output} instead")
    rate = 22050 if player is None else player.sample_rate
    pieces: list[bytes] = []
    try:
        async with StreamClient(url, api_key=api_key, voice=voice, format="pcm_s16le", sample_rate=rate,
                                speed=speed) as c:
            try:
                async for pcm in c.stream(text):
                    if player is not None:
                        player.feed(pcm)
                    else:
                        pieces.append(pcm)
            except (KeyboardInterrupt, asyncio.CancelledError):
                await c.cancel()
                raise
        if player is not None:
            player.finish()
            await asyncio.to_thread(player.wait, c.audio_ms / 1000.0 + 10.0)
    finally:
        if player is not None:
            player.close()
    if output is not None:
        write_wav(Path(output), b"".join(pieces), c.sample_rate)
    return SayResult(c.ttfa_ms, c.audio_ms / 1000.0, c.sample_rate, Path(output) if output else None,
                     player is not None, reason, player.underruns if player else 0, c.done or {})


def say(text: str, **kwargs) -> SayResult:
    """Blocking :func:`say_async`."""
    return asyncio.run(say_async(text, **kwargs))


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``say`` (shared by ``streamtts say`` and ``python -m clients.say``)."""
    p.add_argument("text", help="text to speak")
    p.add_argument("--url", default=os.environ.get("STREAMTTS_URL", DEFAULT_URL),
                   help=f"server WebSocket URL (default $STREAMTTS_URL or {DEFAULT_URL})")
    p.add_argument("--voice", default=None, help="voice name (default: the server's)")
    p.add_argument("-o", "--output", default=None, help="write a WAV file instead of playing")
    p.add_argument("--api-key", default=os.environ.get("STREAMTTS_API_KEY"),
                   help="API key (default $STREAMTTS_API_KEY)")
    p.add_argument("--speed", type=float, default=None, help="speaking rate 0.5-2.0 (default 1.0)")


def run(args: argparse.Namespace) -> int:
    """Handler of the parsed arguments; prints the result; exit status 2 on a server error."""
    from clients.client import StreamTTSClientError

    try:
        r = say(args.text, url=args.url, voice=args.voice, output=Path(args.output) if args.output else None,
                api_key=args.api_key, speed=args.speed)
    except StreamTTSClientError as exc:
        print(f"error [{exc.code}]: {exc.message}", file=sys.stderr)
        return 2
    ttfa = "?" if r.ttfa_ms is None else f"{r.ttfa_ms:.0f}"
    where = f"wrote {r.path}" if r.path else "played"
    extra = f", {r.underruns} underruns" if r.played and r.underruns else ""
    if r.done.get("rtf") is not None:
        extra += f" (server: TTFA {r.done.get('ttfa_ms')} ms, RTF {r.done['rtf']})"
    print(f"{where}: {r.audio_s:.3f} s of audio at {r.sample_rate} Hz, first audio after {ttfa} ms (TTFA){extra}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="say", description="Speak text through a streamtts server.")
    add_arguments(parser)
    try:
        return run(parser.parse_args(argv))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
