"""Word timestamps for pipecat from a streamtts ``segment`` event (docs/protocol.md).

A segment carries ``text`` (the sentence as sent), ``normalized`` (what was spoken) and ``chars``:
the spoken characters with their times, which are positions in the stream's audio. pipecat wants
``(word, seconds from the start of the context's audio)`` in the text the LLM wrote, so that its
word tracker can match the words against that text. For Chinese a word is a character, as
pipecat's own services report CJK; a run of Latin letters or digits is one word; punctuation and
spaces ride with the word before them. Where normalization changed the text (``3`` spoken as 三,
a traditional character spoken in its simplified form), the written span takes the time of the
first character spoken for it.
"""

from __future__ import annotations

from difflib import SequenceMatcher
from typing import Optional


def segment_word_times(segment: dict, received_ms: float) -> list[tuple[str, float]]:
    """``[(word, seconds)]`` of ``segment``, placed against the audio of its context.

    ``received_ms``: the duration of the context's audio received when the segment came. A
    segment follows its sentence's last audio frame, so its ``audio_end_ms`` is that same point
    of the stream: the difference places the char times in the context's own audio, whether the
    server counts positions per context or per socket.
    """
    chars = segment.get("chars") or []
    text = segment.get("text") or ""
    if not chars or not text:
        return []
    offset = received_ms - float(segment.get("audio_end_ms", received_ms))
    times = [float(c["start_ms"]) + offset for c in chars]
    spoken = "".join(c["char"] for c in chars)

    pieces: list[tuple[str, Optional[float]]] = []  # the text in order, with the time of each piece
    for op, i1, i2, j1, j2 in SequenceMatcher(None, text, spoken, autojunk=False).get_opcodes():
        if op == "equal":
            pieces.extend((text[i1 + k], times[j1 + k]) for k in range(i2 - i1))
        elif op == "replace":
            pieces.append((text[i1:i2], times[j1]))
        elif op == "delete":  # written, not spoken: punctuation, spaces
            pieces.extend((ch, None) for ch in text[i1:i2])
        # "insert": spoken, not written (a reading the normalizer added): inside its neighbours' time

    words: list[list] = []  # [word, ms]
    lead = ""  # punctuation before the first word
    for piece, ms in pieces:
        if not any(ch.isalnum() for ch in piece):
            if words:
                words[-1][0] += piece
            else:
                lead += piece
            continue
        prev = words[-1][0] if words else ""
        if _latin(piece) and prev and _latin(prev[-1]):
            words[-1][0] += piece  # the same Latin word or number
            continue
        words.append([lead + piece, ms])
        lead = ""

    out: list[tuple[str, float]] = []
    last = 0.0
    for i, (word, ms) in enumerate(words):
        if ms is None:  # a written character with no spoken match: at the next known time
            ms = next((w[1] for w in words[i + 1:] if w[1] is not None), last * 1000.0)
        seconds = max(ms / 1000.0, last)  # never before the word before it, never below 0
        out.append((word.strip() if i == len(words) - 1 else word.lstrip(), seconds))
        last = seconds
    return [(w, t) for w, t in out if w]


def _latin(s: str) -> bool:
    return all(ch.isascii() and ch.isalnum() for ch in s)
