"""Property-based fuzzing (hypothesis) of the sans-I/O WebSocket protocol, the text frontend and
the chunker: any input, never an unhandled exception, never a hang, and the invariants users rely
on (serializable, valid UTF-8 messages; no audio of a cancelled generation; ids in the symbol
table; streamed chunks equal to the whole text's chunks).

Seeded and derandomized (the same cases every run: about 10,000 in all, a minute or so on two
busy cores) with a generous per-case deadline; no example database is written.
"""

from __future__ import annotations

import json
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streamtts.text.chunker import SentenceChunker, preload, split_text
from streamtts.engine_client.stream import Segment
from streamtts.errors import EmptyTextError, NoSpeakableTextError
from streamtts.protocol import FORMATS, CancelEvent, Limits, Session, State, parse_options
from streamtts.text import SYMBOL_TO_ID, SYMBOLS, phonemize, warm_up
from streamtts.text.normalize import SPOKEN_PUNCT


def fuzz(examples: int) -> settings:
    """Settings of every fuzz test: fixed cases, no database, 2 s a case at most."""
    return settings(derandomize=True, database=None, deadline=2000, print_blob=False, max_examples=examples,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


@pytest.fixture(scope="module", autouse=True)
def _dictionaries_loaded():
    """The first call loads jieba, pypinyin and OpenCC (seconds): not inside a case's deadline."""
    warm_up()
    preload()


_ORDER = {State.NEW: 0, State.READY: 1, State.ENDING: 2, State.CLOSED: 3}

# ---- strategies ------------------------------------------------------------------------------

# Any code point, lone surrogates included (st.text() leaves them out by default).
_ANY_CHAR = st.one_of(st.characters(), st.characters(categories=["Cs"]))
# NUL, RTL marks, zero-width and BOM, combining marks, lone surrogates, emoji, regional indicators
_TRICKY = st.sampled_from("\x00\u200f\u202e\u200b\ufeff\u0301\u0308\ud800\udfff\U0001F600\U0001F1E8\n\t\r\u3000")
any_text = st.text(st.one_of(_ANY_CHAR, _TRICKY), max_size=12)
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), any_text)
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                             st.dictionaries(any_text, inner, max_size=4)),
                           max_leaves=4)

_FIELD_VALUES = {
    "voice": st.one_of(st.sampled_from(["biaobei", "AIBAO", " xiaomei ", "", "nobody"]), json_values),
    "format": st.one_of(st.sampled_from(list(FORMATS)), json_values),
    "sample_rate": st.one_of(st.sampled_from([8000, 16000, 22050, 24000, 44100, 48000, 22050.0, 11025]),
                             json_values),
    "speed": st.one_of(st.floats(0.3, 3.0), json_values),
    "seed": st.one_of(st.integers(-5, 2**31 + 5), json_values),
    "text": st.one_of(st.sampled_from(["你好。", "今天天气很好，", "hello world", "2024年3月5日", "😀", " "]),
                      any_text, json_values),
}
_KINDS = st.one_of(st.sampled_from(["start", "text", "text", "text", "flush", "cancel", "end"]), json_values)
messages = st.fixed_dictionaries({}, optional={"type": _KINDS, **_FIELD_VALUES})


