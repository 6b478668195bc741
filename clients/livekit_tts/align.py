"""Aligned transcripts: a streamtts ``segment`` as LiveKit ``TimedString`` pieces.

A segment carries the sentence as sent (``text``) and a time per spoken character (``chars``:
normalized, without punctuation). Chinese has no spaces, so the unit is the character: each
spoken character of ``text`` becomes one piece with its own times, and the characters that are not
spoken (punctuation, spaces) ride on the piece before them, so that the pieces put together give
back the text as sent (LiveKit's transcript is their concatenation). Where the normalizer
rewrote the text (``2024`` read as 二零二四), the rewritten run is one piece spanning the
characters it was read as.
"""

from __future__ import annotations

from typing import Optional

from livekit.agents.types import TimedString


def _spoken(c: str) -> bool:
    return c.isalnum()


def _same(a: str, b: str) -> bool:
    return a == b or a.lower() == b.lower()


def timed_pieces(text: str, chars: list, offset_ms: float = 0.0,
                 segment_span: Optional[tuple[float, float]] = None) -> list[TimedString]:
    """``text`` cut into timed pieces by ``chars`` ([{char, start_ms, end_ms}]); times in seconds,
    each shifted by ``offset_ms``. ``segment_span`` (start_ms, end_ms) times a text with no spoken
    character at all."""
    pieces: list[list] = []  # [text, start_ms, end_ms]
    prefix = ""  # unspoken characters before the first piece
    i = j = 0
    while i < len(text):
        c = text[i]
        if j < len(chars) and _same(c, chars[j]["char"]):
            pieces.append([prefix + c, chars[j]["start_ms"], chars[j]["end_ms"]])
            prefix = ""
            i, j = i + 1, j + 1
            continue
        if j >= len(chars) or not _spoken(c):
            if pieces:
                pieces[-1][0] += c
            else:
                prefix += c
            i += 1
            continue
        # the normalizer rewrote this run: it ends where a later character of the text is found
        # among the later spoken characters
        resync = None
        for k in range(i + 1, len(text)):
            if _spoken(text[k]):
                m = next((m for m in range(j + 1, len(chars)) if _same(text[k], chars[m]["char"])), None)
                if m is not None:
                    resync = (k, m)
                    break
        k, m = resync if resync is not None else (len(text), len(chars))
        pieces.append([prefix + text[i:k], chars[j]["start_ms"], chars[m - 1]["end_ms"]])
        prefix = ""
        i, j = k, m
    if prefix:  # nothing spoken in it (punctuation only)
        start, end = segment_span if segment_span is not None else (0.0, 0.0)
        pieces.append([prefix, start, end])
    return [TimedString(t, start_time=max(0.0, (s + offset_ms) / 1000.0),
                        end_time=max(0.0, (e + offset_ms) / 1000.0)) for t, s, e in pieces]
