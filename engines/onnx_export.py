"""Export our torch models to ONNX graphs, cached next to their weights.

Acoustic graphs (float32 unless noted; B is a dynamic batch axis)::

    encoder         ids (1, T) int64, speaker (1, 32)   -> memory (1, T, 288), keys (1, T, 64)
    decoder_step    prev_frame (B, 80), masks (2, B, 128), memory (B, T, 288), keys (B, T, 64),
                    pad (B, T) bool, the 7 state tensors
                    -> frame (B, 80), gate_logit (B,), alignment (B, T), new_<state> x 7
    decoder_block   a Loop of decoder_step over n steps with per-row stop (engines/onnx_graphs.py)
    postnet_SE      frames (B, 80, W) -> mel (B, 80, W')   residual added, window cropped

Vocoder graphs, one set per vocoder (any module with our window convention, engines/base.py)::

    vocoder_SE      mel (B, 80, W) -> audio (B, S)

``S``/``E`` (1 or 0) are the window's ``at_start``/``at_end`` flags: Python bools in the torch code
that choose padding and cropping, so each combination is its own graph. States, in order:
attention_hidden, attention_cell, decoder_hidden, decoder_cell (B, 512), attention_weights,
attention_weights_cum (B, T), attention_context (B, 288).

Cache layout (``int8`` holds only the graphs it quantizes and reuses the fp32 files)::

    <pack.path>/onnx/.lock                  flock held while anything is (re)built
    <pack.path>/onnx/fp32/meta.json         cache key, sha256 of every graph
    <pack.path>/onnx/fp32/<graph>.onnx
    <pack.path>/onnx/int8/meta.json, decoder_step.onnx, decoder_block.onnx
    <source.cache_root>/onnx/<kind>/meta.json, vocoder_SE.onnx     e.g. <pack.path>/onnx/melgan/

How to call::

    graphs = ensure_graphs(pack, "fp32")    # or "int8": exports/quantizes what is missing, else verifies
    graphs.path("decoder_block")
    voc = ensure_vocoder_graphs(vocoder_source(pack, "melgan"))   # engines.vocoder_source; voc.path("vocoder_01")

A cache's key (``EXPORT_FORMAT``, opset, the weights' sha256 -- the acoustic model's for the
acoustic graphs, the vocoder's own for its graphs -- and for int8 the onnxruntime version and the
quantization recipe) must match or the whole folder is rebuilt (and files an older format left
there are removed); a graph whose file no longer matches its recorded sha256 is rebuilt alone.
Files are written to a temp name and renamed into place.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import onnx
import torch
from torch import nn

from engines.onnx_graphs import STATE_NAMES, build_decoder_block, quantize_decoder_step
from engines.vocoder_source import VocoderSource
from streamtts.cachefiles import locked, sha256_file
from streamtts.models.acoustic import DecoderState, Tacotron2
from streamtts.pack import VoicePack

log = logging.getLogger(__name__)

# 2: batch axis B, the pad mask and per-row stop in the decoder, per-row INT8 activations,
#    vocoder graphs in their own folder keyed by the vocoder's weights
EXPORT_FORMAT = 2  # bump when a graph's inputs, outputs or contents change
OPSET = 17
VARIANTS = ("fp32", "int8")
FLAGS = ((True, True), (True, False), (False, True), (False, False))
STEP_INPUTS = ("prev_frame", "masks", "memory", "keys", "pad") + STATE_NAMES
STEP_OUTPUTS = ("frame", "gate_logit", "alignment") + tuple("new_" + n for n in STATE_NAMES)
# What the int8 variant quantizes: the decoder only, where the time goes (it runs every step).
# Dynamic INT8 elsewhere does not pay: the encoder runs once per sentence, so its small gain is not
# worth its memory error; ConvInteger makes the postnet and MelGAN slower, not faster, and
# MelGAN's audio error as loud as a good part of the signal.
INT8_GRAPHS = ("decoder_step", "decoder_block")
INT8_ACTIVATIONS = "row"  # see engines/onnx_graphs.py

export_count = 0  # graphs exported or quantized by this process (tests check a warm cache adds none)


def flag_suffix(at_start: bool, at_end: bool) -> str:
    return f"{int(at_start)}{int(at_end)}"


def graph_names(variant: str = "fp32") -> list[str]:
    """The acoustic graphs of a variant."""
    if variant != "fp32":
        return list(INT8_GRAPHS)
    return ["encoder", "decoder_step", "decoder_block"] + [f"postnet_{flag_suffix(*f)}" for f in FLAGS]


VOCODER_GRAPHS = tuple(f"vocoder_{flag_suffix(*f)}" for f in FLAGS)


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

    def forward(self, prev_frame, masks, memory, keys, pad, *state):
        out = self.decoder.step(prev_frame, masks, memory, keys, DecoderState(*state), pad)
        return (out.frame, out.gate_logit, out.alignment) + tuple(out.state)


class _Postnet(nn.Module):
    """Same arithmetic as TorchTacotron._postnet: residual plus the window's matching input frames."""

    def __init__(self, model: Tacotron2, at_start: bool, at_end: bool):
        super().__init__()
        self.postnet, self.at_start, self.at_end = model.postnet, at_start, at_end

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        residual = self.postnet(frames, self.at_start, self.at_end)
        lo = 0 if self.at_start else self.postnet.radius
        return frames[:, :, lo: lo + residual.shape[2]] + residual


