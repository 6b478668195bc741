"""Export our torch models to ONNX graphs, cached next to the converted voice pack.

Graphs (batch of one, dynamic sequence axes; float32 unless noted)::

    encoder         ids (1, T) int64, speaker (1, 32)   -> memory (1, T, 288), keys (1, T, 64)
    decoder_step    prev_frame (1, 80), masks (2, 1, 128), memory, keys, the 7 state tensors
                    -> frame (1, 80), gate_logit (1,), alignment (1, T), new_<state> x 7
    decoder_block   a Loop of decoder_step over n steps with early stop (engines/onnx_graphs.py)
    postnet_SE      frames (1, 80, W) -> mel (1, 80, W')   residual added, window cropped
    vocoder_SE      mel (1, 80, W)    -> audio (1, S)

``S``/``E`` (1 or 0) are the window's ``at_start``/``at_end`` flags: Python bools in the torch code
that choose padding and cropping, so each combination is its own graph. States, in order:
attention_hidden, attention_cell, decoder_hidden, decoder_cell (1, 512), attention_weights,
attention_weights_cum (1, T), attention_context (1, 288).

Cache layout (``int8`` holds only the graphs it quantizes and reuses the fp32 files)::

    <pack.path>/onnx/.lock                  flock held while anything is (re)built
    <pack.path>/onnx/fp32/meta.json         cache key, sha256 of every graph, vocoder offsets
    <pack.path>/onnx/fp32/<graph>.onnx
    <pack.path>/onnx/int8/meta.json
    <pack.path>/onnx/int8/decoder_step.onnx, decoder_block.onnx

How to call::

    graphs = ensure_graphs(pack, "fp32")    # or "int8": exports/quantizes what is missing, else verifies
    graphs.path("decoder_step"), graphs.meta["vocoder_first"]["01"]

The key (``EXPORT_FORMAT``, opset, the weights' sha256 from the pack manifest, and for int8 the
onnxruntime version) must match or everything is rebuilt; a graph whose file no longer matches
its recorded sha256 is rebuilt alone. Files are written to a temp name and renamed into place.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from engines.onnx_graphs import STATE_NAMES, build_decoder_block, quantize_decoder_step
from streamtts.models.acoustic import DecoderState, Tacotron2
from streamtts.models.vocoder import MelGAN
from streamtts.pack import VoicePack
from streamtts.cachefiles import locked, sha256_file

log = logging.getLogger(__name__)

EXPORT_FORMAT = 1  # bump when a graph's inputs, outputs or contents change
OPSET = 17
VARIANTS = ("fp32", "int8")
FLAGS = ((True, True), (True, False), (False, True), (False, False))
STEP_INPUTS = ("prev_frame", "masks", "memory", "keys") + STATE_NAMES
STEP_OUTPUTS = ("frame", "gate_logit", "alignment") + tuple("new_" + n for n in STATE_NAMES)
# What the int8 variant quantizes: the decoder only. Measured with dynamic INT8 (one thread): the
# encoder's LSTM gets 4.4 -> 3.0 ms, once per sentence, for a 0.07 max memory error; ConvInteger
# makes the postnet 2.8x slower (mel error 0.24 max) and MelGAN 2.3-2.6x slower with an audio
# error whose RMS is 37 % of the signal's.
INT8_GRAPHS = ("decoder_step", "decoder_block")

export_count = 0  # graphs exported or quantized by this process (tests check a warm cache adds none)


def flag_suffix(at_start: bool, at_end: bool) -> str:
    return f"{int(at_start)}{int(at_end)}"


def graph_names(variant: str = "fp32") -> list[str]:
    if variant != "fp32":
        return list(INT8_GRAPHS)
    return (["encoder", "decoder_step", "decoder_block"] + [f"postnet_{flag_suffix(*f)}" for f in FLAGS]
            + [f"vocoder_{flag_suffix(*f)}" for f in FLAGS])


# ---- our modules with the flags fixed and the graphs' inputs/outputs ----------------------------

class _Encoder(nn.Module):
    def __init__(self, model: Tacotron2):
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, speaker: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        memory = self.model.encode(ids, speaker)
        return memory, self.model.decoder.attention.memory_keys(memory)


class _DecoderStep(nn.Module):
    def __init__(self, model: Tacotron2):
        super().__init__()
        self.decoder = model.decoder

    def forward(self, prev_frame, masks, memory, keys, *state):
        out = self.decoder.step(prev_frame, masks, memory, keys, DecoderState(*state))
        return (out.frame, out.gate_logit, out.alignment) + tuple(out.state)


class _Postnet(nn.Module):
    """Same arithmetic as TorchEngine.postnet: residual plus the window's matching input frames."""

    def __init__(self, model: Tacotron2, at_start: bool, at_end: bool):
        super().__init__()
        self.postnet, self.at_start, self.at_end = model.postnet, at_start, at_end

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        residual = self.postnet(frames, self.at_start, self.at_end)
        lo = 0 if self.at_start else self.postnet.radius
        return frames[:, :, lo: lo + residual.shape[2]] + residual


