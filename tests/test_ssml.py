"""SSML parsing, inline readings, the user lexicon and the request chunker: pure, no model."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamtts.text.chunker import SentenceChunker, split_text
from streamtts.text.markup_chunker import MarkupChunker, effective_speed, shown_chars
from streamtts.errors import LexiconError, SsmlError
from streamtts.protocol import Session
from streamtts.text import phonemize, phonemize_spans
from streamtts.text.markup import Span, parse_inline
from streamtts.text.ssml import Break, Text, maybe_ssml, parse_ssml
from streamtts.text.lexicon import Lexicon


def speak(body: str, attrs: str = "") -> str:
    return f"<speak{attrs}>{body}</speak>"


def spans(doc) -> list[Span]:
    return [p.span for p in doc.pieces if isinstance(p, Text)]


# ---- elements ---------------------------------------------------------------------------------

@pytest.mark.parametrize("attrs, ms", [
    ('time="300ms"', 300), ('time="1.5s"', 1500), ('time="0ms"', 0), ('strength="none"', 0),
    ('strength="x-weak"', 100), ('strength="weak"', 150), ('strength="medium"', 300),
    ('strength="strong"', 500), ('strength="x-strong"', 1000), ('', 300), ('time="250ms" strength="x-strong"', 250),
])
def test_break(attrs, ms):
    doc = parse_ssml(speak(f"你好<break {attrs}/>世界"))
    assert str(doc) == "你好世界"
    assert doc.pieces == (Text(Span("你好")), Break(ms), Text(Span("世界")))


@pytest.mark.parametrize("rate, factor", [
    ("x-slow", 0.5), ("slow", 0.75), ("medium", 1.0), ("fast", 1.25), ("x-fast", 1.5),
    ("80%", 0.8), ("150%", 1.5), ("+20%", 1.2), ("-20%", 0.8), ("1.5", 1.5), ("0.5", 0.5),
])
def test_prosody_rate(rate, factor):
    doc = parse_ssml(speak(f'慢<prosody rate="{rate}">说</prosody>'))
    assert doc.pieces[-1].rate == pytest.approx(factor) and doc.pieces[-1].span.shown.endswith("说")
    assert doc.pieces[0].rate == 1.0 and str(doc) == "慢说"


def test_nested_prosody_multiplies_and_pitch_is_ignored():
    doc = parse_ssml(speak('<prosody rate="50%" pitch="+10%">慢<prosody rate="x-fast">快</prosody></prosody>'))
    assert [(p.span.shown, p.rate) for p in doc.pieces] == [("慢", 0.5), ("快", 0.75)]


def test_phoneme_sub_and_say_as():
    doc = parse_ssml(speak('<phoneme alphabet="pinyin" ph="yin2 HANG2">银行</phoneme>'
                           '<sub alias="世界卫生组织">WHO</sub>'
                           '<say-as interpret-as="digits">110</say-as>'
                           '<say-as interpret-as="telephone">110</say-as>'
                           '<say-as interpret-as="cardinal">1,234</say-as>'
                           '<say-as interpret-as="characters">ab1</say-as>'
                           '<say-as interpret-as="date">2024-03-05</say-as>'
                           '<say-as interpret-as="date" format="md">3/5</say-as>'
                           '<say-as interpret-as="ordinal">5</say-as>'))
    assert spans(doc) == [
        Span("银行", readings=("yin2", "hang2")),
        Span("WHO", spoken="世界卫生组织"),
        Span("110", spoken="一一零"),
        Span("110", spoken="幺幺零"),
        Span("1,234", spoken="一千二百三十四"),
        Span("ab1", spoken="AB一"),
        Span("2024-03-05", spoken="二零二四年三月五日"),
        Span("3/5", spoken="三月五日"),
        Span("5"),  # an interpret-as we do not know: read as plain text
    ]
    assert str(doc) == "银行WHO1101101,234ab12024-03-053/55"


def test_unknown_elements_are_read_as_their_text_and_whitespace_collapses():
    doc = parse_ssml('<speak xmlns="http://www.w3.org/2001/10/synthesis" version="1.0" xml:lang="zh-CN">\n'
                     '  <p><s>今天   很好。</s></p>\n  <emphasis level="strong">真的</emphasis><mark name="m"/>\n'
                     '  <!-- a comment --><voice name="x">hello   world</voice>\n</speak>')
    assert str(doc) == " 今天 很好。 真的 hello world "
    assert phonemize(doc).normalized == "今天很好.真的hello world"
    assert Break(300, structural=True) in doc.pieces and Break(500, structural=True) in doc.pieces


def test_inline_readings_work_inside_ssml_text():
    doc = parse_ssml(speak("他{行|hang2}了"))
    assert spans(doc) == [Span("他"), Span("行", readings=("hang2",)), Span("了")]


def test_maybe_ssml():
    assert maybe_ssml("你好") == "你好" and type(maybe_ssml("你好")) is str
    assert maybe_ssml("  <speak>你好</speak>").pieces == (Text(Span("你好")),)


# ---- errors -----------------------------------------------------------------------------------

def test_malformed_ssml_names_line_and_column():
    with pytest.raises(SsmlError) as e:
        parse_ssml("<speak>\n  你好\n  <b>世界\n</speak>")
    assert e.value.code == "invalid_ssml"
    assert (e.value.line, e.value.column) == (4, 3)
    assert e.value.message.startswith("line 4, column 3: ") and "mismatched tag" in e.value.message


@pytest.mark.parametrize("doc, where, words", [
    ("<p>你好</p>", (1, 1), "root element must be <speak>"),
    (speak('\n<break time="fast"/>'), (2, 1), "not a duration"),
    (speak('<break time="20s"/>'), (1, 8), "longer than 10 s"),
    (speak('<break strength="huge"/>'), (1, 8), "strength"),
    (speak('<prosody rate="quick">x</prosody>'), (1, 8), "prosody rate"),
    (speak('<prosody rate="0%">x</prosody>'), (1, 8), "outside"),
    (speak('你<phoneme alphabet="pinyin" ph="hang2 xing2">行</phoneme>'), (1, 9), "1 hanzi but 2 syllables"),
    (speak('<phoneme alphabet="pinyin" ph="hangg2">行</phoneme>'), (1, 8), "not a toned pinyin syllable"),
    (speak('<phoneme alphabet="pinyin" ph="a1">A</phoneme>'), (1, 8), "not a hanzi"),
    (speak('<phoneme alphabet="ipa" ph="xiŋ">行</phoneme>'), (1, 8), "alphabet 'ipa' is not supported"),
    (speak('<sub>WHO</sub>'), (1, 8), "alias"),
    (speak('<say-as interpret-as="cardinal">abc</say-as>'), (1, 8), "not a number"),
    (speak('<say-as interpret-as="date">2024-13-01</say-as>'), (1, 8), "month"),
    (speak('<speak>x</speak>'), (1, 8), "only be the root"),
    (speak('&nbsp;'), (1, 8), "undefined entity"),
    ("你好", (1, 1), "not well-formed"),
])
def test_bad_ssml_is_a_typed_error_with_its_position(doc, where, words):
    with pytest.raises(SsmlError) as e:
        parse_ssml(doc)
    assert e.value.code == "invalid_ssml"
    assert (e.value.line, e.value.column) == where
    assert words in e.value.message and e.value.message.startswith(f"line {where[0]}, column {where[1]}: ")


BILLION_LAUGHS = ('<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
                  + "".join(f' <!ENTITY lol{i} "{("&lol%s;" % (i - 1 if i > 1 else "")) * 10}">\n'
                            for i in range(1, 10))
                  + ']>\n<speak>&lol9;</speak>')


@pytest.mark.parametrize("doc", [
    BILLION_LAUGHS,
    '<?xml version="1.0"?>\n<!DOCTYPE speak [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>\n<speak>&xxe;</speak>',
    '<!DOCTYPE speak SYSTEM "http://127.0.0.1:9/evil.dtd"><speak>你好</speak>',
])
def test_entity_attacks_are_refused_not_expanded(doc):
    t0 = time.perf_counter()
    with pytest.raises(SsmlError) as e:
        parse_ssml(doc)
    assert e.value.code == "invalid_ssml" and "not allowed" in e.value.message
    assert e.value.line is not None
    assert time.perf_counter() - t0 < 1.0  # refused at the DTD, nothing expanded


def drain(s: Session) -> list:
    out = []
    while (m := s.next_to_send()) is not None:
        out.append(m)
    return out


def test_protocol_text_format():
    s = Session()
    s.receive_text(json.dumps({"type": "start", "text_format": "ssml"}))
    drain(s)
    [ev] = s.receive_text(json.dumps({"type": "text", "text": speak('好<break time="1s"/>的')}))
    assert ev.text == "好的" and ev.text.pieces[1] == Break(1000)
    [ev] = s.receive_text(json.dumps({"type": "text", "text": "<b>not ssml</b>", "text_format": "text"}))
    assert ev.text == "<b>not ssml</b>" and not hasattr(ev.text, "pieces")
    assert s.receive_text(json.dumps({"type": "text", "text": "<speak>\n<b></speak>"})) == []
    [err] = drain(s)
    assert err["type"] == "error" and err["code"] == "invalid_ssml" and not err["fatal"]
    assert err["message"].startswith("line 2, column ")
    assert s.receive_text(json.dumps({"type": "text", "text": speak('<break time="1s"/>')})) == []
    assert drain(s)[0]["code"] == "no_speakable_text"
    assert s.receive_text(json.dumps({"type": "text", "text": "x", "text_format": "markdown"})) == []
    assert drain(s)[0]["code"] == "bad_message"


def test_protocol_refuses_entity_bombs_and_bad_formats():
    s = Session()
    s.receive_text(json.dumps({"type": "start", "text_format": "ssml"}))
    drain(s)
    assert s.receive_text(json.dumps({"type": "text", "text": BILLION_LAUGHS})) == []
    [err] = drain(s)
    assert err["code"] == "invalid_ssml"
    s2 = Session()
    assert s2.receive_text(json.dumps({"type": "start", "text_format": "html"})) == []
    assert drain(s2)[0]["code"] == "bad_message"
    s3 = Session()  # default text: markup is just text
    s3.receive_text(json.dumps({"type": "start"}))
    drain(s3)
    [ev] = s3.receive_text(json.dumps({"type": "text", "text": speak("你好")}))
    assert ev.text == "<speak>你好</speak>"


# ---- inline readings, lexicon, frontend -------------------------------------------------------

@pytest.mark.parametrize("text", ["{a|b}", "{行|hang6}", "{行|hang2 xing2}", "{行行|hang2}", "{行|hangg2}",
                                  "{行| hang2}", "{行|Hang2}", "{行\n|hang2}", "行|hang2}", "{|hang2}"])
def test_inline_syntax_is_strict_else_literal(text):
    assert parse_inline(text) == [Span(text)]


def test_inline_groups():
    assert parse_inline("我们去{银行|yin2 hang2}了{行|xing2}") == [
        Span("我们去"), Span("银行", readings=("yin2", "hang2")), Span("了"), Span("行", readings=("xing2",))]
    assert phonemize("去{银行|yin2 xing2}").pinyin == ["qu4", "yin2", "xing2"]
    assert phonemize("{绿|lv4}{绿|lü4}").pinyin == ["lv4", "lv4"]


def test_phoneme_inline_and_lexicon_give_the_same_ids():
    default = phonemize("他行了。")
    assert default.pinyin[1] == "xing2"
    inline = phonemize("他{行|hang2}了。")
    ssml = phonemize(parse_ssml(speak('他<phoneme alphabet="pinyin" ph="hang2">行</phoneme>了。')))
    lexicon = phonemize("他行了。", Lexicon({"行": ("hang2",)}))
    assert inline.ids == ssml.ids == lexicon.ids != default.ids
    assert inline.normalized == ssml.normalized == default.normalized == "他行了."


def test_a_lexicon_line_changes_the_g2p_of_a_word(tmp_path):
    assert phonemize("我们去银行").pinyin == ["wo3", "men5", "qu4", "yin2", "hang2"]
    path = tmp_path / "words.tsv"
    path.write_text("# my words\n\n银行\tyin2 xing2\n重庆\t chong2  qing4 \n", encoding="utf-8")
    lexicon = Lexicon.load(path)
    assert phonemize("我们去银行", lexicon).pinyin == ["wo3", "men5", "qu4", "yin2", "xing2"]
    assert phonemize("重庆", lexicon).pinyin == ["chong2", "qing4"]
    assert phonemize("还钱", lexicon).pinyin[0] == "huan2"  # a built-in context rule ...
    assert phonemize("还钱", Lexicon({"还": ("hai2",)})).pinyin[0] == "hai2"  # ... gives way to the lexicon
    assert phonemize("我们去银行").pinyin[-1] == "hang2"  # without it: the built-in reading


@pytest.mark.parametrize("text, line, words", [
    ("银行\tyin2\n", 1, "2 hanzi but 1 syllables"),
    ("# c\n\n银行 yin2 hang2\n", 3, "expected word<TAB>toned pinyin"),
    ("行\thang2\nA\ta1\n", 2, "not a hanzi"),
    ("行\thang7\n", 1, "not a toned pinyin syllable"),
    ("行\thang2\n行\txing2\n", 2, "already has a reading on line 1"),
    ("行\t\n", 1, "expected word<TAB>"),
])
def test_bad_lexicon_lines_name_their_line(text, line, words):
    with pytest.raises(LexiconError) as e:
        Lexicon.parse(text, "words.tsv")
    assert e.value.code == "bad_lexicon"
    assert e.value.message.startswith(f"words.tsv, line {line}: ") and words in e.value.message


def test_missing_lexicon_file(tmp_path):
    with pytest.raises(LexiconError, match="no such lexicon file"):
        Lexicon.load(tmp_path / "nope.tsv")


def test_spans_keep_punctuation_and_map_substitutes_to_the_shown_chars():
    ph = phonemize_spans([Span("好，"), Span("WHO", spoken="世卫"), Span("，行")])
    assert ph.normalized == "好,世卫,行"
    chars = [(c, 100.0 * i, 100.0 * (i + 1), i) for i, c in enumerate(ph.normalized) if c.isalnum()]
    assert shown_chars(chars, ph, lead_ms=50.0) == [
        ("好", 50.0, 150.0), ("W", 250.0, 250.0 + 200 / 3), ("H", 250.0 + 200 / 3, 250.0 + 400 / 3),
        ("O", 250.0 + 400 / 3, 450.0), ("行", 550.0, 650.0)]


# ---- chunking ---------------------------------------------------------------------------------

_piece = st.sampled_from(["{行|hang2}", "{银行|yin2 hang2}", "{行|", "hang2}", "{", "}", "|", "今天", "天气很好",
                          "，", "。", " ", "去银行", "{行|xing2 ", "hello world ", "123"])


@settings(max_examples=150, deadline=None)
@given(st.lists(_piece, min_size=1, max_size=14), st.randoms(use_true_random=False))
def test_inline_groups_pushed_in_fragments_equal_the_whole_and_are_never_cut(pieces, rnd):
    text = "".join(pieces)
    kw = dict(max_chars=10, first_max_chars=5)
    whole = split_text(text, **kw)
    ch = SentenceChunker(**kw)
    got, i = [], 0
    while i < len(text):
        k = rnd.randint(1, 5)
        got += ch.push(text[i:i + k])
        i += k
    got += ch.flush()
    assert got == whole
    from streamtts.text.inline import INLINE

    for m in INLINE.finditer(text):
        assert any(c.start <= m.start() and m.end() <= c.end for c in whole), (m.group(0), whole)


def test_markup_chunker_breaks_rates_and_atomic_spans():
    ch = MarkupChunker(speed=1.0)
    assert ch.push("你好") == []
    doc = parse_ssml(speak('<break time="200ms"/>今天天气很好，我们。<break time="500ms"/>'
                           '<sub alias="世界卫生组织">WHO</sub>说。<prosody rate="50%">慢慢，好</prosody>'
                           '<break time="1s"/>'))
    chunks = ch.push(doc)
    got = [(c.text, getattr(c.text, "rate", None), getattr(c.text, "lead_ms", None), c.pause_ms, c.boundary)
           for c in chunks]
    assert got == [
        ("你好", None, None, 0, "flush"),  # pending plain text goes first
        ("今天天气很好，", 1.0, 200, 150, "comma"),
        ("我们。", 1.0, 0, 0, "break"),  # the break replaces the full stop's pause
        ("WHO说。", 1.0, 500, 300, "full_stop"),
        ("慢慢，", 0.5, 0, 300, "comma"),  # pauses scale with the rate
        ("好", 0.5, 0, 1000, "break"),  # a trailing break is the last pause, exact
    ]
    assert chunks[3].text.spans == (Span("WHO", spoken="世界卫生组织"), Span("说。"))
    # effective speed 2 x 1.5 clamped to 2.0; the scheduler divides by the session's 2.0: 75 ms
    # after the comma (150 / 2.0), and the break's 1000 ms exactly
    fast = MarkupChunker(speed=2.0).push(parse_ssml(speak('<prosody rate="x-fast">快快，好</prosody><break time="1s"/>')))
    assert [c.pause_ms for c in fast] == [150, 2000]


def test_paragraphs_and_sentences_end_sentences():
    doc = parse_ssml(speak('<p><s>你好。</s><s>再见</s></p><p>走吧</p><break time="1s"/>好'))
    chunks = MarkupChunker().push(doc)
    assert [(c.text, c.text.lead_ms, c.pause_ms) for c in chunks] == [
        ("你好。", 0, 0), ("再见", 300, 0), ("走吧", 500, 0), ("好", 1000, 0)]


def test_markup_chunker_never_cuts_inside_a_substitute():
    doc = parse_ssml(speak('我说<sub alias="美国和世界卫生组织">U.S.A. and W.H.O.</sub>都来了我们走吧'))
    texts = [c.text for c in MarkupChunker(max_chars=6, first_max_chars=4).push(doc)]
    assert any("U.S.A. and W.H.O." in t for t in texts) and "".join(texts) == str(doc)


def test_effective_speed_is_clamped_to_the_engine_range():
    assert effective_speed(1.0, 0.5) == 0.5
    assert effective_speed(0.8, 0.5) == 0.5
    assert effective_speed(1.5, 1.5) == 2.0
    assert effective_speed(1.2, 1.25) == pytest.approx(1.5)
