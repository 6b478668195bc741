"""ONNX Runtime engine: the engine interface on graphs exported from our torch models.

How to call::

    engine = OnnxEngine()                     # fp32 graphs, exported and cached on first use
    engine = OnnxEngine(variant="int8")       # decoder LSTM matrices dynamically quantized to INT8
    pipe = ChunkStream(engine, ids)           # as any engine (see engines/base.py)

Arrays are numpy; the memory and the decoder state are numpy arrays too (batch of one). The
engine keeps no per-call state, and ONNX Runtime sessions may be run from several threads.

Choices, measured on the 2-core AVX2 EPYC (no VNNI) shared with other jobs (medians of
interleaved repeats, ``python -m engines.onnx_bench``):

* decoder: one ORT call per block (a Loop around the step, engines/onnx_graphs.py) beats one call
  per step driven from Python: INT8 0.26-0.33 vs 0.35-0.40 ms/step, fp32 1.15-1.19 vs 1.19-1.31
  (torch eager, one thread: 2.4-2.7). For the per-step loop, plain ``run`` with numpy feeds beat
  IOBinding with preallocated outputs (0.30 vs 0.35 ms) and OrtValue feeds (0.38 ms).
* decoder threads: 1. A second intra-op thread gains ~20 % fp32 on an idle machine, loses ~20 %
  INT8, and more than doubles fp32 step time when other processes load the cores.
* encoder/postnet/vocoder threads: all cores (at most 4): MelGAN RTF 0.10 with 2 threads vs 0.15
  with one (torch eager: 0.11 with 2). Rewriting MelGAN's 1-D convs as 2-D ones (for ORT's NCHWc
  kernels) and flushing denormals gained nothing.
* ORT_ENABLE_ALL graph optimization, sequential execution, no spinning (spinning threads take
  the core other streams' decoders need, and gained nothing measurable here).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import onnxruntime as ort

from engines.base import DecodeBlock, Engine
from engines.onnx_export import FLAGS, STATE_NAMES, GraphSet, ensure_graphs, flag_suffix
from streamtts.pack import VoicePack, ensure_pack

Provider = Union[str, tuple[str, dict]]


def default_providers(cache: Optional[Path] = None) -> list[Provider]:
    """TensorRT and CUDA when onnxruntime reports them available, then the CPU. TensorRT keeps
    its built engines under ``cache`` (engine builds take minutes and depend on input shapes)."""
    available = ort.get_available_providers()
    providers: list[Provider] = []
    if "TensorrtExecutionProvider" in available:
        options = {"trt_engine_cache_enable": True, "trt_timing_cache_enable": True}
        if cache is not None:
            options.update(trt_engine_cache_path=str(cache), trt_timing_cache_path=str(cache))
        providers.append(("TensorrtExecutionProvider", options))
    if "CUDAExecutionProvider" in available:
        providers.append("CUDAExecutionProvider")
    return providers + ["CPUExecutionProvider"]


def session_options(threads: int) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1  # the graphs are chains: nothing to run in parallel
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # see the module docstring
    so.log_severity_level = 3  # the Loop body's shape-inference notices are noise
    return so


@dataclass
class OnnxMemory:
    memory: np.ndarray  # (1, T, 288) float32
    keys: np.ndarray  # (1, T, 64) float32


@dataclass
class OnnxState:
    tensors: tuple[np.ndarray, ...]  # the 7 decoder state tensors, in STATE_NAMES order
    frame: np.ndarray  # (1, 80) previous output frame (the go frame at first)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return (np.float32(1) / (np.float32(1) + np.exp(-x))).astype(np.float32)


class OnnxEngine(Engine):
    """``variant``: "fp32" or "int8". ``providers``: ONNX Runtime providers (default
    :func:`default_providers`). ``threads``: intra-op threads of the encoder, postnet and vocoder
    (default: all cores, at most 4); the decoder gets one. ``decoder``: "block" (one ORT call per
    block, default) or "step" (one call per step; same numbers, slower)."""

    def __init__(self, pack: Optional[VoicePack] = None, variant: str = "fp32",
                 providers: Optional[Sequence[Provider]] = None, *, threads: Optional[int] = None,
                 decoder: str = "block"):
        if decoder not in ("block", "step"):
            raise ValueError(f"decoder must be 'block' or 'step', not {decoder!r}")
        pack = pack or ensure_pack()
        self.variant = variant
        self.name = "onnx" if variant == "fp32" else f"onnx-{variant}"
        self.graphs: GraphSet = ensure_graphs(pack, variant)
        self.acoustic = pack.acoustic_config
        self.vocoder_config = pack.vocoder_config
        self.providers = (list(providers) if providers is not None
                          else default_providers(self.graphs.path("encoder").parent.parent / "trt"))
        self.decoder_mode = decoder
        threads = threads or min(4, os.cpu_count() or 1)

        def session(name: str, n_threads: int) -> ort.InferenceSession:
            return ort.InferenceSession(str(self.graphs.path(name)), session_options(n_threads),
                                        providers=self.providers)

        self.encoder = session("encoder", threads)
        self.step = session("decoder_step", 1) if decoder == "step" else None
        self.block = session("decoder_block", 1) if decoder == "block" else None
        self.postnets = {f: session(f"postnet_{flag_suffix(*f)}", threads) for f in FLAGS}
        self.vocoders = {f: session(f"vocoder_{flag_suffix(*f)}", threads) for f in FLAGS}
        self._first = {f: int(self.graphs.meta["vocoder_first"][flag_suffix(*f)]) for f in FLAGS}
        self._block_outputs = [o.name for o in self.block.get_outputs()] if self.block else None

    # -- encoder ---------------------------------------------------------------------------------

    def encode(self, ids: np.ndarray, speaker: np.ndarray) -> OnnxMemory:
        """ids (T,) int64, speaker (32,) float32 -> memory (1, T, 288) and attention keys (1, T, 64)."""
        memory, keys = self.encoder.run(None, {"ids": np.asarray(ids, np.int64)[None],
                                               "speaker": np.asarray(speaker, np.float32)[None]})
        return OnnxMemory(memory, keys)

    def initial_state(self, memory: OnnxMemory) -> OnnxState:
        t, m = memory.memory.shape[1], memory.memory.shape[2]
        cfg = self.acoustic
        z = np.zeros
        tensors = (z((1, cfg.attention_rnn_dim), np.float32), z((1, cfg.attention_rnn_dim), np.float32),
                   z((1, cfg.decoder_rnn_dim), np.float32), z((1, cfg.decoder_rnn_dim), np.float32),
                   z((1, t), np.float32), z((1, t), np.float32), z((1, m), np.float32))
        return OnnxState(tensors, z((1, cfg.n_mels), np.float32))

    # -- decoder ---------------------------------------------------------------------------------

    def decode(self, memory: OnnxMemory, state: OnnxState, masks: np.ndarray,
               gate_threshold: float) -> DecodeBlock:
        """Up to n = len(masks) steps; masks (n, 2, 128). Stops after the step whose gate fires."""
        masks = np.ascontiguousarray(masks, np.float32)[:, :, None, :]  # (n, 2, 1, 128)
        if len(masks) == 0:
            return self._block([], [], [], memory, state, False)
        if self.block is not None:
            return self._decode_block(memory, state, masks, gate_threshold)
        return self._decode_steps(memory, state, masks, gate_threshold)

    def _decode_steps(self, memory: OnnxMemory, state: OnnxState, masks: np.ndarray,
                      gate_threshold: float) -> DecodeBlock:
        feeds = {"memory": memory.memory, "keys": memory.keys, "prev_frame": state.frame,
                 **dict(zip(STATE_NAMES, state.tensors))}
        frames, gates, aligns = [], [], []
        stopped = False
        tensors, frame = state.tensors, state.frame
        for step_masks in masks:
            feeds["masks"] = step_masks
            out = self.step.run(None, feeds)
            frame, tensors = out[0], tuple(out[3:])
            feeds["prev_frame"] = frame
            feeds.update(zip(STATE_NAMES, tensors))
            gate = float(_sigmoid(out[1][0]))
            if gate > gate_threshold:
                stopped = True
                break
            frames.append(frame[0])
            gates.append(gate)
            aligns.append(out[2][0])
        return self._block(frames, gates, aligns, memory, OnnxState(tensors, frame), stopped)

    def _decode_block(self, memory: OnnxMemory, state: OnnxState, masks: np.ndarray,
                      gate_threshold: float) -> DecodeBlock:
        feeds = {"block_masks": masks, "memory": memory.memory, "keys": memory.keys,
                 "gate_threshold": np.asarray(gate_threshold, np.float32), "init_prev_frame": state.frame,
                 **{"init_" + n: t for n, t in zip(STATE_NAMES, state.tensors)}}
        out = self.block.run(self._block_outputs, feeds)
        last_frame, tensors = out[0], tuple(out[1:8])
        frames, gate_logits, aligns = out[8][:, 0], out[9][:, 0], out[10][:, 0]
        gates = _sigmoid(gate_logits)
        # the loop's own test ran in float32; the stop frame is its last output
        stopped = len(gates) < len(masks) or bool(gates[-1] > gate_threshold)
        keep = len(gates) - 1 if stopped else len(gates)
        return DecodeBlock(frames=frames[:keep], gates=gates[:keep], alignments=aligns[:keep],
                           state=OnnxState(tensors, last_frame), stopped=stopped)

    def _block(self, frames, gates, aligns, memory: OnnxMemory, state: OnnxState, stopped: bool) -> DecodeBlock:
        t = memory.memory.shape[1]
        return DecodeBlock(
            frames=np.stack(frames) if frames else np.zeros((0, self.acoustic.n_mels), np.float32),
            gates=np.asarray(gates, dtype=np.float32),
            alignments=np.stack(aligns) if aligns else np.zeros((0, t), np.float32),
            state=state, stopped=stopped)

    # -- postnet and vocoder ---------------------------------------------------------------------

    def postnet(self, frames: np.ndarray, at_start: bool, at_end: bool) -> np.ndarray:
        """frames (80, W) -> final mel (80, W') of the window's exact range (see engines/base.py)."""
        x = np.ascontiguousarray(frames, np.float32)[None]
        return self.postnets[(bool(at_start), bool(at_end))].run(None, {"frames": x})[0][0]

    def vocode(self, mel: np.ndarray, at_start: bool, at_end: bool, offset: int) -> tuple[np.ndarray, int]:
        """mel (80, W) whose first frame is frame ``offset`` -> (audio (S,), its first sample index)."""
        flags = (bool(at_start), bool(at_end))
        x = np.ascontiguousarray(mel, np.float32)[None]
        audio = self.vocoders[flags].run(None, {"mel": x})[0][0]
        return audio, offset * self.vocoder_config.hop_length + self._first[flags]
