"""User lexicon: words whose reading the deployer fixes (``streamtts serve --lexicon words.tsv``).

File format, UTF-8, one entry a line::

    # comments and blank lines are ignored
    行长	hang2 zhang3
    重庆	chong2 qing4

a word of hanzi (simplified, as the frontend sees it after normalization), a TAB, then one toned
pinyin syllable per character, space-separated (tones 1-5, 5 neutral; ``v`` or ``ü`` for ü).
Readings are dictionary readings: tone sandhi still applies after them (write 你好 ``ni3 hao3``).

Call::

    entries = load_lexicon(Path("words.tsv"))   # {"行长": ("hang2", "zhang3")}; LexiconError on a bad line
    set_user_lexicon(entries)                   # process-wide, at start-up; None removes it

The frontend is process-wide (one jieba segmenter, cached readings), so the lexicon is too: set it
before synthesis starts. ``set_user_lexicon`` drops the cached readings and rebuilds the segmenter
on the next call (about a second). In the G2P the user words join the segmenter's dictionary (so
they are cut as words where the segmenter agrees) and their reading wins over every built-in rule.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional

from ..errors import LexiconError
from .markup import check_readings, syllables

_entries: dict[str, tuple[str, ...]] = {}


def parse_lexicon(text: str, source: str = "lexicon") -> dict[str, tuple[str, ...]]:
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


def load_lexicon(path: Path) -> dict[str, tuple[str, ...]]:
    """Read and check a lexicon file (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LexiconError(f"no such lexicon file: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise LexiconError(f"cannot read lexicon {path}: {exc}") from None
    return parse_lexicon(text, str(path))


def set_user_lexicon(entries: Optional[Mapping[str, tuple[str, ...]]]) -> None:
    """Use ``entries`` (word -> syllables) from now on, process-wide; None or {} removes them."""
    from . import g2p, lexicon

    global _entries
    with lexicon._lock:
        _entries = {w: tuple(r) for w, r in (entries or {}).items()}
        lexicon._lexicon = None  # rebuilt with the user words in its segmenter on the next load()
    g2p.clear_caches()


def user_readings() -> dict[str, tuple[str, ...]]:
    """The current user entries (do not modify)."""
    return _entries
