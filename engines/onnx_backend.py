"""ONNX Runtime backend: both stages on graphs exported from our torch models (engines/onnx_export.py).

How to call::

    acoustic = OnnxTacotron(pack)                   # fp32; name "onnx"
    acoustic = OnnxTacotron(pack, variant="int8")   # decoder LSTMs in INT8; name "onnx-int8"
    vocoder  = OnnxVocoder(pack)                    # MelGAN of the pack; name "melgan-onnx"
    vocoder  = OnnxVocoder(kind="hifigan")          # or any engines.vocoder_source.VocoderSource
    engine   = ModelPair(acoustic, vocoder)            # engines.base

Graphs are exported and cached on first use. Every graph but the encoder takes a batch: the
decoder block runs B rows (memory padded to the longest, a pad mask in the attention) with each
row's own step limit and gate threshold, in one ORT call per block; the vocoder runs B windows of
one width. Sessions keep no per-call state and may be run from several threads.

Choices, each made by timing the alternatives on the development machine (a 2-core AVX2 CPU
without VNNI, shared with other jobs; the bench's figures are in the README):

* decoder: one ORT call per block (a Loop around the step) beats one call per step driven from
  Python, in INT8 most: the shorter the step, the larger the share of the per-call overhead.
* per-row INT8 activations (engines/onnx_graphs.py) cost a little more per step than ORT's
  per-tensor ones, which couple a batch's rows; a row's audio that does not depend on its batch
  is worth it.
* decoder threads: a second thread pays at larger batches only on an idle machine; on a shared
  one it gains nothing there and loses at batch 1, so the decoder keeps one thread at every
  batch size (``decoder_threads`` picks threads by batch size, one session each, for a machine
  to itself: e.g. ((1, 1), (8, 2))).
* encoder/postnet/vocoder threads: all cores (at most 4; ``OMP_NUM_THREADS`` when set): the
  vocoder's convolutions do run faster with more. Rewriting MelGAN's 1-D convs as 2-D ones and
  flushing denormals gained nothing.
* ORT_ENABLE_ALL graph optimization, sequential execution, no spinning (spinning threads take
  the core other streams' decoders need, and gained nothing measurable here).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import onnxruntime as ort

from engines.base import Vocoder
from engines.onnx_export import FLAGS, STATE_NAMES, GraphSet, ensure_graphs, ensure_vocoder_graphs, flag_suffix
from engines.tacotron import DecodeBatch, DecodeResult, TacotronModel
from engines.vocoder_source import VocoderSource, vocoder_source
from streamtts.pack import VoicePack, ensure_pack

Provider = Union[str, tuple[str, dict]]

# Decoder intra-op threads by batch size: ((smallest batch, threads), ...), see the module docstring.
DECODER_THREADS: tuple[tuple[int, int], ...] = ((1, 1),)


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
    # No CPU memory arena: batch sizes and window widths vary from call to call, and the arena
    # keeps every high-water mark for good (a long soak's resident memory grew in steps); malloc
    # hands large blocks back. Without it the sessions were no slower and peaked lower.
    so.enable_cpu_mem_arena = False
    return so


def _default_threads() -> int:
    """All cores, at most 4; or ``OMP_NUM_THREADS`` when set: the CPU share a process was given
    (Ray sets it to an actor's ``num_cpus``, so engine replicas sharing a machine each calibrate
    and run on their share, not all of it)."""
    try:
        given = int(os.environ.get("OMP_NUM_THREADS", ""))
    except ValueError:
        given = 0
    return max(1, min(4, given)) if given > 0 else min(4, os.cpu_count() or 1)


class _Sessions:
    def __init__(self, graphs: GraphSet, providers: Optional[Sequence[Provider]]):
        self.graphs = graphs
        self.providers = (list(providers) if providers is not None
                          else default_providers(next(iter(graphs.files.values())).parent.parent / "trt"))

    def __call__(self, name: str, threads: int) -> ort.InferenceSession:
        return ort.InferenceSession(str(self.graphs.path(name)), session_options(threads), providers=self.providers)


class OnnxTacotron(TacotronModel):
    """``variant``: "fp32" or "int8". ``providers``: ONNX Runtime providers (default
    :func:`default_providers`). ``threads``: intra-op threads of the encoder and postnet (default:
    all cores, at most 4). ``decoder_threads``: ((smallest batch, threads), ...) for the decoder
    block, one session per entry (default :data:`DECODER_THREADS`)."""

    def __init__(self, pack: Optional[VoicePack] = None, variant: str = "fp32",
                 providers: Optional[Sequence[Provider]] = None, *, threads: Optional[int] = None,
                 decoder_threads: Sequence[tuple[int, int]] = DECODER_THREADS):
        pack = pack or ensure_pack()
        self.variant = variant
        self.name = "onnx" if variant == "fp32" else f"onnx-{variant}"
        self.graphs = ensure_graphs(pack, variant)
        self.config = pack.acoustic_config
        session = _Sessions(self.graphs, providers)
        self.providers = session.providers
        threads = threads or _default_threads()
        self.encoder = session("encoder", threads)
        shared: dict[int, ort.InferenceSession] = {}
        self.blocks = [(min_batch, shared.setdefault(n, session("decoder_block", n)))
                       for min_batch, n in sorted(decoder_threads)]
        self.postnets = {f: session(f"postnet_{flag_suffix(*f)}", threads) for f in FLAGS}
        self._outputs = [o.name for o in self.blocks[0][1].get_outputs()]

    def block_session(self, batch: int) -> ort.InferenceSession:
        chosen = self.blocks[0][1]
        for min_batch, sess in self.blocks:
            if batch >= min_batch:
                chosen = sess
        return chosen

    def _encode(self, ids: np.ndarray, speaker: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        memory, keys = self.encoder.run(None, {"ids": np.ascontiguousarray(ids, np.int64),
                                               "speaker": np.ascontiguousarray(speaker, np.float32)})
        return memory, keys

    def _decode(self, batch: DecodeBatch) -> DecodeResult:
        b, t = batch.pad.shape
        if len(batch.masks) == 0 or not (batch.limit > 0).any():  # ORT's Loop wants >= 1 trip
            return DecodeResult(np.zeros((0, b, self.n_mels), np.float32), np.zeros((0, b), np.float32),
                                np.zeros((0, b, t), np.float32), tuple(batch.state), batch.prev_frame)
        f32 = np.float32
        feeds = {"block_masks": np.ascontiguousarray(batch.masks, f32),
                 "memory": np.ascontiguousarray(batch.memory, f32), "keys": np.ascontiguousarray(batch.keys, f32),
                 "pad": np.ascontiguousarray(batch.pad, bool), "limit": np.ascontiguousarray(batch.limit, np.int64),
                 "threshold": np.ascontiguousarray(batch.threshold, f32),
                 "init_prev_frame": np.ascontiguousarray(batch.prev_frame, f32),
                 **{"init_" + n: np.ascontiguousarray(s, f32) for n, s in zip(STATE_NAMES, batch.state)}}
        out = self.block_session(b).run(self._outputs, feeds)
        return DecodeResult(frames=out[8], gates=out[9], alignments=out[10], state=tuple(out[1:8]),
                            last_frame=out[0])

    def _postnet(self, frames: np.ndarray, at_start: bool, at_end: bool) -> np.ndarray:
        x = np.ascontiguousarray(frames, np.float32)
        return self.postnets[(bool(at_start), bool(at_end))].run(None, {"frames": x})[0]


class OnnxVocoder(Vocoder):
    """Any vocoder module with our window convention, as ONNX graphs with dynamic batch and width.
    ``source``: a voice pack (its ``kind`` vocoder) or a :class:`VocoderSource`. The module's
    settings are read from the cache's meta.json, so a warm cache loads no torch weights."""

    def __init__(self, source: Union[VoicePack, VocoderSource, None] = None, kind: str = "melgan",
                 providers: Optional[Sequence[Provider]] = None, *, threads: Optional[int] = None):
        src = vocoder_source(source, kind)
        self.kind = src.kind
        self.name = f"{src.kind}-onnx"
        self.graphs = ensure_vocoder_graphs(src)
        settings = self.graphs.meta["settings"]
        self.n_mels, self.hop_length, self.sample_rate = (settings["n_mels"], settings["hop_length"],
                                                          settings["sample_rate"])
        self.context = int(settings["context"])
        self.tail_frames, self.tail_value = int(settings["tail_frames"]), float(settings["tail_value"])
        session = _Sessions(self.graphs, providers)
        self.providers = session.providers
        threads = threads or _default_threads()
        self.sessions = {f: session(f"vocoder_{flag_suffix(*f)}", threads) for f in FLAGS}
        self._first = {f: int(self.graphs.meta["vocoder_first"][flag_suffix(*f)]) for f in FLAGS}

    def _run(self, mel: np.ndarray, at_start: bool, at_end: bool) -> tuple[np.ndarray, int]:
        flags = (bool(at_start), bool(at_end))
        audio = self.sessions[flags].run(None, {"mel": np.ascontiguousarray(mel, np.float32)})[0]
        return audio, self._first[flags]