class _Vocoder(nn.Module):
    def __init__(self, vocoder: MelGAN, at_start: bool, at_end: bool):
        super().__init__()
        self.vocoder, self.at_start, self.at_end = vocoder, at_start, at_end

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        out = self.vocoder(mel, self.at_start, self.at_end, 0)
        return out if isinstance(out, torch.Tensor) else out[0]


def vocoder_first(vocoder: MelGAN, at_start: bool, at_end: bool) -> int:
    """Utterance sample index of a window's first output sample when the window starts at frame 0.
    ``first`` is affine in the offset with slope hop (the product of the upsample strides), so
    ``first(offset) = offset * hop + vocoder_first(...)``. Measured on the module, not derived."""
    if at_start and at_end:
        return 0
    with torch.inference_mode():
        _, first = vocoder(torch.zeros(1, vocoder.config.n_mels, 40), at_start, at_end, 0)
    return int(first)


def _torch_export(module: nn.Module, args: tuple, path: Path, inputs: tuple[str, ...],
                  outputs: tuple[str, ...], dynamic: dict[str, dict[int, str]]) -> None:
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        # The TorchScript-based exporter: no onnxscript dependency, works on torch >= 2.1, and
        # writes plain ONNX ops (Gemm, Conv, ConvTranspose, reflect Pad) that ORT fuses well.
        legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        torch.onnx.export(module, args, str(path), input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes=dynamic, opset_version=OPSET, do_constant_folding=True, **legacy)


class _Exporter:
    """Writes single fp32 graphs; loads each torch model only when a graph needs it."""

    def __init__(self, pack: VoicePack):
        self.pack = pack
        self._acoustic: Tacotron2 | None = None
        self._vocoder: MelGAN | None = None

    @property
    def acoustic(self) -> Tacotron2:
        if self._acoustic is None:
            self._acoustic = self.pack.load_acoustic()
        return self._acoustic

    @property
    def vocoder(self) -> MelGAN:
        if self._vocoder is None:
            self._vocoder = self.pack.load_vocoder()
        return self._vocoder

    def export(self, name: str, path: Path) -> None:
        kind, _, suffix = name.partition("_")
        if name == "decoder_block":  # built from the step graph written just before it
            onnx.save(build_decoder_block(onnx.load(str(path.parent / "decoder_step.onnx"))), str(path))
            return
        cfg = self.pack.acoustic_config
        gen = torch.Generator().manual_seed(0)  # example inputs only fix shapes; keep the global RNG alone
        if kind == "encoder":
            args = (torch.randint(0, cfg.n_symbols, (1, 7), generator=gen),
                    torch.randn(1, cfg.speaker_vector_dim, generator=gen))
            _torch_export(_Encoder(self.acoustic), args, path, ("ids", "speaker"), ("memory", "keys"),
                          {"ids": {1: "T"}, "memory": {1: "T"}, "keys": {1: "T"}})
        elif name == "decoder_step":
            decoder = self.acoustic.decoder
            memory = torch.randn(1, 7, cfg.memory_dim, generator=gen)
            state = tuple(s + 0.1 * torch.randn(s.shape, generator=gen) for s in decoder.initial_state(memory))
            args = (torch.randn(1, cfg.n_mels, generator=gen), torch.ones(2, 1, cfg.prenet_dim), memory,
                    decoder.attention.memory_keys(memory)) + state
            per_t = ("memory", "keys", "attention_weights", "attention_weights_cum", "alignment",
                     "new_attention_weights", "new_attention_weights_cum")
            _torch_export(_DecoderStep(self.acoustic), args, path, STEP_INPUTS, STEP_OUTPUTS,
                          {n: {1: "T"} for n in per_t})
        elif kind in ("postnet", "vocoder") and suffix in ("11", "10", "01", "00"):
            flags = (suffix[0] == "1", suffix[1] == "1")
            if kind == "postnet":
                _torch_export(_Postnet(self.acoustic, *flags), (torch.randn(1, cfg.n_mels, 50, generator=gen),),
                              path, ("frames",), ("mel",), {"frames": {2: "W"}, "mel": {2: "W_out"}})
            else:
                _torch_export(_Vocoder(self.vocoder, *flags), (torch.randn(1, cfg.n_mels, 40, generator=gen),),
                              path, ("mel",), ("audio",), {"mel": {2: "W"}, "audio": {1: "S"}})
        else:
            raise ValueError(f"unknown graph {name!r}")


