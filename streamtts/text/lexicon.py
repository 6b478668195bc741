"""A lexicon: the words whose reading a deployer fixes, and the word segmenter that knows them.

File format (``streamtts serve --lexicon words.tsv``), UTF-8, one entry a line::

    # comments and blank lines are ignored
    行长	hang2 zhang3
    重庆	chong2 qing4

a word of hanzi (simplified, as the frontend sees it after normalization), a TAB, then one toned
pinyin syllable per character, space-separated (tones 1-5, 5 neutral; ``v`` or ``ü`` for ü).
Readings are dictionary readings: tone sandhi still applies after them (write 你好 ``ni3 hao3``).

Call::

    lex = Lexicon.load(Path("words.tsv"))    # LexiconError naming the file and line of a bad entry
    lex = Lexicon({"行长": ("hang2", "zhang3")})
    DEFAULT_LEXICON                          # no user words: what a caller that passes none gets
    lex.reading("行长")                       # ("hang2", "zhang3"); None for a word not in it
    lex.cut("我们去银行")                     # ["我们", "去", "银行"]: jieba, knowing the user words
    lex.is_word("展览")                       # True
    lex.find("行长说")                        # [(0, 2)]: where user words of 2+ hanzi occur

A lexicon is an immutable value, safe to share between threads. One engine core passes the same
lexicon to the frontend (``phonemize(text, lexicon)``) and to its requests' chunkers
(``SentenceChunker(lexicon=...)``), so both see the same words; lexicons of different cores in one
process do not affect each other.

Segmentation: a lexicon's ``jieba.Tokenizer`` knows its user words; it is built on first use or by
``warm_up()`` (slow, and large: it loads jieba's whole dictionary; build a lexicon once, never per
request). Lexicons with the same words share one tokenizer while any of them is alive (every
lexicon without user words shares the default one). Each tokenizer also knows the words of
``overrides.WORD_READINGS``, which must be cut as units for their fixed reading to apply. The user
words join the tokenizer's dictionary, so the G2P cuts them as words where the segmenter agrees,
and their reading wins over every built-in rule; the chunker never cuts inside one.
"""

from __future__ import annotations

import logging
import threading
import weakref
from pathlib import Path
from types import MappingProxyType
from typing import Iterable, Mapping, Optional, Union

from ..errors import LexiconError
from .markup import check_readings, syllables
from .overrides import WORD_READINGS

_tokenizers_lock = threading.Lock()
# user words -> the tokenizer that knows them, while a lexicon holds it
_tokenizers: "weakref.WeakValueDictionary[frozenset, object]" = weakref.WeakValueDictionary()


def _new_tokenizer(words: Iterable[str]):
    # Imported here: jieba is optional for users of streamtts.text that never segment (it is in
    # the server extra, not the base install), and nothing is loaded until a tokenizer is needed.
    import jieba

    # jieba logs its dictionary build at DEBUG on its own stderr handler; keep it quiet.
    logging.getLogger("jieba").setLevel(logging.WARNING)
    tok = jieba.Tokenizer()  # private: our words never leak into jieba's global tokenizer
    tok.initialize()
    for word in WORD_READINGS:  # words with a fixed reading must be cut as units
        tok.add_word(word)
    # and so must the user's; in a fixed order, since each word's frequency depends on the ones
    # added before it
    for word in sorted(words):
        tok.add_word(word)
    return tok


def _tokenizer_for(words: frozenset):
    with _tokenizers_lock:
        tok = _tokenizers.get(words)
        if tok is None:
            tok = _tokenizers[words] = _new_tokenizer(words)
        return tok


