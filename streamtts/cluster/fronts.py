"""Front ends' shares of the replicas' capacity.

Each front end admits streams against the sum of the replicas' live capacities. Several front
ends behind one load balancer would each admit that whole sum, and the replicas would fall behind
every listener instead of anyone being queued. So every front end publishes the streams it holds
in the cluster's key-value store (Ray's GCS, one key per front end, rewritten every poll) and
admits the replicas' sum less what the others hold::

    fronts = FrontEnds()                          # this process's key
    others = fronts.exchange(admission.admitted)  # blocking (GCS calls): run it off the loop
    admission.set_capacity(share(total, others))
    fronts.leave()                                # on stop

Two front ends that admit in the same poll can overshoot by what arrived in it; the next poll
corrects the share. A front end that stops rewriting its key (a crashed process) no longer counts
once its value has not changed for ``STALE_S`` on the reader's own clock (no clocks are compared
between machines), and its key is deleted after ``GONE_S``.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from typing import Callable, Optional

NAMESPACE = "streamtts"
PREFIX = b"front:"
STALE_S = 3.0
GONE_S = 60.0


def share(total: int, others: int) -> int:
    """The streams this front end may admit: the replicas' capacity less the others' streams."""
    return max(0, int(total) - max(0, int(others)))


class RayKV:
    """The cluster's key-value store (Ray's GCS), in this module's namespace."""

    def __init__(self):
        from ray.experimental import internal_kv

        self._kv = internal_kv

    def put(self, key: bytes, value: bytes) -> None:
        self._kv._internal_kv_put(key, value, overwrite=True, namespace=NAMESPACE)

    def keys(self, prefix: bytes) -> list[bytes]:
        return self._kv._internal_kv_list(prefix, namespace=NAMESPACE)

    def get(self, key: bytes) -> Optional[bytes]:
        return self._kv._internal_kv_get(key, namespace=NAMESPACE)

    def delete(self, key: bytes) -> None:
        self._kv._internal_kv_del(key, namespace=NAMESPACE)


class FrontEnds:
    """This front end's key, and what it knows of the others' (``kv``: the store, Ray's by
    default; ``clock``: seconds, monotonic)."""

    def __init__(self, name: Optional[str] = None, kv=None, clock: Callable[[], float] = time.monotonic):
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.key = PREFIX + self.name.encode()
        self._kv, self._clock = kv, clock
        self._seq = 0
        self._seen: dict[bytes, tuple[bytes, float]] = {}  # key -> (value, when it last changed)

    @property
    def kv(self):
        if self._kv is None:
            self._kv = RayKV()
        return self._kv

    def exchange(self, admitted: int) -> int:
        """Publish the streams this front end holds; the streams the live others hold."""
        kv = self.kv
        self._seq += 1
        kv.put(self.key, json.dumps({"admitted": int(admitted), "seq": self._seq}).encode())
        now = self._clock()
        others = 0
        keys = set(kv.keys(PREFIX)) - {self.key}
        for key in keys:
            value = kv.get(key)
            if value is None:
                continue
            last = self._seen.get(key)
            if last is None or last[0] != value:
                self._seen[key] = last = (value, now)
            if now - last[1] > GONE_S:
                kv.delete(key)
                self._seen.pop(key, None)
            elif now - last[1] <= STALE_S:
                try:
                    others += max(0, int(json.loads(value)["admitted"]))
                except (ValueError, KeyError, TypeError):
                    continue  # not a front end's record: ignored
        for key in set(self._seen) - keys:
            del self._seen[key]
        return others

    def leave(self) -> None:
        self.kv.delete(self.key)
