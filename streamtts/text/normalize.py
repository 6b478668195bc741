"""Text normalization: raw user text -> the exact characters that will be spoken.

Call ``normalize(text)``; it returns a string made only of

* hanzi that have a reading (simplified),
* ASCII letters (an ALL-CAPS run is spelled letter by letter, other runs are read as letters
  too, with the model's plain letter symbols; see ``symbols.letter_symbol``),
* single spaces, kept only between two letters (word breaks in Latin text),
* the model's punctuation ``! ? . , ; : " ( )``,

and raises ``EmptyTextError`` for empty/whitespace text and ``NoSpeakableTextError`` when
nothing speakable is left (emoji only, punctuation only, control characters ...).

Steps, in order: full-width -> half-width; control/format characters and emoji dropped;
traditional -> simplified (OpenCC t2s); numbers, dates, times, money, units ... read out
(``nsw.expand``); punctuation mapped onto the model's ten marks; runs of punctuation
collapsed; whitespace normalized; anything else (unknown symbols, rare characters without a
reading) dropped.

    normalize("你好！！！")        # -> "你好!"
    normalize("我們在2024年")      # -> "我们在二零二四年"
    normalize("GPU 很快 😀")      # -> "GPU很快"
"""

from __future__ import annotations

import re
import threading
import unicodedata

from ..errors import EmptyTextError, NoSpeakableTextError
from .dictionary import load_dictionary
from .nsw import expand

# Full-width ASCII block and the ideographic space.
_WIDTH = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)}
_WIDTH[0x3000] = 0x20

# Every mark the model knows, and what maps onto it (ASCII <> are math, not brackets: dropped).
_PUNCT = {}
for _target, _sources in {
    "!": "!！", "?": "?？", ".": ".。｡…", ",": ",，、､—–―", ";": ";；", ":": ":：",
    '"': "\"＂“”'＇‘’「」『』", "(": "(（[［{｛【《〈〔〖", ")": ")）]］}｝】》〉〕〗",
}.items():
    for _c in _sources:
        _PUNCT[_c] = _target
SPOKEN_PUNCT = frozenset('!?.,;:"()')
_STOPS = "?!.;:,"  # when a run of these collapses, the leftmost in this list wins

_EMOJI = re.compile(
    "[\U0001F000-\U0001FAFF\U00002600-\U000027BF\U00002B00-\U00002BFF\U0000FE00-\U0000FE0F"
    "\U000E0000-\U000E007F\U00002190-\U000021FF\U000025A0-\U000025FF\u200d\u20e3\u3030\u303d"
    "\u3297\u3299\u00a9\u00ae\u2122]+"
)
_SPACES = re.compile(r"\s+")
_APOSTROPHE = re.compile(r"(?<=[A-Za-z])['’](?=[A-Za-z])")  # don't -> dont, not a quote
_DOMAIN_DOT = re.compile(r"(?<=[A-Za-z0-9])\.(?=[A-Za-z])")  # example.com -> example点com
_AT = re.compile(r"(?<=[A-Za-z0-9])@(?=[A-Za-z0-9])")
_PUNCT_RUN = re.compile(r"[!?.,;:]( ?[!?.,;:])+")
_REPEAT = re.compile(r'(["()])\1+')
_EMPTY_PAIR = re.compile(r"\(\s*\)")
_LAYOUT_SPACE = re.compile(r"(?<![A-Za-z]) | (?![A-Za-z])")

_t2s_lock = threading.Lock()
_t2s = None


def _to_simplified(text: str) -> str:
    global _t2s
    with _t2s_lock:  # the converter object is created once and shared
        if _t2s is None:
            # Imported here: opencc is in the server extra, not the base install, and the
            # converter (which loads its dictionaries) is built only once text needs it.
            import opencc

            _t2s = opencc.OpenCC("t2s")
        return _t2s.convert(text)


def _drop_invisible(text: str) -> str:
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Cc":
            out.append(" " if ch in "\t\n\r\x0b\x0c\x85" else "")
        elif cat in ("Cf", "Co", "Cs", "Cn"):
            continue  # zero-width joiners, BOM, bidi marks, private use, unassigned
        else:
            out.append(ch)
    return "".join(out)


def _collapse(m: re.Match) -> str:
    run = m.group(0)
    return next(c for c in _STOPS if c in run)


def _keep(ch: str, dictionary) -> bool:
    if ch in SPOKEN_PUNCT or ch == " " or ("a" <= ch <= "z") or ("A" <= ch <= "Z"):
        return True
    return ch > "\u2e7f" and dictionary.has_reading(ch)


def _tidy(text: str, lead: bool = True) -> str:
    text = _PUNCT_RUN.sub(_collapse, text)
    text = _REPEAT.sub(r"\1", text)
    text = _EMPTY_PAIR.sub("", text)
    text = _SPACES.sub(" ", text)
    # A space survives only between two letters ("hello world"); elsewhere it is layout.
    text = _LAYOUT_SPACE.sub("", text)
    # Leading pauses and punctuation make only silence.
    return text.lstrip("!?.,;: ") if lead else text


def is_speakable(normalized: str) -> bool:
    """True when ``normalized`` has at least one character that makes a sound."""
    return any(not (c in SPOKEN_PUNCT or c == " ") for c in normalized)


def normalize(text: str, part: bool = False) -> str:
    """See the module docstring. Raises EmptyTextError / NoSpeakableTextError.

    ``part=True``: ``text`` is a piece of a longer text (a span of markup, see markup.py) that
    is normalized on its own: nothing raises, and leading punctuation is kept."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, not {type(text).__name__}")
    if part and not text.strip():
        return ""
    if not text.strip():
        raise EmptyTextError("The text is empty; send at least one character to speak.")
    dictionary = load_dictionary()
    s = text.translate(_WIDTH)
    s = _drop_invisible(s)
    s = _EMOJI.sub("", s)
    s = _to_simplified(s)
    s = expand(s)
    s = _APOSTROPHE.sub("", s)
    s = _DOMAIN_DOT.sub("点", s)
    s = _AT.sub("艾特", s)
    s = "".join(_PUNCT.get(c, c) for c in s)
    s = _tidy("".join(c for c in s if _keep(c, dictionary)), lead=not part)
    if not part and not is_speakable(s):
        raise NoSpeakableTextError(
            f"Nothing to speak in {text[:40]!r}: it has no Chinese characters, letters or "
            "numbers (only punctuation, symbols or emoji)."
        )
    return s
