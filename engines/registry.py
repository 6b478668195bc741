"""Backends by name: an acoustic model, a vocoder, or both as an engine.

How to call::

    engine   = create_models("auto")                       # engines.base.ModelPair; pack optional
    engine   = create_models("onnx-int8", vocoder="hifigan")
    acoustic = create_acoustic("torch")                    # one of ENGINE_NAMES
    vocoder  = create_vocoder("melgan", backend="onnx")    # "melgan", "hifigan", "auto"; backend
                                                           # "torch", "onnx", "auto"
    ENGINE_NAMES, VOCODER_NAMES, VOCODER_BACKENDS          # the accepted names

Acoustic ``auto`` picks the fastest backend that can be built here. On a CPU the bench ranks them
onnx-int8, onnx, torch by decoder time per step, at the same intelligibility within a syllable
(the figures: README, "Speed", and docs/bench-cpu2.json):

* onnx-int8 on CPU; its INT8 kernels are CPU kernels, so with a CUDA/TensorRT provider available
  ``auto`` takes onnx (fp32) instead;
* onnx when the INT8 graphs cannot be built (e.g. the quantizer fails);
* torch when onnxruntime is missing or the export fails.
A fallback is logged as a warning with the reason.

Where torch sees a CUDA GPU, acoustic ``auto`` is ``cuda`` (engines/cuda_backend.py: device-resident
slots, CUDA-graph decoder blocks) and its vocoder runs on the same GPU; on a CPU ``auto`` is as
above. ``cuda`` asked for by name on a machine without CUDA raises CudaUnavailableError, unless
``STREAMTTS_CUDA_DRY_RUN=1`` asks for its code to run on the CPU (for tests). ``tensorrt``
(engines/tensorrt_backend.py: the cuda backend with its decoder step and its vocoder as TensorRT
engines) is only built when asked for by name; without TensorRT or a CUDA GPU it raises
TensorRTUnavailableError (``tensorrt_unavailable``) before the voice pack is looked at.

Vocoder ``auto`` is MelGAN on a CPU and HiFiGAN V1 where CUDA is available. Both are equally
intelligible on the bench's sentences, but HiFiGAN costs several times MelGAN's arithmetic per
second of audio (README, "Capacity"): on a CPU that is the difference between serving several
streams and not holding one in real time once window context is added, so the CPU default is
MelGAN; on a GPU the arithmetic is cheap and HiFiGAN is the design card's vocoder. Backend
``auto`` is the faster one per vocoder (AUTO_VOCODER_BACKEND: onnx for MelGAN, torch for
HiFiGAN); onnx falls back to torch, logged, when onnxruntime is missing or the export fails.

The backends are imported by the functions that build them: each loads a heavy or optional
dependency (torch, onnxruntime, CUDA, TensorRT) that the other backends do not need.
"""

from __future__ import annotations

import logging
from typing import Optional

from engines.base import AcousticModel, ModelPair, Vocoder
from engines.vocoder_source import (VOCODER_SOURCES, UnknownVocoderError, VocoderSource,  # noqa: F401 (re-exported)
                                    VocoderUnavailableError, vocoder_source)
from streamtts.errors import StreamTTSError
from streamtts.pack import VoicePack, ensure_pack

log = logging.getLogger(__name__)

ENGINE_NAMES = ("auto", "torch", "onnx", "onnx-int8", "cuda", "tensorrt")  # acoustic backends
VOCODER_NAMES = ("auto", "melgan", "hifigan")
VOCODER_BACKENDS = ("auto", "torch", "onnx")


class UnknownEngineError(StreamTTSError, ValueError):
    """An engine (acoustic backend or vocoder backend) name that is not one of the accepted ones."""

    code = "unknown_engine"


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

# Each backend is imported where it is built (see the module docstring): torch, onnxruntime,
# CUDA and TensorRT load only for the backend asked for.

def _torch(pack: VoicePack) -> AcousticModel:
    from engines.torch_backend import TorchTacotron  # torch

    return TorchTacotron(pack)


def _onnx(pack: VoicePack, variant: str) -> AcousticModel:
    from engines.onnx_backend import OnnxTacotron  # onnxruntime (optional: auto falls back to torch)

    return OnnxTacotron(pack, variant=variant)


def _gpu_provider() -> bool:
    import onnxruntime  # optional: ImportError tells auto to use torch

    gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
    return bool(gpu & set(onnxruntime.get_available_providers()))