def _frame(msg, ascii_: bool, how: str):
    text = json.dumps(msg, ensure_ascii=ascii_)  # NaN/Infinity too: Python's json reads them back
    if how == "bytes":  # the raw bytes of a text frame; lone surrogates make it invalid UTF-8
        return text.encode("utf-8", "surrogatepass")
    if how == "cut":
        return text[: max(1, len(text) // 2)]
    return text


frames = st.one_of(
    st.builds(_frame, messages, st.booleans(), st.sampled_from(["str", "str", "bytes", "cut"])),
    st.builds(_frame, json_values, st.booleans(), st.just("str")),  # not an object
    any_text,  # not JSON at all
    st.binary(max_size=64),  # raw bytes of a "text" frame: mostly invalid UTF-8
)

# Well-formed messages, so that sequences get past `start` and audio flows, cancels and ends.
valid_frames = st.one_of(
    st.fixed_dictionaries({"type": st.just("start")}, optional={
        "voice": st.sampled_from(["biaobei", "Aiyue"]), "format": st.sampled_from(list(FORMATS)),
        "sample_rate": st.sampled_from([8000, 16000, 22050, 24000, 44100, 48000]),
        "speed": st.floats(0.5, 2.0), "seed": st.integers(0, 2**31 - 1)}),
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(
        st.sampled_from(["你好。", "今天天气很好，", "hello world", "2024年3月5日", "第2\u200f名\u0301"]), any_text)}),
    st.sampled_from([{"type": "flush"}, {"type": "cancel"}, {"type": "end"}]),
).map(json.dumps)
ops = st.one_of(
    st.tuples(st.just("text"), valid_frames),
    st.tuples(st.just("text"), valid_frames),
    st.tuples(st.just("text"), frames),
    st.tuples(st.just("binary"), st.binary(max_size=16)),
    st.tuples(st.just("audio"), st.sampled_from([0, 0, 0, 1, 2]), st.integers(0, 3000)),
    st.tuples(st.just("audio"), st.just(0), st.integers(0, 3000)),
    st.tuples(st.just("segment"), st.sampled_from([0, 0, 1]), st.text(max_size=8)),
    st.tuples(st.just("pause"), st.sampled_from([0, 0, 1]), st.integers(-5, 5000)),
    st.tuples(st.just("finished"), st.sampled_from([0, 0, 1])),
    st.tuples(st.just("drain"), st.integers(0, 5)),
    st.tuples(st.just("tick"), st.floats(0, 3)),
    st.one_of(  # rare: server-side ends and queue positions
        st.tuples(st.just("fail"), st.sampled_from(["internal", "server_busy", "idle_timeout", "whatever"])),
        st.tuples(st.just("queued"), st.integers(0, 20))),
)
limits = st.one_of(st.just(Limits()), st.builds(
    Limits, max_message_bytes=st.sampled_from([64, 4096, 64 * 1024]), max_text_chars=st.sampled_from([1, 8, 4096]),
    max_session_chars=st.sampled_from([10, 100_000]), rate=st.sampled_from([1.0, 60.0]),
    burst=st.sampled_from([2.0, 120.0])))


# ---- protocol ---------------------------------------------------------------------------------


def _check_outgoing(item) -> None:
    if isinstance(item, bytes):
        assert len(item) > 0
        return
    assert isinstance(item, dict) and isinstance(item.get("type"), str), item
    # what the server writes: strict JSON, encodable as UTF-8 (no lone surrogate reaches the wire)
    wire = json.dumps(item, ensure_ascii=False, allow_nan=False)
    wire.encode("utf-8")
    assert json.loads(wire) == item
    if item["type"] == "error":
        assert isinstance(item["code"], str) and isinstance(item["fatal"], bool)
        assert len(item["message"]) < 1000  # bounded, whatever the client sent


class _Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _drain(session: Session, most: int = 1 << 30) -> list:
    out = []
    while len(out) < most and (item := session.next_to_send()) is not None:
        _check_outgoing(item)
        out.append(item)
    return out


