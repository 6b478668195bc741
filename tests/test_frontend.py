"""The text frontend's contract: phonemize() output shape, symbols, errors, alignment, speed."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from streamtts.errors import EmptyTextError, NoSpeakableTextError, TextError
from streamtts.text import SYMBOL_TO_ID, SYMBOLS, Phonemized, normalize, phonemize
from streamtts.text.symbols import letter_symbol, syllable_phonemes


def test_upstream_example_ids():
    # ttskit's own example for the "hanzi" cleaner: 你好。 -> n i 2 - h ao 3 - . - ~ _
    p = phonemize("你好。")
    assert p.phonemes == ["n", "i", "2", "-", "h", "ao", "3", "-", ".", "-", "~", "_"]
    assert p.ids == [17, 40, 72, 2, 11, 34, 73, 2, 130, 2, 1, 0]
    assert p.pinyin == ["ni2", "hao3"]
    assert p.normalized == "你好."
    assert p.text == "你好。"
    assert p.char_index == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, -1, -1]
    assert isinstance(p, Phonemized)


def test_symbol_inventory():
    assert len(SYMBOLS) == 145 and len(set(SYMBOLS)) == 145
    assert SYMBOLS[:3] == ("_", "~", "-")
    assert SYMBOLS[3] == "aa" and SYMBOLS[29] == "zh"  # 27 initials
    assert SYMBOLS[30] == "a" and SYMBOLS[70] == "uong"  # 41 finals
    assert SYMBOLS[71:76] == ("1", "2", "3", "4", "5")
    assert SYMBOLS[76] == "Aa" and SYMBOLS[101] == "Zz"
    assert SYMBOLS[102] == "A" and SYMBOLS[127] == "Z"
    assert SYMBOLS[128:138] == tuple('! ? . , ; : " # ( )'.split())
    assert SYMBOLS[138:] == tuple("w y 0 6 7 8 9".split())
    assert all(SYMBOL_TO_ID[s] == i for i, s in enumerate(SYMBOLS))


@pytest.mark.parametrize(
    "syllable, expected",
    [
        ("an1", "aa an 1"), ("yi1", "ii i 1"), ("wu3", "uu u 3"), ("yu2", "vv v 2"),
        ("er4", "ee er 4"), ("ou1", "oo ou 1"), ("e4", "ee e 4"), ("ya1", "ii ia 1"),
        ("you3", "ii iu 3"), ("yong3", "ii iong 3"), ("yue4", "vv ve 4"), ("yuan2", "vv van 2"),
        ("yun4", "vv vn 4"), ("wei4", "uu ui 4"), ("wen2", "uu un 2"), ("weng1", "uu ueng 1"),
        ("zhi1", "zh ix 1"), ("chi1", "ch ix 1"), ("shi4", "sh ix 4"), ("ri4", "r iz 4"),
        ("zi3", "z iy 3"), ("ci2", "c iy 2"), ("si4", "s iy 4"), ("ju4", "j v 4"),
        ("que4", "q ve 4"), ("xuan3", "x van 3"), ("jun1", "j vn 1"), ("lv4", "l v 4"),
        ("nv3", "n v 3"), ("lve4", "l ve 4"), ("nue4", "n ve 4"), ("gui4", "g ui 4"),
        ("niu2", "n iu 2"), ("dun1", "d un 1"), ("zhuang4", "zh uang 4"), ("n2", "n ng 2"),
        ("ng2", "ee ng 2"), ("yo1", "ii o 1"), ("de5", "d e 5"),
    ],
)
def test_syllable_phonemes(syllable, expected):
    assert " ".join(syllable_phonemes(syllable)) == expected


@pytest.mark.parametrize("bad", ["", "hao", "hao6", "xyz1", "HAO3", "hao33"])
def test_syllable_phonemes_rejects(bad):
    assert syllable_phonemes(bad) is None


def test_letters_follow_phkit_convention():
    assert letter_symbol("g", spelled=True) == "Gg"
    assert letter_symbol("G", spelled=False) == "G"
    p = phonemize("我用GPU训练AI")
    letters = [s for s in p.phonemes if s[0].isupper()]
    assert letters == ["Gg", "Pp", "Uu", "Aa", "Ii"]  # ALL-CAPS: letter names
    p = phonemize("hello world")
    assert p.phonemes == ["H", "-", "E", "-", "L", "-", "L", "-", "O", "-", "#", "-",
                          "W", "-", "O", "-", "R", "-", "L", "-", "D", "-", "~", "_"]
    assert p.pinyin == []


@pytest.mark.parametrize("text", ["", " ", "   \n\t ", "\u3000"])
def test_empty_text(text):
    with pytest.raises(EmptyTextError) as err:
        phonemize(text)
    assert err.value.code == "empty_text"
    assert "empty" in str(err.value)


@pytest.mark.parametrize(
    "text",
    ["😀", "😀🎉👍🏽", "。。。", "！？", "!!!", "……", "——", "\x00\x01\x02", "\u200b\u200d",
     '"()"', "%%%", "☃★→", "~~~", "、、"],
)
def test_nothing_speakable(text):
    with pytest.raises(NoSpeakableTextError) as err:
        phonemize(text)
    assert err.value.code == "no_speakable_text"
    assert "Nothing to speak" in err.value.message
    assert isinstance(err.value, TextError) and isinstance(err.value, ValueError)


def test_non_string_is_a_type_error():
    with pytest.raises(TypeError):
        phonemize(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text, normalized",
    [("你好☃世界", "你好世界"), ("你好\u200b世界😀", "你好世界"), ("ｶタカナ你好", "你好"),
     ("你好\x07", "你好"), ("αβ你好", "你好"), ("你好�", "你好")],
)
def test_unknown_characters_are_dropped(text, normalized):
    assert phonemize(text).normalized == normalized


@pytest.mark.parametrize(
    "text",
    ["你好。", "今天是2024年3月5日，气温-5℃。", "我用GPU训练AI，hello world！", "《红楼梦》（第1回）",
     "他说：“好！”", "玩儿了一会儿", "Tom和Jerry", "价格¥12.5，约$3"],
)
def test_char_index_alignment(text):
    p = phonemize(text)
    n = len(p.normalized)
    assert len(p.ids) == len(p.phonemes) == len(p.char_index)
    assert p.phonemes[-2:] == ["~", "_"] and p.char_index[-2:] == [-1, -1]
    body = p.char_index[:-2]
    assert all(0 <= i < n for i in body)
    assert body == sorted(body)  # monotonic: symbols follow the text
    assert set(body) == set(range(n))  # every spoken character has symbols
    # each character's symbols end with the chain "-"; a hanzi has exactly 4
    for i, ch in enumerate(p.normalized):
        syms = [s for s, k in zip(p.phonemes, p.char_index) if k == i]
        assert syms[-1] == "-"
        if ch > "\u2e7f":
            assert len(syms) == 4 and syms[2] in "12345"
    hanzi = [ch for ch in p.normalized if ch > "\u2e7f"]
    assert len(hanzi) == len(p.pinyin)
    assert [SYMBOL_TO_ID[s] for s in p.phonemes] == p.ids


def test_normalize_is_exposed_and_idempotent():
    once = normalize("今天是2024年3月5日，我們去看GPU展覽！！")
    assert once == "今天是二零二四年三月五日,我们去看GPU展览!"
    assert normalize(once) == once


def test_thread_safe():
    texts = ["今天天气很好。", "我们一起去银行。", "他在2024年3月5日出发。", "一个不是一天。",
             "玩儿了一会儿。", "AI和GPU。", "气温-5℃。", "比分3:2。"] * 25
    serial = [phonemize(t) for t in texts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(phonemize, texts))
    assert parallel == serial


def test_fast_after_warm_up():
    sentences = ["今天天气很好，我们一起去公园散步吧。", "他在2024年3月5日下午14:30到达北京。",
                 "人工智能正在改变世界，GPU的算力越来越强。", "这是一个非常重要的会议，请大家准时参加。"]
    for s in sentences:
        phonemize(s)
    n = 400
    t0 = time.perf_counter()
    for i in range(n):
        phonemize(sentences[i % len(sentences)])
    per = (time.perf_counter() - t0) / n
    assert per < 0.005, f"{per * 1e3:.2f} ms per sentence"


@pytest.mark.parametrize(
    "text",
    ["1" * 5000, "1.1" * 2000, "1-" * 3000, "1:" * 3000, "%1" * 2000, "你" * 5000, "一不儿" * 1000,
     "".join(chr(c) for c in range(0x20, 0x3000, 7))],
)
def test_long_or_odd_input_is_linear_and_safe(text):
    phonemize("你好")
    t0 = time.perf_counter()
    try:
        p = phonemize(text)
        assert len(p.ids) == len(p.char_index)
    except NoSpeakableTextError:
        pass
    assert time.perf_counter() - t0 < 1.0
