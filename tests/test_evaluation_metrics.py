"""Toneless-pinyin normalisation and syllable error rates (no model needed)."""

import pytest

from streamtts.evaluation.metrics import (
    corpus_error_rate,
    edit_distance,
    syllable_error_rate,
    toneless_pinyin,
)
from streamtts.evaluation.sentences import TEST_SENTENCES

SIMPLIFIED = "我们的银行在哪里？音乐会明天开始。"
TRADITIONAL = "我們的銀行在哪裡？音樂會明天開始。"


def test_simplified_sentence():
    assert toneless_pinyin("今天天气很好") == ["jin", "tian", "tian", "qi", "hen", "hao"]


def test_traditional_matches_simplified_including_polyphones():
    # 行 and 樂 are polyphones: pypinyin alone reads 銀行 as "yin xing" and 音樂 as "yin le".
    assert toneless_pinyin(TRADITIONAL) == toneless_pinyin(SIMPLIFIED)
    assert toneless_pinyin("銀行")[1] == "hang" and toneless_pinyin("音樂")[1] == "yue"


def test_digits_become_chinese_numbers():
    assert toneless_pinyin("下午3点") == ["xia", "wu", "san", "dian"]
    assert toneless_pinyin("12个") == toneless_pinyin("十二个")
    assert toneless_pinyin("２０") == ["er", "shi"]  # full-width digits


def test_number_formats_whisper_writes():
    assert toneless_pinyin("1,000人") == toneless_pinyin("一千人")
    assert toneless_pinyin("3-5天") == ["san", "wu", "tian"]  # a range, not "3 minus 5"
    assert toneless_pinyin("零下-5度") == ["ling", "xia", "fu", "wu", "du"]


def test_other_scripts_count_per_letter():
    assert toneless_pinyin("わたし") == ["わ", "た", "し"]  # Whisper drifting into kana is an error


def test_punctuation_and_whitespace_dropped_latin_kept_lowercase():
    assert toneless_pinyin("你好， 世界！……“OK” Hello-World") == [
        "ni", "hao", "shi", "jie", "ok", "hello", "world"
    ]
    assert toneless_pinyin("。，！？ \n") == []
    assert toneless_pinyin("") == []


def test_edit_distance():
    assert edit_distance([], []) == 0
    assert edit_distance("abc", "") == 3
    assert edit_distance("", "ab") == 2
    assert edit_distance("kitten", "sitting") == 3


def test_identical_is_zero():
    assert syllable_error_rate("今天天气很好。", "今天天气很好") == 0.0


def test_one_substitution():
    assert syllable_error_rate("今天天气很好", "今天天气很坏") == pytest.approx(1 / 6)


def test_homophones_are_not_errors():
    assert syllable_error_rate("他在看书", "她再看书") == 0.0


def test_deletion_and_insertion():
    assert syllable_error_rate("今天天气很好", "今天气很好") == pytest.approx(1 / 6)
    assert syllable_error_rate("今天天气很好", "今天天气真的很好") == pytest.approx(2 / 6)


def test_empty_hypothesis_is_all_errors():
    assert syllable_error_rate("今天天气很好", "") == 1.0


def test_empty_reference_rejected():
    with pytest.raises(ValueError):
        syllable_error_rate("。", "你好")


def test_traditional_hypothesis_of_same_sentence_is_zero():
    assert syllable_error_rate(SIMPLIFIED, TRADITIONAL) == 0.0
    assert syllable_error_rate("下午三点开会", "下午3點開會。") == 0.0


def test_corpus_rate_weights_by_reference_length():
    pairs = [("今天天气很好", "今天天气很坏"), ("你好", "你好")]  # 1 edit over 6 + 2 syllables
    assert corpus_error_rate(pairs) == pytest.approx(1 / 8)
    assert corpus_error_rate([("你好", "")]) == 1.0
    with pytest.raises(ValueError):
        corpus_error_rate([])


def test_sentences_are_plain_hanzi_of_the_right_length():
    assert len(TEST_SENTENCES) >= 12
    assert len(set(TEST_SENTENCES)) == len(TEST_SENTENCES)
    for s in TEST_SENTENCES:
        hanzi = [c for c in s if "\u4e00" <= c <= "\u9fff"]
        assert 8 <= len(hanzi) <= 25, s
        assert all(c in "，。？！、" for c in s if c not in hanzi), s
        assert len(toneless_pinyin(s)) == len(hanzi), s  # one syllable per character
