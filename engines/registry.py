"""Engines by name.

How to call::

    engine = create_engine("auto")            # or "torch", "onnx", "onnx-int8"; pack optional
    ENGINE_NAMES                              # the accepted names

``auto`` picks the fastest engine that can be built here, by measurement on the 2-core CPU
(``python -m engines.onnx_bench``, medians of two runs: decoder ms/step torch 2.4-2.7, onnx
1.15-1.19, onnx-int8 0.26-0.33; ChunkStream RTF 0.36-0.43 / 0.19-0.24 / 0.12-0.17; first audio
101-133 / 48-64 / 24-37 ms) at the same intelligibility (Whisper base syllable error on the 16
test sentences x 2 seeds: torch 1.36 %, onnx 0.91 %, onnx-int8 1.14 %; one syllable is 0.23 %):

* onnx-int8 on CPU; its dynamic INT8 kernels are CPU kernels, so with a CUDA/TensorRT provider
  available ``auto`` takes onnx (fp32) instead;
* onnx when the INT8 graphs cannot be built (e.g. the quantizer fails);
* torch when onnxruntime is missing or the export fails.
A fallback is logged as a warning with the reason.
"""

from __future__ import annotations

import logging
from typing import Optional

from engines.base import Engine
from streamtts.errors import StreamTTSError
from streamtts.pack import VoicePack, ensure_pack

log = logging.getLogger(__name__)

ENGINE_NAMES = ("auto", "torch", "onnx", "onnx-int8")


class UnknownEngineError(StreamTTSError, ValueError):
    """An engine name that is not one of ENGINE_NAMES."""

    code = "unknown_engine"


def _torch(pack: VoicePack) -> Engine:
    from engines.torch_engine import TorchEngine

    return TorchEngine(pack)


def _onnx(pack: VoicePack, variant: str) -> Engine:
    from engines.onnx_engine import OnnxEngine

    return OnnxEngine(pack, variant=variant)


def _gpu_provider() -> bool:
    import onnxruntime

    gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"}
    return bool(gpu & set(onnxruntime.get_available_providers()))


def _auto(pack: VoicePack) -> Engine:
    try:
        variants = ["fp32"] if _gpu_provider() else ["int8", "fp32"]
    except ImportError as exc:
        log.warning("onnxruntime is not available (%s); using the torch engine", exc)
        return _torch(pack)
    for variant in variants:
        try:
            return _onnx(pack, variant)
        except StreamTTSError:
            raise  # the user's environment (e.g. the voice pack), not the engine
        except Exception as exc:  # noqa: BLE001 - any export/quantization/ORT failure falls back
            log.warning("ONNX engine (%s) unavailable: %s: %s", variant, type(exc).__name__, exc)
    log.warning("using the torch engine")
    return _torch(pack)


def create_engine(name: str, pack: Optional[VoicePack] = None) -> Engine:
    """A new engine by name (case-insensitive): one of ENGINE_NAMES."""
    key = str(name).strip().lower()
    if key not in ENGINE_NAMES:
        raise UnknownEngineError(f"unknown engine {name!r}; the engines are: {', '.join(ENGINE_NAMES)}")
    pack = pack or ensure_pack()
    if key == "torch":
        return _torch(pack)
    if key == "onnx":
        return _onnx(pack, "fp32")
    if key == "onnx-int8":
        return _onnx(pack, "int8")
    return _auto(pack)
