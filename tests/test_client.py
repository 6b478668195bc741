"""clients/client.py against the real server (a subprocess: the int8_server fixture, tests/support/)."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import numpy as np
import pytest

from support.fixtures import API_KEY
from support.servers import free_port

from clients.client import StreamClient, StreamTTSClientError, synthesize

LONG = "春天来了，公园里的花都开了。" * 8


@pytest.fixture(scope="module")
def server(int8_server):
    return int8_server


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


def test_async_tokens_audio_arrives_before_the_text_ends(server):
    """The first sentence is heard while later tokens are still pending (not sent, no `end`)."""
    first_audio = asyncio.Event()
    log: list[str] = []

    async def tokens():
        for t in ["今天", "天气", "很好。", "我们"]:  # a sentence ends when the next char comes
            yield t
            await asyncio.sleep(0.02)
        log.append("waiting")
        await asyncio.wait_for(first_audio.wait(), 60)  # hold the rest until audio came
        log.append("released")
        for t in ["一起", "出去", "走走吧！"]:
            yield t

    async def main():
        async with StreamClient(server.ws_url, api_key=API_KEY) as c:
            chunks = []
            async for pcm in c.stream(tokens()):
                if not chunks:
                    log.append("audio")
                    first_audio.set()
                chunks.append(pcm)
            return c, b"".join(chunks)

    c, pcm = run(main())
    assert log == ["waiting", "audio", "released"]
    assert c.done is not None and c.done["segments"] == len(c.segments) >= 2
    assert "".join(s["text"] for s in c.segments) == "今天天气很好。我们一起出去走走吧！"
    assert c.ttfa_ms is not None and 0 < c.ttfa_ms < 30_000
    assert len(pcm) == c.audio_bytes and len(pcm) % 2 == 0
    assert abs(c.audio_ms - c.done["audio_ms"]) < 1.0
    assert c.audio_ms > 1500


def test_idle_flush_speaks_a_sentence_when_the_tokens_stall(server):
    """Without the next character the server holds a finished sentence; idle_flush_s sends flush."""
    first_audio = asyncio.Event()

    async def tokens():
        yield "今天天气很好。"
        await asyncio.wait_for(first_audio.wait(), 30)  # stalls until the sentence is heard
        yield "我们走吧。"

    async def main():
        async with StreamClient(server.ws_url, api_key=API_KEY) as c:
            n = 0
            async for pcm in c.stream(tokens(), idle_flush_s=0.3):
                first_audio.set()
                n += len(pcm)
            return c, n

    c, n = run(main())
    assert n == c.audio_bytes > 0 and "".join(s["text"] for s in c.segments) == "今天天气很好。我们走吧。"


def test_formats_rates_and_segments(server):
    async def main():
        pcm16, c16 = await synthesize("你好，世界。", server.ws_url, api_key=API_KEY, sample_rate=16000)
        f32, c32 = await synthesize(["你好，", "世界。"], server.ws_url, api_key=API_KEY, format="pcm_f32le",
                                    sample_rate=48000, voice="Aiyue")
        return pcm16, c16, f32, c32

    pcm16, c16, f32, c32 = run(main())
    assert c16.ready["sample_rate"] == 16000 and c16.ready["format"] == "pcm_s16le"
    assert c32.ready["voice"] == "Aiyue" and c32.sample_width == 4
    audio = np.frombuffer(f32, np.float32)
    assert np.all(np.isfinite(audio)) and np.abs(audio).max() <= 1.0 and np.abs(audio).max() > 0.05
    assert abs(len(audio) / 48000 * 1000 - c32.done["audio_ms"]) < 1.0
    assert abs(len(pcm16) / 2 / 16000 * 1000 - c16.done["audio_ms"]) < 1.0
    chars = [ch for seg in c16.segments for ch in seg["chars"]]
    assert "".join(ch["char"] for ch in chars) == "你好世界"
    starts = [ch["start_ms"] for ch in chars]
    assert starts == sorted(starts) and chars[-1]["end_ms"] <= c16.done["audio_ms"]


def test_cancel_stops_the_stream_at_once_and_the_client_speaks_again(server):
    async def main():
        async with StreamClient(server.ws_url, api_key=API_KEY) as c:
            got, after_cancel = 0, 0
            async for pcm in c.stream(LONG):
                if c.cancelled:
                    after_cancel += len(pcm)
                got += len(pcm)
                if got >= 0.3 * 22050 * 2 and not c.cancelled:
                    await c.cancel()
            first = (got, after_cancel, c.cancelled, c.heard, c.audio_ms)
            again = [pcm async for pcm in c.stream("再见。")]
            return first, c, b"".join(again)

    (got, after_cancel, cancelled, heard, audio_ms), c, again = run(main())
    assert cancelled and after_cancel == 0
    # the server's account of the cancelled utterance: it sent what the client got, and the
    # listener it models has heard no more than that
    assert heard["audio_sent_ms"] >= 1000.0 * got / 2 / 22050 - 0.2
    assert 0.0 <= heard["heard_ms"] <= heard["audio_sent_ms"]
    assert audio_ms < 8 * 2500  # far less than the whole text
    assert c.done is not None and c.done["segments"] >= 1 and len(again) == c.audio_bytes > 0


def test_barge_in_from_another_task_keeps_the_session(server):
    """Tokens still coming, audio playing: cancel() from elsewhere; the same session speaks on."""
    stalled = asyncio.Event()

    async def llm():
        yield "我们今天讨论一下流式语音合成的设计。"
        yield "首先"
        await stalled.wait()  # the model is "thinking" when the user barges in
        yield "这句不会说出来。"

    async def main():
        async with StreamClient(server.ws_url, api_key=API_KEY) as c:
            session = c.ready["session"]
            received = []

            async def consume():
                async for pcm in c.stream(llm()):
                    received.append(pcm)

            task = asyncio.create_task(consume())
            while not received:
                await asyncio.sleep(0.01)
            await c.cancel()
            n_at_cancel = len(received)
            await asyncio.wait_for(task, 10)  # the stream ends by itself
            stalled.set()
            assert len(received) == n_at_cancel
            assert c.connected and c.ready["session"] == session  # no `end` was sent: same session
            again = b"".join([pcm async for pcm in c.stream("好的。")])
            return c, session, again

    c, session, again = run(main())
    assert c.ready["session"] == session and c.done["segments"] >= 1 and len(again) > 0


def test_typed_errors(server):
    async def expect(code, coro):
        with pytest.raises(StreamTTSClientError) as info:
            await coro
        assert info.value.code == code, info.value
        return info.value

    async def speak(text, url=server.ws_url, **kw):
        async with StreamClient(url, **kw) as c:
            return [pcm async for pcm in c.stream(text)]

    async def main():
        e = await expect("unauthorized", speak("你好。"))
        assert e.fatal
        await expect("unauthorized", speak("你好。", api_key="wrong"))
        await expect("unknown_voice", speak("你好。", api_key=API_KEY, voice="nobody"))
        await expect("unsupported_sample_rate", speak("你好。", api_key=API_KEY, sample_rate=11025))
        await expect("no_speakable_text", speak("😀", api_key=API_KEY))
        await expect("connection_failed", speak("你好。", url=f"ws://127.0.0.1:{free_port()}/v1/stream"))

    run(main())


def test_iterator_failure_propagates_and_session_is_dropped(server):
    async def broken():
        yield "你好，"
        raise RuntimeError("model crashed")

    async def main():
        async with StreamClient(server.ws_url, api_key=API_KEY) as c:
            with pytest.raises(RuntimeError, match="model crashed"):
                async for _ in c.stream(broken()):
                    pass
            assert not c.connected
            return b"".join([pcm async for pcm in c.stream("还好。")])  # reconnects

    assert len(run(main())) > 0


def test_callback_errors_reach_the_caller(server):
    def boom(seg):
        raise ValueError("bad callback")

    async def main():
        async with StreamClient(server.ws_url, api_key=API_KEY, on_segment=boom) as c:
            with pytest.raises(ValueError, match="bad callback"):
                async for _ in c.stream("你好。再见。"):
                    pass
            assert not c.connected

    run(main())


def test_voices_endpoint_lists_what_the_page_offers(server):
    req = urllib.request.Request(server.url + "/v1/voices", headers={"Authorization": f"Bearer {API_KEY}"})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = json.load(r)
    names = [v["name"] for v in body["voices"]]
    assert "biaobei" in names and len(names) == 24
