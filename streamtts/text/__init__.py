"""Chinese text frontend: raw text -> the acoustic model's input ids.

Call::

    from streamtts.text import phonemize
    p = phonemize("你好。")
    p.normalized   # "你好."
    p.pinyin       # ["ni2", "hao3"]
    p.phonemes     # ["n", "i", "2", "-", "h", "ao", "3", "-", ".", "-", "~", "_"]
    p.ids          # same length as phonemes
    p.char_index   # [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, -1, -1]

A user lexicon (``lexicon.py``: words whose reading the deployer fixes) is passed, not set::

    lex = Lexicon.load("words.tsv")
    phonemize("我们去银行", lex)   # the lexicon's readings; left out: the built-in ones only

Raises ``streamtts.errors.EmptyTextError`` for empty/whitespace text and
``NoSpeakableTextError`` when nothing speakable remains (emoji, punctuation only ...).
Thread-safe; the first call loads the dictionaries (about a second), ``warm_up(lexicon)`` does it
ahead of time (and builds that lexicon's word segmenter). Later calls take well under a
millisecond per sentence.

Layout of ``phonemes``: every hanzi is ``initial final tone -``; every letter is its symbol
then ``-``; a space between Latin words is ``# -``; punctuation is its mark then ``-``; the
utterance ends ``~ _``. ``char_index[k]`` is the index in ``normalized`` of the character
symbol ``k`` was made from (-1 for the final ``~ _``), for turning attention alignments into
per-character times.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import EmptyTextError, NoSpeakableTextError
from .g2p import pinyin_run
from .g2p import warm_up as _warm_g2p
from .lexicon import DEFAULT_LEXICON, Lexicon
from .markup import MarkedText, Span, parse_inline
from .normalize import SPOKEN_PUNCT, is_speakable, normalize
from .symbols import CHAIN, EOS, PAD, SYMBOL_TO_ID, SYMBOLS, letter_symbol, syllable_phonemes

__all__ = ["Phonemized", "phonemize", "phonemize_spans", "normalize", "warm_up", "SYMBOLS", "SYMBOL_TO_ID",
           "Span", "MarkedText", "parse_inline", "Lexicon", "DEFAULT_LEXICON"]


@dataclass(frozen=True)
class Phonemized:
    text: str  # original input
    normalized: str  # after normalization (what is spoken)
    pinyin: list[str]  # syllables as spoken, after sandhi; no punctuation, no letters
    phonemes: list[str]  # symbol strings, ending with "~", "_"
    ids: list[int]  # same length as phonemes
    char_index: list[int]  # same length as ids: index into `normalized`, -1 for the final ~ _
    spans: tuple[Span, ...] = ()  # the markup spans spoken (one plain span for plain text)
    span_of: tuple[int, ...] = ()  # per char of `normalized`: the index of its span in `spans`


def _is_hanzi(ch: str) -> bool:
    # normalize() leaves only hanzi, ASCII letters, spaces and the model's punctuation.
    return ch > "\u2e7f"


def phonemize(text: str, lexicon: Lexicon | None = None) -> Phonemized:
    """Normalize ``text`` and turn it into model symbols (see the module docstring), reading the
    words of ``lexicon`` as it says (None: no user lexicon).

    Inline readings (``{行|hang2}``, see ``markup.py``) are honoured; a ``MarkedText`` (an SSML
    chunk) is spoken from its spans, an ``ssml.SsmlDocument`` from the spans of its text (its
    breaks and rates are the chunker's business, not the frontend's)."""
    spans = getattr(text, "spans", None)
    if spans is None and hasattr(text, "pieces"):
        spans = [p.span for p in text.pieces if hasattr(p, "span")]
    return phonemize_spans(spans if spans is not None else parse_inline(text), text, lexicon)


def phonemize_spans(spans, text: str | None = None, lexicon: Lexicon | None = None) -> Phonemized:
    """Speak a list of ``markup.Span``: each span is normalized on its own (one plain span: the
    whole text, as ``normalize``), the G2P runs over the joined result so words keep their context,
    and a span's readings replace the G2P's syllables for its hanzi (as spoken: no sandhi)."""
    spans = tuple(spans)
    lexicon = DEFAULT_LEXICON if lexicon is None else lexicon
    if text is None:
        text = "".join(s.shown for s in spans)
    fixed: dict[int, str] = {}
    if len(spans) == 1 and spans[0].readings is None:
        norm = normalize(spans[0].say)
        span_of = (0,) * len(norm)
    else:
        if not "".join(s.say for s in spans).strip():
            raise EmptyTextError("The text is empty; send at least one character to speak.")
        parts, owner = [], []
        for k, span in enumerate(spans):
            part = normalize(span.say, part=True)
            if span.readings is not None and len(part) == len(span.readings):
                base = sum(map(len, parts))
                fixed.update((base + i, r) for i, r in enumerate(span.readings))
            parts.append(part)
            owner += [k] * len(part)
        joined = "".join(parts)
        norm = joined.lstrip("!?.,;: ")  # leading pauses make only silence
        cut = len(joined) - len(norm)
        fixed = {i - cut: r for i, r in fixed.items() if i >= cut}
        span_of = tuple(owner[cut:])
        if not is_speakable(norm):
            raise NoSpeakableTextError(
                f"Nothing to speak in {text[:40]!r}: it has no Chinese characters, letters or "
                "numbers (only punctuation, symbols or emoji).")
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
            for k, syllable in enumerate(_run_pinyin(norm, i, j, fixed, lexicon)):
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
        spans=spans,
        span_of=span_of,
    )


def _run_pinyin(norm: str, i: int, j: int, fixed: dict[int, str], lexicon: Lexicon) -> list[str]:
    """Syllables of the hanzi run norm[i:j]: the G2P's, with the fixed readings put in."""
    if not any(k in fixed for k in range(i, j)):
        return list(pinyin_run(norm[i:j], lexicon))
    if all(k in fixed for k in range(i, j)):
        return [fixed[k] for k in range(i, j)]
    try:
        out = list(pinyin_run(norm[i:j], lexicon))
    except ValueError:  # a fixed hanzi the dictionaries have no reading for: read the rest alone
        out = [fixed.get(k) or pinyin_run(norm[k], lexicon)[0] for k in range(i, j)]
    return [fixed.get(i + k, s) for k, s in enumerate(out)]


def warm_up(lexicon: Lexicon | None = None) -> None:
    """Load jieba (``lexicon``'s segmenter), pypinyin and OpenCC now, so the first real request
    is fast."""
    lexicon = DEFAULT_LEXICON if lexicon is None else lexicon
    _warm_g2p(lexicon)
    phonemize("你好，2024年。", lexicon)
