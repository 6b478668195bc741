"""Where a vocoder's weights come from, by vocoder name.

    src = vocoder_source(pack, "hifigan")   # VocoderSource(kind, sha256, load, cache_root)
    src.load()                              # the torch module (CPU, eval)
    vocoder_source(src)                     # a VocoderSource is returned as it is

Its own module so that the backends that build vocoders (engines/onnx_backend.py,
engines/onnx_export.py, engines/tensorrt_backend.py) and the registry that picks them
(engines/registry.py) all import it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from streamtts.errors import StreamTTSError
from streamtts.pack import VoicePack, ensure_pack

__all__ = ["VocoderSource", "VOCODER_SOURCES", "vocoder_source", "UnknownVocoderError", "VocoderUnavailableError"]


class UnknownVocoderError(StreamTTSError, ValueError):
    """A vocoder name that is not one of the accepted ones."""

    code = "unknown_vocoder"


class VocoderUnavailableError(StreamTTSError, RuntimeError):
    """A known vocoder whose code cannot be loaded here."""

    code = "vocoder_unavailable"


@dataclass(frozen=True)
class VocoderSource:
    """Where a vocoder's weights come from: ``kind`` names it (and its ONNX graph folder),
    ``sha256`` (of the weights file) keys the exported graphs, ``load()`` returns the torch module
    (CPU, eval) with our window convention (engines/torch_backend.py), and ONNX graphs are cached
    under ``cache_root/onnx/<kind>/``."""

    kind: str
    sha256: str
    load: Callable[[], Any] = field(compare=False)
    cache_root: Path


def _melgan_source(pack: Optional[VoicePack]) -> VocoderSource:
    pack = pack or ensure_pack()
    return VocoderSource("melgan", pack.manifest["vocoder"]["sha256"], pack.load_vocoder, Path(pack.path))


def _hifigan_source(pack: Optional[VoicePack]) -> VocoderSource:
    """HiFiGAN has its own pack (not the voice pack's): streamtts/pack/hifigan.py."""
    try:
        # imported when HiFiGAN is asked for: it loads torch and HiFiGAN's model code, which a
        # MelGAN-only process (the ONNX vocoder from a warm cache) never needs
        from streamtts.pack.hifigan import ensure_hifigan
    except ImportError as exc:
        raise VocoderUnavailableError(f"the HiFiGAN vocoder cannot be loaded here ({exc}); use melgan") from exc
    hifigan = ensure_hifigan()
    return VocoderSource("hifigan", hifigan.manifest["generator"]["sha256"], hifigan.load, Path(hifigan.path))


# How each vocoder finds its weights, given the voice pack (or None for the default one).
VOCODER_SOURCES: dict[str, Callable[[Optional[VoicePack]], VocoderSource]] = {
    "melgan": _melgan_source,
    "hifigan": _hifigan_source,
}


def vocoder_source(source: Union[VoicePack, VocoderSource, None], kind: str = "melgan") -> VocoderSource:
    """A VocoderSource as is; else the ``kind`` vocoder for the voice pack ``source`` (or the default)."""
    if isinstance(source, VocoderSource):
        return source
    key = str(kind).strip().lower()
    if key not in VOCODER_SOURCES:
        raise UnknownVocoderError(f"unknown vocoder {kind!r}; the vocoders are: {', '.join(VOCODER_SOURCES)}")
    return VOCODER_SOURCES[key](source)
