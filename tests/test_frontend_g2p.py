"""Hanzi -> spoken pinyin: polyphones, tone sandhi, neutral tones, erhua."""

from __future__ import annotations

import pytest

from streamtts.text import phonemize


def pinyin(text: str) -> str:
    return " ".join(phonemize(text).pinyin)


SANDHI = [
    ("你好", "ni2 hao3"),
    ("一个", "yi2 ge4"),
    ("一天", "yi4 tian1"),
    ("第一", "di4 yi1"),
    ("不是", "bu2 shi4"),
    ("不好", "bu4 hao3"),
    ("展览馆", "zhan2 lan2 guan3"),  # 展览|馆: 3 3 3 -> 2 2 3
    ("小老鼠", "xiao3 lao2 shu3"),  # 小|老鼠: 3 3 3 -> 3 2 3
    ("手表厂", "shou2 biao2 chang3"),
    ("老鼠", "lao2 shu3"),
    ("我想", "wo2 xiang3"),  # across a boundary next to a one-syllable word
    ("我很好", "wo3 hen2 hao3"),  # 很好 first, then 我 sees hen2
    ("一百", "yi4 bai3"),
    ("一万", "yi2 wan4"),
    ("十一", "shi2 yi1"),
    ("一百一十一", "yi4 bai3 yi1 shi2 yi1"),
    ("一二三", "yi1 er4 san1"),
    ("十一月一日", "shi2 yi1 yue4 yi1 ri4"),
    ("一楼", "yi1 lou2"),
    ("看一看", "kan4 yi5 kan4"),
    ("统一", "tong3 yi1"),
    ("统一思想", "tong3 yi1 si1 xiang3"),
    ("千万一定要来", "qian1 wan4 yi2 ding4 yao4 lai2"),
    ("一样", "yi2 yang4"),
    ("一起", "yi4 qi3"),
    ("一点儿", "yi4 dian3 er5"),
    ("不要", "bu2 yao4"),
    ("不对", "bu2 dui4"),
    ("好不好", "hao3 bu5 hao3"),
    ("是不是", "shi4 bu5 shi4"),
    ("差不多", "cha4 bu5 duo1"),
    ("一加一", "yi1 jia1 yi1"),
]

POLYPHONES = [
    ("银行", "yin2 hang2"),
    ("行走", "xing2 zou3"),
    ("银行行长在行走", "yin2 hang2 hang2 zhang3 zai4 xing2 zou3"),
    ("长大", "zhang3 da4"),
    ("长度", "chang2 du4"),
    ("头发很长", "tou2 fa5 hen3 chang2"),
    ("他长得很高", "ta1 zhang3 de5 hen3 gao1"),
    ("重要", "zhong4 yao4"),
    ("重新", "chong2 xin1"),
    ("重来", "chong2 lai2"),
    ("了解", "liao2 jie3"),
    ("好了", "hao3 le5"),
    ("睡觉", "shui4 jiao4"),
    ("觉得", "jue2 de5"),
    ("慢慢地走", "man4 man4 de5 zou3"),
    ("她高兴地跳了起来", "ta1 gao1 xing4 de5 tiao4 le5 qi3 lai5"),
    ("这块地很大", "zhe4 kuai4 di4 hen3 da4"),
    ("跑得很快", "pao3 de5 hen3 kuai4"),
    ("跑得快", "pao3 de5 kuai4"),
    ("你得去", "ni2 dei3 qu4"),
    ("他得了冠军", "ta1 de2 le5 guan4 jun1"),
    ("得到", "de2 dao4"),
    ("还钱", "huan2 qian2"),
    ("还是", "hai2 shi4"),
    ("音乐", "yin1 yue4"),
    ("快乐", "kuai4 le4"),
    ("教书", "jiao1 shu1"),
    ("教我", "jiao1 wo3"),
    ("教育", "jiao4 yu4"),
    ("两只猫", "liang3 zhi1 mao1"),
    ("他只是说说", "ta1 zhi3 shi4 shuo1 shuo5"),
    ("弹吉他", "tan2 ji2 ta1"),
    ("子弹", "zi3 dan4"),
    ("电子", "dian4 zi3"),
    ("子宫", "zi3 gong1"),
    ("流血", "liu2 xue4"),
    ("视为", "shi4 wei2"),
    ("因为", "yin1 wei4"),
    ("着手", "zhuo2 shou3"),
    ("看着我", "kan4 zhe5 wo3"),
    ("睡着了", "shui4 zhao2 le5"),
]

