"""The sentence chunker: where streamed text is cut into the chunks the synthesizer speaks."""

from __future__ import annotations

import random

import pytest

from streamtts.text.chunker import PAUSE_MS, Chunk, SentenceChunker, split_text

CLOSING = "。｡.．！!？?；;…”’」』）)]】》\"'，、,：:—"


def texts(text: str, **kw) -> list[str]:
    return [c.text for c in split_text(text, **kw)]


def stream(fragments, **kw) -> list[Chunk]:
    chunker = SentenceChunker(**kw)
    out = []
    for fragment in fragments:
        out += chunker.push(fragment)
    return out + chunker.flush()


# --- punctuation ---------------------------------------------------------------------------


def test_chinese_sentences_and_short_first_chunk():
    assert texts("你好，今天天气很好。") == ["你好，", "今天天气很好。"]
    assert texts("今天天气很好。我们去公园吧！好不好？") == ["今天天气很好。", "我们去公园吧！", "好不好？"]


def test_soft_breaks_do_not_split_later_chunks():
    assert texts("好的。今天，我们去公园，然后吃饭。") == ["好的。", "今天，我们去公园，然后吃饭。"]


def test_first_chunk_soft_break_needs_min_chars():
    assert texts("嗯，你好，我们走吧。") == ["嗯，你好，", "我们走吧。"]
    assert texts("嗯，你好——我们走吧。") == ["嗯，你好——", "我们走吧。"]
    assert texts("嗯，你好，我们走吧。", min_chars=1) == ["嗯，", "你好，我们走吧。"]


def test_english_sentences():
    assert texts("Hello there. How are you? Fine; thanks!") == [
        "Hello there.", "How are you?", "Fine;", "thanks!"]


def test_mixed_chinese_english():
    assert texts("我用Python写代码. It works! 真好。") == ["我用Python写代码.", "It works!", "真好。"]


def test_closing_quotes_and_brackets_stay_with_their_sentence():
    assert texts("他说：“你好。”然后走了。") == ["他说：", "“你好。”", "然后走了。"]
    assert texts("真的吗？！」他问。") == ["真的吗？！」", "他问。"]
    assert texts("好的！）接着说。") == ["好的！）", "接着说。"]
    assert texts('He said "Hi." Then he left.') == ['He said "Hi."', "Then he left."]
    assert texts('Really?" she asked.') == ['Really?"', "she asked."]
    assert texts('他说完了。"下一句"也很好。') == ["他说完了。", '"下一句"也很好。']


def test_ellipsis_and_newlines():
    chunks = split_text("等等……我想想...好吧\n第二段。\n\n第三段")
    assert [c.text for c in chunks] == ["等等……", "我想想...", "好吧", "第二段。", "第三段"]
    assert [c.pause_ms for c in chunks] == [400, 400, 500, 500, 0]


def test_pauses_follow_the_punctuation():
    chunks = split_text("你好，一二三：好；对。真的？是！嗯…", first_max_chars=40, min_chars=99)
    assert [c.pause_ms for c in chunks] == [250, 300, 300, 300, 400]
    assert split_text("你好，世界")[0].pause_ms == PAUSE_MS["comma"] == 150
    assert split_text("你好：世界")[0].pause_ms == PAUSE_MS["colon"] == 200
    assert split_text("一二三四五六七八九十一二三四五")[0].pause_ms == PAUSE_MS["cut"] == 0


# --- dots that do not end sentences --------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("圆周率是3.14，约等于三。", ["圆周率是3.14，", "约等于三。"]),
    ("人口有1.5万人。", ["人口有1.5万人。"]),
    ("版本v1.2.3已发布。", ["版本v1.2.3已发布。"]),
    ("请访问www.example.com. 谢谢！", ["请访问www.example.com.", "谢谢！"]),
    ("We use e.g. Python. Mr. Li agrees.", ["We use e.g. Python.", "Mr. Li agrees."]),
    ("比分3:2，时间10:30，共1,000元。", ["比分3:2，", "时间10:30，共1,000元。"]),
    ("1. 苹果\n2. 香蕉", ["1. 苹果", "2. 香蕉"]),
    ("见http://a.com/x?y=1 这里。", ["见http://a.com/x?y=1 这里。"]),
])
def test_dots_and_colons_inside_tokens(text, expected):
    assert texts(text, first_max_chars=40) == expected


