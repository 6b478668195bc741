"""Mandarin tone sandhi on one prosodic phrase (a run of hanzi between punctuation).

Call ``apply(words, readings, dictionary, lexicon)`` with the phrase's segmented words and their tone3
syllables (one list per word); it returns new lists with the tones as spoken:

* 一: yi1 when a digit or ordinal (第一, 十一, 一二三, 一月, 一号, 一楼, 一点五, 一加一), at the
  end of a word (统一) or of the phrase; yi5 between a reduplicated verb (看一看); otherwise
  (一个, 一天, 一百) yi2 before a 4th tone and yi4 before 1st-3rd.
* 不: bu2 before a 4th tone (不是), bu5 in A不A questions (好不好), otherwise bu4.
* 3-3: inside a word every third tone before another becomes 2nd, with the word's internal
  structure deciding runs of three (展览|馆 -> 2 2 3, 小|老鼠 -> 3 2 3); across a word boundary
  only when one side is a single syllable (我|想 -> wo2 xiang3), scanned right to left so the
  result of the right side is what the left side sees (我|很好 -> wo3 hen2 hao3).

A neutral-tone syllable counts with its character's citation tone (一个 ge5 -> yi2).
"""

from __future__ import annotations

from .dictionary import Dictionary
from .lexicon import Lexicon

_DIGIT_CHARS = frozenset("零〇一二三四五六七八九")
_NUMBER_CHARS = _DIGIT_CHARS | frozenset("十百千万亿两")
_ARITHMETIC = frozenset("加减乘除等于比")
_UNITS = frozenset("十百千万亿")
_ORDINAL_NEXT = frozenset(["号", "楼", "年级", "等奖"])


def _with_tone(syllable: str, tone: str) -> str:
    return syllable[:-1] + tone


def _citation_tone(chars: str, flat: list[str], i: int, dictionary: Dictionary) -> str:
    tone = flat[i][-1]
    if tone == "5":
        base = dictionary.char_reading(chars[i])
        tone = base[-1] if base else "5"
    return tone


def _yi(chars: str, flat: list[str], i: int, word: str, at: int, dictionary: Dictionary) -> str:
    """Reading of the 一 at ``chars[i]``, which is ``word[at]``."""
    if flat[i] == "yi5":  # the dictionary already knows it is unstressed
        return "yi5"
    prev = chars[i - 1] if i else ""
    nxt = chars[i + 1] if i + 1 < len(chars) else ""
    after = chars[i + 2] if i + 2 < len(chars) else ""
    # After a numeral, 一 is a digit (十一, 一百一十, 万一) unless it starts a word of its own
    # (千万|一定).
    in_number = prev in _NUMBER_CHARS and (at > 0 or all(c in _NUMBER_CHARS for c in word))
    if not nxt or in_number:
        return "yi1"
    if nxt in _UNITS:  # 一百, 一万, also 第一百: a counted amount
        return "yi2" if _citation_tone(chars, flat, i + 1, dictionary) == "4" else "yi4"
    if prev == "第" or nxt in _DIGIT_CHARS or nxt in _ORDINAL_NEXT or nxt + after in _ORDINAL_NEXT:
        return "yi1"  # 第一, 一二三, 一号, 一楼, 一年级
    if (nxt == "点" and after in _DIGIT_CHARS) or nxt == "月" or (nxt == "日" and prev == "月"):
        return "yi1"  # 一点五, 一月, 三月一日
    if nxt in _ARITHMETIC or prev in _ARITHMETIC:
        return "yi1"  # 一加一, 一比一
    if prev and prev == nxt:
        return "yi5"
    if at == len(word) - 1 and len(word) > 1:
        return "yi1"  # 统一, 唯一, 之一
    return "yi2" if _citation_tone(chars, flat, i + 1, dictionary) == "4" else "yi4"


def _bu(chars: str, flat: list[str], i: int, dictionary: Dictionary) -> str:
    if flat[i] == "bu5":
        return "bu5"
    nxt = chars[i + 1] if i + 1 < len(chars) else ""
    if not nxt:
        return "bu4"
    if i and chars[i - 1] == nxt:
        return "bu5"
    return "bu2" if _citation_tone(chars, flat, i + 1, dictionary) == "4" else "bu4"


def _run_tones(length: int, one_plus_two: bool) -> list[str]:
    """Spoken tones for ``length`` consecutive third tones inside one word."""
    if length == 3 and one_plus_two:
        return ["3", "2", "3"]
    tones: list[str] = []
    left = length
    while left:
        foot = 3 if left == 3 else min(2, left)  # binary feet; an odd tail makes a foot of 3
        tones += ["2"] * (foot - 1) + ["3"]
        left -= foot
    return tones


def _third_in_word(word: str, syl: list[str], lexicon: Lexicon) -> None:
    i = 0
    while i < len(syl):
        if syl[i][-1] != "3":
            i += 1
            continue
        j = i
        while j < len(syl) and syl[j][-1] == "3":
            j += 1
        if j - i >= 2:
            whole3 = j - i == 3 and len(word) == 3
            one_two = whole3 and not lexicon.is_word(word[:2]) and lexicon.is_word(word[1:])
            for k, tone in enumerate(_run_tones(j - i, one_two)):
                syl[i + k] = _with_tone(syl[i + k], tone)
        i = j


def apply(words: list[str], readings: list[list[str]], dictionary: Dictionary,
          lexicon: Lexicon) -> list[list[str]]:
    """Return the phrase's readings with tone sandhi applied (inputs are not modified)."""
    chars = "".join(words)
    flat = [s for r in readings for s in r]
    spans = []
    pos = 0
    for w in words:
        spans.append((pos, pos + len(w)))
        pos += len(w)
    for start, end in spans:
        for i in range(start, end):
            if chars[i] == "一" and flat[i].startswith("yi"):
                flat[i] = _yi(chars, flat, i, chars[start:end], i - start, dictionary)
            elif chars[i] == "不" and flat[i].startswith("bu"):
                flat[i] = _bu(chars, flat, i, dictionary)
    out = [flat[s:e] for s, e in spans]
    for w, syl in zip(words, out):
        _third_in_word(w, syl, lexicon)
    for k in range(len(out) - 2, -1, -1):
        left, right = out[k], out[k + 1]
        if left[-1][-1] == "3" and right[0][-1] == "3" and (len(left) == 1 or len(right) == 1):
            left[-1] = _with_tone(left[-1], "2")
    return out
