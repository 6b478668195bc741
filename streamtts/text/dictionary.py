"""pypinyin's reading tables, loaded lazily, shared by normalization and the G2P.

Loading is slow (pypinyin's phrase table), so nothing is loaded at import time; the
first caller pays, once, under a lock. ``load_dictionary()`` may be called ahead of time (e.g. at
server start) to take that cost off the first request. The tables are the same for every user
lexicon: word segmentation, which does depend on it, lives in ``lexicon.py``.

Call::

    d = load_dictionary()
    d.has_reading("好")          # -> True
    d.char_reading("好")         # -> "hao3"
    d.phrase_reading("银行")     # -> ["yin2", "hang2"] or None
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache

_lock = threading.Lock()
_dictionary: "Dictionary | None" = None


@lru_cache(maxsize=8192)
def tone3(marked: str) -> str:
    """``"hǎo"`` -> ``"hao3"``; neutral tone is 5, ü is written v (as the model's table is)."""
    # Imported here: importing pypinyin loads all its tables, a cost that the importers of
    # streamtts.text that never read pinyin (the chunker, the SSML parser) should not pay.
    from pypinyin.contrib.tone_convert import to_tone3

    out = to_tone3(marked, neutral_tone_with_five=True)
    return out if out[-1:].isdigit() else out + "5"


@dataclass(frozen=True)
class Dictionary:
    pinyin_dict: dict  # codepoint -> "hǎo,hào"
    phrases_dict: dict  # word -> [["yín"], ["háng"]]
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


def load_dictionary() -> Dictionary:
    """Load (once, thread-safe) and return the reading tables."""
    global _dictionary
    if _dictionary is not None:
        return _dictionary
    with _lock:
        if _dictionary is None:
            # Imported here, not at the top: these data modules are the slow part of loading
            # (see the module docstring). They are pypinyin's own tables, not
            # pypinyin.constants: those are copies that any code may customize
            # (pypinyin.load_phrases_dict; phkit replaces them wholesale when it initializes),
            # and our readings must not change with whoever else is loaded.
            from pypinyin.phrases_dict import phrases_dict
            from pypinyin.pinyin_dict import pinyin_dict

            _dictionary = Dictionary(
                pinyin_dict=pinyin_dict,
                phrases_dict=phrases_dict,
                max_phrase=max(len(w) for w in phrases_dict),
            )
    return _dictionary