def test_ambiguous_dot_waits_for_the_next_char():
    chunker = SentenceChunker()
    assert chunker.push("圆周率是3.") == []
    assert chunker.pending == "圆周率是3."
    assert [c.text for c in chunker.push("14。好")] == ["圆周率是3.14。"]
    chunker = SentenceChunker()
    assert chunker.push("It works.") == []
    assert [c.text for c in chunker.push(" Yes")] == ["It works."]
    assert [c.text for c in chunker.flush()] == ["Yes"]


def test_sentence_is_emitted_when_the_next_char_arrives():
    chunker = SentenceChunker()
    assert chunker.push("今天") == [] and chunker.push("天气很") == []
    assert chunker.push("好。") == []  # a closing quote could still follow
    assert [c.text for c in chunker.push("我们")] == ["今天天气很好。"]
    assert [(c.text, c.index) for c in chunker.flush()] == [("我们", 1)]


# --- length cap ----------------------------------------------------------------------------

LONG = ("中华人民共和国成立于一九四九年十月一日这是一个非常重要的历史时刻"
        "全国人民都在欢庆这个伟大的日子我们永远不会忘记这一天")


def test_long_unpunctuated_text_is_cut_at_word_boundaries():
    chunks = split_text(LONG, max_chars=20, first_max_chars=10)
    assert "".join(c.text for c in chunks) == LONG
    assert len(chunks[0].text) <= 10 and all(len(c.text) <= 20 for c in chunks)
    assert all(c.pause_ms == 0 for c in chunks)
    import jieba

    bounds, pos = set(), 0
    for word in jieba.lcut(LONG):
        pos += len(word)
        bounds.add(pos)
    assert all(c.end in bounds for c in chunks)


def test_cap_prefers_the_last_soft_break():
    text = "好。我们今天去公园，然后一起吃饭，接着看电影再回家。"
    assert texts(text, max_chars=20) == ["好。", "我们今天去公园，然后一起吃饭，", "接着看电影再回家。"]


def test_cap_never_cuts_numbers_or_latin_words():
    text = "好。" + "我们" * 8 + "3.14159" + "我们" * 10 + "。"
    chunks = split_text(text, max_chars=20)
    assert any("3.14159" in c.text for c in chunks)
    words = "Streaming synthesis keeps latency really low for everyone"
    chunks = split_text(words, max_chars=20)
    assert [c.text for c in chunks] == [
        "Streaming", "synthesis keeps", "latency really low", "for everyone"]
    text = "好。价格是" + "元" * 10 + "12345678元以及1.5万"
    assert any("12345678" in c.text for c in split_text(text, max_chars=20))
    assert texts("好。" + "元" * 18 + "1.5万人", max_chars=20) == ["好。", "元" * 18, "1.5万人"]


def test_long_token_in_first_chunk_grows_it_to_the_normal_cap():
    assert texts("http://example.com/a?b=1 is ok.") == ["http://example.com/a?b=1 is ok."]


# --- nothing to say ------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "。。。", "   ", "\n\n", "……", "😀😀！", "，，、", '“”。'])
def test_nothing_speakable_gives_no_chunks(text):
    assert split_text(text) == []
    assert stream(list(text)) == []


def test_stray_punctuation_is_not_its_own_chunk():
    assert texts("你好。。。！！ 。世界。") == ["你好。。。！！", "世界。"]


# --- streaming = whole text ----------------------------------------------------------------

SAMPLES = [
    "你好，今天天气很好。我们一起去公园散步吧！好不好？",
    "我用Python写代码. It works! 真好。版本v1.2.3已发布，圆周率是3.14，约1.5万人。",
    "请访问www.example.com. e.g. Mr. Smith said: “OK.” 然后……走了\n\n新段落",
    LONG + "，" + LONG + "。" + "The quick brown fox jumps over the lazy dog again and again.",
    '他说："好的。"她问："真的吗？！"   比分3:2，时间10:30——共计1,000元…',
    "。。。嗯，好。\n\n\n  😀 1. 第一项\n2. 第二项；完",
]


