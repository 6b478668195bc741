"""A stream slot per utterance, not per socket, over a real socket: a connected socket with nothing
to say holds no slot; an utterance takes one with its first text and gives it back when it is
done or cancelled; a wait that runs out fails that utterance only; `cancelled` and `done` say
what the listener has heard."""

from __future__ import annotations

import json
import time

import pytest

from streamtts.server import ServerConfig
from support.servers import ThreadServer
from support.ws import collect, events, jsend, read_until, ws_connect

LONG = "今天天气很好，我们一起去公园散步吧。" * 12  # far longer than any test reads of it
RATE = 22050


@pytest.fixture(scope="module")
def engine(int8_engine):
    return int8_engine



def _audio_s(items) -> float:
    return sum(len(m) for m in items if isinstance(m, bytes)) / 2 / RATE


def _has(kind: str):
    return lambda items: any(isinstance(m, dict) and m["type"] == kind for m in items)


def _admitted(server) -> int:
    return server.state.engine.admission.admitted


def _wait_for(cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "the server did not get there in time"
        time.sleep(0.02)


def test_silent_sockets_hold_no_slot(engine):
    config = ServerConfig(port=0, static_dir=None, capacity=2)
    with ThreadServer(config, engine) as server:
        with ws_connect(server) as a, ws_connect(server) as b:
            for ws in (a, b):  # connected, ready, and silent (a voice bot while its user talks)
                jsend(ws, type="start")
                assert json.loads(ws.recv(timeout=30))["type"] == "ready"
            assert _admitted(server) == 0
            with ws_connect(server) as c:
                jsend(c, type="text", text="你好，欢迎光临。")
                jsend(c, type="end")
                items, code = collect(c, timeout=120)
            types = [e["type"] for e in events(items)]
            assert types[0] == "ready" and types[-1] == "done" and "queued" not in types, types
            assert code == 1000 and _audio_s(items) > 0.5
            _wait_for(lambda: _admitted(server) == 0)  # done gave the slot back


def test_an_utterance_waits_for_a_slot_that_a_cancel_frees(engine):
    config = ServerConfig(port=0, static_dir=None, capacity=1, queue_size=4, queue_timeout_s=120.0)
    with ThreadServer(config, engine) as server:
        with ws_connect(server) as a, ws_connect(server) as b:
            jsend(a, type="text", text=LONG)
            read_until(a, lambda items: _audio_s(items) > 0.5)  # a speaks: the only slot is a's
            jsend(b, type="text", text="轮到我了。")
            jsend(b, type="end")
            first = read_until(b, _has("queued"))
            assert events(first, "queued") == [{"type": "queued", "position": 0, "utterance": 1}]
            assert not any(isinstance(m, bytes) for m in first)
            jsend(a, type="cancel")  # a's utterance is over: its slot goes to b's
            read_until(a, _has("cancelled"))
            items, code = collect(b, timeout=120)
            assert events(items)[-1]["type"] == "done" and code == 1000 and _audio_s(items) > 0.3
            # the socket that cancelled speaks again, with a slot of its next utterance
            jsend(a, type="text", text="我们继续。")
            jsend(a, type="end")
            items, code = collect(a, timeout=120)
            assert events(items)[-1]["type"] == "done" and code == 1000 and _audio_s(items) > 0.3
        _wait_for(lambda: _admitted(server) == 0 and server.state.engine.admission.queued == 0)


def test_a_wait_that_runs_out_fails_that_utterance_and_the_socket_lives(engine):
    config = ServerConfig(port=0, static_dir=None, capacity=1, queue_size=4, queue_timeout_s=1.0)
    with ThreadServer(config, engine) as server:
        with ws_connect(server) as holder, ws_connect(server) as b:
            jsend(holder, type="text", text=LONG)  # holds the slot until it cancels
            read_until(holder, lambda items: _audio_s(items) > 0.3)
            jsend(b, type="text", text="等不到了。")
            jsend(b, type="end")
            items = read_until(b, _has("error"))
            error = events(items, "error")[0]
            assert error["code"] == "server_busy" and error["fatal"] is False
            assert not any(isinstance(m, bytes) for m in items)
            assert server.metrics()['streamtts_refused_total{api="ws"}'] == 1
            jsend(holder, type="cancel")
            read_until(holder, _has("cancelled"))
            # the same socket, its next utterance: spoken (the dropped one is not)
            jsend(b, type="text", text="现在可以了。")
            jsend(b, type="end")
            items, code = collect(b, timeout=120)
            spoken = "".join(s["text"] for s in events(items, "segment"))
            assert spoken == "现在可以了。" and events(items)[-1]["type"] == "done" and code == 1000


def test_cancelled_and_done_say_what_the_listener_heard(engine):
    config = ServerConfig(port=0, static_dir=None, capacity=2, max_lead_s=2.0)
    with ThreadServer(config, engine) as server:
        with ws_connect(server) as ws:
            jsend(ws, type="text", text=LONG)
            # 3.5 s sent with at most 2 s ahead of the modelled player: it has played 1.5 s or more
            items = read_until(ws, lambda items: _audio_s(items) >= 3.5 and len(events(items, "segment")) >= 1)
            jsend(ws, type="cancel")
            items += read_until(ws, _has("cancelled"))
            cancelled = events(items, "cancelled")[0]
            sent_ms = 1000.0 * _audio_s(items)
            assert cancelled["audio_sent_ms"] == pytest.approx(sent_ms, abs=0.2)
            assert 1500.0 - 1.0 <= cancelled["heard_ms"] <= cancelled["audio_sent_ms"]
            # heard_text: the spoken characters whose audio ends by heard_ms, by the segments' char times
            chars = [c for s in events(items, "segment") for c in s["chars"]]
            assert cancelled["heard_text"] == "".join(c["char"] for c in chars if c["end_ms"] <= cancelled["heard_ms"])
            assert len(cancelled["heard_text"]) >= 3
            whole = [s for s in events(items, "segment") if s["audio_end_ms"] <= cancelled["heard_ms"]]
            assert cancelled["heard_segments"] == len(whole)

            # the next utterance's account starts afresh; `done` gives it too
            jsend(ws, type="text", text="好的。")
            jsend(ws, type="end")
            rest, code = collect(ws, timeout=120)
            done = events(rest, "done")[0]
            assert done["audio_sent_ms"] == pytest.approx(1000.0 * _audio_s(rest), abs=0.2)
            assert 0.0 <= done["heard_ms"] <= done["audio_sent_ms"] and code == 1000


def test_a_slot_counts_compute_so_a_turn_that_plays_out_lets_the_next_one_in(engine):
    # capacity 1: a's turn is synthesized, then only played out (its utterance is still open, it
    # never sent `end`); b's utterance needs no wait for that, and a's more text takes a slot again
    config = ServerConfig(port=0, static_dir=None, capacity=1, queue_size=4, queue_timeout_s=120.0)
    with ThreadServer(config, engine) as server:
        with ws_connect(server) as a, ws_connect(server) as b:
            jsend(a, type="text", text="你好，欢迎光临。")
            jsend(a, type="flush")
            first = read_until(a, lambda items: _audio_s(items) > 0.2)
            _wait_for(lambda: _admitted(server) == 0)  # all of a's text is audio: its slot is back
            jsend(b, type="text", text="轮到我了。")
            jsend(b, type="end")
            items, code = collect(b, timeout=120)
            types = [e["type"] for e in events(items)]
            assert "queued" not in types and types[-1] == "done" and code == 1000 and _audio_s(items) > 0.3
            jsend(a, type="text", text="我们继续。")
            jsend(a, type="end")
            rest, code = collect(a, timeout=120)
            spoken = "".join(s["text"] for s in events(first + rest, "segment"))
            assert spoken == "你好，欢迎光临。我们继续。" and events(rest)[-1]["type"] == "done" and code == 1000
        _wait_for(lambda: _admitted(server) == 0 and server.state.engine.admission.queued == 0)


def test_text_that_stalls_mid_sentence_starts_speaking_after_the_first_chunk_wait(engine):
    config = ServerConfig(port=0, static_dir=None, capacity=2, first_chunk_wait_s=0.15)
    with ThreadServer(config, engine) as server:
        with ws_connect(server) as ws:
            jsend(ws, type="text", text="我们明天一起去")  # an LLM's tokens so far, then nothing for a while
            items = read_until(ws, lambda items: _audio_s(items) > 0.2 and _has("segment")(items), timeout=60)
            assert [s["text"] for s in events(items, "segment")] == ["我们明天一起"]
            jsend(ws, type="text", text="公园散步吧。")
            jsend(ws, type="end")
            rest, code = collect(ws, timeout=120)
            spoken = [s["text"] for s in events(items + rest, "segment")]
            assert "".join(spoken) == "我们明天一起去公园散步吧。" and code == 1000
