"""TensorRT backend: FP16 engines built from our exported ONNX graphs, run on a dedicated stream.

Written to TensorRT's documented Python API (8.6 / 10.x: ``Builder``, ``OnnxParser``,
``create_optimization_profile``, ``build_serialized_network``, ``execute_async_v3``) and NOT RUN:
no machine this project has had holds TensorRT (PyPI serves only a stub of the full builder,
``tensorrt-cu12-libs``; the lean runtime ``tensorrt-lean-cu12-libs`` and ``tensorrt-cu12-bindings``
install but cannot build; TensorRT-RTX does not support Hopper). What runs without a GPU is tested:
the optimization-profile shapes derived from the graphs' inputs, the engine cache keys, and the
typed error when ``tensorrt`` is missing.

How to call (on a CUDA machine with the full ``tensorrt`` package)::

    acoustic = TensorRTTacotron(pack)                      # engines.cuda_backend.CudaTacotron, name "tensorrt"
    vocoder  = TensorRTVocoder(vocoder_source(pack, "hifigan"))
    engine   = ModelPair(acoustic, vocoder)
    shapes   = profile_shapes(graph_inputs(path), DECODER_RANGES)   # {input: (min, opt, max)}
    plan     = engine_plan(path, shapes, cache_dir)        # built once, then read from the cache

Engines. Every graph's symbolic input dims (read from the ONNX file with ``onnx``: the decoder's
batch ``B`` and memory width ``T``, the block's steps ``n``, the vocoder's batch ``B`` and width
``W``) get a (min, opt, max) range, one optimization profile per engine; FP16 is on (TensorRT keeps
layers it cannot run in FP16 in FP32). A built plan is cached under
``<cache>/tensorrt/<graph>-<key>.plan``, ``key`` = sha256 over the GPU's name, the TensorRT version,
the graph's sha256, the profile and the precision: a plan is only valid for the GPU model and the
TensorRT version that built it.

Runtime. Buffers are torch tensors and TensorRT gets their device pointers
(``set_tensor_address(name, t.data_ptr())``), and ``execute_async_v3`` runs on a dedicated
``torch.cuda.Stream``: torch already owns the CUDA context, the caching allocator and the streams
the cuda backend's slots live on, so no second CUDA binding (pycuda, cuda-python) is needed, the
decoder's inputs are views of the slot buffers (no copies), and its outputs feed the torch postnet
as they are.

The decoder block. The exported ``decoder_block`` Loop ends as soon as every row is done, so its
outputs have a data-dependent length (``k`` steps), which TensorRT serves only through an output
allocator and a host round trip per call. The backend therefore builds the ``decoder_step`` graph
(fixed shapes for a given B, T) and enqueues it ``n`` times per block on the stream, state feeding
back through the slot buffers; the host reads the block's gates once at the end, as in the cuda
backend. ``profile_shapes`` derives the ``decoder_block`` profile too, for a TensorRT whose loops
serve that. The encoder (once per chunk) and the postnet stay on torch.

onnxruntime-gpu: where its CUDA (or TensorRT) provider is installed, the ``onnx`` engine already
uses it (engines/onnx_backend.py ``default_providers``); :func:`onnx_gpu_providers` says whether
that is the case here.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from engines.base import Vocoder
from engines.cuda_backend import CudaTacotron
from streamtts.cachefiles import locked, sha256_file
from streamtts.errors import StreamTTSError

log = logging.getLogger(__name__)

PLAN_FORMAT = 1  # bump when what goes into a plan changes
# (min, opt, max) per symbolic dim. Decoder: up to the cuda backend's largest bucket and memory width.
DECODER_RANGES: dict[str, tuple[int, int, int]] = {"B": (1, 64, 1024), "T": (1, 64, 256), "n": (1, 32, 64)}
VOCODER_BATCH = (1, 16, 256)
VOCODER_WIDTH_OPT, VOCODER_WIDTH_MAX = 106, 4096  # 80 frames + 2 x 13 context; a long joined call
WORKSPACE_BYTES = 4 << 30

INSTALL_HINT = (
    "TensorRT is not installed. The builder needs the full 'tensorrt' package (pip install tensorrt-cu12 "
    "from NVIDIA's index, or the TensorRT tarball; PyPI's tensorrt-cu12-libs is only a stub); the lean runtime "
    "(tensorrt-lean-cu12-libs, tensorrt-cu12-bindings) can run version-compatible plans built elsewhere but not "
    "build them; TensorRT-RTX does not support Hopper GPUs. Without it use the cuda engine (engines/cuda_backend.py)")


class TensorRTUnavailableError(StreamTTSError, RuntimeError):
    """TensorRT (or a CUDA GPU for it) is missing; the message says what to install."""

    code = "tensorrt_unavailable"


def import_tensorrt(builder: bool = True) -> Any:
    """The ``tensorrt`` module; with ``builder=False`` the lean runtime ``tensorrt_lean`` will do."""
    try:
        import tensorrt

        return tensorrt
    except ImportError as exc:
        if not builder:
            try:
                import tensorrt_lean

                return tensorrt_lean
            except ImportError:
                pass
        raise TensorRTUnavailableError(f"{INSTALL_HINT} ({exc})") from exc


# ---- profiles from the graphs ------------------------------------------------------------------

Dim = Union[int, str]


def graph_inputs(path: Union[str, Path]) -> list[tuple[str, tuple[Dim, ...]]]:
    """The graph's inputs in order: (name, dims), a dim being a size or a symbol ("B", "T", ...)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    out = []
    for value in model.graph.input:
        if value.name in inits:
            continue
        dims = tuple(d.dim_param if d.dim_param else int(d.dim_value) for d in value.type.tensor_type.shape.dim)
        out.append((value.name, dims))
    return out