def _run_ops(session: Session, clock: _Clock, program) -> None:
    rng = np.random.default_rng(0)
    state = session.state
    for op in program:
        kind = op[0]
        if kind == "text":
            events = session.receive_text(op[1])
        elif kind == "binary":
            events = session.receive_bytes(op[1])
        else:
            events = []
        if kind in ("audio", "segment", "pause"):
            generation = session.generation - op[1]
            before = session.buffered_bytes
            if kind == "audio":
                session.audio(generation, rng.uniform(-1.5, 1.5, op[2]).astype(np.float32), 0.01)
            elif kind == "segment":
                chars = [(c, 10.0 * k, 10.0 * k + 5) for k, c in enumerate(op[2])]
                session.segment(generation, _segment(op[2], op[2], chars))
            else:
                session.pause(generation, op[2])
            if op[1]:  # results of an older generation are dropped
                assert session.buffered_bytes == before
        elif kind == "finished":
            session.finished(session.generation - op[1])
        elif kind == "fail":
            session.fail(op[1], "server-side failure")
        elif kind == "queued":
            session.queued(op[1])
        elif kind == "drain":
            _drain(session, op[1])
        elif kind == "tick":
            clock.now += op[1]
        if any(isinstance(e, CancelEvent) for e in events):
            # nothing of the cancelled text (audio, segments) may still come out
            sent = _drain(session)
            at = next(i for i, m in enumerate(sent) if isinstance(m, dict) and m["type"] == "cancelled")
            assert not any(isinstance(m, bytes) or m["type"] == "segment" for m in sent[:at]), sent[:at]
        assert _ORDER[session.state] >= _ORDER[state], (state, session.state)  # never backwards
        if session.state is State.CLOSED:
            assert session.close_code is not None
        state = session.state
    _drain(session)
    if session.state is State.CLOSED:  # a closed session takes nothing more
        assert session.receive_text('{"type":"text","text":"你好"}') == []
        session.fail("internal", "late")
        assert _drain(session) == []


@fuzz(3100)
@given(limits, st.lists(ops, min_size=3, max_size=25))
def test_protocol_sequences_never_crash(lim, program):
    clock = _Clock()
    _run_ops(Session(limits=lim, clock=clock), clock, program)


@fuzz(800)
@given(st.lists(st.tuples(st.just("text"), frames), min_size=1, max_size=12))
def test_protocol_client_messages_only(program):
    clock = _Clock()
    _run_ops(Session(clock=clock), clock, program)


@fuzz(1200)
@given(st.dictionaries(st.sampled_from(sorted(_FIELD_VALUES)), json_values, max_size=5))
def test_parse_options_typed_errors(msg):
    session = Session()
    session.receive_text(json.dumps({"type": "start", **msg}))
    (reply,) = _drain(session)
    assert reply["type"] in ("ready", "error")


@pytest.mark.parametrize("frame", [
    "[" * 100_000 + "]" * 100_000,
    '{"type":"start","voice":' + "[" * 100_000 + "]" * 100_000 + "}",
    '{"a":' * 100_000 + "1" + "}" * 100_000,
    "[" * 100_000,  # unterminated
    '{"type":"start","seed":' + "9" * 5000 + "}",  # past Python's int-from-string limit
    '{"type":"text","text":"' + "好" * 400_000 + '"}',  # 1.2 MB
    '{"type":"text","text":"' + "\\ud800" * 1000 + '"}',
    '{"type":"' + "x" * 1_000_000 + '"}',
])
def test_protocol_huge_and_deep_frames(frame):
    for lim in (Limits(), Limits(max_message_bytes=8 * 1024 * 1024)):
        session = Session(limits=lim)
        assert session.receive_text(frame) == []
        assert session.receive_text(frame.encode("utf-8", "surrogatepass")) == []
        replies = _drain(session)
        assert [m["type"] for m in replies] == ["error", "error"]
        assert session.state is State.NEW  # a bad message is not fatal


def test_parse_options_unhashable_format_is_a_typed_error():
    # regression: a list or object as "format" raised TypeError (unhashable) out of the protocol
    for bad in ([1], {}, {"a": 1}):
        session = Session()
        session.receive_text(json.dumps({"type": "start", "format": bad}))
        (reply,) = _drain(session)
        assert reply["type"] == "error" and reply["code"] == "unknown_format"
    assert parse_options({"format": "mulaw"}).sample_rate == 8000


def test_voice_null_is_a_type_error():
    # "voice": null was taken as the default voice; like any other wrong type it is bad_message
    session = Session()
    session.receive_text('{"type":"start","voice":null}')
    (reply,) = _drain(session)
    assert reply["code"] == "bad_message" and not reply["fatal"] and session.state is State.NEW
    assert parse_options({}).voice == "biaobei"  # left out: the default


