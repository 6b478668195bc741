"""Front ends' shares of the replicas' capacity.

Each front end admits streams against the sum of the replicas' live capacities. Several front
ends behind one load balancer would each admit that whole sum, and the replicas would fall behind
every listener instead of anyone being queued. So every front end publishes the streams it holds
in the cluster's key-value store (Ray's GCS, one key per front end, rewritten every poll) and
admits the replicas' sum less what the others hold::

    fronts = FrontEnds()                         # this process's key
    others = fronts.exchange(admission.admitted)   # blocking (GCS calls): run it off the loop
    admission.set_capacity(share(total, others))
    fronts.leave()                               # on stop

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
from typing import Optional

NAMESPACE = "streamtts"
PREFIX = b"front:"
STALE_S = 3.0
GONE_S = 60.0


def share(total: int, others: int) -> int:
    """The streams this front end may admit: the replicas' capacity less the others' streams."""
    return max(0, int(total) - max(0, int(others)))


class FrontEnds:
    def __init__(self, name: Optional[str] = None):
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.key = PREFIX + self.name.encode()
        self._seq = 0
        self._seen: dict[bytes, tuple[bytes, float]] = {}  # key -> (value, when it last changed)

    def exchange(self, admitted: int) -> int:
        """Publish the streams this front end holds; the streams the live others hold."""
        from ray.experimental import internal_kv as kv

        self._seq += 1
        kv._internal_kv_put(self.key, json.dumps({"admitted": int(admitted), "seq": self._seq}),
                            overwrite=True, namespace=NAMESPACE)
        now = time.monotonic()
        others = 0
        keys = set(kv._internal_kv_list(PREFIX, namespace=NAMESPACE)) - {self.key}
        for key in keys:
            value = kv._internal_kv_get(key, namespace=NAMESPACE)
            if value is None:
                continue
            last = self._seen.get(key)
            if last is None or last[0] != value:
                self._seen[key] = last = (value, now)
            if now - last[1] > GONE_S:
                kv._internal_kv_del(key, namespace=NAMESPACE)
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
        from ray.experimental import internal_kv as kv

        kv._internal_kv_del(self.key, namespace=NAMESPACE)
