"""What the request routers of this process know of the replicas, for the cluster client to read
(admission, readiness, failover, /metrics). Kept apart from the router's module: Serve ships the
router class by value, and this state must stay one per process."""

from __future__ import annotations

import threading

# replica id -> its last routing stats ({"capacity", "calls", "pid", "ready"}) plus "sent" (calls
# this process has in flight there); replaced as a whole on every change, so a reader on another
# thread sees a consistent snapshot
LIVE: dict[str, dict] = {}
_lock = threading.Lock()
_sent: dict[str, int] = {}  # replica id -> calls in flight from this process
_request_replica: dict[str, str] = {}  # internal request id -> replica id


def live() -> dict[str, dict]:
    return LIVE


def sent(replica: str) -> int:
    return _sent.get(replica, 0)


def publish(replicas: dict[str, dict]) -> None:
    global LIVE
    with _lock:
        LIVE = {rid: {**stats, "sent": _sent.get(rid, 0)} for rid, stats in replicas.items()}


def routed(request: str, replica: str) -> None:
    with _lock:
        _sent[replica] = _sent.get(replica, 0) + 1
        _request_replica[request] = replica


def completed(request: str) -> None:
    with _lock:
        replica = _request_replica.pop(request, None)
        if replica is not None:
            _sent[replica] = max(0, _sent.get(replica, 0) - 1)
