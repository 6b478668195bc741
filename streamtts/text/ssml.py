"""SSML input: a ``<speak>`` document -> the text, pauses, rates and readings it asks for.

Call (every entry point does the same)::

    from streamtts.text.ssml import parse_ssml, maybe_ssml
    doc = parse_ssml('<speak>你好<break time="300ms"/>世界</speak>')   # SsmlError (invalid_ssml) if bad
    str(doc)        # "你好世界": the text content the user wrote (what segments show)
    doc.pieces      # [Text(Span("你好"), 1.0), Break(300), Text(Span("世界"), 1.0)]
    scheduler.command(req, TEXT, generation, doc)   # the request's chunker speaks its pieces
    maybe_ssml(text)   # parse_ssml(text) if text starts with "<speak", else text unchanged

The document is parsed by ``defusedxml`` with DTDs refused, so entity bombs (billion laughs) and
external entities are an ``invalid_ssml`` error, never expanded or fetched. Elements:

* ``<speak>`` the root (required; attributes such as ``xml:lang``, ``version`` are ignored).
* ``<break time="300ms"/>`` (``ms`` or ``s``, at most 10 s) or ``strength=`` none 0, x-weak 100,
  weak 150, medium 300, strong 500, x-strong 1000 ms (``BREAK_STRENGTH_MS``); neither: medium.
  ``time`` wins over ``strength``. The silence replaces the punctuation pause before it.
* ``<prosody rate="…">`` x-slow 0.5, slow 0.75, medium 1.0, fast 1.25, x-fast 1.5, a percentage
  ``80%`` (x0.8; ``+20%`` / ``-20%`` change the rate by that much), or a multiplier ``1.5``.
  Nested rates multiply. Other prosody attributes (pitch, volume ...) are ignored.
* ``<phoneme alphabet="pinyin" ph="hang2">行</phoneme>``: toned pinyin, one syllable per hanzi,
  space-separated, spoken as written (no tone sandhi). Other alphabets are refused.
* ``<say-as interpret-as="...">``: ``characters`` (letters spelled by name, digits one by one),
  ``digits``, ``telephone`` (digits, 1 as 幺), ``cardinal`` (a number: 1234 -> 一千二百三十四),
  ``date`` (``format`` ymd (default), dmy, mdy, ym, md, y; separators - / . or space). Other
  ``interpret-as`` values read the content as plain text.
* ``<sub alias="世界卫生组织">WHO</sub>``: says the alias; the segment shows the content.
* ``<p>`` and ``<s>`` are read as their text, and end a sentence: a pause of 500 ms (paragraph)
  or 300 ms (sentence) follows, replacing the punctuation's. Where several breaks meet, the
  explicit ones add up and a ``<p>``/``<s>`` end counts only if it is longer than their sum.
* Any other element (``<emphasis>``, ``<voice>``, ``<audio>`` ...) is read as its text content:
  its tags are dropped, its text kept. Comments and processing instructions are dropped.

Whitespace runs (indentation, newlines) are one space, as in XML text. Inline readings
(``{行|hang2}``) work in SSML text too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Union
from xml.etree.ElementTree import ParseError, TreeBuilder

from ..errors import SsmlError
from .markup import Span, check_readings, is_hanzi, parse_inline, syllables
from .numbers import read_digits, read_number

SSML_NS = "http://www.w3.org/2001/10/synthesis"
MAX_BREAK_MS = 10_000
MIN_RATE, MAX_RATE = 0.1, 10.0  # accepted prosody rates; the engine's range is applied later
BREAK_STRENGTH_MS = {"none": 0, "x-weak": 100, "weak": 150, "medium": 300, "strong": 500, "x-strong": 1000}
STRUCTURE_MS = {"p": 500, "paragraph": 500, "s": 300, "sentence": 300}  # chunker.PAUSE_MS's
RATE_WORDS = {"x-slow": 0.5, "slow": 0.75, "medium": 1.0, "default": 1.0, "fast": 1.25, "x-fast": 1.5}
_TIME = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s)\s*$")
_PERCENT = re.compile(r"\s*([+-]?)(\d+(?:\.\d+)?)\s*%\s*$")
_NUMBER = re.compile(r"\s*(\d+(?:\.\d+)?)\s*$")
_SPACE = re.compile(r"\s+")
_SAY_AS = ("characters", "digits", "telephone", "date", "cardinal")


@dataclass(frozen=True)
class Text:
    span: Span
    rate: float = 1.0  # product of the enclosing prosody rates


@dataclass(frozen=True)
class Break:
    ms: int
    structural: bool = False  # the end of a <p> or <s>: next to other breaks the longest counts


Piece = Union[Text, Break]


class SsmlDocument(str):
    """A parsed document: the str value is its shown text; ``pieces`` what to speak."""

    pieces: tuple[Piece, ...]

    def __new__(cls, pieces) -> "SsmlDocument":
        pieces = tuple(pieces)
        obj = super().__new__(cls, "".join(p.span.shown for p in pieces if isinstance(p, Text)))
        obj.pieces = pieces
        return obj

    def __reduce__(self):
        return SsmlDocument, (self.pieces,)


def maybe_ssml(text: str) -> str:
    """``parse_ssml(text)`` when ``text`` is a ``<speak>`` document, else ``text`` itself."""
    return parse_ssml(text) if text.lstrip().startswith("<speak") else text


def parse_ssml(doc: str) -> SsmlDocument:
    """Parse a ``<speak>`` document (see the module docstring); raises ``SsmlError``."""
    if not isinstance(doc, str):
        raise SsmlError("SSML must be a string")
    root, where = _parse_xml(doc)
    if _local(root.tag) != "speak":
        raise SsmlError(f"the root element must be <speak>, not <{_local(root.tag)}>", *where(root))
    pieces: list[Piece] = []
    _walk(root, 1.0, pieces, where, top=True)
    return SsmlDocument(_tidy(pieces))


# ---- XML ---------------------------------------------------------------------------------------

class _Builder(TreeBuilder):
    """A tree builder that remembers where each element starts (1-based line and column)."""

    def __init__(self):
        super().__init__()
        self.expat = None
        self.positions: dict = {}

    def start(self, tag, attrs):
        elem = super().start(tag, attrs)
        if self.expat is not None:
            self.positions[elem] = (self.expat.CurrentLineNumber, self.expat.CurrentColumnNumber + 1)
        return elem


def _parse_xml(doc: str):
    # Imported here: defusedxml is in the server extra, and only SSML input needs it.
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import DefusedXMLParser

    builder = _Builder()
    parser = DefusedXMLParser(target=builder, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    builder.expat = parser.parser
    try:
        parser.feed(doc)
        root = parser.close()
    except ParseError as exc:
        line, col = exc.position
        reason = str(exc).split(":", 1)[0]
        raise SsmlError(f"not well-formed XML ({reason})", line, col + 1) from None
    except DefusedXmlException as exc:
        line, col = parser.parser.CurrentLineNumber, parser.parser.CurrentColumnNumber + 1
        raise SsmlError(f"DTDs and entity declarations are not allowed in SSML ({type(exc).__name__})",
                        line, col) from None
    except (ValueError, RecursionError) as exc:
        raise SsmlError(f"cannot parse SSML: {exc}") from None

    def where(elem):
        return builder.positions.get(elem, (None, None))

    return root, where


def _local(tag) -> str:
    if not isinstance(tag, str):
        return ""  # a comment or processing instruction
    if tag.startswith("{"):
        ns, _, name = tag[1:].partition("}")
        return name if ns == SSML_NS else tag
    return tag


# ---- elements ----------------------------------------------------------------------------------

def _walk(elem, rate: float, out: list, where, top: bool = False) -> None:
    """Append the pieces of ``elem``'s content (its text and children, not its tail)."""
    _text(elem.text, rate, out)
    for child in elem:
        _element(child, rate, out, where)
        _text(child.tail, rate, out)