# ---- text frontend ----------------------------------------------------------------------------

_HANZI = "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方又如前所本见经头面公同三已老从动两长"
_PIECES = st.one_of(
    st.text(st.sampled_from(_HANZI), min_size=1, max_size=6),
    st.integers(0, 10**15).map(str),
    st.integers(1, 30).map(lambda n: "9876543210" * n),  # long digit runs
    st.builds(lambda a, b: f"{a}.{b}", st.integers(0, 10**6), st.integers(0, 10**6)),
    st.builds(lambda a, b: f"{a}/{b}", st.integers(0, 999), st.integers(0, 999)),
    st.integers(-100, 100).map(lambda n: f"{n}"),
    st.builds(lambda y, m, d: f"{y}-{m}-{d}", st.integers(0, 3000), st.integers(0, 13), st.integers(0, 32)),
    st.builds(lambda y, m, d: f"{y}年{m}月{d}日", st.integers(0, 3000), st.integers(0, 13), st.integers(0, 32)),
    st.builds(lambda h, m: f"{h}:{m:02d}", st.integers(0, 30), st.integers(0, 99)),
    st.builds(lambda a, b, c: f"{a}:{b}:{c}", st.integers(0, 99), st.integers(0, 99), st.integers(0, 99)),
    st.sampled_from(["13812345678", "+86 138-1234-5678", "400-123-4567", "010-12345678", "电话12345",
                     "拨打110", "验证码 0042", "比分3:2", "队2-1", "上午10:30", "1,234,567", "v1.2.3",
                     "192.168.1.1", "www.example.com", "a@b.com", "e.g.", "Mr. Smith", "GPU", "hello world",
                     "don't", "1+1=2", "3×4", "2*3", "10÷2=5", "-5℃", "零下-5℃", "30度", "20~25℃", "37°",
                     "98.6°F", "50%", "-3.5%", "5‰", "10%-20%", "½", "¾", "⅛", "第2", "2个", "二月",
                     "1000年前", "1998年", "2010-2020年", "US$5", "HK$10", "¥1.5万", "$3.99", "€20", "£7",
                     "12.50元", "1.5万元", "km/h", "100km/h", "3m²", "5㎡", "60kg", "2h", "30min"]),
    st.sampled_from(["%", "℃", "km/h", "¥", "$", "€", "°", "+", "-", "−", "×", "/", ":", "=", "~", "@", "#",
                     "&", "*", "^", "|", "<", ">", "\\", "_", "`", "…", "——", "、", "，", "。", "！", "？",
                     "；", "：", "“", "”", "‘", "’", "「", "」", "（", "）", "《", "》", "【", "】", ".", ",",
                     "!", "?", ";", "'", '"', "(", ")", "[", "]", "{", "}", "...", "!!!", "?!"]),
    st.sampled_from([" ", "  ", "\t", "\n", "\u3000", "\xa0", "\r\n", "\u2028"]),
    st.sampled_from(["😀", "👍🏽", "🇨🇳", "👨‍👩‍👧", "❤️", "©", "™", "1️⃣", "\u200d", "\ufe0f"]),
    st.text(st.sampled_from(string.ascii_letters), min_size=1, max_size=8),
    st.text(st.sampled_from("我們這個時間說話國語體書電腦龜鬱"), min_size=1, max_size=4),  # traditional
    st.text(_ANY_CHAR, max_size=4),
)
mixed_text = st.lists(_PIECES, min_size=1, max_size=12).map("".join)


def _is_hanzi(ch: str) -> bool:
    return ch > "\u2e7f"


