"""``streamtts say`` (clients/say.py): the playback buffer, WAV output and the no-device fallback."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import wave
from pathlib import Path

import pytest

from support.fixtures import API_KEY
from support.servers import ROOT

from clients.say import Player, RingBuffer, find_output_device

LINE = re.compile(r"wrote (?P<path>\S+): (?P<secs>[\d.]+) s of audio at (?P<rate>\d+) Hz, "
                  r"first audio after (?P<ttfa>\d+) ms \(TTFA\) \(server: TTFA (?P<sttfa>[\d.]+) ms")


# ---- no server needed ---------------------------------------------------------------------------

def test_ring_buffer_keeps_order_across_wrap_and_growth():
    ring = RingBuffer(capacity=8)
    ring.write(b"abcdef")
    assert ring.read(4) == b"abcd"
    ring.write(b"ghijkl")  # wraps around the end
    assert len(ring) == 8 and ring.read(3) == b"efg"
    ring.write(b"mnopqrstuvwxyz")  # grows
    assert ring.read(100) == b"hijklmnopqrstuvwxyz" and len(ring) == 0
    assert ring.read(5) == b""
    ring.write(b"12")
    ring.clear()
    assert len(ring) == 0 and ring.read(2) == b""


def test_ring_buffer_is_thread_safe():
    ring = RingBuffer(capacity=64)
    data = bytes(range(256)) * 400
    out = bytearray()

    def produce():
        for i in range(0, len(data), 37):
            ring.write(data[i:i + 37])

    t = threading.Thread(target=produce)
    t.start()
    while t.is_alive() or len(ring):
        out += ring.read(53)
    t.join()
    assert bytes(out) == data


class FakeStream:
    """Stands in for sounddevice.RawOutputStream: records start/stop, the test drives the callback."""

    def __init__(self, **kw):
        self.kw, self.started, self.closed, self.latency = kw, False, False, 0.0

    def start(self):
        self.started = True

    def stop(self):
        self.started = False

    def close(self):
        self.closed = True


def test_player_starts_with_the_first_packet_and_plays_silence_on_underrun():
    player = Player(22050, stream_factory=FakeStream)
    assert player.stream.kw["samplerate"] == 22050 and player.stream.kw["dtype"] == "int16"
    assert not player.stream.started
    player.feed(b"\x01\x00" * 100)
    assert player.stream.started
    out = bytearray(2 * 256)
    player.callback(out, 256, None, None)  # 100 frames buffered, 256 wanted
    assert out[:200] == b"\x01\x00" * 100 and out[200:] == bytes(312)
    assert player.underruns == 1 and player.frames_played == 100
    player.feed(b"\x02\x00" * 10)
    player.finish()
    player.callback(out, 256, None, None)  # the last samples, then the end: not an underrun
    assert out[:20] == b"\x02\x00" * 10 and player.underruns == 1
    assert player.wait(1.0)
    player.close()
    assert player.stream.closed


# ---- against the real server --------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(int8_server):
    return int8_server


def say(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamtts", "say", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env={"PYTHONPATH": str(ROOT), **_env()})


def _env() -> dict:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("STREAMTTS_API")}


def read_wav(path: Path) -> tuple[int, int, int, float]:
    with wave.open(str(path), "rb") as w:
        return w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes() / w.getframerate()


def test_say_writes_a_wav_whose_duration_matches(server, tmp_path):
    r = say("你好，欢迎使用流式语音合成。", "--url", server.ws_url, "--api-key", API_KEY, "--voice", "Aiyue",
            "-o", "out.wav", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = LINE.search(r.stdout)
    assert m, r.stdout
    channels, width, rate, seconds = read_wav(tmp_path / "out.wav")
    assert (channels, width, rate) == (1, 2, 22050)
    assert abs(seconds - float(m["secs"])) < 0.001  # what it printed is what it wrote
    assert 1.5 < seconds < 6.0  # 13 syllables and a pause
    assert 0 < int(m["ttfa"]) < 30_000 and "no audio output device" not in r.stdout


def test_say_without_an_audio_device_writes_say_wav(server, tmp_path):
    info, reason = find_output_device()
    if info is not None:
        pytest.skip(f"this machine has an audio output device ({info.get('name')})")
    r = say("今天天气很好。", "--url", server.ws_url, "--api-key", API_KEY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"no audio output device ({reason}); writing say.wav instead" in r.stdout
    m = LINE.search(r.stdout)
    assert m and m["path"] == "say.wav", r.stdout
    channels, width, rate, seconds = read_wav(tmp_path / "say.wav")
    assert (channels, width, rate) == (1, 2, 22050) and abs(seconds - float(m["secs"])) < 0.001


def test_say_reports_server_errors_in_one_line(server, tmp_path):
    r = say("你好。", "--url", server.ws_url, "-o", "x.wav", cwd=tmp_path)  # no API key
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error [unauthorized]: ")
    r = say("你好。", "--url", server.ws_url, "--api-key", API_KEY, "--voice", "nobody", "-o", "x.wav", cwd=tmp_path)
    assert r.returncode == 2 and "error [unknown_voice]" in r.stderr
    assert not (tmp_path / "x.wav").exists()