def _element(elem, rate: float, out: list, where) -> None:
    name = _local(elem.tag)
    pos = where(elem)
    if name == "speak":
        raise SsmlError("<speak> may only be the root element", *pos)
    if name == "break":
        out.append(Break(_break_ms(elem, pos)))
        if len(elem) or (elem.text or "").strip():
            raise SsmlError("<break> must be empty", *pos)
    elif name == "prosody":
        _walk(elem, rate * _rate(elem.get("rate"), pos), out, where)
    elif name == "phoneme":
        out.append(Text(_phoneme(elem, pos), rate))
    elif name == "say-as":
        shown = _content(elem)
        spoken = _say_as(elem.get("interpret-as"), elem.get("format"), shown, pos)
        if shown:
            out.append(Text(Span(shown, spoken=spoken) if spoken is not None else Span(shown), rate))
    elif name == "sub":
        alias = elem.get("alias")
        if alias is None or not alias.strip():
            raise SsmlError("<sub> needs a non-empty alias attribute", *pos)
        shown = _content(elem)
        if not shown:
            raise SsmlError("<sub> needs the text it stands for as its content", *pos)
        out.append(Text(Span(shown, spoken=_SPACE.sub(" ", alias.strip())), rate))
    elif name in STRUCTURE_MS:  # a paragraph or sentence: its text, then a sentence end
        _walk(elem, rate, out, where)
        out.append(Break(STRUCTURE_MS[name], structural=True))
    else:  # unknown or unsupported element: its text content is read as plain text
        _walk(elem, rate, out, where)


def _text(text: Optional[str], rate: float, out: list) -> None:
    if text:
        for span in parse_inline(_SPACE.sub(" ", text)):
            out.append(Text(span, rate))


def _content(elem) -> str:
    return _SPACE.sub(" ", "".join(elem.itertext())).strip()


def _break_ms(elem, pos) -> int:
    time, strength = elem.get("time"), elem.get("strength")
    if time is not None:
        m = _TIME.match(time)
        if not m:
            raise SsmlError(f"break time {time!r} is not a duration like 300ms or 1.5s", *pos)
        ms = float(m.group(1)) * (1000.0 if m.group(2) == "s" else 1.0)
        if ms > MAX_BREAK_MS:
            raise SsmlError(f"break time {time!r} is longer than {MAX_BREAK_MS // 1000} s", *pos)
        return int(round(ms))
    if strength is None:
        return BREAK_STRENGTH_MS["medium"]
    if strength not in BREAK_STRENGTH_MS:
        raise SsmlError(f"break strength {strength!r} is not one of {', '.join(BREAK_STRENGTH_MS)}", *pos)
    return BREAK_STRENGTH_MS[strength]


