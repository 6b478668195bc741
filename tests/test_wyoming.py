"""The Wyoming port (Home Assistant) of the real server: the real torch engine, the real `wyoming`
client, on loopback next to the WebSocket and HTTP endpoints of the same process."""

from __future__ import annotations

import asyncio
import socket
import time

import numpy as np
import pytest

pytest.importorskip("aiohttp")
pytest.importorskip("wyoming")

from wyoming.audio import AudioChunk, AudioStart, AudioStop  # noqa: E402
from wyoming.client import AsyncTcpClient  # noqa: E402
from wyoming.error import Error  # noqa: E402
from wyoming.event import Event  # noqa: E402
from wyoming.info import Describe, Info  # noqa: E402
from wyoming.ping import Ping, Pong  # noqa: E402
from wyoming.tts import (Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop,  # noqa: E402
                         SynthesizeStopped, SynthesizeVoice)

from streamtts.cli import build_parser  # noqa: E402
from streamtts.server import ServerConfig  # noqa: E402
from streamtts.server.wyoming import WYOMING  # noqa: E402
from streamtts.voices import VOICES  # noqa: E402
from support.servers import ThreadServer  # noqa: E402
from support.ws import collect, jsend, ws_connect  # noqa: E402

TEXT = "今天天气很好。我们去公园散步吧。"  # two chunks for the core's chunker: two sentences
# what Home Assistant's streaming TTS sends: pieces as an LLM makes them, cutting through words
HA_PIECES = ["今天天", "气很好。我们", "去公园散", "步吧。"]
READ_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def server(torch_engine):
    # no admission queue: beyond the two slots a synthesis is refused at once (the queue, where it
    # waits instead, is tested in tests/test_queued_admission.py)
    config = ServerConfig(port=0, static_dir=None, capacity=2, queue_size=0, cache_bytes=0, wyoming_port=0,
                          idle_timeout_s=3.0)
    with ThreadServer(config, torch_engine) as srv:
        srv.wyoming_port = srv.app[WYOMING].port
        yield srv


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def client(server) -> AsyncTcpClient:
    return AsyncTcpClient("127.0.0.1", server.wyoming_port)


async def read(c: AsyncTcpClient, timeout: float = READ_TIMEOUT) -> Event:
    event = await asyncio.wait_for(c.read_event(), timeout)
    assert event is not None, "the server closed the connection"
    return event


async def read_until(c: AsyncTcpClient, last) -> list[Event]:
    """Events up to and including the first of type ``last`` (an Eventable class)."""
    events = []
    while True:
        events.append(await read(c))
        if last.is_type(events[-1].type):
            return events


async def nothing_more(c: AsyncTcpClient, seconds: float = 1.0) -> bool:
    try:
        await asyncio.wait_for(c.read_event(), seconds)
    except asyncio.TimeoutError:
        return True
    return False


def cycles(events: list[Event]) -> list[bytes]:
    """The audio of each audio-start .. audio-stop cycle; every event in a cycle has our format."""
    out, current = [], None
    for e in events:
        if AudioStart.is_type(e.type):
            assert current is None, "audio-start inside a cycle"
            start = AudioStart.from_event(e)
            assert (start.rate, start.width, start.channels) == (22050, 2, 1)
            current = []
        elif AudioChunk.is_type(e.type):
            assert current is not None, "audio-chunk outside a cycle"
            chunk = AudioChunk.from_event(e)
            assert (chunk.rate, chunk.width, chunk.channels) == (22050, 2, 1)
            current.append(chunk.audio)
        elif AudioStop.is_type(e.type):
            assert current is not None, "audio-stop outside a cycle"
            out.append(b"".join(current))
            current = None
    assert current is None, "a cycle was not closed"
    return out


async def synthesize(server, text: str, voice: str | None = None) -> list[Event]:
    async with client(server) as c:
        await c.write_event(Synthesize(text=text, voice=SynthesizeVoice(name=voice) if voice else None).event())
        return await read_until(c, AudioStop)


