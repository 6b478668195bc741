"""A request's chunker: plain text streams through the sentence chunker, an SSML document is cut
into chunks at once. Chunks of an SSML document carry their markup in their text, a
``MarkedText`` (a ``str``: the shown text, with ``spans``, ``rate`` and ``lead_ms``), which the
runner reads::

    ch = MarkupChunker(speed=1.0, lexicon=lex)  # what Request uses; options as SentenceChunker's
    ch.push("今天天气")                          # plain text fragments: as SentenceChunker.push
    ch.push(parse_ssml("<speak>...</speak>"))   # a whole document: the text pending before it is
                                                # flushed, then the document's chunks
    ch.flush(); ch.reset(); ch.pending

Rules for a document (``streamtts.text.ssml``):

* Chunks are cut as the sentence chunker cuts the document's shown text, and also at every
  ``<break>`` and wherever the prosody rate changes; never inside a phoneme, say-as or sub.
* A break's silence is put before the next chunk's speech, inside that chunk (its segment's audio
  starts with it; its char times start after it), exactly as long as asked (no speed scaling).
  It replaces the punctuation pause of the chunk before it. Breaks at the end of the document
  are the pause after its last chunk (exact as well).
* Speed of a chunk: ``effective_speed(session speed, rate)`` = the product clamped to the engine's
  0.5-2.0. Punctuation pauses scale with it, as they do with the session speed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Optional

from streamtts.text.chunker import EARLY_CUT_CHARS, PAUSE_MS, Chunk, SentenceChunker, split_text
from streamtts.constants import MAX_SPEED, MIN_SPEED
from streamtts.text.lexicon import Lexicon
from streamtts.text.markup import MarkedText, Span


def effective_speed(speed: float, rate: float) -> float:
    """The speed a chunk is spoken at: session speed x prosody rate, clamped to 0.5-2.0."""
    return min(MAX_SPEED, max(MIN_SPEED, speed * rate))


class MarkupChunker:
    def __init__(self, speed: float = 1.0, lexicon: Optional[Lexicon] = None, **options):
        self.speed = speed
        self.lexicon = lexicon  # the user lexicon (None: none), whose words are never cut
        self.options = options
        self.plain = SentenceChunker(lexicon=lexicon, **options)

    @property
    def pending(self) -> str:
        return self.plain.pending

    def push(self, text: str) -> list[Chunk]:
        pieces = getattr(text, "pieces", None)
        if pieces is None:
            return self.plain.push(text)
        return self.plain.flush() + self._document(pieces)

    def flush(self) -> list[Chunk]:
        return self.plain.flush()

    @property
    def at_start(self) -> bool:
        return self.plain.at_start

    def cut_early(self, min_chars: int = EARLY_CUT_CHARS) -> list[Chunk]:
        return self.plain.cut_early(min_chars)

    def reset(self) -> None:
        self.plain.reset()

    # -- a document ----------------------------------------------------------------------------
    def _document(self, pieces) -> list[Chunk]:
        out: list[Chunk] = []
        run: list = []  # Text pieces of one rate, between breaks
        # silence owed before the next chunk: the explicit breaks add up; a <p>/<s> end counts
        # only when longer (lead = max(explicit, structural))
        explicit = structural = 0
        offset = 0  # where the run starts in the document's shown text

        def close_run() -> None:
            nonlocal run, explicit, structural, offset
            if run:
                lead = max(explicit, structural)
                chunks = self._run([p.span for p in run], run[0].rate, offset, lead, len(out))
                if chunks:
                    explicit = structural = 0
                out.extend(chunks)
                offset += sum(len(p.span.shown) for p in run)
            run = []

        for p in pieces:
            if hasattr(p, "ms"):  # a Break
                close_run()
                if out and not explicit and not structural:
                    out[-1] = replace(out[-1], pause_ms=0, boundary="break")  # the break replaces it
                if p.structural:
                    structural = max(structural, p.ms)
                else:
                    explicit += p.ms
            else:
                if run and p.rate != run[0].rate:
                    close_run()
                run.append(p)
        close_run()
        lead = max(explicit, structural)
        if lead and out:  # breaks at the end: the pause after the last chunk, exact
            out[-1] = replace(out[-1], pause_ms=round(lead * self.speed), boundary="break")
        return out

    def _run(self, spans: list[Span], rate: float, offset: int, lead: int, index: int) -> list[Chunk]:
        """Chunks of one run of spans spoken at one rate."""
        # The sentence chunker sees atomic spans as plain hanzi of the same length: no cut at a
        # mark inside them, and a sub of "&" still counts as speakable.
        proxy = "".join("字" * len(s.shown) if s.atomic else s.shown for s in spans)
        bounds, pos = [], 0
        for s in spans:
            if s.atomic:
                bounds.append((pos, pos + len(s.shown)))
            pos += len(s.shown)
        cuts = split_text(proxy, lexicon=self.lexicon, **self.options)
        merged: list[Chunk] = []
        for c in cuts:
            if merged and any(a < merged[-1].end < b for a, b in bounds):  # it ended inside a span
                merged[-1] = replace(merged[-1], end=c.end, pause_ms=c.pause_ms, boundary=c.boundary)
            else:
                merged.append(c)
        speed = effective_speed(self.speed, rate)
        out = []
        for k, c in enumerate(merged):
            text = MarkedText(_slice(spans, c.start, c.end), rate, lead if k == 0 else 0)
            pause = round(PAUSE_MS[c.boundary] * self.speed / speed)  # scheduler divides by session speed
            out.append(Chunk(text, index + k, pause, offset + c.start, offset + c.end, c.boundary))
        return out


def _slice(spans: list[Span], start: int, end: int) -> list[Span]:
    """The spans covering shown[start:end]; atomic ones whole, plain ones cut."""
    out, pos = [], 0
    for s in spans:
        a, b = pos, pos + len(s.shown)
        pos = b
        if b <= start or a >= end:
            continue
        if s.atomic:
            out.append(s)
        else:
            out.append(Span(s.shown[max(start, a) - a: min(end, b) - a]))
    return out


def shown_chars(chars, ph, lead_ms: float = 0.0) -> list[tuple[str, float, float]]:
    """A segment's ``(char, start_ms, end_ms)`` from the runner's ``(char, start_ms, end_ms,
    index in ph.normalized)``, moved ``lead_ms`` later (the break silence before the speech).

    Chars of a span that says something else than it shows (SSML ``sub``, ``say-as``) become the
    shown text's chars (spaces left out), which share the span's time evenly: ``<sub
    alias="世界卫生组织">WHO</sub>`` gives W, H and O a third of the six hanzi's time each. Other
    chars are the normalized chars they were (as for plain text)."""
    spans, owner = ph.spans, ph.span_of
    out: list[tuple[str, float, float]] = []
    group: list = []  # [span index, start, end] of the substituted span being gathered

    def close() -> None:
        k, s, e = group
        shown = [c for c in spans[k].shown if not c.isspace()] or [spans[k].shown]
        step = (e - s) / len(shown)
        out.extend((c, s + j * step, s + (j + 1) * step) for j, c in enumerate(shown))
        group.clear()

    for char, s, e, i in chars:
        s, e = s + lead_ms, e + lead_ms
        k = owner[i] if 0 <= i < len(owner) else -1
        if k >= 0 and spans[k].spoken is not None:
            if group and group[0] == k:
                group[2] = e
                continue
            if group:
                close()
            group.extend([k, s, e])
            continue
        if group:
            close()
        out.append((char, s, e))
    if group:
        close()
    return out
