"""Cut text that arrives whole or token by token into chunks the synthesizer speaks one at a time.

Call::

    chunker = SentenceChunker(max_chars=40, first_max_chars=12, lexicon=lex)   # lex: text.lexicon
    for fragment in llm_stream:                  # "今天", "天气很", "好。我们" ...
        for chunk in chunker.push(fragment):     # complete chunks, as soon as they are known
            speak(chunk.text); silence(chunk.pause_ms)
    for chunk in chunker.flush():                # end of the utterance: the rest of the buffer
        ...

    split_text("你好，今天天气很好。")   # -> texts ["你好，", "今天天气很好。"]

Rules, in short:

* A chunk ends at a sentence end (``。！？；…`` ``. ! ? ;`` newline) together with the end marks
  and closing quotes/brackets right after it (``。”``, ``?!``). A Western ``.`` ends a sentence
  only when it is not part of a number, version, domain or abbreviation (3.14, 1.5万, v1.2.3,
  www.example.com, e.g., Mr.).
* The first chunk of an utterance also ends at the first soft break (``，、,：:——``) that has at
  least ``min_chars`` speakable characters before it, so first audio comes quickly.
* A chunk is at most ``max_chars`` characters (``first_max_chars`` for the first), not counting
  the marks that close it. Past the cap it is cut at the last soft break, else at a word boundary
  (the lexicon's jieba segmenter, or a space between Latin words), never inside a number or a
  Latin word unless that token alone is longer than the cap, and never inside a word of the user
  lexicon (the same lexicon the frontend reads the chunks with; none: the built-in words only).
* A chunk is emitted once the first char after its closing marks has arrived (it may be a closing
  quote that belongs to it); if that char is a space, once a non-space char or a newline arrives
  (a newline makes the pause a paragraph pause). ``flush()`` waits for nothing. Pushing a text in
  any fragments gives the same chunks as ``split_text`` on the whole text.
* An inline reading ``{行|hang2}`` (``streamtts.text.inline``) is never cut: a cut that would
  fall inside one moves before it (or after it, when nothing speakable is before it), and the
  cut waits while a ``{`` near it may still open one (a group is at most 16 hanzi). The cap
  counts a group's characters as written.
* Chunks with nothing speakable in them (only punctuation, spaces, emoji) are dropped.
* ``flush()`` and ``reset()`` end the utterance: the next chunk has index 0 and is again a short
  first chunk. Offsets (``start``/``end``) count all text pushed since construction, so
  ``all_text[c.start:c.end] == c.text``.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from streamtts.text.inline import INLINE, INLINE_PREFIX, MAX_GROUP_CHARS
from streamtts.text.lexicon import DEFAULT_LEXICON, Lexicon

# Silence after a chunk, by what ended it. Tune here.
PAUSE_MS: dict[str, int] = {
    "comma": 150,
    "colon": 200,
    "dash": 200,
    "semicolon": 250,
    "full_stop": 300,
    "question": 300,
    "exclamation": 300,
    "ellipsis": 400,
    "paragraph": 500,
    "cut": 0,  # cut at the length cap, no punctuation
    "flush": 0,  # the rest of the buffer, spoken because flush() was called
}

_END = {"。": "full_stop", "｡": "full_stop", ".": "full_stop", "．": "full_stop",
        "！": "exclamation", "!": "exclamation", "‼": "exclamation",
        "？": "question", "?": "question", "⁇": "question", "⁉": "question", "⁈": "question",
        "；": "semicolon", ";": "semicolon", "…": "ellipsis"}
_SOFT = {"，": "comma", ",": "comma", "、": "comma", "﹐": "comma", "﹑": "comma", "､": "comma",
         "：": "colon", ":": "colon", "—": "dash", "―": "dash"}
_DOTS = ".．"
_DASHES = "—―"
_CLOSERS = "”’」』）)]］】》〉｝}"
_OPENERS = "“‘「『（(［[【《〈｛{\"'"
_QUOTES = "\"'"  # straight quotes: closing or opening, see _quote_closes
_NEWLINES = "\n\r\u2028\u2029"
_SPACES = " \t\u3000\xa0"
_ASCII_ALNUM = frozenset(string.ascii_letters + string.digits)
_ASCII_LETTERS_DOT = frozenset(string.ascii_letters + ".")
# "etc." and "no." are left out on purpose: they end sentences more often than not.
_ABBREVIATIONS = frozenset("mr mrs ms dr prof sr jr st vs cf approx dept fig inc ltd corp".split())
# Tokens never cut: numbers (3.14, 1,000, 10:30, 1.5万, 50%), versions, domains, Latin words.
_ATOM = re.compile(r"[A-Za-z0-9]+(?:[.,:/@_'’&?=+#-]+[A-Za-z0-9]+)*(?:%|[万亿千百]+)?")
_FALLBACK_TOKENS = re.compile(r"[A-Za-z0-9]+|\s+|.", re.S)
_LOOKAHEAD = 8  # chars past the cap that the word-boundary cut looks at
_MAX_RUN = 16  # longest run of closing marks or spaces looked through (bounds the buffer)
EARLY_CUT_CHARS = 4  # speakable chars a first chunk cut early (cut_early) needs at least



def _words(text: str, lexicon: Lexicon) -> list[str]:
    try:
        return lexicon.cut(text, hmm=True)
    except ImportError:  # jieba is optional: then every CJK char is a word
        return _FALLBACK_TOKENS.findall(text)


def preload(lexicon: Lexicon | None = None) -> None:
    """Build the lexicon's word segmenter now (slow, once per lexicon) rather than at the first
    over-long chunk."""
    _words("预热", DEFAULT_LEXICON if lexicon is None else lexicon)


def _speakable(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


@dataclass(frozen=True)
class Chunk:
    text: str  # the chunk's text with its closing punctuation, no surrounding whitespace
    index: int  # 0, 1, 2 ... within the utterance
    pause_ms: int  # silence to insert after this chunk (PAUSE_MS[boundary])
    start: int  # offset of the first char in all text pushed since construction
    end: int  # offset one past the last char
    boundary: str = "flush"  # what ended it: a key of PAUSE_MS


class SentenceChunker:
    """Incremental chunker; see the module docstring. Not thread-safe: one per utterance stream.

    ``max_chars``: cap of a chunk's length; ``first_max_chars``: cap of the first chunk of an
    utterance (at most ``max_chars``); ``min_chars``: speakable chars needed before a soft break
    to cut there (first chunk, or at the cap); ``lexicon``: the user lexicon whose words are
    never cut and whose segmenter finds word boundaries (None: no user lexicon).
    """

    def __init__(self, max_chars: int = 40, first_max_chars: int = 12, min_chars: int = 2,
                 lexicon: Lexicon | None = None):
        if max_chars < 1 or first_max_chars < 1 or min_chars < 0:
            raise ValueError("max_chars and first_max_chars must be >= 1, min_chars >= 0")
        self.lexicon = DEFAULT_LEXICON if lexicon is None else lexicon
        # a user word around the cap must lie wholly in the text looked at, to be kept whole
        self._lookahead = max(_LOOKAHEAD, self.lexicon.longest)
        self.max_chars = max_chars
        self.first_max_chars = min(first_max_chars, max_chars)
        self.min_chars = min_chars
        self._buf = ""  # text not yet emitted; never starts with whitespace
        self._base = 0  # offset of _buf[0] in all text pushed
        self._index = 0
        self._restart()

    def _restart(self) -> None:
        # Scan state of the current chunk, so each push resumes where the last one stopped
        # instead of rescanning the buffer (1-char pushes stay O(1) each).
        self._limit = self.first_max_chars if self._index == 0 else self.max_chars
        self._pos = 0  # next char of _buf to look at
        self._spk = 0  # speakable chars in _buf[:_pos]
        self._soft: tuple[int, str] | None = None  # last soft break usable at the cap

    @property
    def pending(self) -> str:
        """Text buffered and not yet emitted (leading whitespace already dropped)."""
        return self._buf

    def push(self, text: str) -> list[Chunk]:
        """Add a fragment of text; return the chunks that are now complete (often none)."""
        if not isinstance(text, str):
            raise TypeError(f"push() wants str, got {type(text).__name__}")
        if not text:
            return []
        self._buf += text
        return self._drain(final=False)

    def flush(self) -> list[Chunk]:
        """Emit everything buffered, even without end punctuation, and end the utterance."""
        chunks = self._drain(final=True)
        self._index = 0
        self._restart()
        return chunks

    @property
    def at_start(self) -> bool:
        """The next chunk is the first of the utterance (nothing emitted since the last flush)."""
        return self._index == 0

    def cut_early(self, min_chars: int = EARLY_CUT_CHARS) -> list[Chunk]:
        """Emit the head of the first chunk now, at the last word boundary before the buffer's last
        word (which may still be growing), when at least ``min_chars`` speakable chars lie before
        it; [] when there is no such cut yet, or when this is not the first chunk.

        For a caller with a clock: text that comes slowly (an LLM's tokens) would otherwise keep
        the utterance silent until a punctuation mark or the first chunk's cap arrives. The cut
        keeps every rule of the cap cut (never inside a number, a Latin word, an inline reading
        or a user word), and the chunk's pause is none (``cut``)."""
        if self._index != 0 or not self._buf:
            return []
        seg = self._buf
        groups = _groups(seg, len(seg), final=False)
        if groups is None:  # an inline reading may be open: wait for its end
            return []
        words = _words(seg, self.lexicon)
        if len(words) < 2:
            return []
        limit = len(seg) - len(words[-1])
        groups += self.lexicon.find(seg)
        k = self._word_cut(seg, limit, groups)
        while k is not None and seg[k - 1].isdigit():  # a unit may follow a number (3月, 5个): keep them
            k = self._word_cut(seg, k - 1, groups)
        if k is None or sum(ch.isalnum() for ch in seg[:k]) < max(1, min_chars):
            return []
        text = seg[:k].rstrip()
        chunk = Chunk(text, self._index, PAUSE_MS["cut"], self._base, self._base + len(text), "cut")
        self._index += 1
        self._buf = seg[k:]
        self._base += k
        self._restart()
        return [chunk] + self._drain(final=False)

    def reset(self) -> None:
        """Drop buffered text (barge-in) and end the utterance; offsets keep counting."""
        self._base += len(self._buf)
        self._buf = ""
        self._index = 0
        self._restart()

    def _drain(self, final: bool) -> list[Chunk]:
        out: list[Chunk] = []
        while True:
            buf = self._buf
            if buf[:1].isspace():  # whitespace between chunks belongs to neither
                stripped = buf.lstrip()
                self._base += len(buf) - len(stripped)
                self._buf = buf = stripped
            if not buf:
                return out
            cut = self._find_cut(final)
            if cut is None:
                return out
            end, kind = cut
            text = buf[:end].rstrip()
            if _speakable(text):
                out.append(Chunk(text, self._index, PAUSE_MS[kind], self._base,
                                 self._base + len(text), kind))
                self._index += 1
            self._buf = buf[end:]
            self._base += end
            self._restart()

    def _find_cut(self, final: bool) -> tuple[int, str] | None:
        """Where the chunk at the head of the buffer ends, or None until more text arrives.

        Every answer depends only on text already in the buffer, and the scan waits rather than
        guess, so any way of splitting the input into pushes gives the same cuts."""
        seg = self._buf
        n = len(seg)
        first = self._index == 0
        limit = self._limit
        i, spk = self._pos, self._spk
        while True:
            if i > limit:  # seg[:limit + 1] holds no end: the chunk must be cut
                ahead = self._lookahead
                if n < limit + ahead and not final:
                    break
                if self._soft:
                    return self._soft
                groups = _groups(seg, limit + ahead, final)
                if groups is None:
                    break  # an inline reading may be open near the cut: wait for its end
                groups += self.lexicon.find(seg[: limit + ahead])
                k = self._word_cut(seg, limit, groups)
                if k is None and limit < self.max_chars:
                    # one token (a URL, a long number) spans the short first cap: let the
                    # first chunk grow to the normal cap rather than cut through the token
                    limit = self._limit = self.max_chars
                    continue
                return k or _outside(seg, limit, groups), "cut"
            if i >= n:
                break
            c = seg[i]
            if c in _NEWLINES:
                return i, "paragraph"
            if c in _END:
                if i + 1 >= n and not final:
                    break
                if self._ends_sentence(seg, i):
                    cut = self._end_run(seg, i, final)
                    if cut is None:
                        break
                    return cut
            elif c in _SOFT:
                soft = self._soft_break(seg, i, final)
                if soft is None:
                    break
                if soft and spk >= self.min_chars:
                    if first:
                        return soft
                    if i < limit:
                        self._soft = soft
            if c.isalnum():
                spk += 1
            i += 1
        self._pos, self._spk = i, spk
        if final and i >= n:
            return n, "flush"
        return None

    @staticmethod
    def _ends_sentence(seg: str, i: int) -> bool:
        """Is the end mark at seg[i] a sentence end? seg[i + 1] is known unless at the end."""
        c = seg[i]
        nxt = seg[i + 1] if i + 1 < len(seg) else ""
        prv = seg[i - 1] if i else ""
        if c in "?!;" and prv in _ASCII_ALNUM and nxt in _ASCII_ALNUM:
            return False  # URL query, "a;b"
        if c not in _DOTS:
            return True
        if nxt and nxt in _DOTS:
            return True  # "..." is an ellipsis
        if nxt in _ASCII_ALNUM:
            return False  # 3.14, 1.5, v1.2.3, www.example.com, file.txt
        k = i
        while k and seg[k - 1] in _ASCII_LETTERS_DOT:
            k -= 1
        word = seg[k:i].lower()
        if word in _ABBREVIATIONS:
            return False  # Mr. Smith
        if "." in word and all(0 < len(p) <= 2 for p in word.split(".")):
            return False  # e.g. / i.e. / U.S. (but "example.com." ends a sentence)
        if i <= 3 and seg[:i].isdigit():
            return False  # "1. " numbering a list item at the start of a chunk
        return True

    @staticmethod
    def _end_run(seg: str, i: int, final: bool) -> tuple[int, str] | None:
        """The chunk ending at seg[i] extends over end marks and closing quotes/brackets."""
        n = len(seg)
        j = i + 1
        while j < n and j - i < _MAX_RUN:
            ch = seg[j]
            if ch in _END or ch in _CLOSERS:
                j += 1
            elif ch in _QUOTES:
                if j + 1 >= n and not final:
                    return None  # what follows the quote tells whether it closes
                if not SentenceChunker._quote_closes(seg, j):
                    break
                j += 1
            else:
                break
        if j >= n and j - i < _MAX_RUN and not final:
            return None  # the next char may still be a closing quote
        k = j
        while k < n and seg[k] in _SPACES and k - j < _MAX_RUN:
            k += 1
        if k >= n and k - j < _MAX_RUN and not final:
            return None  # a newline may follow the spaces
        if k < n and seg[k] in _NEWLINES:
            return j, "paragraph"
        run = seg[i:j]
        if "…" in run or sum(run.count(d) for d in _DOTS) >= 2:
            return j, "ellipsis"
        kinds = [_END[ch] for ch in run if ch in _END]
        return j, max(kinds, key=PAUSE_MS.__getitem__)

    @staticmethod
    def _quote_closes(seg: str, j: int) -> bool:
        """Does the straight quote at seg[j], right after an end mark, close a quotation?"""
        nxt = seg[j + 1] if j + 1 < len(seg) else " "
        if nxt.isspace() or nxt in _END or nxt in _CLOSERS:
            return True  # 'Really?" she asked'
        # Otherwise it closes if the chunk opened one: an odd count, not counting apostrophes
        # inside words ("don't").
        q = seg[j]
        count = sum(1 for k in range(j) if seg[k] == q and not (
            q == "'" and k and seg[k - 1].isalpha() and seg[k + 1].isalpha()))
        return count % 2 == 1

    @staticmethod
    def _soft_break(seg: str, i: int, final: bool) -> tuple[int, str] | bool | None:
        """(end, kind) if seg[i] is a soft break, False if not, None if the next char decides."""
        n = len(seg)
        if i + 1 >= n and not final:
            return None
        c = seg[i]
        nxt = seg[i + 1] if i + 1 < n else ""
        prv = seg[i - 1] if i else ""
        if c in ",:" and prv in _ASCII_ALNUM and (nxt in _ASCII_ALNUM or c + nxt == ":/"):
            return False  # 1,000  10:30  3:2  http://
        j = i + 1
        if c in _DASHES:
            while j < n and seg[j] in _DASHES and j - i < _MAX_RUN:
                j += 1
        while j < n and seg[j] in _CLOSERS and j - i < _MAX_RUN:
            j += 1
        if j >= n and j - i < _MAX_RUN and not final:
            return None
        return j, _SOFT[c]

    def _word_cut(self, seg: str, limit: int, groups: list[tuple[int, int]] = ()) -> int | None:
        """Largest word boundary k <= limit in seg[:limit + lookahead] not inside a number,
        a Latin word, an inline reading or a user word (``groups``), and leaving something
        speakable before it; None if there is none."""
        window = seg[: limit + self._lookahead]
        bounds = set()
        pos = 0
        for word in _words(window, self.lexicon):
            pos += len(word)
            if pos > limit:
                break
            bounds.add(pos)
        for m in _ATOM.finditer(window):
            if m.start() < limit:
                bounds.difference_update(range(m.start() + 1, m.end()))
        for start, end in groups:
            bounds.difference_update(range(start + 1, end))
        for k in sorted(bounds, reverse=True):
            nxt = window[k] if k < len(window) else " "
            # a mark must not lead the next chunk, nor an opening quote end this one
            if nxt in _CLOSERS or nxt in _SOFT or nxt in _END or window[k - 1] in _OPENERS:
                continue
            if _speakable(window[:k]):
                return k
        return None


def _groups(seg: str, upto: int, final: bool) -> list[tuple[int, int]] | None:
    """Inline readings starting before ``upto``; None while one that may start there is still
    open at the end of the buffer (more text decides)."""
    if not final:
        m = INLINE_PREFIX.search(seg, max(0, upto - 1 - MAX_GROUP_CHARS))
        if m is not None and m.start() < upto:
            return None
    return [m.span() for m in INLINE.finditer(seg, 0, upto + MAX_GROUP_CHARS) if m.start() < upto]


def _outside(seg: str, k: int, groups: list[tuple[int, int]]) -> int:
    """``k``, or the nearest cut outside the inline readings and user words around it."""
    for start, end in _merged(groups):
        if start < k < end:
            return start if _speakable(seg[:start]) else end
    return k


def _merged(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Overlapping spans joined (user words may overlap each other and inline readings), so that
    a cut moved to the edge of one is outside all of them."""
    out: list[list[int]] = []
    for start, end in sorted(spans):
        if out and start < out[-1][1]:
            out[-1][1] = max(out[-1][1], end)
        else:
            out.append([start, end])
    return [(a, b) for a, b in out]


def split_text(text: str, **kw) -> list[Chunk]:
    """Chunk a whole text at once: ``push(text) + flush()`` on a new ``SentenceChunker(**kw)``."""
    chunker = SentenceChunker(**kw)
    return chunker.push(text) + chunker.flush()