def _rate(value: Optional[str], pos) -> float:
    if value is None:
        return 1.0
    v = value.strip()
    if v in RATE_WORDS:
        rate = RATE_WORDS[v]
    elif (m := _PERCENT.match(v)) is not None:
        number = float(m.group(2)) / 100.0
        rate = 1.0 + number if m.group(1) == "+" else 1.0 - number if m.group(1) == "-" else number
    elif (m := _NUMBER.match(v)) is not None:
        rate = float(m.group(1))
    else:
        raise SsmlError(f"prosody rate {value!r} is not x-slow, slow, medium, fast, x-fast, a percentage "
                        "(80%) or a multiplier (1.5)", *pos)
    if not MIN_RATE <= rate <= MAX_RATE:
        raise SsmlError(f"prosody rate {value!r} is outside {MIN_RATE:g}x-{MAX_RATE:g}x", *pos)
    return rate


def _phoneme(elem, pos) -> Span:
    alphabet = elem.get("alphabet")
    if alphabet != "pinyin":
        raise SsmlError(f"phoneme alphabet {alphabet!r} is not supported; use alphabet=\"pinyin\"", *pos)
    ph = elem.get("ph")
    if ph is None:
        raise SsmlError("<phoneme> needs a ph attribute (toned pinyin, e.g. ph=\"hang2\")", *pos)
    if len(elem):
        raise SsmlError("<phoneme> must contain only text (the hanzi it reads)", *pos)
    hanzi = _SPACE.sub("", elem.text or "")
    ph = " ".join(ph.lower().split())
    why = check_readings(hanzi, ph) if hanzi else "<phoneme> has no hanzi to read"
    if why is not None:
        raise SsmlError(f"phoneme ph={ph!r} for {hanzi!r}: {why}", *pos)
    return Span(hanzi, readings=syllables(ph))


def _say_as(kind: Optional[str], fmt: Optional[str], text: str, pos) -> Optional[str]:
    """What to say for ``text`` read as ``kind``; None: read it as plain text."""
    if kind is None:
        raise SsmlError("<say-as> needs an interpret-as attribute", *pos)
    if kind not in _SAY_AS or not text:
        return None
    if kind == "characters":
        return "".join(read_digits(c) if c.isdigit() and c.isascii() else c.upper() if c.isascii() else c
                       for c in text if not c.isspace())
    if kind in ("digits", "telephone"):
        spoken = "".join(read_digits(c, phone=kind == "telephone") if c.isascii() and c.isdigit() else
                         "" if c in "-+() " and kind == "telephone" else c for c in text)
        return spoken
    if kind == "cardinal":
        digits = text.replace(",", "").replace("_", "").strip()
        if not re.fullmatch(r"[+-]?\d+(?:\.\d+)?", digits):
            raise SsmlError(f"say-as cardinal: {text!r} is not a number", *pos)
        return read_number(digits)
    return _date(text, fmt or "ymd", pos)


def _date(text: str, fmt: str, pos) -> str:
    fmt = fmt.lower()
    if fmt not in ("ymd", "dmy", "mdy", "ym", "md", "my", "y", "m", "d"):
        raise SsmlError(f"say-as date format {fmt!r} is not supported (ymd, dmy, mdy, ym, md, y)", *pos)
    parts = re.split(r"[-/. ]+", text.strip())
    if len(parts) != len(fmt) or not all(p.isdigit() and p.isascii() for p in parts):
        raise SsmlError(f"say-as date: {text!r} does not match format {fmt!r}", *pos)
    fields = dict(zip(fmt, parts))
    out = ""
    if "y" in fields:
        out += read_digits(fields["y"]) + "年"
    for key, unit, top in (("m", "月", 12), ("d", "日", 31)):
        if key in fields:
            n = int(fields[key])
            if not 1 <= n <= top:
                raise SsmlError(f"say-as date: {text!r} has no valid {'month' if key == 'm' else 'day'}", *pos)
            out += read_number(str(n)) + unit
    return out


def _tidy(pieces: list) -> list:
    """Merge neighbouring plain text of one rate; drop empty text."""
    out: list = []
    for p in pieces:
        if isinstance(p, Text) and not p.span.shown:
            continue
        last = out[-1] if out else None
        if (isinstance(p, Text) and isinstance(last, Text) and not p.span.atomic and not last.span.atomic
                and p.rate == last.rate):
            out[-1] = Text(Span(last.span.shown + p.span.shown), p.rate)
        else:
            out.append(p)
    return out


__all__ = ["parse_ssml", "maybe_ssml", "SsmlDocument", "Text", "Break", "Piece", "BREAK_STRENGTH_MS",
           "RATE_WORDS", "is_hanzi"]
