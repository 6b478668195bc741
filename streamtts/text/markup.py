"""Pronunciation markup: spans of text with a fixed reading or a spoken substitute.

Two sources make spans: the inline syntax of plain text, ``{行|hang2}`` (hanzi, a bar, one toned
pinyin syllable per hanzi, space-separated, in braces), and SSML (``streamtts.text.ssml``). The
frontend (``streamtts.text.phonemize_spans``) speaks a list of spans::

    parse_inline("我们去{银行|yin2 hang2}了")
    # -> [Span("我们去"), Span("银行", readings=("yin2", "hang2")), Span("了")]
    Span("WHO", spoken="世界卫生组织")        # shown text and what is said differ

The inline pattern is strict: braces around 1-16 hanzi, ``|``, then exactly as many syllables
(``[a-zü]+[1-5]``, ``v`` for ü, 5 the neutral tone) that the model can say. Anything else
(``{a|b}``, a count mismatch, an unknown syllable, a newline inside) stays literal text.

``MarkedText`` is a chunk of spans that travels through the core as a ``str`` (its shown text),
carrying ``spans``, ``rate`` (a speaking-rate factor from SSML prosody) and ``lead_ms`` (silence
before it, from an SSML break) as attributes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from .inline import HANZI, INLINE
from .symbols import syllable_phonemes

HANZI_RE = re.compile("[%s]" % HANZI)


def is_hanzi(ch: str) -> bool:
    return HANZI_RE.match(ch) is not None


@dataclass(frozen=True)
class Span:
    """``shown``: the text the user wrote (segment chars point into it); ``spoken``: what is said
    (None: the shown text); ``readings``: one toned syllable per hanzi of ``spoken`` (None: the
    frontend's G2P decides)."""

    shown: str
    spoken: Optional[str] = None
    readings: Optional[tuple[str, ...]] = None

    @property
    def say(self) -> str:
        return self.shown if self.spoken is None else self.spoken

    @property
    def atomic(self) -> bool:
        """Never cut into pieces by the chunker (a reading or a substitute belongs to it whole)."""
        return self.spoken is not None or self.readings is not None


def check_readings(hanzi: str, ph: str) -> Optional[str]:
    """Why ``ph`` (space-separated syllables) is not a reading of ``hanzi``; None if it is."""
    syllables = ph.split()
    if not syllables:
        return "no pinyin syllables given"
    bad = [s for s in syllables if syllable_phonemes(s) is None]
    if bad:
        return f"{bad[0]!r} is not a toned pinyin syllable (like hang2; tones 1-5, 5 neutral, v or ü for ü)"
    others = [ch for ch in hanzi if not is_hanzi(ch)]
    if others:
        return f"{others[0]!r} is not a hanzi: a pinyin reading is given to hanzi only"
    if len(syllables) != len(hanzi):
        return f"{len(hanzi)} hanzi but {len(syllables)} syllables: give one syllable per hanzi"
    return None


def syllables(ph: str) -> tuple[str, ...]:
    """``"lü4  HANG2"`` -> ``("lv4", "hang2")``: the model's spelling (v for ü, lower case)."""
    return tuple(s.replace("ü", "v") for s in ph.lower().split())


def parse_inline(text: str) -> list[Span]:
    """Split plain text at its strict inline groups (see the module docstring)."""
    spans: list[Span] = []
    pos = 0
    for m in INLINE.finditer(text):
        hanzi, ph = m.group(1), m.group(2)
        if check_readings(hanzi, ph) is not None:
            continue  # not a valid group: literal text
        if m.start() > pos:
            spans.append(Span(text[pos:m.start()]))
        spans.append(Span(hanzi, readings=syllables(ph)))
        pos = m.end()
    if pos < len(text) or not spans:
        spans.append(Span(text[pos:]))
    return spans


class MarkedText(str):
    """A chunk's shown text (the str value) with its spans, speaking-rate factor and the
    milliseconds of silence (an SSML break) to put before its speech."""

    spans: tuple[Span, ...]
    rate: float
    lead_ms: int

    def __new__(cls, spans, rate: float = 1.0, lead_ms: int = 0) -> "MarkedText":
        spans = tuple(spans)
        obj = super().__new__(cls, "".join(s.shown for s in spans))
        obj.spans, obj.rate, obj.lead_ms = spans, float(rate), int(lead_ms)
        return obj

    def __reduce__(self):
        return MarkedText, (self.spans, self.rate, self.lead_ms)
