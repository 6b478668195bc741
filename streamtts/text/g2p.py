"""Hanzi -> pinyin as spoken: phrase-level polyphones, context rules, erhua, tone sandhi.

Call ``pinyin_run(run, lexicon)`` with a run of hanzi that all have a reading (``normalize``
guarantees that) and no punctuation inside, and the user lexicon (``lexicon.py``; left out: none);
it returns one tone3 syllable per character::

    pinyin_run("你好")        # -> ("ni2", "hao3")
    pinyin_run("我们去银行")   # -> ("wo3", "men5", "qu4", "yin2", "hang2")
    pinyin_run("玩儿")        # -> ("wan2", "er5")
    pinyin_run("银行", Lexicon({"银行": "yin2 xing2"}))   # -> ("yin2", "xing2")

Steps, per word of the run as the lexicon's segmenter cuts it:

1. a fixed reading from the user lexicon, else from ``overrides.WORD_READINGS``,
   if the word has one; otherwise
2. pypinyin's phrase dictionary for the word, else forward maximum matching of its
   phrases inside the word, else each character's most common reading, corrected where that
   default is predictably wrong (子 in 电子, 为 in 视为, 着 in 着手, 得 in 跑得快), plus the
   neutral tones pypinyin lacks (``overrides.NEUTRAL_LAST``, 爸爸, 看看);
3. context rules for single-character words: 得 (de5 after a verb, dei3 after a subject),
   地 (de5 after an adverbial), 还/重 by the next word, 只 after a numeral (两只) is zhi1,
   and ``overrides.SINGLE_READINGS`` (a lone 长 is chang2, 教 jiao1);
4. erhua: a word-final 儿 that is the suffix (玩儿, 一点儿, not 女儿) is read er5, as a
   separate syllable after the one it modifies. That is the model's training convention
   (ttskit turned ``wanr2`` into ``wan2 er5``);
5. tone sandhi (``sandhi.apply``).

Results are cached per run and lexicon, so repeated text costs a dictionary lookup. A lexicon's
cache goes with it (a lexicon holds a whole segmenter: caches must not keep one alive).
"""

from __future__ import annotations

import threading
import weakref
from functools import lru_cache

from . import sandhi
from .dictionary import load_dictionary
from .lexicon import DEFAULT_LEXICON, Lexicon
from .overrides import (
    DEI_BEFORE,
    NEUTRAL_AA_NOUNS,
    NEUTRAL_AA_VERBS,
    NEUTRAL_LAST,
    NEXT_CHAR_READINGS,
    NOT_ERHUA,
    SINGLE_READINGS,
    WORD_READINGS,
    ZHI1_AFTER,
    ZI3_AFTER,
)

_NOT_ERHUA_LONG = tuple(w for w in NOT_ERHUA if len(w) > 1)
_RUNS_PER_LEXICON = 8192  # cached runs of one lexicon; the cache starts over when full
_run_caches: "weakref.WeakKeyDictionary[Lexicon, dict]" = weakref.WeakKeyDictionary()
_run_caches_lock = threading.Lock()


def _lookup(word: str) -> tuple[list[str], list[bool]]:
    """Dictionary readings for ``word`` and, per character, whether it was a guess (the
    character's default reading because no phrase covered it)."""
    lex = load_dictionary()
    whole = lex.phrase_reading(word)
    if whole is not None:
        return whole, [False] * len(word)
    out: list[str] = []
    guessed: list[bool] = []
    i = 0
    while i < len(word):
        for size in range(min(len(word) - i, lex.max_phrase), 1, -1):
            part = lex.phrase_reading(word[i:i + size])
            if part is not None:
                out += part
                guessed += [False] * size
                i += size
                break
        else:
            reading = lex.char_reading(word[i])
            if reading is None:
                raise ValueError(f"no reading for {word[i]!r}; normalize() should have dropped it")
            out.append(reading)
            guessed.append(True)
            i += 1
    return out, guessed


def _fix_guesses(word: str, out: list[str], guessed: list[bool]) -> None:
    """Correct default readings that are wrong in a predictable position (in place)."""
    n = len(word)
    for i, ch in enumerate(word):
        if not guessed[i] or n == 1:
            continue
        prev = word[i - 1] if i else ""
        if ch == "子" and (i == 0 or prev in ZI3_AFTER):
            out[i] = "zi3"  # 子宫, 电子书: a morpheme, not the noun suffix
        elif ch == "着" and i == 0:
            out[i] = "zhuo2"  # 着手, 着陆, 着重
        elif ch == "着" and prev == "不" and i == n - 1:
            out[i] = "zhao2"  # 用不着, 睡不着
        elif ch == "为" and i == n - 1 and prev not in "因只不就专正全此特皆":
            out[i] = "wei2"  # 列为, 视为, 称之为: "as"
        elif ch == "只" and prev in ZHI1_AFTER:
            out[i] = "zhi1"  # 两只, 这只
        elif ch == "得" and n == 3 and i == 1 and prev != "不":
            out[i] = "de5"  # 跑得快, 看得见: the complement marker


