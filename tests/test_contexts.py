"""Contexts on one socket (docs/protocol.md "Contexts"), over a real socket: each context speaks its
own text with its own `done`, its frames carry its tag, cancelling one leaves the others, a closed
or idle context is reported with what was heard, and a socket that names no context is the plain
one-utterance session."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from streamtts.protocol import Limits
from streamtts.protocol.contexts import ContextClosed, ContextSession, Routed, tag, untag, wants_contexts
from streamtts.protocol.messages import TextEvent
from streamtts.server import ServerConfig
from support.servers import ThreadServer
from support.ws import collect, events, jsend, read_until, ws_connect

RATE = 22050
A = "今天天气很好，我们一起去公园散步吧。"
B = "明天会下雨，记得带伞。"
LONG = "今天天气很好，我们一起去公园散步吧。" * 12


@pytest.fixture(scope="module")
def server(int8_engine):
    config = ServerConfig(port=0, static_dir=None, capacity=4,
                          limits=replace(Limits(), context_idle_s=1.5))
    with ThreadServer(config, int8_engine) as srv:
        yield srv



def _of(items, cid) -> tuple[bytes, list[dict]]:
    """A context's audio (tags removed) and events."""
    audio = b"".join(untag(m)[1] for m in items if isinstance(m, bytes) and untag(m)[0] == cid)
    return audio, [m for m in events(items) if m.get("context_id") == cid]


def _solo(server, text: str) -> bytes:
    with ws_connect(server) as ws:
        jsend(ws, type="text", text=text)
        jsend(ws, type="end")
        items, code = collect(ws)
    assert code == 1000
    return b"".join(m for m in items if isinstance(m, bytes))


def _same(got: bytes, want: bytes) -> None:
    a, b = np.frombuffer(got, np.int16).astype(int), np.frombuffer(want, np.int16).astype(int)
    assert len(a) == len(b), (len(a), len(b))
    assert np.abs(a - b).max() <= 40  # batching changes float rounding only


def _done(cid):
    return lambda items: any(m.get("type") == "done" and m.get("context_id") == cid for m in events(items))


def test_two_contexts_speak_each_its_own_text_on_one_socket(server):
    solo_a, solo_b = _solo(server, A), _solo(server, B)
    with ws_connect(server) as ws:
        jsend(ws, type="start", contexts=True)
        ready = json.loads(ws.recv(timeout=60))
        assert ready["type"] == "ready" and ready["contexts"] is True
        jsend(ws, type="text", text=A, context_id="a")
        jsend(ws, type="text", text=B, context_id="b")
        jsend(ws, type="end", context_id="a")
        jsend(ws, type="end", context_id="b")
        items = read_until(ws, lambda it: _done("a")(it) and _done("b")(it))
        for cid, want in (("a", solo_a), ("b", solo_b)):
            audio, evs = _of(items, cid)
            _same(audio, want)
            segs = [e for e in evs if e["type"] == "segment"]
            assert segs and segs[0]["index"] == 0 and segs[-1]["audio_end_ms"] == pytest.approx(
                1000 * len(audio) / 2 / RATE, abs=0.2)  # positions count within the context
            done = [e for e in evs if e["type"] == "done"][0]
            assert done["audio_sent_ms"] == pytest.approx(1000 * len(audio) / 2 / RATE, abs=0.2)
        assert all(isinstance(m, bytes) and untag(m)[0] in ("a", "b") or isinstance(m, dict) for m in items)
        # the socket lives on after its contexts are done: a context id may be used again
        jsend(ws, type="text", text=B, context_id="a")
        jsend(ws, type="end")  # the socket's end: every live context finishes, then 1000
        rest, code = collect(ws)
    assert code == 1000
    audio, evs = _of(rest, "a")
    _same(audio, solo_b)
    assert [e["type"] for e in evs][-1] == "done"


def test_cancelling_one_context_leaves_the_other_untouched(server):
    solo_b = _solo(server, B)
    with ws_connect(server) as ws:
        jsend(ws, type="text", text=LONG, context_id="a")  # a first message naming a context turns them on
        jsend(ws, type="flush", context_id="a")
        items = read_until(ws, lambda it: len(_of(it, "a")[0]) >= RATE)  # half a second of a
        assert events(items, "ready")[0]["contexts"] is True
        jsend(ws, type="text", text=B, context_id="b")
        jsend(ws, type="end", context_id="b")
        jsend(ws, type="cancel", context_id="a")
        more = read_until(ws, lambda it: _done("b")(it) and any(
            m.get("type") == "cancelled" and m.get("context_id") == "a" for m in events(it)))
        cut = next(i for i, m in enumerate(more) if isinstance(m, dict) and m["type"] == "cancelled")
        assert not [m for m in more[cut:] if isinstance(m, bytes) and untag(m)[0] == "a"]
        cancelled = more[cut]
        assert 0 < cancelled["heard_ms"] <= cancelled["audio_sent_ms"]
        audio_b, _ = _of(items + more, "b")
        _same(audio_b, solo_b)


