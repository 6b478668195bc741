"""The 24 built-in voices and the speaker vector the acoustic model expects for each.

The multi-speaker model was trained with a speaker vector derived from the voice's *name*: the 32
hex digits of md5(name), each digit d mapped to (d - 7) / 10. Any name gives some vector, but only
these 24 were in the training data.

A *blend* mixes voices: ``"Aiyue:0.7,biaobei:0.3"`` (or the mapping ``{"Aiyue": 0.7, "biaobei": 0.3}``)
is the weighted sum of their speaker vectors, the weights normalized to sum 1::

    resolve_voice("biaobei:1, aiyue:3")    # -> "Aiyue:0.75,biaobei:0.25"  (canonical spec)
    resolve_voice({"Aiyue": 2})            # -> "Aiyue"   (one voice is that voice)
    blend_weights("Aiyue:0.75,biaobei:0.25")   # -> (("Aiyue", 0.75), ("biaobei", 0.25))
    speaker_vector("Aiyue:0.75,biaobei:0.25")  # -> 0.75 * v(Aiyue) + 0.25 * v(biaobei), (32,) float32

The canonical spec is a plain string, so a blend goes wherever a voice name goes (requests, the
phrase-cache key, ``ready``). Rules: names case-insensitive; a weight is a decimal number >= 0
(omitted: 1); at most 8 voices; a voice named twice, a negative, non-finite or all-zero weight is a
``BadVoiceError`` (``bad_voice``), an unknown name an ``UnknownVoiceError`` (``unknown_voice``). The
normalized weights are apportioned in steps of 1/10000 (largest remainder, so they sum to exactly 1;
a voice left with none is dropped) and listed heaviest first, ties in the order of ``VOICES``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from fractions import Fraction
from typing import Union

import numpy as np

from streamtts.errors import BadVoiceError, UnknownVoiceError

VOICES: tuple[str, ...] = (
    "Aibao", "Aicheng", "Aida", "Aijia", "Aijing", "Aimei", "Aina", "Aiqi", "Aitong", "Aiwei",
    "Aixia", "Aiya", "Aiyu", "Aiyue", "Siyue", "Xiaobei", "Xiaogang", "Xiaomei", "Xiaomeng",
    "Xiaowei", "Xiaoxue", "Xiaoyun", "Yina", "biaobei",
)
DEFAULT_VOICE = "biaobei"

_BY_LOWER = {v.lower(): v for v in VOICES}
_ORDER = {v: i for i, v in enumerate(VOICES)}

MAX_BLEND = 8  # voices in one blend
WEIGHT_UNITS = 10_000  # canonical weights are multiples of 1/WEIGHT_UNITS
_MAX_SPEC_CHARS = 256
# A decimal weight; bounded digits, so no exponent can make Fraction build a huge number.
_WEIGHT = re.compile(r"([+-]?)(\d{1,9}(?:\.\d{0,9})?|\.\d{1,9})")

VoiceSpec = Union[str, Mapping, None]


def resolve_voice(voice: VoiceSpec) -> str:
    """The canonical voice spec: a voice name (case-insensitive; the default for None/empty) as
    its canonical name, a blend (string or mapping name -> weight) as its canonical blend string."""
    if isinstance(voice, Mapping):
        return _canonical([(k, _number_weight(k, w)) for k, w in voice.items()])
    if voice is None or not str(voice).strip():
        return DEFAULT_VOICE
    text = str(voice).strip()
    if ":" not in text and "," not in text:
        return _name(text)
    if len(text) > _MAX_SPEC_CHARS:
        raise BadVoiceError(f"voice blend is {len(text)} characters; at most {_MAX_SPEC_CHARS}")
    return _canonical([_parse_part(part) for part in text.split(",")])


def blend_weights(voice: VoiceSpec) -> tuple[tuple[str, float], ...]:
    """((name, weight), ...) of a voice or blend, canonical: weights sum to 1, heaviest first."""
    spec = resolve_voice(voice)
    if ":" not in spec:
        return ((spec, 1.0),)
    parts = [p.split(":") for p in spec.split(",")]
    return tuple((name, int(w[2:].ljust(4, "0")) / WEIGHT_UNITS) for name, w in parts)


def speaker_vector(voice: VoiceSpec) -> np.ndarray:
    """(32,) float32 numpy speaker vector of a voice or blend (``torch.from_numpy`` it for the
    torch model): a blend is the weighted sum of its voices' vectors."""
    parts = blend_weights(voice)
    if len(parts) == 1:
        return _name_vector(parts[0][0])  # a single voice: exactly its own vector
    return sum(w * _name_vector(n).astype(np.float64) for n, w in parts).astype(np.float32)


