"""Lazily loaded dictionaries shared by normalization and G2P (pypinyin's readings, jieba).

Loading costs about a second (jieba's prefix dictionary, pypinyin's phrase table), so nothing
is loaded at import time; the first caller pays, once, under a lock. ``load()`` may be called
ahead of time (e.g. at server start) to take that cost off the first request.

Call::

    lex = load()
    lex.has_reading("好")          # -> True
    lex.char_reading("好")         # -> "hao3"
    lex.phrase_reading("银行")     # -> ["yin2", "hang2"] or None
    lex.cut("我们去银行")           # -> ["我们", "去", "银行"]
    lex.is_word("展览")            # -> True
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from functools import lru_cache

_lock = threading.Lock()
_lexicon: "Lexicon | None" = None


@lru_cache(maxsize=8192)
def tone3(marked: str) -> str:
    """``"hǎo"`` -> ``"hao3"``; neutral tone is 5, ü is written v (as the model's table is)."""
    from pypinyin.contrib.tone_convert import to_tone3

    out = to_tone3(marked, neutral_tone_with_five=True)
    return out if out[-1:].isdigit() else out + "5"


@dataclass(frozen=True)
class Lexicon:
    pinyin_dict: dict  # codepoint -> "hǎo,hào"
    phrases_dict: dict  # word -> [["yín"], ["háng"]]
    tokenizer: object  # a private jieba.Tokenizer, so our tuning never leaks into other users
    max_phrase: int

    def has_reading(self, ch: str) -> bool:
        return ord(ch) in self.pinyin_dict

    def char_reading(self, ch: str) -> str | None:
        """The character's most common reading (pypinyin's first), in tone3 form."""
        marked = self.pinyin_dict.get(ord(ch))
        return tone3(marked.split(",", 1)[0]) if marked else None

    def phrase_reading(self, word: str) -> list[str] | None:
        pys = self.phrases_dict.get(word)
        if pys is None or len(pys) != len(word):
            return None
        return [tone3(p[0]) for p in pys]

    def cut(self, text: str) -> list[str]:
        # HMM off: 2x faster, and unknown words only matter here for 3-3 sandhi grouping.
        return self.tokenizer.lcut(text, HMM=False)

    def is_word(self, text: str) -> bool:
        return bool(self.tokenizer.FREQ.get(text))


def load() -> Lexicon:
    """Load (once, thread-safe) and return the shared lexicon."""
    global _lexicon
    if _lexicon is not None:
        return _lexicon
    with _lock:
        if _lexicon is None:
            import jieba

            # pypinyin's data modules, not pypinyin.constants: those are copies that any code
            # may customize (pypinyin.load_phrases_dict; phkit replaces them wholesale when
            # it initializes), and our readings must not change with whoever else is loaded.
            from pypinyin.phrases_dict import phrases_dict
            from pypinyin.pinyin_dict import pinyin_dict

            # jieba logs its dictionary build at DEBUG on the root handler; keep it quiet.
            logging.getLogger("jieba").setLevel(logging.WARNING)
            from .overrides import WORD_READINGS

            tok = jieba.Tokenizer()
            tok.initialize()
            from .userlex import user_readings

            for word in WORD_READINGS:  # words with a fixed reading must be cut as units
                tok.add_word(word)
            for word in user_readings():  # and so must the user lexicon's (userlex.py)
                tok.add_word(word)
            _lexicon = Lexicon(
                pinyin_dict=pinyin_dict,
                phrases_dict=phrases_dict,
                tokenizer=tok,
                max_phrase=max(len(w) for w in phrases_dict),
            )
    return _lexicon
