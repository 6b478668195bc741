"""The cuda backend's bookkeeping (engines/cuda_backend.py): batch buckets, the slot free-list,
the per-slot device buffers and reusable (pinned) host buffers. Plain torch, no CUDA needed::

    bucket_for(3) -> 4;  t_bucket(40, 256) -> 64
    pool = SlotPool(1024); slot = pool.take(); pool.give(slot)   # SlotsExhaustedError when full
    buf  = SlotBuffers(config, slots, t_max, steps, dtype, device); buf.reset(slot)
    host = to_host(Pinned(pin=True), "frames", device_tensor)    # queued copy into a reused buffer
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from streamtts.errors import StreamTTSError

MAX_BUCKET = 1024
BUCKETS = tuple(2 ** i for i in range(11))  # 1 .. 1024
MIN_T_BUCKET = 16


class SlotsExhaustedError(StreamTTSError, RuntimeError):
    """Every slot of the cuda backend holds a live row (``max_rows``)."""

    code = "slots_exhausted"


def bucket_for(n: int) -> int:
    """The batch bucket of n rows: the smallest power of two >= n (1 .. MAX_BUCKET)."""
    if not 1 <= n <= MAX_BUCKET:
        raise ValueError(f"a block holds 1 to {MAX_BUCKET} rows, not {n}")
    return 1 << (n - 1).bit_length()


def t_bucket(t: int, t_max: int) -> int:
    """Memory width of a block whose longest row has t symbols: a power of two >= t (>= 16),
    at most the buffers' width."""
    return min(t_max, max(MIN_T_BUCKET, 1 << (t - 1).bit_length()))


class SlotPool:
    """Slot indices 0 .. capacity - 1. ``take`` raises SlotsExhaustedError when none is free; the
    last slot given back is the next taken (its buffers are the warmest). Thread-safe: a
    finalizer may give a slot back from any thread."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._free = list(range(capacity - 1, -1, -1))
        self._used: set[int] = set()
        self._lock = threading.Lock()

    def take(self) -> int:
        with self._lock:
            if not self._free:
                raise SlotsExhaustedError(f"all {self.capacity} decoder slots are in use; raise max_rows "
                                          "or admit fewer streams")
            slot = self._free.pop()
            self._used.add(slot)
            return slot

    def give(self, slot: int) -> None:
        with self._lock:
            if slot in self._used:
                self._used.remove(slot)
                self._free.append(slot)

    @property
    def in_use(self) -> int:
        return len(self._used)


class SlotBuffers:
    """Per-slot device state: (slots, ...) each; slot ``slots - 1`` is the dummy row."""

    def __init__(self, cfg: Any, slots: int, t_max: int, steps: int, dtype: torch.dtype, dev: torch.device):
        def z(*shape: int, dt: torch.dtype = dtype) -> torch.Tensor:
            return torch.zeros(shape, dtype=dt, device=dev)

        self.memory = z(slots, t_max, cfg.memory_dim)
        self.keys = z(slots, t_max, cfg.attention_dim)
        self.pad = torch.ones(slots, t_max, dtype=torch.bool, device=dev)
        self.pad[-1] = False  # the dummy attends uniformly over zeros: finite, never NaN
        self.att_h, self.att_c = z(slots, cfg.attention_rnn_dim), z(slots, cfg.attention_rnn_dim)
        self.dec_h, self.dec_c = z(slots, cfg.decoder_rnn_dim), z(slots, cfg.decoder_rnn_dim)
        self.weights, self.weights_cum = z(slots, t_max), z(slots, t_max)
        self.context = z(slots, cfg.memory_dim)
        self.frame = z(slots, cfg.n_mels)
        self.masks = z(slots, steps, 2, cfg.prenet_dim, dt=torch.uint8)  # prenet keep bits
        self.nbytes = sum(t.numel() * t.element_size() for t in vars(self).values() if isinstance(t, torch.Tensor))

    def reset(self, slot: int) -> None:
        for t in (self.att_h, self.att_c, self.dec_h, self.dec_c, self.weights, self.weights_cum,
                  self.context, self.frame, self.memory, self.keys, self.masks):
            t[slot].zero_()


class Pinned:
    """Reusable host buffers, page-locked on CUDA (so device->host copies are truly async)."""

    def __init__(self, pin: bool):
        self.pin = pin
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, numel: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        buf = self._bufs.get(name)
        if buf is None or buf.numel() < numel or buf.dtype != dtype:
            buf = torch.empty(max(numel, 1), dtype=dtype, pin_memory=self.pin)
            self._bufs[name] = buf
        return buf[:numel]


def to_host(pinned: Pinned, name: str, t: torch.Tensor) -> torch.Tensor:
    """Queue a copy of ``t`` into the pinned buffer ``name`` (non-blocking); -> the host view."""
    host = pinned.get(name, t.numel(), t.dtype).view(t.shape)
    host.copy_(t, non_blocking=pinned.pin)
    return host