@pytest.mark.parametrize("text", SAMPLES)
@pytest.mark.parametrize("kw", [{}, {"max_chars": 12, "first_max_chars": 5, "min_chars": 1}])
def test_random_fragments_equal_the_whole_text(text, kw):
    whole = split_text(text, **kw)
    assert whole
    rng = random.Random(len(text))
    for _ in range(25):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(0, min(30, len(text) - 1))))
        fragments = [text[a:b] for a, b in zip([0] + cuts, cuts + [len(text)])]
        assert stream(fragments, **kw) == whole
    assert stream(list(text), **kw) == whole


def test_offsets_match_the_text_across_pushes():
    pushed = ["  前言。", "你好，今天", "天气很好。\n", "It works! ", "真好", "。"]
    all_text = "".join(pushed)
    chunks = stream(pushed)
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert all_text[c.start:c.end] == c.text
    assert chunks[0].start == 2


def test_reset_drops_pending_text_and_restarts_the_utterance():
    chunker = SentenceChunker()
    assert [c.text for c in chunker.push("你好。今天天气")] == ["你好。"]
    assert chunker.pending == "今天天气"
    chunker.reset()
    assert chunker.pending == "" and chunker.flush() == []
    chunks = chunker.push("你好，世界。再见")
    assert [(c.text, c.index) for c in chunks] == [("你好，", 0), ("世界。", 1)]
    assert chunks[0].start == len("你好。今天天气")  # offsets keep counting
    assert [(c.text, c.index) for c in chunker.flush()] == [("再见", 2)]
    # flush ended the utterance too: index 0 and a short first chunk again
    assert [(c.text, c.index) for c in chunker.push("好的，谢谢。再")] == [("好的，", 0), ("谢谢。", 1)]


def test_bad_arguments():
    with pytest.raises(ValueError):
        SentenceChunker(max_chars=0)
    with pytest.raises(TypeError):
        SentenceChunker().push(b"bytes")


# --- long streams --------------------------------------------------------------------------


def test_twenty_thousand_chars_one_at_a_time():
    base = ("今天天气很好，我们一起去公园散步吧。圆周率约等于3.14159，版本v1.2.3已经发布！"
            + LONG + "I use Python every day. It works! 真好……\n")
    text = (base * 200)[:20000]
    chunker = SentenceChunker()
    chunks, max_pending = [], 0
    for ch in text:
        chunks += chunker.push(ch)
        max_pending = max(max_pending, len(chunker.pending))
    chunks += chunker.flush()
    assert max_pending <= chunker.max_chars + 16
    assert all(len(c.text.rstrip(CLOSING)) <= 40 for c in chunks)
    assert all(text[c.start:c.end] == c.text for c in chunks)
    assert len(chunks) > 500
    assert chunks == split_text(text)


@pytest.mark.parametrize("text,cut,rest", [
    ("今天天气很", "今天天气", "很"),  # the last word may still be growing: it stays
    ("我们明天一起去公园", "我们明天一起去", "公园"),
    ("hello wor", "hello", "wor"),
    ("会议定在2026年3月", "会议定在2026年", "3月"),  # never between a number and its unit
    ("我们买了3", "我们买了", "3"),
])
def test_cut_early_cuts_the_first_chunk_before_its_last_word(text, cut, rest):
    c = SentenceChunker()
    c.push(text)
    chunks = c.cut_early()
    assert [(ch.text, ch.boundary, ch.pause_ms) for ch in chunks] == [(cut, "cut", 0)]
    assert c.pending == rest and not c.at_start
    assert c.push("。") == [] and [ch.text for ch in c.flush()] == [rest + "。"]


@pytest.mark.parametrize("text", ["今天天气", "你好", "今天{行|hang2", "他说：", "价格是3.1"])
def test_cut_early_waits_when_too_little_is_certain(text):
    c = SentenceChunker()
    c.push(text)
    assert c.cut_early() == [] and c.pending == text and c.at_start


def test_cut_early_only_cuts_the_first_chunk():
    c = SentenceChunker()
    assert [ch.text for ch in c.push("你好。我们明天一起去")] == ["你好。"]
    assert c.cut_early() == [] and c.pending == "我们明天一起去"