# ---- the cache ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class GraphSet:
    """Verified graphs of one variant (name -> file) and the metadata the engine needs."""

    files: dict[str, Path]
    meta: dict[str, Any]

    def path(self, name: str) -> Path:
        return self.files[name]


def cache_key(pack: VoicePack, variant: str) -> dict[str, Any]:
    key = {"format": EXPORT_FORMAT, "opset": OPSET, "variant": variant,
           "acoustic_sha256": pack.manifest["acoustic"]["sha256"],
           "vocoder_sha256": pack.manifest["vocoder"]["sha256"]}
    if variant != "fp32":  # quantized graphs also depend on the quantizer and on what it quantized
        import onnxruntime

        key.update(onnxruntime=onnxruntime.__version__, graphs=list(INT8_GRAPHS))
    return key


def cache_dir(pack: VoicePack, variant: str) -> Path:
    return Path(pack.path) / "onnx" / variant


def _read_meta(directory: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((directory / "meta.json").read_text())
        return meta if isinstance(meta, dict) and isinstance(meta.get("files"), dict) else None
    except (OSError, ValueError):
        return None


def stale_graphs(pack: VoicePack, variant: str, meta: dict[str, Any] | None = None) -> list[str]:
    """Graphs of ``variant`` that must be (re)built: all when the cache key changed, else those
    missing or whose file does not match its recorded sha256."""
    directory = cache_dir(pack, variant)
    meta = _read_meta(directory) if meta is None else meta
    names = graph_names(variant)
    if meta is None or meta.get("key") != cache_key(pack, variant):
        return names
    stale = []
    for name in names:
        path, digest = directory / f"{name}.onnx", meta["files"].get(name)
        if digest is None or not path.is_file() or sha256_file(path) != digest:
            if path.is_file():
                log.warning("cached graph %s does not match its checksum; rebuilding it", path)
            stale.append(name)
    if "decoder_step" in stale and "decoder_block" not in stale:  # the block embeds the step
        stale.append("decoder_block")
    return [n for n in names if n in stale]


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _build(pack: VoicePack, variant: str, names: list[str], fp32: GraphSet | None) -> dict[str, Any]:
    """(Re)build ``names`` in the variant's directory and rewrite its meta.json; returns the meta."""
    global export_count
    directory = cache_dir(pack, variant)
    directory.mkdir(parents=True, exist_ok=True)
    key = cache_key(pack, variant)
    old = _read_meta(directory)
    meta = old if old is not None and old.get("key") == key else {"key": key, "files": {}}
    exporter = _Exporter(pack)
    for name in names:
        path = directory / f"{name}.onnx"
        log.info("building ONNX graph %s", path)
        if fp32 is None:
            _write_atomic(path, lambda tmp, name=name: exporter.export(name, tmp))
        elif name == "decoder_step":
            _write_atomic(path, lambda tmp: quantize_decoder_step(fp32.path("decoder_step"), tmp))
        elif name == "decoder_block":
            _write_atomic(path, lambda tmp: onnx.save(
                build_decoder_block(onnx.load(str(directory / "decoder_step.onnx"))), str(tmp)))
        else:
            raise ValueError(f"no INT8 recipe for graph {name!r}")
        meta["files"][name] = sha256_file(path)
        export_count += 1
    if fp32 is None and ("vocoder_first" not in meta or any(n.startswith("vocoder") for n in names)):
        meta["vocoder_first"] = {flag_suffix(*f): vocoder_first(exporter.vocoder, *f) for f in FLAGS}
    elif fp32 is not None:
        meta["vocoder_first"] = fp32.meta["vocoder_first"]
    _write_atomic(directory / "meta.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
    return meta


def _ensure(pack: VoicePack, variant: str, fp32: GraphSet | None) -> GraphSet:
    directory = cache_dir(pack, variant)
    meta = _read_meta(directory)
    if stale_graphs(pack, variant, meta):
        with locked(directory.parent):
            meta = _read_meta(directory)  # another process may have built it while we waited
            stale = stale_graphs(pack, variant, meta)
            if stale:
                meta = _build(pack, variant, stale, fp32)
    files = dict(fp32.files) if fp32 is not None else {}
    files.update({name: directory / f"{name}.onnx" for name in graph_names(variant)})
    return GraphSet(files, meta)


def ensure_graphs(pack: VoicePack, variant: str = "fp32") -> GraphSet:
    """The verified graphs of ``variant`` ("fp32" or "int8"), exported (and quantized) first where
    missing, stale or corrupted."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown ONNX variant {variant!r}; expected one of {VARIANTS}")
    fp32 = _ensure(pack, "fp32", None)
    return fp32 if variant == "fp32" else _ensure(pack, variant, fp32)