def _cuda(pack: VoicePack) -> AcousticModel:
    """engines/cuda_backend.py: CUDA, or the CPU dry run with STREAMTTS_CUDA_DRY_RUN=1; else a
    typed CudaUnavailableError."""
    from engines.cuda_backend import CudaTacotron  # torch, on a CUDA device

    return CudaTacotron(pack)


def _check_tensorrt() -> None:
    """TensorRTUnavailableError now when TensorRT is missing: before the voice pack is fetched."""
    from engines.tensorrt_backend import import_tensorrt  # torch; TensorRT itself is optional

    import_tensorrt(builder=False)


def _tensorrt(pack: VoicePack) -> AcousticModel:
    """engines/tensorrt_backend.py: TensorRT on a CUDA GPU, else a typed TensorRTUnavailableError."""
    from engines.tensorrt_backend import TensorRTTacotron  # torch; TensorRT itself is optional

    return TensorRTTacotron(pack)


def _cuda_available() -> bool:
    try:
        import torch  # optional for the names' checks: without torch there is no CUDA
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
    if key == "tensorrt":
        _check_tensorrt()
    pack = pack or ensure_pack()
    if key == "torch":
        return _torch(pack)
    if key == "cuda":
        return _cuda(pack)
    if key == "tensorrt":
        return _tensorrt(pack)
    if key == "onnx":
        return _onnx(pack, "fp32")
    if key == "onnx-int8":
        return _onnx(pack, "int8")
    return _auto(pack)


# ---- vocoder -----------------------------------------------------------------------------------

def _hifigan_available() -> bool:
    try:  # HiFiGAN's model and pack code, which need torch (the server extra)
        import streamtts.models.hifigan  # noqa: F401
        import streamtts.pack.hifigan  # noqa: F401
    except ImportError:
        return False
    return True


def _check_vocoder(kind: str) -> None:
    if kind == "hifigan" and not _hifigan_available():
        raise VocoderUnavailableError("the HiFiGAN vocoder cannot be loaded here (streamtts.models.hifigan and "
                                      "streamtts.pack.hifigan need torch, from the server extra); use melgan")


def _torch_vocoder(kind: str, pack: VoicePack) -> Vocoder:
    from engines.torch_backend import TorchVocoder  # torch

    return TorchVocoder(vocoder_source(pack, kind).load(), name=f"{kind}-torch")


def _onnx_vocoder(kind: str, pack: VoicePack) -> Vocoder:
    from engines.onnx_backend import OnnxVocoder  # onnxruntime (optional: auto falls back to torch)

    return OnnxVocoder(pack, kind=kind)


def _onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401  (optional)
    except ImportError:
        return False
    return True


# The faster backend of each vocoder on the CPU, timed side by side: ONNX Runtime for MelGAN, torch
# for HiFiGAN (ONNX Runtime's transposed convolutions with HiFiGAN's kernel sizes are its slow part).
AUTO_VOCODER_BACKEND = {"melgan": "onnx", "hifigan": "torch"}


def auto_vocoder() -> str:
    """What vocoder ``auto`` means on this machine (see the module docstring)."""
    try:
        import torch  # optional for the names' checks: without torch there is no CUDA

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
    key = _key(name, ENGINE_NAMES, UnknownEngineError, "engine")
    _check_vocoder(_key(vocoder, VOCODER_NAMES, UnknownVocoderError, "vocoder"))
    if key == "tensorrt":
        _check_tensorrt()
    pack = pack or ensure_pack()
    acoustic = create_acoustic(name, pack)
    kind = auto_vocoder() if vocoder == "auto" else _key(vocoder, VOCODER_NAMES, UnknownVocoderError, "vocoder")
    if acoustic.name == "tensorrt":  # its vocoder is a TensorRT engine too, on the same GPU
        from engines.tensorrt_backend import TensorRTVocoder  # TensorRT (optional)

        return ModelPair(acoustic, TensorRTVocoder(vocoder_source(pack, kind)))
    if acoustic.name == "cuda":  # its vocoder runs on the same device, on a stream of its own
        from engines.cuda_backend import cuda_vocoder  # torch, on a CUDA device

        return ModelPair(acoustic, cuda_vocoder(vocoder_source(pack, kind).load(), kind, acoustic))  # type: ignore[arg-type]
    return ModelPair(acoustic, create_vocoder(vocoder, "auto", pack))