class _Vocoder(nn.Module):
    def __init__(self, vocoder: nn.Module, at_start: bool, at_end: bool):
        super().__init__()
        self.vocoder, self.at_start, self.at_end = vocoder, at_start, at_end

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if self.at_start and self.at_end:
            return self.vocoder(mel)
        return self.vocoder(mel, self.at_start, self.at_end, 0)[0]


def _example_width(vocoder: nn.Module) -> int:
    return max(40, 4 * int(vocoder.context_frames) + 8)


def vocoder_first(vocoder: nn.Module, at_start: bool, at_end: bool) -> int:
    """Utterance sample index of a window's first output sample when the window starts at frame 0.
    ``first`` is affine in the offset with slope hop (the product of the upsample strides), so
    ``first(offset) = offset * hop + vocoder_first(...)``. Found by running the module, not derived."""
    if at_start and at_end:
        return 0
    with torch.inference_mode():
        _, first = vocoder(torch.zeros(1, vocoder.config.n_mels, _example_width(vocoder)), at_start, at_end, 0)
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


class _AcousticExporter:
    """Writes single fp32 acoustic graphs; loads the torch model only when a graph needs it."""

    def __init__(self, pack: VoicePack):
        self.pack = pack
        self._model: Tacotron2 | None = None

    @property
    def model(self) -> Tacotron2:
        if self._model is None:
            self._model = self.pack.load_acoustic()
        return self._model

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
            _torch_export(_Encoder(self.model), args, path, ("ids", "speaker"), ("memory", "keys"),
                          {"ids": {1: "T"}, "memory": {1: "T"}, "keys": {1: "T"}})
        elif name == "decoder_step":
            decoder, b, t = self.model.decoder, 2, 7  # B = 2: no batch-1 special case is traced in
            memory = torch.randn(b, t, cfg.memory_dim, generator=gen)
            pad = torch.zeros(b, t, dtype=torch.bool)
            pad[1, 5:] = True
            state = tuple(s + 0.1 * torch.randn(s.shape, generator=gen) for s in decoder.initial_state(memory))
            args = (torch.randn(b, cfg.n_mels, generator=gen), torch.ones(2, b, cfg.prenet_dim), memory,
                    decoder.attention.memory_keys(memory), pad) + state
            dynamic = {n: {0: "B"} for n in STEP_INPUTS + STEP_OUTPUTS}
            dynamic["masks"] = {1: "B"}
            for n in ("memory", "keys", "pad", "attention_weights", "attention_weights_cum", "alignment",
                      "new_attention_weights", "new_attention_weights_cum"):
                dynamic[n] = {0: "B", 1: "T"}
            _torch_export(_DecoderStep(self.model), args, path, STEP_INPUTS, STEP_OUTPUTS, dynamic)
        elif kind == "postnet" and suffix in ("11", "10", "01", "00"):
            flags = (suffix[0] == "1", suffix[1] == "1")
            _torch_export(_Postnet(self.model, *flags), (torch.randn(1, cfg.n_mels, 50, generator=gen),),
                          path, ("frames",), ("mel",), {"frames": {0: "B", 2: "W"}, "mel": {0: "B", 2: "W_out"}})
        else:
            raise ValueError(f"unknown graph {name!r}")