def test_close_context_frees_its_place_and_says_what_was_heard(server):
    with ws_connect(server) as ws:
        jsend(ws, type="start", contexts=True)
        for i in range(5):
            jsend(ws, type="text", text="你好", context_id=f"c{i}")  # no sentence end: held, silent
        jsend(ws, type="text", text="你好", context_id="c5")
        jsend(ws, type="close_context", context_id="c0")
        jsend(ws, type="text", text="你好", context_id="c5")
        jsend(ws, type="close_context", context_id="nope")
        items = read_until(ws, lambda it: len(events(it, "error")) >= 2 and events(it, "context_closed"))
        errors = events(items, "error")
        assert errors[0]["code"] == "too_many_contexts" and errors[0]["context_id"] == "c5"
        assert errors[1]["code"] == "bad_context" and errors[1]["context_id"] == "nope"
        closed = events(items, "context_closed")[0]
        assert closed["context_id"] == "c0" and closed["reason"] == "closed" and closed["heard_text"] == ""
        jsend(ws, type="text", text="a" * 10, context_id="bad id!")
        jsend(ws, type="flush", context_id="c5")  # c5 took c0's place: it speaks
        more = read_until(ws, lambda it: events(it, "error") and events(it, "segment"))
        assert events(more, "error")[0]["code"] == "bad_context"
        assert events(more, "segment")[0]["context_id"] == "c5"


def test_an_idle_context_is_closed_and_the_socket_lives(server):
    with ws_connect(server) as ws:
        jsend(ws, type="text", text="你好", context_id="idle")  # never flushed: it waits, then goes
        items = read_until(ws, lambda it: events(it, "context_closed"), timeout=60)
        closed = events(items, "context_closed")[0]
        assert closed["context_id"] == "idle" and closed["reason"] == "idle"
        jsend(ws, type="text", text=B, context_id="idle")
        jsend(ws, type="end")
        rest, code = collect(ws)
    assert code == 1000 and _of(rest, "idle")[0] and _done("idle")(rest)


def test_a_socket_without_contexts_is_unchanged_and_refuses_a_context_id(server):
    with ws_connect(server) as ws:
        jsend(ws, type="text", text=B)
        jsend(ws, type="text", text="再见。", context_id="x")
        jsend(ws, type="end")
        items, code = collect(ws)
    assert code == 1000
    assert "contexts" not in events(items, "ready")[0]
    assert [e["code"] for e in events(items, "error")] == ["bad_context"]
    assert all("context_id" not in e for e in events(items) if e["type"] != "error")
    assert b"".join(m for m in items if isinstance(m, bytes)) == _solo(server, B)


def test_sans_io_routing_tags_and_limits():
    assert wants_contexts('{"type":"start","contexts":true}') and wants_contexts('{"type":"text","context_id":"a"}')
    assert not wants_contexts('{"type":"start"}') and not wants_contexts("not json")
    assert untag(tag("ctx-1", b"\x01\x02")) == ("ctx-1", b"\x01\x02") and untag(tag(None, b"x")) == (None, b"x")
    s = ContextSession(Limits(max_contexts=2))
    evs = s.receive_text('{"type":"text","text":"你好","context_id":"a"}')
    assert [type(e) for e in evs][-1] is Routed and isinstance(evs[-1].event, TextEvent)
    s.receive_text('{"type":"text","text":"你好"}')  # the default context, id None
    assert set(s.contexts) == {"a", None}
    assert s.receive_text('{"type":"text","text":"你好","context_id":"b"}') == []
    assert s.receive_text('{"type":"text","text":"你好","context_id":7}') == []
    assert [type(e) for e in s.receive_text('{"type":"close_context","context_id":"a"}')] == [ContextClosed]
    out = []
    while (m := s.next_to_send()) is not None:
        out.append(m)
    assert [(m["type"], m.get("code")) for m in out] == [
        ("ready", None), ("error", "too_many_contexts"), ("error", "bad_context"), ("context_closed", None)]
    ends = s.receive_text('{"type":"end"}')  # the socket's end reaches every live context
    assert [(e.context_id, type(e.event).__name__) for e in ends] == [(None, "EndEvent")]
