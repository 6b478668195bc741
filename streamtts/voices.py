"""The 24 built-in voices and the speaker vector the acoustic model expects for each.

The multi-speaker model was trained with a speaker vector derived from the voice's *name*: the 32
hex digits of md5(name), each digit d mapped to (d - 7) / 10. Any name gives some vector, but only
these 24 were in the training data.
"""

from __future__ import annotations

import hashlib

import numpy as np

from streamtts.errors import UnknownVoiceError

VOICES: tuple[str, ...] = (
    "Aibao", "Aicheng", "Aida", "Aijia", "Aijing", "Aimei", "Aina", "Aiqi", "Aitong", "Aiwei",
    "Aixia", "Aiya", "Aiyu", "Aiyue", "Siyue", "Xiaobei", "Xiaogang", "Xiaomei", "Xiaomeng",
    "Xiaowei", "Xiaoxue", "Xiaoyun", "Yina", "biaobei",
)
DEFAULT_VOICE = "biaobei"

_BY_LOWER = {v.lower(): v for v in VOICES}


def resolve_voice(name: str | None) -> str:
    """The canonical voice name for ``name`` (case-insensitive); the default for None/empty."""
    if not name:
        return DEFAULT_VOICE
    voice = _BY_LOWER.get(str(name).strip().lower())
    if voice is None:
        raise UnknownVoiceError(f"unknown voice {name!r}; the voices are: {', '.join(VOICES)}")
    return voice


def speaker_vector(name: str) -> np.ndarray:
    """(32,) float32 numpy speaker vector of a voice (``torch.from_numpy`` it for the torch model)."""
    digest = hashlib.md5(resolve_voice(name).encode("utf-8")).hexdigest()
    return ((np.array([int(d, 16) for d in digest], dtype=np.float32) - 7.0) / 10.0).astype(np.float32)