def websocket_audio(server, text: str, voice: str) -> bytes:
    with ws_connect(server) as ws:
        jsend(ws, type="start", voice=voice, format="pcm_s16le", sample_rate=22050)
        jsend(ws, type="text", text=text)
        jsend(ws, type="end")
        items, code = collect(ws)
    assert code == 1000
    return b"".join(m for m in items if isinstance(m, bytes))


def seconds(pcm: bytes) -> float:
    return len(pcm) / 2 / 22050


def test_describe_lists_the_program_and_every_voice(server):
    async def go():
        async with client(server) as c:
            await c.write_event(Describe().event())
            info = Info.from_event(await read(c))
            await c.write_event(Ping(text="hi").event())
            pong = await read(c)
        return info, pong

    info, pong = run(go())
    assert Pong.is_type(pong.type) and Pong.from_event(pong).text == "hi"
    (program,) = info.tts
    assert program.name == "streamtts" and program.installed and program.version
    assert program.supports_synthesize_streaming and program.attribution.name
    assert [v.name for v in program.voices] == list(VOICES)
    for v in program.voices:
        assert v.installed and v.languages == ["zh_CN"] and v.attribution.name and v.attribution.url
    assert not info.asr and not info.wake


@pytest.fixture(scope="module")
def single(server):
    """A plain `synthesize` of TEXT with a voice named in lower case."""
    return run(synthesize(server, TEXT, voice="aiyue"))


def test_synthesize_is_one_streamed_cycle_with_the_websocket_audio(server, single):
    assert AudioStart.is_type(single[0].type) and AudioStop.is_type(single[-1].type)
    (pcm,) = cycles(single)
    chunks = [e for e in single if AudioChunk.is_type(e.type)]
    assert len(chunks) > 2, "streamed in pieces as computed, not as one block"
    assert 1.5 < seconds(pcm) < 8.0  # 13 syllables and a pause
    x = np.frombuffer(pcm, "<i2") / 32768
    assert 0.02 < np.sqrt(np.mean(np.square(x))) < 0.5, "speech, not silence or noise"
    # same text, voice and seed through the WebSocket endpoint: the same samples
    assert websocket_audio(server, TEXT, "Aiyue") == pcm


def test_home_assistant_stream_gives_a_cycle_per_sentence(server, single):
    """Home Assistant's sequence: synthesize-start, chunks as they come, the whole text again as
    a `synthesize` (for servers without streaming), synthesize-stop; it reads concurrently."""
    voice = SynthesizeVoice(name="Aiyue")

    async def go():
        async with client(server) as c:
            async def write():
                await c.write_event(SynthesizeStart(voice=voice).event())
                for piece in HA_PIECES:
                    await c.write_event(SynthesizeChunk(text=piece).event())
                    await asyncio.sleep(0.05)
                await c.write_event(Synthesize(text="".join(HA_PIECES), voice=voice).event())
                await c.write_event(SynthesizeStop().event())

            writer = asyncio.create_task(write())
            events = await read_until(c, SynthesizeStopped)
            await writer
            quiet = await nothing_more(c)
        return events, quiet

    events, quiet = run(go())
    assert quiet, "the synthesize inside the stream was spoken again"
    per_sentence = cycles(events)
    assert len(per_sentence) == 2
    assert AudioStop.is_type(events[-2].type) and SynthesizeStopped.is_type(events[-1].type)
    assert seconds(per_sentence[0]) < seconds(per_sentence[1])  # "今天天气很好。" < pause + the longer one
    # the pause after the first sentence (300 ms at a full stop) opens the second cycle as silence
    assert not np.frombuffer(per_sentence[1][: 2 * int(0.25 * 22050)], "<i2").any()
    assert np.frombuffer(per_sentence[0][-2 * int(0.25 * 22050):], "<i2").any()
    # the same chunks, seed and silence as the plain synthesize of the whole text
    # (torch rows batched with others round differently in the last bits than alone)
    got, want = (np.frombuffer(b, "<i2").astype(np.int32) for b in (b"".join(per_sentence), cycles(single)[0]))
    assert len(got) == len(want) and np.abs(got - want).max() <= 64