def profile_shapes(inputs: Sequence[tuple[str, Sequence[Dim]]],
                   ranges: Mapping[str, tuple[int, int, int]]) -> dict[str, tuple[tuple[int, ...], ...]]:
    """Optimization-profile shapes: input name -> (min, opt, max) shapes, each symbolic dim
    replaced by its range. A symbol without a range raises ValueError (the graph changed)."""
    shapes = {}
    for name, dims in inputs:
        per = []
        for k in range(3):
            shape = []
            for d in dims:
                if isinstance(d, str):
                    if d not in ranges:
                        raise ValueError(f"input {name!r} has a dim {d!r} with no range; ranges: {sorted(ranges)}")
                    shape.append(int(ranges[d][k]))
                else:
                    shape.append(int(d))
            per.append(tuple(shape))
        if any(not a <= b <= c for a, b, c in zip(*per)):
            raise ValueError(f"ranges of {name!r} are not min <= opt <= max: {per}")
        shapes[name] = tuple(per)
    return shapes


def vocoder_ranges(context: int, at_start: bool, at_end: bool) -> dict[str, tuple[int, int, int]]:
    """B and W ranges of a vocoder graph: a window must be wider than the context an interior side
    loses (else it has no exact sample)."""
    interior = (not at_start) + (not at_end)
    w_min = interior * context + 1
    return {"B": VOCODER_BATCH, "W": (w_min, max(w_min, VOCODER_WIDTH_OPT), VOCODER_WIDTH_MAX)}


# ---- the engine cache --------------------------------------------------------------------------

def cache_key(gpu: str, trt_version: str, graph_sha256: str, shapes: Mapping[str, Any], fp16: bool = True) -> str:
    """sha256 (hex) of everything a plan depends on."""
    blob = json.dumps({"format": PLAN_FORMAT, "gpu": gpu, "tensorrt": trt_version, "graph": graph_sha256,
                       "shapes": {k: [list(s) for s in v] for k, v in sorted(shapes.items())}, "fp16": bool(fp16)},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def plan_path(cache_dir: Union[str, Path], graph: Union[str, Path], key: str) -> Path:
    return Path(cache_dir) / "tensorrt" / f"{Path(graph).stem}-{key[:24]}.plan"


def build_plan(onnx_path: Union[str, Path], shapes: Mapping[str, Any], fp16: bool = True,
               workspace: int = WORKSPACE_BYTES) -> bytes:
    """A serialized engine for ``onnx_path`` with one optimization profile ``shapes``."""
    trt = import_tensorrt(builder=True)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch (flag 0); 8.x needs the flag
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    network = builder.create_network(0 if explicit is None or int(trt.__version__.split(".")[0]) >= 10
                                     else 1 << int(explicit))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if fp16:
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise TensorRTUnavailableError(f"TensorRT {trt.__version__} has no FP16 builder flag (strongly typed "
                                           "networks only); this builder needs TensorRT 8.6-10.x")
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path}")
    return bytes(plan)


