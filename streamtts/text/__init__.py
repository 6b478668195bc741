"""Chinese text frontend: raw text -> the acoustic model's input ids.

Call::

    from streamtts.text import phonemize
    p = phonemize("你好。")
    p.normalized   # "你好."
    p.pinyin       # ["ni2", "hao3"]
    p.phonemes     # ["n", "i", "2", "-", "h", "ao", "3", "-", ".", "-", "~", "_"]
    p.ids          # same length as phonemes
    p.char_index   # [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, -1, -1]

Raises ``streamtts.errors.EmptyTextError`` for empty/whitespace text and
``NoSpeakableTextError`` when nothing speakable remains (emoji, punctuation only ...).
Thread-safe; the first call loads the dictionaries (about a second), ``warm_up()`` does it
ahead of time. Later calls take well under a millisecond per sentence.

Layout of ``phonemes``: every hanzi is ``initial final tone -``; every letter is its symbol
then ``-``; a space between Latin words is ``# -``; punctuation is its mark then ``-``; the
utterance ends ``~ _``. ``char_index[k]`` is the index in ``normalized`` of the character
symbol ``k`` was made from (-1 for the final ``~ _``), for turning attention alignments into
per-character times.
"""

from __future__ import annotations

from dataclasses import dataclass

from .g2p import pinyin_run
from .g2p import warm_up as _warm_g2p
from .normalize import SPOKEN_PUNCT, normalize
from .symbols import CHAIN, EOS, PAD, SYMBOL_TO_ID, SYMBOLS, letter_symbol, syllable_phonemes

__all__ = ["Phonemized", "phonemize", "normalize", "warm_up", "SYMBOLS", "SYMBOL_TO_ID"]


@dataclass(frozen=True)
class Phonemized:
    text: str  # original input
    normalized: str  # after normalization (what is spoken)
    pinyin: list[str]  # syllables as spoken, after sandhi; no punctuation, no letters
    phonemes: list[str]  # symbol strings, ending with "~", "_"
    ids: list[int]  # same length as phonemes
    char_index: list[int]  # same length as ids: index into `normalized`, -1 for the final ~ _


def _is_hanzi(ch: str) -> bool:
    # normalize() leaves only hanzi, ASCII letters, spaces and the model's punctuation.
    return ch > "\u2e7f"


def phonemize(text: str) -> Phonemized:
    """Normalize ``text`` and turn it into model symbols (see the module docstring)."""
    norm = normalize(text)
    phonemes: list[str] = []
    index: list[int] = []
    pinyin: list[str] = []

    def emit(symbols, at: int) -> None:
        phonemes.extend(symbols)
        phonemes.append(CHAIN)
        index.extend([at] * (len(symbols) + 1))

    i, n = 0, len(norm)
    while i < n:
        ch = norm[i]
        j = i + 1
        if _is_hanzi(ch):
            while j < n and _is_hanzi(norm[j]):
                j += 1
            for k, syllable in enumerate(pinyin_run(norm[i:j])):
                parts = syllable_phonemes(syllable)
                if parts is None:  # not reachable with pypinyin's tables; never crash on it
                    continue
                pinyin.append(syllable)
                emit(parts, i + k)
        elif ch.isascii() and ch.isalpha():
            while j < n and norm[j].isascii() and norm[j].isalpha():
                j += 1
            spelled = norm[i:j].isupper()  # "GPU" is spelled by letter names; "hello" is not
            for k in range(i, j):
                emit([letter_symbol(norm[k], spelled)], k)
        elif ch == " ":
            emit(["#"], i)
        elif ch in SPOKEN_PUNCT:
            emit([ch], i)
        i = j
    phonemes += [EOS, PAD]
    index += [-1, -1]
    return Phonemized(
        text=text,
        normalized=norm,
        pinyin=pinyin,
        phonemes=phonemes,
        ids=[SYMBOL_TO_ID[p] for p in phonemes],
        char_index=index,
    )


def warm_up() -> None:
    """Load jieba, pypinyin and OpenCC now, so the first real request is fast."""
    _warm_g2p()
    phonemize("你好，2024年。")
