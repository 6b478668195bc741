"""HTTP (``POST /v1/audio/speech``) and Wyoming wait in the admission queue like a WebSocket
utterance: with every stream slot taken, a request waits in the bounded queue and is served once a
slot frees; a full queue or a wait that runs out refuses it (503 ``server_busy`` with Retry-After;
Wyoming's ``server_busy`` error event, the connection goes on); a client that leaves while queued
gives its place up at once; a drain ends the wait with ``going_away``.

Real servers (the torch engine, capacity 1) on loopback. The one slot is held by a WebSocket
session that the test ends when it chooses, so every step waits on a state (the queue's length,
an answer), never on a time."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import threading
import time

import pytest

pytest.importorskip("wyoming")

from wyoming.audio import AudioChunk, AudioStop  # noqa: E402
from wyoming.client import AsyncTcpClient  # noqa: E402
from wyoming.error import Error  # noqa: E402
from wyoming.event import Event  # noqa: E402
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped  # noqa: E402

from streamtts.engine_client.admission import Admission, Busy  # noqa: E402
from streamtts.server import ServerConfig  # noqa: E402
from streamtts.server.wyoming import WYOMING  # noqa: E402
from support.servers import HOST, ThreadServer  # noqa: E402
from support.ws import jsend, ws_connect  # noqa: E402

SHORT = "你好。"
LONG = "今天天气很好，我们一起去公园散步吧。春天来了，小草发芽了，花儿也开了。" * 30
DEADLINE_S = 120.0  # generous: only a broken server reaches it, a busy machine does not


def _config(**kw) -> ServerConfig:
    base = {"port": 0, "static_dir": None, "capacity": 1, "queue_size": 4, "queue_timeout_s": DEADLINE_S,
            "cache_bytes": 0, "wyoming_port": 0}
    return ServerConfig(**{**base, **kw})


@contextlib.contextmanager
def _serve(config: ServerConfig, engine):
    with ThreadServer(config, engine) as srv:
        srv.wyoming_port = srv.app[WYOMING].port
        yield srv


@pytest.fixture(scope="module")
def server(torch_engine):
    """A queue of 4 that waits long: a queued request is served, or leaves."""
    with _serve(_config(), torch_engine) as srv:
        yield srv


@pytest.fixture(scope="module")
def impatient(torch_engine):
    """No queue, and a queue whose wait runs out at once: refusals."""
    with _serve(_config(queue_size=0), torch_engine) as srv:
        yield srv


def _until(condition, what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


async def _until_async(condition, what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


@contextlib.contextmanager
def _hold(server):
    """A WebSocket utterance that holds the server's one slot until it is closed (paced to real
    time, its long text would take minutes)."""
    with ws_connect(server) as ws:
        jsend(ws, type="start")
        jsend(ws, type="text", text=LONG)
        assert json.loads(ws.recv(timeout=60))["type"] == "ready"
        _until(lambda: server.state.engine.admission.admitted == 1, "the holder got no slot")
        yield ws


def _post(server, body: dict, out: dict) -> None:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=DEADLINE_S)
    try:
        conn.request("POST", "/v1/audio/speech", json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        out.update(status=r.status, headers=dict(r.getheaders()), body=r.read())
    finally:
        conn.close()


def _speech(text: str = SHORT) -> dict:
    return {"model": "tts-1", "input": text, "voice": "alloy", "response_format": "pcm"}


def _released(server) -> None:
    admission = server.state.engine.admission
    _until(lambda: admission.admitted == 0 and admission.queued == 0, "a slot or a place was kept")


def _wyoming(server) -> AsyncTcpClient:
    return AsyncTcpClient(HOST, server.wyoming_port)


async def _read(c: AsyncTcpClient) -> Event:
    event = await asyncio.wait_for(c.read_event(), DEADLINE_S)
    assert event is not None, "the server closed the connection"
    return event


async def _read_until(c: AsyncTcpClient, last) -> list[Event]:
    events = [await _read(c)]
    while not last.is_type(events[-1].type):
        events.append(await _read(c))
    return events


def _audio(events: list[Event]) -> int:
    return sum(len(AudioChunk.from_event(e).audio) for e in events if AudioChunk.is_type(e.type))


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 2 * DEADLINE_S))


# ---- the queue itself (no server) ------------------------------------------------------------

def test_wait_unless_queues_and_a_stopped_wait_gives_its_place_up():
    async def go():
        admission = Admission(capacity=1, queue_size=2, queue_timeout_s=DEADLINE_S)
        first = await admission.wait_unless(lambda: None)  # free: at once
        gone = {"b": False}
        b = asyncio.create_task(admission.wait_unless(lambda: ConnectionResetError() if gone["b"] else None,
                                                      poll_s=0.01))
        c = asyncio.create_task(admission.wait_unless(lambda: None, poll_s=0.01))
        await _until_async(lambda: admission.queued == 2, "not queued")
        gone["b"] = True  # b's client leaves: b raises, c moves up
        with pytest.raises(ConnectionResetError):
            await b
        await _until_async(lambda: admission.queued == 1, "the stopped waiter kept its place")
        assert not c.done()
        first.release()  # the slot goes to c
        second = await c
        assert admission.admitted == 1 and admission.queued == 0
        d = asyncio.create_task(admission.wait_unless(lambda: None, poll_s=0.01))
        await _until_async(lambda: admission.queued == 1, "not queued")
        d.cancel()  # a cancelled waiter (a drained HTTP handler) leaves the queue
        with pytest.raises(asyncio.CancelledError):
            await d
        await _until_async(lambda: admission.queued == 0, "the cancelled waiter kept its place")
        second.release()
        assert admission.admitted == 0
        full = Admission(capacity=1, queue_size=0)
        held = await full.wait_unless(lambda: None)
        with pytest.raises(Busy):
            await full.wait_unless(lambda: None)
        held.release()

    asyncio.run(go())


def test_extra_slots_admit_past_the_capacity_while_the_engine_has_headroom():
    async def go():
        admission = Admission(capacity=2, queue_size=4, queue_timeout_s=DEADLINE_S)
        a, b = admission.take(), admission.take()
        waiter = asyncio.create_task(admission.wait())
        await _until_async(lambda: admission.queued == 1, "not queued at the capacity")
        admission.set_extra(2)  # headroom: the one in line goes in, and one more may
        c = await waiter
        d = admission.take()
        assert admission.admitted == 4 and admission.limit == 4
        with pytest.raises(Busy):
            admission.take()
        # the headroom goes: nobody loses a slot, and a newcomer waits until the admitted are
        # under the capacity again, not just under the old limit
        admission.set_extra(0)
        late = asyncio.create_task(admission.wait())
        await _until_async(lambda: admission.queued == 1, "not queued once the headroom went")
        for slot in (a, b):
            slot.release()
        await asyncio.sleep(0)
        assert not late.done() and admission.admitted == 2
        c.release()
        e = await late
        assert admission.admitted == 2
        for slot in (d, e):
            slot.release()
        assert admission.admitted == 0

    _run(go())


# ---- HTTP ------------------------------------------------------------------------------------

def test_http_waits_in_the_queue_then_gets_its_audio(server):
    refused = server.metrics().get('streamtts_refused_total{api="http"}', 0.0)
    admission = server.state.engine.admission
    out: dict = {}
    waiting = threading.Thread(target=_post, args=(server, _speech(), out))
    with _hold(server) as holder:
        waiting.start()
        _until(lambda: admission.queued == 1, "the request did not queue")
        assert server.metrics()["streamtts_queued"] == 1
        assert waiting.is_alive() and not out  # no answer while it waits
        holder.close()  # the slot frees: the queued request is served
        waiting.join(DEADLINE_S)
    assert out["status"] == 200 and len(out["body"]) > 10_000, out.get("body", b"")[:200]
    _released(server)
    assert server.metrics().get('streamtts_refused_total{api="http"}', 0.0) == refused


def test_http_client_that_leaves_the_queue_gives_its_place_up(server):
    admission = server.state.engine.admission
    with _hold(server):
        body = json.dumps(_speech()).encode()
        with socket.create_connection((HOST, server.port), timeout=60) as s:
            s.sendall(b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            _until(lambda: admission.queued == 1, "the request did not queue")
        # the client has gone while the slot is still held: its place is given up, not kept
        _until(lambda: admission.queued == 0, "the request kept its place after its client left")
        assert admission.admitted == 1
        _until(lambda: server.metrics()["streamtts_queued"] == 0, "the metric still counts it")
    _released(server)


def test_http_refused_when_the_queue_is_full_or_the_wait_runs_out(impatient):
    before = impatient.metrics().get('streamtts_refused_total{api="http"}', 0.0)
    admission = impatient.state.engine.admission
    with _hold(impatient):
        out: dict = {}
        _post(impatient, _speech(), out)  # no queue: refused at once
        assert out["status"] == 503 and int(out["headers"]["Retry-After"]) >= 1
        assert json.loads(out["body"])["error"]["code"] == "server_busy"
        admission.queue_size, admission.queue_timeout_s = 4, 0.2  # a queue whose wait runs out
        try:
            out = {}
            _post(impatient, _speech(), out)
            assert out["status"] == 503 and int(out["headers"]["Retry-After"]) >= 1
            assert json.loads(out["body"])["error"]["code"] == "server_busy"
        finally:
            admission.queue_size, admission.queue_timeout_s = 0, DEADLINE_S
        assert admission.queued == 0
        assert impatient.metrics()['streamtts_refused_total{api="http"}'] == before + 2
    _released(impatient)


# ---- Wyoming ---------------------------------------------------------------------------------

def test_wyoming_waits_in_the_queue_then_speaks_in_order(server):
    """A stream (its chunks come while it waits) and a `synthesize` queue behind the holder; both
    are spoken once the slot frees, in the order they queued."""
    admission = server.state.engine.admission

    async def go(holder):
        async with _wyoming(server) as a, _wyoming(server) as b:
            await a.write_event(SynthesizeStart().event())
            await a.write_event(SynthesizeChunk(text="排队以后，").event())
            await _until_async(lambda: admission.queued == 1, "the stream did not queue")
            await b.write_event(Synthesize(text=SHORT).event())
            await _until_async(lambda: admission.queued == 2, "the synthesize did not queue")
            await a.write_event(SynthesizeChunk(text="再说这句话。").event())
            await a.write_event(SynthesizeStop().event())
            holder.close()  # the slot frees: the stream first, then the synthesize
            streamed = await _read_until(a, SynthesizeStopped)
            spoken = await _read_until(b, AudioStop)
        return streamed, spoken

    with _hold(server) as holder:
        streamed, spoken = _run(go(holder))
    assert not any(Error.is_type(e.type) for e in streamed + spoken)
    assert _audio(streamed) > 22050 and _audio(spoken) > 10_000  # the text sent while queued is spoken
    _released(server)


def test_wyoming_client_that_hangs_up_while_queued_gives_its_place_up(server):
    admission = server.state.engine.admission

    async def go():
        async with _wyoming(server) as c:
            await c.write_event(Synthesize(text=SHORT).event())
            await _until_async(lambda: admission.queued == 1, "the synthesize did not queue")
        await _until_async(lambda: admission.queued == 0, "the synthesis kept its place after its client left")
        assert admission.admitted == 1

    with _hold(server):
        _run(go())
    _released(server)


def test_wyoming_refused_then_the_connection_goes_on(impatient):
    """No queue, then a wait that runs out: `server_busy` error events; the same connection is
    served once the slot frees."""
    before = impatient.metrics().get('streamtts_refused_total{api="wyoming"}', 0.0)
    admission = impatient.state.engine.admission

    async def go(holder):
        async with _wyoming(impatient) as c:
            await c.write_event(Synthesize(text=SHORT).event())
            no_queue = Error.from_event(await _read(c)).code
            admission.queue_size, admission.queue_timeout_s = 4, 0.2
            try:
                await c.write_event(SynthesizeStart().event())
                await c.write_event(SynthesizeChunk(text=SHORT).event())
                timed_out = Error.from_event(await _read(c)).code
                await c.write_event(SynthesizeStop().event())  # a refused stream still ends
                stopped = await _read(c)
            finally:
                admission.queue_size, admission.queue_timeout_s = 0, DEADLINE_S
            holder.close()
            await _until_async(lambda: admission.admitted == 0, "the holder kept its slot")
            await c.write_event(Synthesize(text=SHORT).event())
            served = await _read_until(c, AudioStop)
        return no_queue, timed_out, stopped, served

    with _hold(impatient) as holder:
        no_queue, timed_out, stopped, served = _run(go(holder))
    assert no_queue == timed_out == "server_busy"
    assert SynthesizeStopped.is_type(stopped.type)
    assert _audio(served) > 10_000 and not any(Error.is_type(e.type) for e in served)
    assert impatient.metrics()['streamtts_refused_total{api="wyoming"}'] == before + 2
    _released(impatient)


# ---- drain -----------------------------------------------------------------------------------

def test_drain_ends_queued_waits_with_going_away(torch_engine):
    """A drain does not wait for queued requests: HTTP gets 503 `going_away`, Wyoming a
    `going_away` error, while the slot's holder is still speaking (so the drain itself ended the
    waits, not a freed slot)."""
    from streamtts.server.app import drain

    # the holder's utterance is under way: the drain lets it finish
    with _serve(_config(drain_timeout_s=DEADLINE_S), torch_engine) as srv, _hold(srv) as holder:
        admission = srv.state.engine.admission
        out: dict = {}
        waiting = threading.Thread(target=_post, args=(srv, _speech(), out))
        waiting.start()
        _until(lambda: admission.queued == 1, "the HTTP request did not queue")

        async def go():
            async with _wyoming(srv) as c:
                await c.write_event(Synthesize(text=SHORT).event())
                await _until_async(lambda: admission.queued == 2, "the Wyoming synthesis did not queue")
                drained = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(drain(srv.app, DEADLINE_S),
                                                                               srv.loop))
                error = Error.from_event(await _read(c)).code
                closed = await asyncio.wait_for(c.read_event(), DEADLINE_S) is None
            return drained, error, closed

        async def main():
            drained, error, closed = await go()
            await asyncio.get_running_loop().run_in_executor(None, waiting.join, DEADLINE_S)
            held = admission.admitted  # the holder still speaks
            holder.close()  # now the drain can end
            await asyncio.wait_for(drained, DEADLINE_S)
            return error, closed, held

        error, closed, held = _run(main())
        assert out["status"] == 503 and json.loads(out["body"])["error"]["code"] == "going_away"
        assert error == "going_away" and closed  # then the idle connection is closed
        assert held == 1 and admission.queued == 0