NEUTRAL = [
    ("爸爸", "ba4 ba5"),
    ("姐姐", "jie3 jie5"),
    ("朋友", "peng2 you5"),
    ("东西", "dong1 xi5"),
    ("衣服", "yi1 fu5"),
    ("看看", "kan4 kan5"),
    ("想想", "xiang2 xiang5"),
    ("起来", "qi3 lai5"),
    ("桌子", "zhuo1 zi5"),
    ("我们", "wo3 men5"),
    ("什么", "shen2 me5"),
    ("便宜", "pian2 yi5"),
]

ERHUA = [
    ("玩儿", "wan2 er5"),
    ("哪儿", "na3 er5"),
    ("他在那儿玩儿呢", "ta1 zai4 na4 er5 wan2 er5 ne5"),
    ("小孩儿", "xiao3 hai2 er5"),
    ("这会儿", "zhe4 hui4 er5"),
    ("一会儿", "yi2 hui4 er5"),
    ("有点儿", "you2 dian3 er5"),
    ("女儿", "nv3 er2"),  # 儿 "daughter": a full syllable
    ("婴儿", "ying1 er2"),
    ("儿子", "er2 zi5"),
    ("儿童", "er2 tong2"),
    ("花儿", "hua1 er2"),  # literary, two syllables
]


@pytest.mark.parametrize("text, expected", SANDHI, ids=[c[0] for c in SANDHI])
def test_tone_sandhi(text, expected):
    assert pinyin(text) == expected


@pytest.mark.parametrize("text, expected", POLYPHONES, ids=[c[0] for c in POLYPHONES])
def test_polyphones(text, expected):
    assert pinyin(text) == expected


@pytest.mark.parametrize("text, expected", NEUTRAL, ids=[c[0] for c in NEUTRAL])
def test_neutral_tones(text, expected):
    assert pinyin(text) == expected


@pytest.mark.parametrize("text, expected", ERHUA, ids=[c[0] for c in ERHUA])
def test_erhua(text, expected):
    assert pinyin(text) == expected


def test_erhua_is_a_separate_syllable_like_the_training_data():
    # ttskit trained on "wanr2" rewritten as "wan2 er5": h uo 3 - ee er 5 -
    p = phonemize("玩儿")
    assert p.phonemes == ["uu", "uan", "2", "-", "ee", "er", "5", "-", "~", "_"]


def test_sandhi_does_not_cross_punctuation():
    assert pinyin("我，想") == "wo3 xiang3"
    assert pinyin("你。好") == "ni3 hao3"


def test_numbers_read_then_sandhi():
    assert pinyin("第1名") == "di4 yi1 ming2"
    assert pinyin("1天") == "yi4 tian1"
    assert pinyin("1个") == "yi2 ge4"
    assert pinyin("2个") == "liang3 ge4"
    assert pinyin("1998年") == "yi1 jiu2 jiu3 ba1 nian2"


def test_traditional_is_read_as_simplified():
    assert pinyin("我們") == "wo3 men5"
    assert pinyin("銀行") == "yin2 hang2"


def test_readings_ignore_global_pypinyin_customization():
    # phkit (and any user of pypinyin.load_phrases_dict) rewrites pypinyin.constants in place;
    # our frontend reads pypinyin's own data and must not change with it.
    from pypinyin import constants

    from streamtts.text import g2p

    saved = constants.PHRASES_DICT["银行"]
    constants.PHRASES_DICT["银行"] = [["yín"], ["xíng"]]
    g2p.clear_caches()
    try:
        assert pinyin("银行") == "yin2 hang2"
    finally:
        constants.PHRASES_DICT["银行"] = saved
