"""Toneless-pinyin syllable error rate: how well an ASR transcript matches what was meant.

Comparing toneless syllables rather than characters forgives homophone choices (他/她/它,
的/得), simplified vs traditional output and Arabic vs Chinese numerals, which say nothing about
how intelligible the audio was.

How to call::

    toneless_pinyin("今天3點，OK！")                 # ['jin', 'tian', 'san', 'dian', 'ok']
    syllable_error_rate(reference, hypothesis)       # edits / reference syllables
    corpus_error_rate([(ref, hyp), ...])             # total edits / total reference syllables
"""

from __future__ import annotations

import functools
import re
import unicodedata
import warnings
from typing import Iterable, Sequence

import cn2an
import opencc
from pypinyin import Style, lazy_pinyin

_HANZI = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
# Hanzi without a reading, Latin words (accents kept), and any other letter one by one (Whisper
# sometimes drifts into kana), so each still counts; punctuation and symbols match nothing.
_TOKEN = re.compile(_HANZI.pattern + r"|[a-z0-9\u00c0-\u024f]+|[^\W_]")
# "3-5" is a range and "1,000" one number, not "3 minus 5" and "1 ... 0 0" as cn2an would read them.
_RANGE = re.compile(r"(?<=\d)[-\u2013\u2014~](?=\d)")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_DIGITS = str.maketrans("0123456789", "零一二三四五六七八九")


@functools.lru_cache(maxsize=1)
def _t2s():
    # pypinyin reads traditional characters, but its phrase dictionary (which picks the reading
    # of polyphones) is simplified: alone it reads 銀行 as "yin xing" and 音樂 as "yin le".
    return opencc.OpenCC("t2s").convert


def _numbers_to_hanzi(text: str) -> str:
    text = _THOUSANDS.sub("", _RANGE.sub(" ", text))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # it warns about numbers over 16 digits
            text = cn2an.transform(text, "an2cn")
    except Exception:  # cn2an rejects some odd digit strings; fall back to digit by digit
        pass
    return text.translate(_DIGITS)


def _non_pinyin(chunk: str) -> list[str]:
    """Tokens for text pypinyin has no reading for (see _TOKEN)."""
    return _TOKEN.findall(chunk.lower())


def toneless_pinyin(text: str) -> list[str]:
    """Chinese text -> toneless pinyin syllables; Latin words as lowercase tokens; no punctuation."""
    text = unicodedata.normalize("NFKC", text)  # full-width digits, letters and punctuation
    text = _t2s()(_numbers_to_hanzi(text))
    return [s for s in lazy_pinyin(text, style=Style.NORMAL, errors=_non_pinyin) if s]


def edit_distance(a: Sequence[str], b: Sequence[str]) -> int:
    """Levenshtein distance (unit cost substitution, insertion, deletion)."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def _errors(reference: str, hypothesis: str) -> tuple[int, int]:
    ref, hyp = toneless_pinyin(reference), toneless_pinyin(hypothesis)
    return edit_distance(ref, hyp), len(ref)


def syllable_error_rate(reference: str, hypothesis: str) -> float:
    """Edit distance between the toneless syllables / number of reference syllables.

    Can exceed 1.0 (insertions). Raises ValueError if the reference has no syllables.
    """
    edits, n = _errors(reference, hypothesis)
    if n == 0:
        raise ValueError(f"reference has no syllables: {reference!r}")
    return edits / n


def corpus_error_rate(pairs: Iterable[tuple[str, str]]) -> float:
    """Total edits / total reference syllables over (reference, hypothesis) pairs."""
    edits = n = 0
    for reference, hypothesis in pairs:
        e, k = _errors(reference, hypothesis)
        edits, n = edits + e, n + k
    if n == 0:
        raise ValueError("references have no syllables")
    return edits / n
