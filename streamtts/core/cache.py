"""Phrase cache: LRU of synthesized chunks, bounded in bytes. Thread-safe.

    cache = PhraseCache(max_bytes=64 << 20)
    key = CacheKey(normalized, voice, seed, speed, engine_name, ids)
    cache.put(key, CachedChunk(audio, chars))   # audio float32 @ 22050 Hz, chars from chunk start
    hit = cache.get(key)                        # CachedChunk or None (and counts the hit/miss)

A chunk is synthesized on its own (its prenet masks start from the seed), so the same normalized
text, voice, seed, speed and engine (acoustic backend + vocoder) always give the same audio: the cache returns exactly what synthesis
would.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import NamedTuple, Optional

import numpy as np

_ENTRY_OVERHEAD = 256  # bytes counted per entry besides its audio (key, chars, bookkeeping)


class CacheKey(NamedTuple):
    normalized: str
    voice: str
    seed: int
    speed: float
    engine: str = ""  # ModelPair.name: which acoustic backend and vocoder made it
    # the model's input ids: the same normalized text reads differently under a user lexicon
    # or an inline/SSML reading
    ids: tuple = ()


@dataclass(frozen=True)
class CachedChunk:
    audio: np.ndarray  # (S,) float32 at the native rate, the chunk's speech without the pause
    chars: tuple  # (char, start_ms, end_ms, index in normalized) from the start of the speech

    @property
    def nbytes(self) -> int:
        return int(self.audio.nbytes) + _ENTRY_OVERHEAD + 48 * len(self.chars)


class PhraseCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max(0, int(max_bytes))
        self._items: OrderedDict[CacheKey, CachedChunk] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: CacheKey) -> Optional[CachedChunk]:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
            return item

    def put(self, key: CacheKey, item: CachedChunk) -> bool:
        """Store ``item`` (evicting the least recently used); False if it alone is too big."""
        size = item.nbytes
        if size > self.max_bytes:
            return False
        item.audio.setflags(write=False)  # shared by every session that hits it
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old.nbytes
            self._items[key] = item
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, evicted = self._items.popitem(last=False)
                self.bytes -= evicted.nbytes
        return True
