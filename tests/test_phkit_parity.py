"""Parity with phkit 0.2.11, the reference implementation of the model's input scheme.

What must be identical (the model's facts): the symbol inventory, and the symbols of every
pinyin syllable. What should be identical: whole plain-hanzi sentences, where both sides read
the text the same way. Where our reading deliberately differs (tone sandhi, neutral tones, 得/地,
erhua), ``KNOWN_DIFFERENCES`` pins down each difference on both sides, so a change on either
side is noticed.

phkit runs in a child process: importing it costs seconds (its English path pulls in
``inflect``), which the child avoids with a stub, and its hanzi path rewrites pypinyin's
global dictionaries (our frontend reads pypinyin's pristine data modules, so it would not
care, but other tests might).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile

import pytest

from streamtts.text import SYMBOL_TO_ID, SYMBOLS, phonemize
from streamtts.text.dictionary import load_dictionary, tone3
from streamtts.text.symbols import syllable_phonemes

# phkit is a test-only dependency. It is only ever imported in the child process (see the
# module docstring), so its availability is checked without importing it.
HAVE_PHKIT = importlib.util.find_spec("phkit") is not None
pytestmark = pytest.mark.skipif(not HAVE_PHKIT, reason="phkit (test-only reference) not installed")

SAME_SENTENCES = [
    "你好。", "今天天气很好。", "我们明天去北京。", "这本书非常有意思。", "中国有很多美丽的城市。",
    "妈妈在厨房做饭。", "请问火车站怎么走？", "我喜欢听音乐和看电影。", "这家餐厅的菜很好吃。",
    "孩子们在公园里玩。", "学习中文需要耐心。", "她的声音非常好听。", "我们应该保护环境。",
    "周末我们去爬山吧。", "这个城市的交通很方便。", "他们正在开会讨论问题。", "我已经吃过晚饭了。",
    "老师让我们回答问题。", "你叫什么名字？", "欢迎来到上海。", "这条路通向海边。",
    "科学技术是第一生产力。", "人工智能正在改变世界。", "春天的风很温柔。", "他每天坚持跑步。",
    "图书馆里很安静。", "我们的国家越来越强大。", "这座山很高。", "河水清澈见底。",
    "他是我最好的朋友。", "飞机马上就要起飞了。", "请把窗户关上。", "秋天的树叶变黄了。",
    "这道题太难了。", "我们下午三点见面。", "大家请安静，会议马上开始。", "小猫在沙发上睡觉。",
    "我们要珍惜时间。", "这里的空气很新鲜。", "他在大学里学习物理。", "晚上的月亮又大又圆。",
    "我们坐地铁去机场。", "这个问题值得研究。", "医院在学校的对面。", "我们一起唱歌跳舞。",
    "工作之余他喜欢画画。", "北京是中国的首都。", "经济发展需要创新。", "请大家遵守交通规则。",
    "他把钥匙忘在家里了。", "这件事情很复杂。", "我对这个结果很满意。", "运动对身体有好处。",
    "冬天快要到了。", "他们在海边散步。", "这个苹果又大又甜。", "祝你生日快乐！",
    "你好吗？我很好！", "我们；他们：", "他说：“好！”（真的）", "AI和GPU很强", "hello世界",
]

# text -> {character index in the normalized text: (ours, phkit)}, one syllable each.
KNOWN_DIFFERENCES = {
    # 一 sandhi: phkit only knows the sandhi baked into its phrase dictionary.
    "我想喝一杯咖啡。": {3: ("ii i 4", "ii i 1")},
    "他一边走一边唱歌。": {1: ("ii i 4", "ii i 1"), 4: ("ii i 4", "ii i 1")},
    # 不 in an A-not-A question is unstressed.
    "你好不好？": {2: ("b u 5", "b u 4")},
    # 得 after a verb is the complement marker de5; phkit reads the default de2.
    "他的中文说得很流利。": {5: ("d e 5", "d e 2")},
    # 地 after an adverbial is de5; phkit reads the default di4.
    "她高兴地跳了起来。": {3: ("d e 5", "d i 4")},
    # Neutral tones pypinyin's dictionary lacks (phkit's own dictionary has these two).
    "雨停了，太阳出来了。": {7: ("l ai 5", "l ai 2")},
    "她每天早上都喝牛奶。": {4: ("sh ang 5", "sh ang 4")},
    # ... and ones phkit lacks too: 衣服 yi1 fu5, 便宜 pian2 yi5.
    "这件衣服很便宜。": {3: ("f u 5", "f u 2"), 6: ("ii i 5", "ii i 2")},
    # 3-3 sandhi: phkit alternates across every word; we work per prosodic word, so 展览|馆
    # is 2 2 3, and two disyllabic words (风景|美极了) keep their own tones.
    "展览馆": {0: ("zh an 2", "zh an 3")},
    "这里的风景美极了。": {4: ("j ing 3", "j ing 2")},
    # Erhua: the suffix 儿 is er5, as in the model's training data (ttskit's fix_erhua);
    # phkit's dictionary has er2 for some words.
    "哪儿有花儿": {1: ("ee er 5", "ee er 2")},
}


def _units(ids: list[int]) -> list[str]:
    """ids -> one string per reading unit (the symbols between chains)."""
    out, cur = [], []
    for i in ids:
        s = SYMBOLS[i]
        if s == "-":
            out.append(" ".join(cur))
            cur = []
        else:
            cur.append(s)
    return out


# The child stubs out `inflect` (4 s to import, used only by phkit's English path) and answers
# everything the tests need from phkit in one JSON file.
_CHILD = r"""
import contextlib, io, json, sys, types
sys.modules["inflect"] = types.SimpleNamespace(engine=lambda: None)
texts, out_path = json.loads(sys.argv[1]), sys.argv[2]
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    from phkit.chinese import text_to_sequence
    from phkit.chinese.phoneme import pinyin2ph_dict
    from phkit.chinese.symbol import symbol_chinese
    syllables = {s: text_to_sequence(s, cleaner_names="pinyin") for s in pinyin2ph_dict}
    hanzi = [text_to_sequence(t, cleaner_names="hanzi") for t in texts]