def test_ssml_synthesize_speaks_its_break(server):
    async def go(text, fmt):
        async with client(server) as c:
            await c.write_event(Synthesize(text=text, text_format=fmt).event())
            return await read_until(c, AudioStop)

    plain = cycles(run(go("你好。世界。", None)))
    ssml = cycles(run(go('<speak>你好。<break time="1s"/>世界。</speak>', "ssml")))
    assert len(plain) == len(ssml) == 1
    # the 1 s break replaces the 300 ms pause of the full stop
    assert 0.6 < seconds(ssml[0]) - seconds(plain[0]) < 0.8


def test_bad_inputs_get_errors_and_the_connection_goes_on(server):
    bad = [
        Synthesize(text="你好。", voice=SynthesizeVoice(name="Nobody")).event(),
        Synthesize(text="").event(),
        Event(type="synthesize", data={}),  # no text
        Event(type="synthesize", data={"text": "你好。", "voice": "Aiyue"}),  # voice not an object
        Event(type="synthesize", data={"text": 5}),
        Synthesize(text="你好。", text_format="ssml").event(),  # not a <speak> document
        SynthesizeChunk(text="你好").event(),  # no stream started
        SynthesizeStop().event(),
        Synthesize(text="你" * 5000).event(),
    ]
    expected = ["unknown_voice", "empty_text", "bad_message", "bad_message", "bad_message",
                "invalid_ssml", "no_stream", "no_stream", "text_too_long"]

    async def go():
        async with client(server) as c:
            codes = []
            for event in bad:
                await c.write_event(event)
                e = await read(c)
                assert Error.is_type(e.type), e
                codes.append(Error.from_event(e).code)
            # a stream refused at its start still ends with synthesize-stopped, and speaks nothing
            await c.write_event(SynthesizeStart(voice=SynthesizeVoice(name="Nobody")).event())
            refused = Error.from_event(await read(c)).code
            await c.write_event(SynthesizeChunk(text="你好。").event())
            await c.write_event(Synthesize(text="你好。").event())
            await c.write_event(SynthesizeStop().event())
            after_refused = await read(c)
            # then a good request on the same connection, its voice given as the speaker
            await c.write_event(Event(type="synthesize", data={"text": "好的。", "voice": {"name": "x",
                                                                                            "speaker": "Xiaobei"}}))
            good = await read_until(c, AudioStop)
        return codes, refused, after_refused, good

    codes, refused, after_refused, good = run(go())
    assert codes == expected
    assert refused == "unknown_voice" and SynthesizeStopped.is_type(after_refused.type)
    assert len(cycles(good)) == 1 and seconds(cycles(good)[0]) > 0.3

    # frames that are no Wyoming event (not JSON, no type, a claimed 1 GB of data): an error, the
    # connection closes, the server goes on
    for frame, code in [(b"this is not json\n", b"bad_message"), (b'{"data": {}}\n', b"bad_message"),
                        (b'{"type": "synthesize", "data_length": 1000000000}\n', b"message_too_large")]:
        with socket.create_connection(("127.0.0.1", server.wyoming_port), timeout=30) as s:
            s.sendall(frame)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        assert b'"type": "error"' in data and code in data, (frame, data)
    assert server.metrics()['streamtts_errors_total{code="unknown_voice"}'] >= 2


def test_engine_failure_is_engine_unavailable(server):
    worker = server.state.engine.worker
    worker.failure = "RuntimeError: no weights"  # as the worker records a failed load
    try:
        async def go():
            async with client(server) as c:
                await c.write_event(Synthesize(text="你好。").event())
                return Error.from_event(await read(c))
        error = run(go())
    finally:
        worker.failure = None
    assert error.code == "engine_unavailable" and "no weights" in error.text