def _name_vector(name: str) -> np.ndarray:
    digest = hashlib.md5(name.encode("utf-8")).hexdigest()
    return ((np.array([int(d, 16) for d in digest], dtype=np.float32) - 7.0) / 10.0).astype(np.float32)


def _name(name: str) -> str:
    voice = _BY_LOWER.get(name.strip().lower())
    if voice is None:
        raise UnknownVoiceError(f"unknown voice {name!r}; the voices are: {', '.join(VOICES)}")
    return voice


def _parse_part(part: str) -> tuple[str, Fraction]:
    name, sep, weight = part.partition(":")
    if not name.strip():
        raise BadVoiceError(f"voice blend part {part.strip()!r} has no voice name; write name:weight,name:weight")
    if not sep:
        return name, Fraction(1)
    m = _WEIGHT.fullmatch(weight.strip())
    if m is None:
        raise BadVoiceError(f"weight {weight.strip()!r} of {name.strip()!r} is not a decimal number")
    value = Fraction(m.group(2))
    if m.group(1) == "-" and value:
        raise BadVoiceError(f"weight of {name.strip()!r} is negative ({weight.strip()})")
    return name, value


def _number_weight(name, weight) -> Fraction:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise BadVoiceError(f"weight of {name!r} must be a number, got {weight!r}")
    if not math.isfinite(weight):
        raise BadVoiceError(f"weight of {name!r} must be finite, got {weight!r}")
    if weight < 0:
        raise BadVoiceError(f"weight of {name!r} is negative ({weight!r})")
    # a float as the decimal it was written as (0.07, not its binary value), so the object form
    # and the string form of the same blend resolve alike
    return Fraction(weight) if isinstance(weight, int) else Fraction(repr(float(weight)))


def _canonical(parts: list[tuple[object, Fraction]]) -> str:
    if not parts:
        raise BadVoiceError("a voice blend needs at least one voice")
    if len(parts) > MAX_BLEND:
        raise BadVoiceError(f"a voice blend has at most {MAX_BLEND} voices, got {len(parts)}")
    weights: dict[str, Fraction] = {}
    for raw, weight in parts:
        if not isinstance(raw, str):
            raise BadVoiceError(f"voice names are strings, got {raw!r}")
        name = _name(raw)
        if name in weights:
            raise BadVoiceError(f"voice {name} is named twice in the blend")
        weights[name] = weight
    total = sum(weights.values())
    if total == 0:
        raise BadVoiceError("the weights of a voice blend sum to zero")
    # largest remainder: floor every share, give the units left to the largest fractional parts
    shares = {n: w * WEIGHT_UNITS / total for n, w in weights.items()}
    units = {n: math.floor(s) for n, s in shares.items()}
    left = WEIGHT_UNITS - sum(units.values())
    for n in sorted(shares, key=lambda n: (-(shares[n] - units[n]), _ORDER[n]))[:left]:
        units[n] += 1
    kept = sorted((n for n in units if units[n]), key=lambda n: (-units[n], _ORDER[n]))
    if len(kept) == 1:
        return kept[0]
    return ",".join(f"{n}:{_format_units(units[n])}" for n in kept)


def _format_units(units: int) -> str:
    return "0." + f"{units:04d}".rstrip("0")