@fuzz(3000)
@given(mixed_text)
def test_frontend_any_text(text):
    try:
        p = phonemize(text)
    except (EmptyTextError, NoSpeakableTextError):
        return
    norm = p.normalized
    assert all(_is_hanzi(c) or c.isascii() and c.isalpha() or c == " " or c in SPOKEN_PUNCT for c in norm), norm
    assert not any(c.isdigit() for c in norm)
    assert len(p.ids) == len(p.phonemes) == len(p.char_index)
    assert all(0 <= i < len(SYMBOLS) for i in p.ids)
    assert all(SYMBOL_TO_ID[s] == i for s, i in zip(p.phonemes, p.ids))
    assert p.phonemes[-2:] == ["~", "_"]
    assert all(-1 <= k < len(norm) for k in p.char_index)
    # bounded: a character is read as at most a few hanzi (½ -> 二分之一, ℃ -> 摄氏度), each 4 symbols;
    # digit runs past the cardinal limit are read digit by digit (one hanzi a digit)
    assert len(p.ids) <= 20 * len(text) + 2, (len(p.ids), len(text))


@fuzz(50)
@given(st.integers(4290, 4400), st.sampled_from(["", ".5", "%", "℃", ".5℃", "元", ".25元", "年", ":30", "/3", "km"]),
       st.sampled_from(["", "-", "¥", "第", "$"]))
def test_frontend_very_long_digit_runs(n, suffix, prefix):
    # past Python's int-from-string limit (4300 digits): read digit by digit, never ValueError
    p = phonemize(prefix + "7" * n + suffix)
    assert p.normalized.count("七") == n


def test_frontend_digit_runs_past_the_int_limit():
    # regression: a decimal, temperature or money amount with more than 4300 integer digits
    # raised ValueError (Python's int-from-string limit) out of the frontend
    long = "1" * 5000
    for text in (long + ".5", "-" + long + ".25", long + ".5℃", long + ".5元", "¥" + long + ".5"):
        p = phonemize(text)
        assert p.normalized.startswith(("一一一", "负一一一", "零下一一一")), p.normalized[:10]
        assert "点五" in p.normalized or "点二五" in p.normalized
    assert phonemize("00.5").normalized == "零点五"  # leading zeros of the whole part still dropped


# ---- chunker ------------------------------------------------------------------------------------

chunker_kw = st.fixed_dictionaries({"max_chars": st.integers(4, 60), "first_max_chars": st.integers(1, 30),
                                    "min_chars": st.integers(0, 5)})


@fuzz(1500)
@given(mixed_text, chunker_kw, st.lists(st.integers(0, 400), max_size=12))
def test_chunker_fragments_equal_whole(text, kw, cuts):
    whole = split_text(text, **kw)
    bounds = sorted({min(c, len(text)) for c in cuts} | {0, len(text)})
    chunker = SentenceChunker(**kw)
    streamed = []
    for a, b in zip(bounds, bounds[1:]):
        streamed += chunker.push(text[a:b])
    streamed += chunker.flush()
    assert streamed == whole
    assert [c.index for c in whole] == list(range(len(whole)))
    for c in whole:
        assert text[c.start:c.end] == c.text and c.text == c.text.strip() and c.text
        assert any(ch.isalnum() for ch in c.text)
    # nothing speakable is lost: every alphanumeric char of the text is in exactly one chunk
    assert sum(ch.isalnum() for c in whole for ch in c.text) == sum(ch.isalnum() for ch in text)


@fuzz(400)
@given(st.lists(st.tuples(st.sampled_from(["push", "push", "push", "flush", "reset"]), mixed_text), max_size=8),
       chunker_kw)
def test_chunker_push_flush_reset_offsets(program, kw):
    chunker = SentenceChunker(**kw)
    pushed = ""
    for op, text in program:
        if op == "push":
            chunks = chunker.push(text)
            pushed += text
        elif op == "flush":
            chunks = chunker.flush()
        else:
            chunker.reset()
            chunks = []
        for c in chunks:  # offsets count every char pushed since construction
            assert pushed[c.start:c.end] == c.text


def _segment(text: str, normalized: str, chars: list) -> Segment:
    """A chunk's segment event as the output stream hands it over (positions are the session's)."""
    return Segment(0, 0, text, normalized, 0, 0, chars)
