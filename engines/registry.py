"""Backends by name: an acoustic model, a vocoder, or both as an engine.

How to call::

    engine   = create_models("auto")                       # engines.base.ModelPair; pack optional
    engine   = create_models("onnx-int8", vocoder="hifigan")
    acoustic = create_acoustic("torch")                    # "torch", "onnx", "onnx-int8", "auto"
    vocoder  = create_vocoder("melgan", backend="onnx")    # "melgan", "hifigan", "auto"; backend
                                                           # "torch", "onnx", "auto"
    ENGINE_NAMES, VOCODER_NAMES, VOCODER_BACKENDS          # the accepted names

Acoustic ``auto`` picks the fastest backend that can be built here, by measurement on the 2-core
CPU (decoder ms/step at batch 1: torch 2.4-2.7, onnx 0.5-1.2, onnx-int8 0.24-0.33) at the same
intelligibility (Whisper base syllable error on the 16 test sentences x 2 seeds: torch 1.36 %,
onnx 0.91 %, onnx-int8 1.14 %; one syllable is 0.23 %):

* onnx-int8 on CPU; its INT8 kernels are CPU kernels, so with a CUDA/TensorRT provider available
  ``auto`` takes onnx (fp32) instead;
* onnx when the INT8 graphs cannot be built (e.g. the quantizer fails);
* torch when onnxruntime is missing or the export fails.
A fallback is logged as a warning with the reason.

Where torch sees a CUDA GPU, acoustic ``auto`` is ``cuda`` (engines/cuda_backend.py: device-resident
slots, CUDA-graph decoder blocks) and its vocoder runs on the same GPU; on a CPU ``auto`` is as
above. ``cuda`` asked for by name on a machine without CUDA raises CudaUnavailableError, unless
``STREAMTTS_CUDA_DRY_RUN=1`` asks for its code to run on the CPU (for tests).

Vocoder ``auto`` is MelGAN on a CPU and HiFiGAN V1 where CUDA is available. Measured here
(onnx-int8 acoustic model, the 16 test sentences, voices biaobei and Aiyue, Whisper base): HiFiGAN
0.45 % + 0.91 % syllable errors against MelGAN's 0.0 % + 1.36 %, the same within a syllable,
while HiFiGAN costs 6.8x MelGAN's arithmetic (52.8 against 7.8 GFLOP per audio second; torch CPU
2 threads, whole 3 s utterance: RTF 0.51 against 0.08). On this CPU that is the difference between
serving several streams and not holding one in real time once window context is added, so the
CPU default is MelGAN; on a GPU the arithmetic is cheap and HiFiGAN is the design card's
vocoder. Backend ``auto`` is the faster one per vocoder (AUTO_VOCODER_BACKEND: onnx for MelGAN, torch for
HiFiGAN); onnx falls back to torch, logged, when onnxruntime is missing or the export fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

from engines.base import AcousticModel, ModelPair, Vocoder
from streamtts.errors import StreamTTSError
from streamtts.pack import VoicePack, ensure_pack

log = logging.getLogger(__name__)

ENGINE_NAMES = ("auto", "torch", "onnx", "onnx-int8", "cuda")  # acoustic backends
VOCODER_NAMES = ("auto", "melgan", "hifigan")
VOCODER_BACKENDS = ("auto", "torch", "onnx")


class UnknownEngineError(StreamTTSError, ValueError):
    """An engine (acoustic backend or vocoder backend) name that is not one of the accepted ones."""

    code = "unknown_engine"


class UnknownVocoderError(StreamTTSError, ValueError):
    """A vocoder name that is not one of VOCODER_NAMES."""

    code = "unknown_vocoder"


class VocoderUnavailableError(StreamTTSError, RuntimeError):
    """A known vocoder whose code is not installed in this checkout."""

    code = "vocoder_unavailable"


def _key(name: str, choices: tuple[str, ...], error: type[StreamTTSError], what: str) -> str:
    key = str(name).strip().lower()
    if key not in choices:
        raise error(f"unknown {what} {name!r}; the {what}s are: {', '.join(choices)}")
    return key


def check_names(engine: str = "auto", vocoder: str = "auto") -> None:
    """Raise the typed error (listing the choices) for an unknown engine or vocoder name."""
    _key(engine, ENGINE_NAMES, UnknownEngineError, "engine")
    _key(vocoder, VOCODER_NAMES, UnknownVocoderError, "vocoder")


# ---- acoustic ----------------------------------------------------------------------------------

def _torch(pack: VoicePack) -> AcousticModel:
    from engines.torch_backend import TorchTacotron

    return TorchTacotron(pack)


def _onnx(pack: VoicePack, variant: str) -> AcousticModel:
    from engines.onnx_backend import OnnxTacotron

    return OnnxTacotron(pack, variant=variant)


def _gpu_provider() -> bool:
    import onnxruntime

    gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
    return bool(gpu & set(onnxruntime.get_available_providers()))


def _cuda(pack: VoicePack) -> AcousticModel:
    """engines/cuda_backend.py: CUDA, or the CPU dry run with STREAMTTS_CUDA_DRY_RUN=1; else a
    typed CudaUnavailableError."""
    from engines.cuda_backend import CudaTacotron

    return CudaTacotron(pack)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _auto(pack: VoicePack) -> AcousticModel:
    if _cuda_available():  # a GPU: the device-resident backend (on a CPU, auto is as before)
        return _cuda(pack)
    try:
        variants = ["fp32"] if _gpu_provider() else ["int8", "fp32"]
    except ImportError as exc:
        log.warning("onnxruntime is not available (%s); using the torch backend", exc)
        return _torch(pack)
    for variant in variants:
        try:
            return _onnx(pack, variant)
        except StreamTTSError:
            raise  # the user's environment (e.g. the voice pack), not the backend
        except Exception as exc:  # noqa: BLE001 - any export/quantization/ORT failure falls back
            log.warning("ONNX backend (%s) unavailable: %s: %s", variant, type(exc).__name__, exc)
    log.warning("using the torch backend")
    return _torch(pack)


def create_acoustic(name: str = "auto", pack: Optional[VoicePack] = None) -> AcousticModel:
    """A new acoustic model by backend name (case-insensitive): one of ENGINE_NAMES."""
    key = _key(name, ENGINE_NAMES, UnknownEngineError, "engine")
    pack = pack or ensure_pack()
    if key == "torch":
        return _torch(pack)
    if key == "cuda":
        return _cuda(pack)
    if key == "onnx":
        return _onnx(pack, "fp32")
    if key == "onnx-int8":
        return _onnx(pack, "int8")
    return _auto(pack)


# ---- vocoder -----------------------------------------------------------------------------------

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
    _check_vocoder("hifigan")
    from streamtts.pack.hifigan import ensure_hifigan

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
    key = _key(kind, tuple(VOCODER_SOURCES), UnknownVocoderError, "vocoder")
    return VOCODER_SOURCES[key](source)


def _hifigan_available() -> bool:
    try:
        import streamtts.models.hifigan  # noqa: F401
        import streamtts.pack.hifigan  # noqa: F401
    except ImportError:
        return False
    return True


def _check_vocoder(kind: str) -> None:
    if kind == "hifigan" and not _hifigan_available():
        raise VocoderUnavailableError("the HiFiGAN vocoder is not available yet in this version "
                                      "(streamtts.models.hifigan / streamtts.pack.hifigan missing); use melgan")


def _torch_vocoder(kind: str, pack: VoicePack) -> Vocoder:
    from engines.torch_backend import TorchVocoder

    return TorchVocoder(vocoder_source(pack, kind).load(), name=f"{kind}-torch")


def _onnx_vocoder(kind: str, pack: VoicePack) -> Vocoder:
    from engines.onnx_backend import OnnxVocoder

    return OnnxVocoder(pack, kind=kind)


def _onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


# The faster backend of each vocoder, measured in one run on the 2-core CPU (2 threads, RTF of a
# 200-frame window): MelGAN onnx 0.08 / torch 0.13; HiFiGAN onnx 0.84-0.89 / torch 0.52-0.54
# (ONNX Runtime's transposed convolutions with HiFiGAN's kernel sizes are the slow part).
AUTO_VOCODER_BACKEND = {"melgan": "onnx", "hifigan": "torch"}


def auto_vocoder() -> str:
    """What vocoder ``auto`` means on this machine (see the module docstring)."""
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    return "hifigan" if cuda and _hifigan_available() else "melgan"


def create_vocoder(name: str = "auto", backend: str = "auto", pack: Optional[VoicePack] = None) -> Vocoder:
    """A new vocoder by name (one of VOCODER_NAMES) on a backend (one of VOCODER_BACKENDS)."""
    kind = _key(name, VOCODER_NAMES, UnknownVocoderError, "vocoder")
    backend_key = _key(backend, VOCODER_BACKENDS, UnknownEngineError, "vocoder backend")
    kind = auto_vocoder() if kind == "auto" else kind
    _check_vocoder(kind)
    pack = pack or ensure_pack()
    if backend_key == "torch" or backend_key == "auto" and AUTO_VOCODER_BACKEND[kind] == "torch":
        return _torch_vocoder(kind, pack)
    if backend_key == "onnx":
        return _onnx_vocoder(kind, pack)
    if not _onnxruntime_available():
        log.warning("onnxruntime is not available; using the torch %s vocoder", kind)
        return _torch_vocoder(kind, pack)
    try:
        return _onnx_vocoder(kind, pack)
    except StreamTTSError:
        raise
    except Exception as exc:  # noqa: BLE001 - any export/ORT failure falls back
        log.warning("ONNX %s vocoder unavailable: %s: %s; using torch", kind, type(exc).__name__, exc)
        return _torch_vocoder(kind, pack)


# ---- both --------------------------------------------------------------------------------------

def create_models(name: str = "auto", vocoder: str = "auto", pack: Optional[VoicePack] = None) -> ModelPair:
    """A new engine: the acoustic backend ``name`` (ENGINE_NAMES) and the ``vocoder``
    (VOCODER_NAMES, on the ``auto`` vocoder backend). Names are checked before anything loads."""
    if isinstance(vocoder, VoicePack):  # the old create_models(name, pack) call
        vocoder, pack = "auto", vocoder
    _key(name, ENGINE_NAMES, UnknownEngineError, "engine")
    _check_vocoder(_key(vocoder, VOCODER_NAMES, UnknownVocoderError, "vocoder"))
    pack = pack or ensure_pack()
    acoustic = create_acoustic(name, pack)
    if acoustic.name == "cuda":  # its vocoder runs on the same device, on a stream of its own
        from engines.cuda_backend import cuda_vocoder

        kind = auto_vocoder() if vocoder == "auto" else _key(vocoder, VOCODER_NAMES, UnknownVocoderError, "vocoder")
        return ModelPair(acoustic, cuda_vocoder(vocoder_source(pack, kind).load(), kind, acoustic))  # type: ignore[arg-type]
    return ModelPair(acoustic, create_vocoder(vocoder, "auto", pack))