def parse_entries(text: str, source: str = "lexicon") -> dict[str, tuple[str, ...]]:
    """Entries of a lexicon file's text; raises LexiconError naming ``source`` and the line."""
    out: dict[str, tuple[str, ...]] = {}
    first_line: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip(" \r\n\ufeff")
        if not line or line.startswith("#"):
            continue
        word, tab, ph = line.partition("\t")
        word, ph = word.strip(), " ".join(ph.split())
        where = f"{source}, line {number}"
        if not tab or not word or not ph:
            raise LexiconError(f"{where}: expected word<TAB>toned pinyin (e.g. 行长\thang2 zhang3), got {raw!r}")
        why = check_readings(word, ph)
        if why is not None:
            raise LexiconError(f"{where}: {why}")
        if word in out and out[word] != syllables(ph):
            raise LexiconError(f"{where}: {word!r} already has a reading on line {first_line[word]}")
        out[word] = syllables(ph)
        first_line.setdefault(word, number)
    return out


class Lexicon:
    """User words and their readings (see the module docstring). Compared by identity (the
    frontend caches readings per lexicon object, and drops them with it)."""

    def __init__(self, readings: Optional[Mapping[str, Union[str, Iterable[str]]]] = None,
                 source: str = "lexicon"):
        """``readings``: word -> its syllables (a sequence, or one space-separated string);
        LexiconError naming ``source`` and the word when one is not a reading of its word."""
        entries: dict[str, tuple[str, ...]] = {}
        for word, reading in (readings or {}).items():
            ph = reading if isinstance(reading, str) else " ".join(reading)
            why = check_readings(word, ph)
            if why is not None:
                raise LexiconError(f"{source}: {word!r}: {why}")
            entries[word] = syllables(ph)
        self.source = source
        self._readings = MappingProxyType(entries)
        self._longest = max(map(len, entries), default=0)
        self._lock = threading.Lock()
        self._tokenizer = None

    @classmethod
    def parse(cls, text: str, source: str = "lexicon") -> "Lexicon":
        """The lexicon of a file's text; LexiconError naming ``source`` and the line."""
        return cls(parse_entries(text, source), source)

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Lexicon":
        """Read and check a lexicon file (see the module docstring)."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise LexiconError(f"no such lexicon file: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise LexiconError(f"cannot read lexicon {path}: {exc}") from None
        return cls.parse(text, str(path))

    @property
    def readings(self) -> Mapping[str, tuple[str, ...]]:
        """word -> syllables, read-only."""
        return self._readings

    def __len__(self) -> int:
        return len(self._readings)

    def __contains__(self, word: object) -> bool:
        return word in self._readings

    def __repr__(self) -> str:
        return f"<Lexicon of {len(self)} words from {self.source}>"

    @property
    def longest(self) -> int:
        """Hanzi in the longest user word (0: none)."""
        return self._longest

    def reading(self, word: str) -> Optional[tuple[str, ...]]:
        """The user's reading of ``word``, None if it has none."""
        return self._readings.get(word)

    # -- segmentation --------------------------------------------------------------------------
    @property
    def tokenizer(self):
        """This lexicon's ``jieba.Tokenizer`` (built on first use; ImportError without jieba)."""
        tok = self._tokenizer
        if tok is None:
            with self._lock:
                if self._tokenizer is None:
                    self._tokenizer = _tokenizer_for(frozenset(self._readings))
                tok = self._tokenizer
        return tok

    def warm_up(self) -> None:
        """Build the segmenter now rather than at the first text that needs it."""
        self.tokenizer.lcut("预热")

    def cut(self, text: str, hmm: bool = False) -> list[str]:
        """Words of ``text``. The G2P cuts without jieba's HMM (faster; unknown words only matter
        to it for 3-3 sandhi grouping); the chunker with it, so it keeps unknown names whole."""
        return self.tokenizer.lcut(text, HMM=hmm)

    def is_word(self, text: str) -> bool:
        return bool(self.tokenizer.FREQ.get(text))

    def find(self, text: str) -> list[tuple[int, int]]:
        """``(start, end)`` of every occurrence of a user word of two or more hanzi in ``text``
        (overlapping ones too): the spans a cut must not fall inside."""
        out = []
        if self._longest < 2:
            return out
        n = len(text)
        for i in range(n - 1):
            for j in range(i + 2, min(n, i + self._longest) + 1):
                if text[i:j] in self._readings:
                    out.append((i, j))
        return out


DEFAULT_LEXICON = Lexicon(source="no lexicon")