with open(out_path, "w") as f:
    json.dump({"symbols": symbol_chinese, "syllables": syllables, "hanzi": hanzi}, f)
"""


def _start_child():
    """Start phkit at import time: it loads its dictionaries (a few seconds) while the other
    test modules run, instead of holding up this one."""
    texts = SAME_SENTENCES + list(KNOWN_DIFFERENCES)
    fd, path = tempfile.mkstemp(suffix=".json", prefix="phkit_parity_")
    os.close(fd)
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(texts), path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return texts, path, proc


_child = _start_child() if HAVE_PHKIT else None


@pytest.fixture(scope="module")
def reference() -> dict:
    texts, path, proc = _child
    try:
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err.decode(errors="replace")
        with open(path) as f:
            data = json.load(f)
    finally:
        os.unlink(path)
    data["hanzi"] = dict(zip(texts, data["hanzi"]))
    return data


def _syllable_ids(syllable: str) -> list[int]:
    return [SYMBOL_TO_ID[s] for s in (*syllable_phonemes(syllable), "-", "~", "_")]


def test_symbol_inventory_is_phkits(reference):
    assert list(SYMBOLS) == reference["symbols"]


def test_every_phkit_syllable(reference):
    """All 420 toneless syllables of phkit's table x 5 tones: identical ids."""
    table = reference["syllables"]
    assert len(table) == 2100
    mismatched = {s: ids for s, ids in table.items() if _syllable_ids(s) != ids}
    assert mismatched == {}


def test_every_syllable_pypinyin_can_produce(reference):
    """Every reading of every character and phrase pypinyin knows (about 1560 syllables, far
    beyond the common 3000 hanzi) maps onto the model's symbols; phkit agrees on all it
    knows. The few it lacks are rare interjections and dialect syllables."""
    lex = load_dictionary()
    syllables = {tone3(p) for v in lex.pinyin_dict.values() for p in v.split(",")}
    syllables |= {tone3(p) for v in lex.phrases_dict.values() for ps in v for p in ps}
    assert len(syllables) > 1500
    unmapped = sorted(s for s in syllables if syllable_phonemes(s) is None)
    assert unmapped == []
    table = reference["syllables"]
    assert all(_syllable_ids(s) == table[s] for s in syllables if s in table)
    phkit_lacks = sorted(s for s in syllables if s not in table)
    assert phkit_lacks == ["biang2", "biang4", "bong4", "hm5", "hng5", "m1", "m2", "m4",
                           "ê1", "ê2", "ê3", "ê4"]
    # ours: by the initial/final rules, and m/hm/hng like phkit's own "n" -> "n ng"
    assert syllable_phonemes("m2") == ("m", "ng", "2")
    assert syllable_phonemes("biang2") == ("b", "iang", "2")


@pytest.mark.parametrize("text", SAME_SENTENCES)
def test_sentence_ids_match_phkit(text, reference):
    assert phonemize(text).ids == reference["hanzi"][text]


@pytest.mark.parametrize("text", list(KNOWN_DIFFERENCES))
def test_known_differences(text, reference):
    ours = _units(phonemize(text).ids)
    ref = _units(reference["hanzi"][text])
    assert len(ours) == len(ref)
    diffs = {i: (a, b) for i, (a, b) in enumerate(zip(ours, ref)) if a != b}
    assert diffs == KNOWN_DIFFERENCES[text]