def engine_plan(onnx_path: Union[str, Path], shapes: Mapping[str, Any], cache_dir: Union[str, Path],
                fp16: bool = True) -> bytes:
    """The cached plan for this GPU, TensorRT version, graph and profile; built (under the cache
    lock) when missing."""
    import torch

    trt = import_tensorrt(builder=False)
    key = cache_key(torch.cuda.get_device_name(), trt.__version__, sha256_file(Path(onnx_path)), shapes, fp16)
    path = plan_path(cache_dir, onnx_path, key)
    if path.is_file():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.parent):
        if not path.is_file():
            log.info("building TensorRT engine %s (minutes)", path)
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(build_plan(onnx_path, shapes, fp16))
            tmp.replace(path)
    return path.read_bytes()


class TrtRunner:
    """One engine, one execution context, run on ``stream`` through torch tensors' device pointers."""

    def __init__(self, plan: bytes, stream: Any):
        import torch

        trt = import_tensorrt(builder=False)
        self.trt, self.torch, self.stream = trt, torch, stream
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine (another GPU or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self._out: dict[str, Any] = {}

    def _dtype(self, name: str) -> Any:
        """The torch dtype of a tensor, by way of numpy (``trt.nptype`` is in every version)."""
        return self.torch.from_numpy(np.empty(0, self.trt.nptype(self.engine.get_tensor_dtype(name)))).dtype

    def __call__(self, feeds: Mapping[str, Any], out: Optional[Mapping[str, Any]] = None) -> dict[str, Any]:
        """feeds: input name -> contiguous CUDA tensor; ``out`` optionally gives output tensors to
        write into (else tensors kept per shape are reused). Enqueued on the stream, not waited for."""
        ctx = self.context
        for name in self.inputs:
            x = feeds[name]
            ctx.set_input_shape(name, tuple(x.shape))
            ctx.set_tensor_address(name, x.data_ptr())
        result = {}
        for name in self.outputs:
            shape = tuple(ctx.get_tensor_shape(name))
            y = out.get(name) if out else None
            if y is None:
                y = self._out.get(name)
                if y is None or tuple(y.shape) != shape:
                    y = self.torch.empty(shape, dtype=self._dtype(name), device="cuda")
                    self._out[name] = y
            ctx.set_tensor_address(name, y.data_ptr())
            result[name] = y
        if not ctx.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return result


# ---- backends ----------------------------------------------------------------------------------

_STATE = ("attention_hidden", "attention_cell", "decoder_hidden", "decoder_cell", "attention_weights",
          "attention_weights_cum", "attention_context")


class TensorRTTacotron(CudaTacotron):
    """The cuda backend with its decoder step as a TensorRT FP16 engine (float32 I/O)."""

    name = "tensorrt"

    def __init__(self, pack: Any = None, device: str = "cuda", *, cache_dir: Optional[Path] = None, **kwargs: Any):
        import torch

        import_tensorrt(builder=False)
        if not torch.cuda.is_available() or not str(device).startswith("cuda"):
            raise TensorRTUnavailableError("the tensorrt engine runs on a CUDA GPU only; use the cuda engine's "
                                           "dry run (STREAMTTS_CUDA_DRY_RUN=1) to test on a CPU")
        from engines.onnx_export import ensure_graphs
        from streamtts.pack import ensure_pack

        pack = pack or ensure_pack()
        kwargs.update(dtype="float32", graphs=False)  # TensorRT keeps its own FP16 inside; I/O stays fp32
        super().__init__(pack, device, **kwargs)
        step = ensure_graphs(pack, "fp32").path("decoder_step")
        ranges = dict(DECODER_RANGES, B=(1, 64, self.max_rows + 1), T=(1, 64, self.max_symbols))
        self.shapes = profile_shapes(graph_inputs(step), ranges)
        self.step_engine = TrtRunner(engine_plan(step, self.shapes, cache_dir or Path(pack.path) / "onnx"), self.stream)

    def _block_fn(self, block: Any) -> tuple:
        torch = self.step_engine.torch
        buf, tb, idx = self.buffers, block.tb, block.idx
        feeds = {"memory": buf.memory[idx, :tb].contiguous(), "keys": buf.keys[idx, :tb].contiguous(),
                 "pad": buf.pad[idx, :tb].contiguous(), "prev_frame": buf.frame[idx]}
        feeds.update({n: t.contiguous() for n, t in zip(_STATE, (
            buf.att_h[idx], buf.att_c[idx], buf.dec_h[idx], buf.dec_c[idx], buf.weights[idx, :tb],
            buf.weights_cum[idx, :tb], buf.context[idx]))})
        frames, gates, aligns = [], [], []
        for i in range(block.steps):
            at = (block.base + i).clamp(max=self.max_steps - 1)
            feeds["masks"] = (buf.masks[idx, at].transpose(0, 1).float() * self.keep_scale).contiguous()
            out = self.step_engine(feeds)
            frames.append(out["frame"].clone())
            gates.append(torch.sigmoid(out["gate_logit"]))
            aligns.append(out["alignment"].clone())
            feeds["prev_frame"] = out["frame"].clone()
            feeds.update({n: out["new_" + n].clone() for n in _STATE})  # the engine reuses its outputs
        buf.att_h[idx], buf.att_c[idx] = feeds["attention_hidden"], feeds["attention_cell"]
        buf.dec_h[idx], buf.dec_c[idx] = feeds["decoder_hidden"], feeds["decoder_cell"]
        buf.weights[idx, :tb], buf.weights_cum[idx, :tb] = feeds["attention_weights"], feeds["attention_weights_cum"]
        buf.context[idx], buf.frame[idx] = feeds["attention_context"], feeds["prev_frame"]
        return torch.stack(frames), torch.stack(gates), torch.stack(aligns)


class TensorRTVocoder(Vocoder):
    """A vocoder's four exported window graphs (engines/onnx_export.py) as TensorRT FP16 engines."""

    def __init__(self, source: Any, *, cache_dir: Optional[Path] = None):
        import torch

        from engines.onnx_export import FLAGS, ensure_vocoder_graphs, flag_suffix

        import_tensorrt(builder=False)
        if not torch.cuda.is_available():
            raise TensorRTUnavailableError("the TensorRT vocoder runs on a CUDA GPU only")
        graphs = ensure_vocoder_graphs(source)
        settings = graphs.meta["settings"]
        self.name = f"{source.kind}-tensorrt"
        self.n_mels, self.hop_length, self.sample_rate = settings["n_mels"], settings["hop_length"], settings["sample_rate"]
        self.context = int(settings["context"])
        self.tail_frames, self.tail_value = int(settings["tail_frames"]), float(settings["tail_value"])
        self.stream = torch.cuda.Stream()
        cache = cache_dir or Path(source.cache_root) / "onnx"
        self._first = {f: int(graphs.meta["vocoder_first"][flag_suffix(*f)]) for f in FLAGS}
        self.runners = {}
        for f in FLAGS:
            path = graphs.path(f"vocoder_{flag_suffix(*f)}")
            shapes = profile_shapes(graph_inputs(path), vocoder_ranges(self.context, *f))
            self.runners[f] = TrtRunner(engine_plan(path, shapes, cache), self.stream)
        self.torch = torch

    def _run(self, mel: np.ndarray, at_start: bool, at_end: bool) -> tuple[np.ndarray, int]:
        torch, flags = self.torch, (bool(at_start), bool(at_end))
        with torch.cuda.stream(self.stream):
            x = torch.from_numpy(np.ascontiguousarray(mel, np.float32)).cuda(non_blocking=False)
            audio = self.runners[flags]({"mel": x})["audio"]
            host = audio.to("cpu", non_blocking=False)
        return host.numpy(), self._first[flags]


def onnx_gpu_providers() -> Optional[list]:
    """onnxruntime's GPU providers available here (TensorRT, CUDA, then CPU), as the ``onnx``
    engine would use them (engines/onnx_backend.py), or None when onnxruntime has none (or is
    not installed): then the ``onnx`` engine runs on the CPU."""
    try:
        from engines.onnx_backend import default_providers
    except ImportError:
        return None
    providers = default_providers()
    names = [p if isinstance(p, str) else p[0] for p in providers]
    return providers if set(names) & {"CUDAExecutionProvider", "TensorrtExecutionProvider"} else None
