"""CUDA backend: the Tacotron decoder with all row state on the device, in static per-slot buffers,
decoder blocks captured as CUDA graphs per batch bucket, and a vocoder on a stream of its own.

How to call::

    acoustic = CudaTacotron(pack)                         # device "cuda"; name "cuda"
    acoustic = CudaTacotron(pack, dtype="float16")        # or "bfloat16": weights and state in it
    vocoder  = CudaVocoder(ensure_hifigan().load(), "hifigan", acoustic=acoustic)
    engine   = ModelPair(acoustic, vocoder)                  # engines.base
    acoustic = CudaTacotron(pack, device="cpu")           # dry run: the same code, eager, on the CPU

``create_models("cuda")`` (engines/registry.py) builds both; without CUDA it raises
:class:`CudaUnavailableError` unless ``STREAMTTS_CUDA_DRY_RUN=1`` asks for the CPU dry run.

Layout. ``start`` takes a free *slot* (0 .. max_rows - 1) and writes the row's encoder memory,
attention keys, pad mask, zero state, prenet keep-masks (from the row's seed, as every backend)
and gate threshold into that slot of device buffers shaped (max_rows + 1, ...); the last slot is a
dummy row (zero memory, nothing padded) that fills a batch up to its bucket. A row's slot is given
back when the row finishes, or, for a row dropped unfinished (a cancelled request), when the row
object is collected (``weakref.finalize``), so slots never leak.

``decode(rows, n)``: the live rows are padded to a batch *bucket* (1, 2, 4, ... 1024) and their
memory to a power-of-two width ``tb`` >= the longest row (at least 16). One *block* gathers the
bucket's slots into working tensors, runs ``n`` decoder steps, and scatters the state back into the
slots; every row keeps stepping to the end of the block (a fixed graph cannot branch per row), and
the host finds each row's stop step from the block's gates, read once per block (one sync per
block, none per step). On CUDA each (bucket, tb, n) block is captured once with
``torch.cuda.CUDAGraph`` (all blocks share one memory pool) and replayed on a dedicated stream: a
64-step block is thousands of small kernels, and a replay launches them for the cost of one. The
frames, gates and alignments of a block come back through pinned host buffers. On the CPU the same
functions run eagerly on the same buffers (no capture, no streams, no pinning), which is what the
tests exercise.

The postnet runs batched over the rows' exact windows (grouped by edge flags, zero-padded on an
interior side, whose outputs are cropped anyway; see ``_final_mels``). :class:`CudaVocoder` runs the
engine's batched vocoder windows (engines/base.py) on a second stream; the host waits on a CUDA
event recorded after the copy of the PCM into pinned memory, i.e. only for that stream's work,
never for the whole device. Mel crosses from the decoder to the vocoder through host arrays (the
engine API is numpy at the edges), so the streams share no tensor and need no cross-stream wait.

Nothing here has been run on a GPU yet: the CPU dry run is tested against the torch backend, and
``scripts/gpu-check.py`` is the one-command check for a CUDA machine.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from engines.base import AcousticRow, MelOut
from engines.cuda_slots import MAX_BUCKET, Pinned, SlotBuffers, SlotPool, bucket_for, t_bucket, to_host
from engines.tacotron import make_masks, step_cap
from engines.torch_backend import TorchTacotron, TorchVocoder
from streamtts.errors import StreamTTSError
from streamtts.models.acoustic import DecoderState
from streamtts.pack import VoicePack

DRY_RUN_ENV = "STREAMTTS_CUDA_DRY_RUN"  # "1": the cuda backend runs its code eagerly on the CPU
DTYPE_ENV = "STREAMTTS_CUDA_DTYPE"  # float32 (default), float16, bfloat16
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


class CudaUnavailableError(StreamTTSError, RuntimeError):
    """The cuda backend was asked for on a machine where torch sees no CUDA device."""

    code = "cuda_unavailable"


class InputTooLongError(StreamTTSError, ValueError):
    """A chunk with more input symbols than the slot buffers hold (``max_symbols``)."""

    code = "input_too_long"


def dry_run_requested() -> bool:
    return os.environ.get(DRY_RUN_ENV, "").strip().lower() in ("1", "true", "yes")


def resolve_device(device: Optional[str] = None) -> torch.device:
    """``device`` as given; default "cuda", or "cpu" when STREAMTTS_CUDA_DRY_RUN=1. A CUDA device
    that torch cannot see raises :class:`CudaUnavailableError` naming the way out."""
    if device is None:
        device = "cpu" if dry_run_requested() else "cuda"
    dev = torch.device(device)
    if dev.type not in ("cuda", "cpu"):
        raise ValueError(f"the cuda backend runs on cuda or (dry run) cpu, not {device!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        built = torch.version.cuda or "none (a CPU-only build)"
        raise CudaUnavailableError(
            f"the cuda engine needs a CUDA GPU and torch sees none (torch {torch.__version__}, CUDA build "
            f"{built}); use another engine (auto, onnx-int8, torch), or set {DRY_RUN_ENV}=1 to run "
            "its code on the CPU for testing")
    return dev


def resolve_dtype(dtype: Any = None) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype or os.environ.get(DTYPE_ENV) or "float32").strip().lower()
    if key not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    return DTYPES[key]


@dataclass(eq=False)
class _SlotRow:
    slot: int
    threshold: float  # stop after the step whose sigmoid(gate) exceeds it
    frames: np.ndarray  # (F, 80) decoder frames the postnet still needs (host)
    frames_start: int  # utterance index of frames[0]
    release: Any = field(default=None, repr=False)  # weakref.finalize giving the slot back


@dataclass(eq=False)
class _Block:
    """One (bucket, tb, n) block: its static inputs, its graph (CUDA) and its outputs."""

    bucket: int
    tb: int
    steps: int
    idx: torch.Tensor  # (bucket,) int64 slots, the dummy in padding rows
    base: torch.Tensor  # (bucket,) int64 decoder steps each row has run (mask offset)
    graph: Any = None
    outputs: Optional[tuple] = None  # frames (n, b, 80), gates (n, b), alignments (n, b, tb), fp32


class CudaTacotron(TorchTacotron):
    """The Tacotron adapter with device-resident slots. ``device``: "cuda" (default), "cuda:N" or
    "cpu" (dry run; default when STREAMTTS_CUDA_DRY_RUN=1). ``dtype``: float32 (default), float16
    or bfloat16 for weights, state and activations (gates and outputs are read as float32).
    ``max_rows``: slots (default 1024 on CUDA, 64 on the CPU). ``max_symbols``: longest chunk in
    input symbols. ``graphs``: capture blocks as CUDA graphs (CUDA only)."""

    name = "cuda"

    def __init__(self, pack: Optional[VoicePack] = None, device: Optional[str] = None, *,
                 dtype: Any = None, max_rows: Optional[int] = None, max_symbols: int = 512,
                 graphs: bool = True):
        dev = resolve_device(device)
        super().__init__(pack, device=str(dev))
        self.dtype = resolve_dtype(dtype)
        self.model.to(self.dtype)
        cfg = self.config
        self.cuda = dev.type == "cuda"
        self.use_graphs = bool(graphs) and self.cuda
        self.max_rows = int(max_rows or (MAX_BUCKET if self.cuda else 64))
        self.max_symbols = int(max_symbols)
        self.max_steps = step_cap(self.max_symbols, cfg.max_decoder_steps)
        self.keep_scale = 1.0 / (1.0 - cfg.prenet_dropout)
        self.pool = SlotPool(self.max_rows)
        self.dummy = self.max_rows
        self.buffers = SlotBuffers(cfg, self.max_rows + 1, self.max_symbols, self.max_steps, self.dtype, dev)
        self.stream = torch.cuda.Stream(dev) if self.cuda else None
        # one memory pool for every block's graph: replays never overlap (one stream, in turn) and
        # each graph's outputs stay alive, so a capture only reuses other graphs' temporaries
        self._mempool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self._blocks: dict[tuple[int, int, int], _Block] = {}
        self._pinned = Pinned(self.cuda)
        self.captures = 0  # blocks captured as graphs (or, on the CPU, first built)
        if self.stream is not None:  # weights and zeroed buffers were written on the default stream
            self.stream.wait_stream(torch.cuda.current_stream(dev))

    # -- streams -------------------------------------------------------------------------------
    def _on_stream(self):
        return torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()

    def _sync(self) -> None:
        if self.stream is not None:
            self.stream.synchronize()

    # -- rows ----------------------------------------------------------------------------------
    @torch.inference_mode()
    def start(self, ids: np.ndarray, speaker: np.ndarray, seed: int,
              gate_threshold: Optional[float] = None) -> AcousticRow:
        cfg, buf = self.config, self.buffers
        ids = np.asarray(ids, np.int64).reshape(1, -1)
        t = ids.shape[1]
        if t > self.max_symbols:
            raise InputTooLongError(f"a chunk of {t} input symbols is longer than the cuda backend's "
                                    f"{self.max_symbols} (max_symbols)")
        cap = step_cap(t, cfg.max_decoder_steps)
        threshold = cfg.gate_threshold if gate_threshold is None else float(gate_threshold)
        keep = torch.from_numpy(make_masks(cfg, cap, seed) > 0)  # (cap, 2, 128): the seed's masks
        slot = self.pool.take()
        try:
            with self._on_stream():
                x = torch.from_numpy(ids).to(self.device)
                spk = torch.from_numpy(np.asarray(speaker, np.float32).reshape(1, -1)).to(self.device, self.dtype)
                memory = self.model.encode(x, spk)
                buf.reset(slot)
                buf.memory[slot, :t] = memory[0]
                buf.keys[slot, :t] = self.model.decoder.attention.memory_keys(memory)[0]
                buf.pad[slot, :t] = False
                buf.pad[slot, t:] = True
                buf.masks[slot, :cap] = keep.to(self.device, torch.uint8)  # cap <= max_steps
        except BaseException:
            self.pool.give(slot)
            raise
        row = AcousticRow(n_ids=t, cap=cap)
        private = _SlotRow(slot, threshold, np.zeros((0, cfg.n_mels), np.float32), 0)
        private.release = weakref.finalize(row, self.pool.give, slot)
        row.private = private
        return row

    def decode(self, rows: Sequence[AcousticRow], steps: int) -> list[MelOut]:
        live = [r for r in rows if not r.finished]
        results = {id(r): MelOut(np.zeros((self.n_mels, 0), np.float32), np.zeros((0, r.n_ids), np.float32), True)
                   for r in rows if r.finished}
        aligns: dict[int, np.ndarray] = {}
        for lo in range(0, len(live), MAX_BUCKET):
            chunk = live[lo: lo + MAX_BUCKET]
            frames, gates, alignments = self._run_block(chunk, steps)
            for b, row in enumerate(chunk):
                aligns[id(row)] = self._advance(row, frames, gates, alignments, b)
        for row, mel in zip(live, self._final_mels(live)):
            results[id(row)] = MelOut(mel, aligns[id(row)], row.finished)
            if row.finished:
                row.private.release()  # the slot is free for the next row now
                row.private = None
        return [results[id(r)] for r in rows]

    def _advance(self, row: AcousticRow, frames: np.ndarray, gates: np.ndarray, alignments: np.ndarray,
                 b: int) -> np.ndarray:
        """The stop rule of the adapter (engines/tacotron.py) on one row of a block's outputs."""
        p, t = row.private, row.n_ids
        n = int(min(len(gates), row.cap - row.steps))
        fired = np.flatnonzero(gates[:n, b] > p.threshold)
        keep = int(fired[0]) if len(fired) else n  # the stop frame is not spoken
        row.steps += keep + 1 if len(fired) else n
        row.stopped_by_gate = bool(len(fired))
        row.finished = row.stopped_by_gate or row.steps >= row.cap
        p.frames = np.concatenate((p.frames, frames[:keep, b]))
        return np.array(alignments[:keep, b, :t], np.float32)  # a copy: the host buffer is reused

    # -- decoder blocks ------------------------------------------------------------------------
    @torch.inference_mode()
    def _run_block(self, rows: Sequence[AcousticRow], steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One block of ``steps`` decoder steps for ``rows`` (<= MAX_BUCKET) -> host arrays frames
        (steps, B, 80), gates (steps, B), alignments (steps, B, tb), B = len(rows): views of
        reused host buffers, valid until the next block."""
        n = len(rows)
        block = self.block(bucket_for(n), t_bucket(max(r.n_ids for r in rows), self.max_symbols), steps)
        idx = np.full(block.bucket, self.dummy, np.int64)
        base = np.zeros(block.bucket, np.int64)
        idx[:n] = [r.private.slot for r in rows]
        base[:n] = [r.steps for r in rows]
        with self._on_stream():
            for dst, src, name in ((block.idx, idx, "idx"), (block.base, base, "base")):
                host = self._pinned.get(name, len(src), torch.int64)
                host.copy_(torch.from_numpy(src))
                dst.copy_(host, non_blocking=self.cuda)
            if block.graph is not None:
                block.graph.replay()
                outputs = block.outputs
            else:
                outputs = self._block_fn(block)
            host = [to_host(self._pinned, name, o[:, :n])
                    for name, o in zip(("frames", "gates", "alignments"), outputs)]
        self._sync()  # the one wait of the block: its stop flags (gates) and frames are on the host now
        return tuple(h.numpy() for h in host)  # type: ignore[return-value]

    def block(self, bucket: int, tb: int, steps: int) -> _Block:
        """The (bucket, tb, steps) block, captured as a CUDA graph on first use (CUDA)."""
        key = (bucket, tb, steps)
        block = self._blocks.get(key)
        if block is None:
            z = torch.zeros(bucket, dtype=torch.int64, device=self.device)
            block = _Block(bucket, tb, steps, z.clone().fill_(self.dummy), z.clone())
            if self.use_graphs:
                self._capture(block)
            self._blocks[key] = block
            self.captures += 1
        return block

    def warm(self, buckets: Sequence[int], steps: Sequence[int], tbs: Sequence[int] = (32, 64, 128)) -> int:
        """Capture the blocks of every (bucket, tb, steps) ahead of traffic; -> blocks built now."""
        before = self.captures
        for b in buckets:
            for tb in tbs:
                for n in steps:
                    self.block(bucket_for(b), t_bucket(tb, self.max_symbols), n)
        return self.captures - before

    @torch.inference_mode()
    def _capture(self, block: _Block) -> None:
        # warm-up runs (cuDNN/cuBLAS pick their kernels) on the side stream, on the dummy slot only:
        # the real rows' state must not move
        block.idx.fill_(self.dummy)
        block.base.zero_()
        stream = self.stream
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._block_fn(block)
        stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        # thread_local: CUDA calls of other threads (e.g. the vocoder's) do not void the capture
        with torch.cuda.graph(graph, pool=self._mempool, stream=stream, capture_error_mode="thread_local"):
            block.outputs = self._block_fn(block)
        block.graph = graph

    def _block_fn(self, block: _Block) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gather the block's slots, run its steps, scatter the state back. Shapes are fixed by
        (bucket, tb, steps) and nothing reads a device value on the host: capturable."""
        buf, dec, tb, idx = self.buffers, self.model.decoder, block.tb, block.idx
        memory, keys, pad = buf.memory[idx, :tb], buf.keys[idx, :tb], buf.pad[idx, :tb]
        state = DecoderState(buf.att_h[idx], buf.att_c[idx], buf.dec_h[idx], buf.dec_c[idx],
                             buf.weights[idx, :tb], buf.weights_cum[idx, :tb], buf.context[idx])
        frame = buf.frame[idx]
        frames, gates, aligns = [], [], []
        for i in range(block.steps):
            at = (block.base + i).clamp(max=self.max_steps - 1)
            masks = buf.masks[idx, at].transpose(0, 1).to(self.dtype) * self.keep_scale  # (2, b, 128)
            out = dec.step(frame, masks, memory, keys, state, pad)
            state, frame = out.state, out.frame
            frames.append(frame.float())
            gates.append(torch.sigmoid(out.gate_logit.float()))
            aligns.append(out.alignment.float())
        buf.att_h[idx], buf.att_c[idx] = state.attention_hidden, state.attention_cell
        buf.dec_h[idx], buf.dec_c[idx] = state.decoder_hidden, state.decoder_cell
        buf.weights[idx, :tb], buf.weights_cum[idx, :tb] = state.attention_weights, state.attention_weights_cum
        buf.context[idx] = state.attention_context
        buf.frame[idx] = frame
        return torch.stack(frames), torch.stack(gates), torch.stack(aligns)

    # -- postnet -------------------------------------------------------------------------------
    def _final_mels(self, rows: Sequence[AcousticRow]) -> list[np.ndarray]:
        """Each row's newly exact mel (80, k), the postnet batched over the rows. A window is the
        adapter's (engines/tacotron.py ``_final_mel``); windows with the same edge flags share a
        call, zero-padded on an interior side (the outputs that see the padding lie in the part an
        interior side loses anyway); windows with both edges share only with equal widths."""
        r = self.lookahead
        out: list[np.ndarray] = [np.zeros((self.n_mels, 0), np.float32)] * len(rows)
        groups: dict[tuple, list[tuple[int, int, int, int, np.ndarray]]] = {}
        for i, row in enumerate(rows):
            p = row.private
            total = p.frames_start + len(p.frames)
            lo, hi = row.frames_out, (total if row.finished else total - r)
            if hi <= lo:
                continue
            ws = max(0, lo - r)
            window = p.frames[ws - p.frames_start:]
            at_start, at_end = ws == 0, row.finished
            key = (at_start, at_end, len(window) if at_start and at_end else 0)
            groups.setdefault(key, []).append((i, lo, hi, ws, window))
            row.frames_out = hi
            drop = max(0, hi - r - p.frames_start)  # keep only what later windows need as context
            if drop and not row.finished:
                p.frames, p.frames_start = p.frames[drop:], p.frames_start + drop
        for (at_start, at_end, _), jobs in groups.items():
            width = max(len(j[4]) for j in jobs)
            left = not at_start and at_end  # the interior side to pad
            batch = np.zeros((len(jobs), self.n_mels, width), np.float32)
            for b, (_, _, _, _, w) in enumerate(jobs):
                if left:
                    batch[b, :, width - len(w):] = w.T
                else:
                    batch[b, :, :len(w)] = w.T
            mel = self._postnet_batch(batch, at_start, at_end)
            for b, (i, lo, hi, ws, w) in enumerate(jobs):
                solo = mel[b, :, width - len(w):] if left else mel[b]
                start = ws if ws == 0 else ws + r  # utterance frame of solo[:, 0]
                out[i] = np.ascontiguousarray(solo[:, lo - start: hi - start], np.float32)
        return out

    @torch.inference_mode()
    def _postnet_batch(self, frames: np.ndarray, at_start: bool, at_end: bool) -> np.ndarray:
        with self._on_stream():
            x = torch.from_numpy(frames).to(self.device, self.dtype)
            residual = self.model.postnet(x, at_start, at_end)
            lo = 0 if at_start else self.lookahead
            host = to_host(self._pinned, "postnet", (x[:, :, lo: lo + residual.shape[2]] + residual).float())
        self._sync()
        return host.numpy().copy()

    def _postnet(self, frames: np.ndarray, at_start: bool, at_end: bool) -> np.ndarray:
        return self._postnet_batch(np.ascontiguousarray(frames, np.float32), at_start, at_end)

    def memory_bytes(self) -> int:
        """Bytes of the static slot buffers (the graphs' pool comes on top)."""
        return self.buffers.nbytes


# Vocoders whose activations do not fit float16: MelGAN's come close to float16's largest value
# on a random mel and overflow on real ones (non-finite audio in the CPU dry run); HiFiGAN's stay
# far below it. Under float16 these run in float32.
FP16_UNSAFE = ("melgan",)


class CudaVocoder(TorchVocoder):
    """A vocoder module (our window convention) on its own stream, in ``dtype``; PCM comes back
    through a pinned host buffer. ``device``/``dtype`` default to ``acoustic``'s when given
    (float16 becomes float32 for the vocoders of FP16_UNSAFE)."""

    def __init__(self, module: torch.nn.Module, name: str, device: Optional[str] = None, *,
                 dtype: Any = None, acoustic: Optional[CudaTacotron] = None):
        if device is None and acoustic is not None:
            device = str(acoustic.device)
        dev = resolve_device(device)
        super().__init__(module, f"{name}-cuda", device=str(dev))
        self.dtype = resolve_dtype(dtype if dtype is not None else (acoustic.dtype if acoustic is not None else None))
        if self.dtype == torch.float16 and name in FP16_UNSAFE:
            self.dtype = torch.float32
        self.module.to(self.dtype)
        self.cuda = dev.type == "cuda"
        self.stream = torch.cuda.Stream(dev) if self.cuda else None
        self._pinned = Pinned(self.cuda)
        if self.stream is not None:
            self.stream.wait_stream(torch.cuda.current_stream(dev))

    @torch.inference_mode()
    def _run(self, mel: np.ndarray, at_start: bool, at_end: bool) -> tuple[np.ndarray, int]:
        ctx = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        with ctx:
            x = torch.from_numpy(np.ascontiguousarray(mel, np.float32)).to(self.device, self.dtype)
            if at_start and at_end:
                audio, first = self.module(x), 0
            else:
                audio, first = self.module(x, at_start, at_end, 0)
            host = to_host(self._pinned, "pcm", audio.float())
            if self.stream is not None:
                done = torch.cuda.Event()
                done.record(self.stream)
        if self.stream is not None:
            done.synchronize()  # this stream's work only
        return host.numpy().copy(), int(first)


def cuda_vocoder(module: torch.nn.Module, kind: str, acoustic: CudaTacotron) -> CudaVocoder:
    """The vocoder of a cuda engine: same device and dtype as its acoustic model."""
    return CudaVocoder(module, kind, acoustic=acoustic)