@lru_cache(maxsize=16384)
def _word_reading(word: str) -> tuple[str, ...]:
    """The built-in reading of a word (a user lexicon's, which wins over it, is looked up first)."""
    if word in WORD_READINGS:
        return tuple(WORD_READINGS[word].split())
    out, guessed = _lookup(word)
    _fix_guesses(word, out, guessed)
    if len(word) == 2 and word[0] == word[1]:
        if word[0] in NEUTRAL_AA_NOUNS:
            out[1] = out[1][:-1] + "5"
        elif word[0] in NEUTRAL_AA_VERBS:  # 想想 -> xiang2 xiang5
            out = [out[0][:-1] + ("2" if out[0][-1] == "3" else out[0][-1]), out[1][:-1] + "5"]
    elif word in NEUTRAL_LAST:
        out[-1] = out[-1][:-1] + "5"
    return tuple(out)


def _context(words: list[str], readings: list[list[str]], lexicon: Lexicon) -> None:
    """Single-character words whose reading depends on their neighbours (in place)."""
    for k, word in enumerate(words):
        if word in lexicon:
            continue  # the deployer's reading is final (sandhi still follows)
        prev = words[k - 1] if k else ""
        nxt = words[k + 1] if k + 1 < len(words) else ""
        if word == "得" and prev and nxt:
            if nxt[0] == "了":
                continue  # 他得了冠军: "obtained"
            readings[k] = ["dei3" if prev in DEI_BEFORE else "de5"]
        elif word == "地" and nxt and len(prev) >= 2 and prev[-1] not in "块片亩":
            readings[k] = ["de5"]  # 慢慢地走, 高兴地说 (but 这块地)
        elif word in NEXT_CHAR_READINGS and nxt and nxt[0] in NEXT_CHAR_READINGS[word][0]:
            readings[k] = [NEXT_CHAR_READINGS[word][1]]
        elif word in SINGLE_READINGS:
            readings[k] = [SINGLE_READINGS[word]]
        elif word == "只" and prev and prev[-1] in ZHI1_AFTER:
            readings[k] = ["zhi1"]
        if len(word) == 1 and word == prev and word in NEUTRAL_AA_VERBS:  # 说|说 cut apart
            first = readings[k - 1][0]
            readings[k - 1] = [first[:-1] + ("2" if first[-1] == "3" else first[-1])]
            readings[k] = [readings[k][0][:-1] + "5"]
        if word.endswith("儿") and readings[k][-1].startswith("er"):
            if len(word) > 1:
                if not word.endswith(_NOT_ERHUA_LONG):
                    readings[k][-1] = "er5"
            elif prev and prev[-1] + "儿" not in NOT_ERHUA:
                readings[k] = ["er5"]


def pinyin_run(run: str, lexicon: Lexicon = DEFAULT_LEXICON) -> tuple[str, ...]:
    """One syllable per character of ``run`` (hanzi only), as spoken with ``lexicon``."""
    cache = _run_caches.get(lexicon)
    if cache is None:
        with _run_caches_lock:
            cache = _run_caches.setdefault(lexicon, {})
    out = cache.get(run)
    if out is None:
        out = _pinyin_run(run, lexicon)
        if len(cache) >= _RUNS_PER_LEXICON:
            cache.clear()
        cache[run] = out
    return out


def _pinyin_run(run: str, lexicon: Lexicon) -> tuple[str, ...]:
    words = lexicon.cut(run)
    # the deployer's lexicon wins over every built-in rule
    readings = [list(lexicon.reading(w) or _word_reading(w)) for w in words]
    _context(words, readings, lexicon)
    spoken = sandhi.apply(words, readings, load_dictionary(), lexicon)
    out = tuple(s for r in spoken for s in r)
    assert len(out) == len(run), (run, out)
    return out


def clear_caches() -> None:
    """Forget cached readings (of every lexicon)."""
    _word_reading.cache_clear()
    with _run_caches_lock:
        for cache in _run_caches.values():
            cache.clear()


def warm_up(lexicon: Lexicon = DEFAULT_LEXICON) -> None:
    """Load the dictionaries and the lexicon's segmenter now instead of on the first request."""
    pinyin_run("你好", lexicon)
