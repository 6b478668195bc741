"""The acoustic model's 145-symbol inventory and the pinyin -> phoneme mapping.

The inventory and its order are a fact of the trained model (ttskit 0.3.8 / phkit 0.2.11,
"hanzi" cleaner): the index of a symbol in ``SYMBOLS`` is its input id.

Call::

    syllable_phonemes("zhong1")   # -> ("zh", "ong", "1")
    syllable_phonemes("yu2")      # -> ("vv", "v", "2")
    syllable_phonemes("xx9")      # -> None (not a Mandarin syllable)
    letter_symbol("G", spelled=True)   # -> "Gg"   (letter name, used for ALL-CAPS runs)
    letter_symbol("g", spelled=False)  # -> "G"
    SYMBOL_TO_ID["~"]             # -> 1
"""

from __future__ import annotations

import re
from functools import lru_cache

PAD = "_"
EOS = "~"
CHAIN = "-"  # closes every reading unit (syllable, letter, punctuation mark)

INITIALS = (
    "aa b c ch d ee f g h ii j k l m n oo p q r s sh t uu vv x z zh"
).split()
FINALS = (
    "a ai an ang ao e ei en eng er i ia ian iang iao ie in ing iong iu ix iy iz o ong ou "
    "u ua uai uan uang ueng ui un uo v van ve vn ng uong"
).split()
TONES = "1 2 3 4 5".split()
LETTER_NAMES = [c + c.lower() for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"]  # "Aa" ... "Zz"
LETTERS = list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
PUNCTUATION = '! ? . , ; : " # ( )'.split()
OTHER = "w y 0 6 7 8 9".split()

SYMBOLS: tuple[str, ...] = tuple(
    [PAD, EOS, CHAIN] + INITIALS + FINALS + TONES + LETTER_NAMES + LETTERS + PUNCTUATION + OTHER
)
SYMBOL_TO_ID: dict[str, int] = {s: i for i, s in enumerate(SYMBOLS)}
assert len(SYMBOLS) == 145 and len(SYMBOL_TO_ID) == 145

_INITIAL_SET = frozenset(INITIALS)
_FINAL_SET = frozenset(FINALS)

# Spelled initials, longest first so "zh" wins over "z".
_SPELLED_INITIALS = ("zh", "ch", "sh", "b", "p", "m", "f", "d", "t", "n", "l", "g", "k", "h",
                     "j", "q", "x", "r", "z", "c", "s")

# The model's three "empty" finals after sibilants (a fact of its training table: ri uses iz,
# zi/ci/si use iy, zhi/chi/shi use ix).
_APICAL = {"zh": "ix", "ch": "ix", "sh": "ix", "r": "iz", "z": "iy", "c": "iy", "s": "iy"}

# Zero-initial spellings whose final is not simply the spelling after y/w.
_Y_FINALS = {"i": "i", "in": "in", "ing": "ing", "u": "v", "ue": "ve", "uan": "van", "un": "vn",
             "ou": "iu", "o": "o"}
_W_FINALS = {"u": "u", "ei": "ui", "en": "un"}

# Syllabic nasals and interjections. "n" -> "n ng" is the model table's own entry; m/hm/hng
# follow it by analogy. "ê" is read as its nearest trained final.
_SPECIAL = {"n": ("n", "ng"), "ng": ("ee", "ng"), "m": ("m", "ng"), "hm": ("h", "ng"),
            "hng": ("h", "ng"), "ê": ("ee", "ei"), "er": ("ee", "er")}

_SYLLABLE_RE = re.compile(r"^([a-zêü]{1,6})([1-5])$")


def _split(base: str) -> tuple[str, str] | None:
    """Toneless pinyin -> (initial, final) in the model's terms, or None."""
    base = base.replace("ü", "v")
    if base in _SPECIAL:
        return _SPECIAL[base]
    if base.startswith("y"):
        rest = base[1:]
        if rest.startswith("u") or rest in ("ue", "uan", "un"):
            return "vv", _Y_FINALS.get(rest, "v" + rest[1:])
        if rest in _Y_FINALS:
            return "ii", _Y_FINALS[rest]
        return "ii", rest if rest.startswith("i") else "i" + rest
    if base.startswith("w"):
        rest = base[1:]
        if rest in _W_FINALS:
            return "uu", _W_FINALS[rest]
        return "uu", "u" + rest
    if base[0] in "aoe":
        return {"a": "aa", "o": "oo", "e": "ee"}[base[0]], base
    for ini in _SPELLED_INITIALS:
        if base.startswith(ini) and len(base) > len(ini):
            fin = base[len(ini):]
            if fin == "i" and ini in _APICAL:
                return ini, _APICAL[ini]
            if ini in "jqx" and fin.startswith("u"):  # ju = jü
                fin = "v" + fin[1:]
            if ini in "nl" and fin == "ue":  # lue/nue are the same as lve/nve
                fin = "ve"
            return ini, fin
    return None


@lru_cache(maxsize=4096)
def syllable_phonemes(syllable: str) -> tuple[str, str, str] | None:
    """``"hao3"`` -> ``("h", "ao", "3")``; None when it cannot be spelled with the model's
    initials and finals (not a pinyin syllable)."""
    m = _SYLLABLE_RE.match(syllable)
    if not m:
        return None
    parts = _split(m.group(1))
    if parts is None:
        return None
    ini, fin = parts
    if ini not in _INITIAL_SET or fin not in _FINAL_SET:
        return None
    return ini, fin, m.group(2)


def letter_symbol(ch: str, spelled: bool) -> str:
    """A Latin letter's symbol. ``spelled`` (an all-caps run like "GPU") gives the letter-name
    symbol "Gg"; otherwise (a word like "hello") the plain uppercase symbol "H"."""
    up = ch.upper()
    return up + up.lower() if spelled else up


def ids_of(phonemes: list[str]) -> list[int]:
    """Symbol strings -> ids. Raises KeyError for a string outside the inventory."""
    return [SYMBOL_TO_ID[p] for p in phonemes]