def export_vocoder(module: nn.Module, name: str, path: Path) -> None:
    kind, _, suffix = name.partition("_")
    if kind != "vocoder" or suffix not in ("11", "10", "01", "00"):
        raise ValueError(f"unknown graph {name!r}")
    flags = (suffix[0] == "1", suffix[1] == "1")
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(2, module.config.n_mels, _example_width(module), generator=gen)
    _torch_export(_Vocoder(module, *flags), (example,), path, ("mel",), ("audio",),
                  {"mel": {0: "B", 2: "W"}, "audio": {0: "B", 1: "S"}})


# ---- the cache ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class GraphSet:
    """Verified graphs (name -> file) and the metadata the backend needs."""

    files: dict[str, Path]
    meta: dict[str, Any]

    def path(self, name: str) -> Path:
        return self.files[name]


@dataclass
class GraphCache:
    """One folder of graphs under one cache key, built by ``build(name, tmp_path)`` in ``names``
    order (a later graph may read an earlier one's final file). ``embeds`` maps a graph to the one
    built from it (rebuilt with it). ``extra_meta()`` adds entries to meta.json when building."""

    directory: Path
    key: dict[str, Any]
    names: tuple[str, ...]
    build: Callable[[str, Path], None]
    embeds: dict[str, str] = field(default_factory=dict)
    extra_meta: Optional[Callable[[], dict[str, Any]]] = None

    def read_meta(self) -> dict[str, Any] | None:
        try:
            meta = json.loads((self.directory / "meta.json").read_text())
            return meta if isinstance(meta, dict) and isinstance(meta.get("files"), dict) else None
        except (OSError, ValueError):
            return None

    def stale(self, meta: dict[str, Any] | None = None) -> list[str]:
        """Graphs to (re)build: all when the key changed, else those missing or whose file does
        not match its recorded sha256 (and the graphs built from them)."""
        meta = self.read_meta() if meta is None else meta
        if meta is None or meta.get("key") != self.key:
            return list(self.names)
        stale = set()
        for name in self.names:
            path, digest = self.directory / f"{name}.onnx", meta["files"].get(name)
            if digest is None or not path.is_file() or sha256_file(path) != digest:
                if path.is_file():
                    log.warning("cached graph %s does not match its checksum; rebuilding it", path)
                stale.add(name)
        for name in list(stale):
            if name in self.embeds:
                stale.add(self.embeds[name])
        return [n for n in self.names if n in stale]

    def ensure(self) -> GraphSet:
        meta = self.read_meta()
        if self.stale(meta):
            with locked(self.directory.parent):
                meta = self.read_meta()  # another process may have built it while we waited
                stale = self.stale(meta)
                if stale:
                    meta = self._build(stale, meta)
        return GraphSet({name: self.directory / f"{name}.onnx" for name in self.names}, meta)

    def _build(self, names: list[str], old: dict[str, Any] | None) -> dict[str, Any]:
        global export_count
        self.directory.mkdir(parents=True, exist_ok=True)
        if old is not None and old.get("key") == self.key:
            meta = old
        else:  # a new key: nothing here is valid, and files of an older format go
            meta = {"key": self.key, "files": {}}
            for path in self.directory.glob("*.onnx"):
                if path.stem not in self.names:
                    path.unlink(missing_ok=True)
        for name in names:
            path = self.directory / f"{name}.onnx"
            log.info("building ONNX graph %s", path)
            _write_atomic(path, lambda tmp, name=name: self.build(name, tmp))
            meta["files"][name] = sha256_file(path)
            export_count += 1
        if self.extra_meta is not None:
            meta.update(self.extra_meta())
        _write_atomic(self.directory / "meta.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2)))
        return meta


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cache_key(pack: VoicePack, variant: str) -> dict[str, Any]:
    key = {"format": EXPORT_FORMAT, "opset": OPSET, "variant": variant,
           "acoustic_sha256": pack.manifest["acoustic"]["sha256"]}
    if variant != "fp32":  # quantized graphs also depend on the quantizer and on what it quantized
        import onnxruntime

        key.update(onnxruntime=onnxruntime.__version__, graphs=list(INT8_GRAPHS), activations=INT8_ACTIVATIONS)
    return key


def cache_dir(pack: VoicePack, variant: str) -> Path:
    return Path(pack.path) / "onnx" / variant


def acoustic_cache(pack: VoicePack, variant: str) -> GraphCache:
    if variant not in VARIANTS:
        raise ValueError(f"unknown ONNX variant {variant!r}; expected one of {VARIANTS}")
    directory = cache_dir(pack, variant)
    if variant == "fp32":
        exporter = _AcousticExporter(pack)
        build = exporter.export
    else:
        fp32_step = cache_dir(pack, "fp32") / "decoder_step.onnx"

        def build(name: str, tmp: Path) -> None:
            if name == "decoder_step":
                quantize_decoder_step(fp32_step, tmp, INT8_ACTIVATIONS)
            elif name == "decoder_block":
                onnx.save(build_decoder_block(onnx.load(str(directory / "decoder_step.onnx"))), str(tmp))
            else:
                raise ValueError(f"no INT8 recipe for graph {name!r}")
    return GraphCache(directory, cache_key(pack, variant), tuple(graph_names(variant)), build,
                      embeds={"decoder_step": "decoder_block"})


def stale_graphs(pack: VoicePack, variant: str, meta: dict[str, Any] | None = None) -> list[str]:
    return acoustic_cache(pack, variant).stale(meta)


def ensure_graphs(pack: VoicePack, variant: str = "fp32") -> GraphSet:
    """The verified acoustic graphs of ``variant`` ("fp32" or "int8"), exported (and quantized)
    first where missing, stale or corrupted. The int8 set includes the fp32 graphs it reuses."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown ONNX variant {variant!r}; expected one of {VARIANTS}")
    fp32 = acoustic_cache(pack, "fp32").ensure()
    if variant == "fp32":
        return fp32
    int8 = acoustic_cache(pack, variant).ensure()
    return GraphSet({**fp32.files, **int8.files}, int8.meta)


def vocoder_cache(source: VocoderSource) -> GraphCache:
    loaded: list[nn.Module] = []

    def module() -> nn.Module:
        if not loaded:
            loaded.append(source.load())
        return loaded[0]

    key = {"format": EXPORT_FORMAT, "opset": OPSET, "kind": source.kind, "sha256": source.sha256}
    return GraphCache(Path(source.cache_root) / "onnx" / source.kind, key, VOCODER_GRAPHS,
                      lambda name, tmp: export_vocoder(module(), name, tmp),
                      extra_meta=lambda: vocoder_meta(module()))


def vocoder_meta(module: nn.Module) -> dict[str, Any]:
    """What a backend needs to know of the module without loading it: its mel settings, context,
    silent tail, and each flag combination's first sample index at offset 0."""
    cfg = module.config
    tail_frames = getattr(cfg, "tail_frames", getattr(module, "tail_frames", 0))  # MelGAN: config; HiFiGAN: class
    tail_value = getattr(cfg, "tail_value", getattr(module, "tail_value", 0.0))
    return {"settings": {"n_mels": int(cfg.n_mels), "hop_length": int(cfg.hop_length),
                         "sample_rate": int(cfg.sample_rate), "context": int(module.context_frames),
                         "tail_frames": int(tail_frames), "tail_value": float(tail_value)},
            "vocoder_first": {flag_suffix(*f): vocoder_first(module, *f) for f in FLAGS}}


def ensure_vocoder_graphs(source: VocoderSource) -> GraphSet:
    """The verified vocoder graphs of ``source``, exported first where missing, stale or corrupted."""
    return vocoder_cache(source).ensure()