def test_client_closing_mid_stream_frees_its_slot(server):
    state = server.state

    async def go():
        async with client(server) as c:
            await c.write_event(SynthesizeStart().event())
            await c.write_event(SynthesizeChunk(text="这是一段很长的话，客户端听到第一段声音就会离开。" * 3).event())
            while not AudioChunk.is_type((await read(c)).type):
                pass
            assert state.engine.admission.admitted == 1 and state.engine.scheduler.size == 1
        # leaving the block closes the socket mid-stream

    run(go())
    deadline = time.monotonic() + 5
    while state.engine.admission.admitted or state.engine.scheduler.size:
        assert time.monotonic() < deadline, "the stream outlived its connection"
        time.sleep(0.05)


def test_busy_when_every_slot_is_taken_and_there_is_no_queue(server):
    async def go():
        async with client(server) as a, client(server) as b, client(server) as c:
            for holder in (a, b):  # two open streams hold the server's two slots
                await holder.write_event(SynthesizeStart().event())
            deadline = time.monotonic() + READ_TIMEOUT
            while server.state.engine.admission.admitted < 2:
                assert time.monotonic() < deadline, "the streams were not admitted"
                await asyncio.sleep(0.01)
            await c.write_event(Synthesize(text="你好。").event())
            busy = Error.from_event(await read(c)).code
            for holder in (a, b):
                await holder.write_event(SynthesizeStop().event())
            ends = [await read(holder) for holder in (a, b)]
            while server.state.engine.admission.admitted:  # released once their tasks are done
                await asyncio.sleep(0.01)
            # a slot is free again: the same connection is served
            await c.write_event(Synthesize(text="你好。").event())
            served = await read_until(c, AudioStop)
        return busy, ends, served

    before = server.metrics().get('streamtts_refused_total{api="wyoming"}', 0)
    busy, ends, served = run(go())
    assert busy == "server_busy"
    assert all(SynthesizeStopped.is_type(e.type) for e in ends), "an empty stream ends with no audio"
    assert len(cycles(served)) == 1
    m = server.metrics()
    assert m['streamtts_refused_total{api="wyoming"}'] == before + 1
    assert m['streamtts_requests_total{api="wyoming"}'] >= 3


def test_idle_connections_and_empty_streams_are_closed(server):
    """Nothing under way for idle_timeout_s (3 s here): an error, then the server closes; a
    stream left open with nothing to say gives its slot back."""
    async def idle(start_stream: bool):
        async with client(server) as c:
            if start_stream:
                await c.write_event(SynthesizeStart().event())
            error = Error.from_event(await read(c, timeout=30)).code
            closed = await asyncio.wait_for(c.read_event(), 30) is None
        return error, closed

    async def go():
        return await asyncio.gather(idle(False), idle(True))

    assert run(go()) == [("idle_timeout", True), ("idle_timeout", True)]
    deadline = time.monotonic() + 5
    while server.state.engine.admission.admitted:
        assert time.monotonic() < deadline, "the idle stream kept its slot"
        time.sleep(0.05)


def test_serve_flags():
    args = build_parser().parse_args(["serve", "--wyoming-port", "10200", "--wyoming-host", "0.0.0.0"])
    assert (args.wyoming_port, args.wyoming_host) == (10200, "0.0.0.0")
    args = build_parser().parse_args(["serve"])
    assert args.wyoming_port is None and args.wyoming_host is None  # off unless asked


def test_a_voice_blend_by_name(server):
    blend = cycles(run(synthesize(server, "你好。", "Aiyue:0.5,biaobei:0.5")))
    parents = [cycles(run(synthesize(server, "你好。", v)))[0] for v in ("Aiyue", "biaobei")]
    assert len(blend) == 1 and seconds(blend[0]) > 0.3
    assert all(blend[0] != p for p in parents)
