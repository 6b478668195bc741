"""What the request routers of this process know of the replicas, for the cluster client to read
(admission, readiness, failover, /metrics). Kept apart from the router's module: Serve ships the
router class by value, and this state must stay one per process."""

from __future__ import annotations

import threading
import time

# A call counts on the replica the router chose for it from that moment (before Serve has sent
# it there), so that calls chosen together spread by headroom instead of all going to the replica
# that led when the first was chosen. A choice that never turns into a call is forgotten after:
CHOSEN_TTL_S = 2.0

# replica id -> its last routing stats ({"capacity", "calls", "pid", "ready"}) plus "sent" (calls
# this process has in flight there); replaced as a whole on every change, so a reader on another
# thread sees a consistent snapshot
LIVE: dict[str, dict] = {}
_lock = threading.Lock()
_sent: dict[str, int] = {}  # replica id -> calls in flight from this process
_request_replica: dict[str, str] = {}  # internal request id -> replica id
_chosen: dict[str, tuple[str, float]] = {}  # internal request id -> (replica id, when), not yet sent


def live() -> dict[str, dict]:
    return LIVE


def sent(replica: str) -> int:
    """Calls this process has in flight at ``replica``, or has chosen it for and not sent yet."""
    now = time.monotonic()
    with _lock:
        for request in [r for r, (_, t) in _chosen.items() if now - t > CHOSEN_TTL_S]:
            del _chosen[request]
        return _sent.get(replica, 0) + sum(1 for rid, _ in _chosen.values() if rid == replica)


def chosen(request: str, replica: str) -> None:
    with _lock:
        _chosen[request] = (replica, time.monotonic())


def publish(replicas: dict[str, dict]) -> None:
    global LIVE
    with _lock:
        LIVE = {rid: {**stats, "sent": _sent.get(rid, 0)} for rid, stats in replicas.items()}


def routed(request: str, replica: str) -> None:
    with _lock:
        _chosen.pop(request, None)
        _sent[replica] = _sent.get(replica, 0) + 1
        _request_replica[request] = replica


def completed(request: str) -> None:
    with _lock:
        _chosen.pop(request, None)
        replica = _request_replica.pop(request, None)
        if replica is not None:
            _sent[replica] = max(0, _sent.get(replica, 0) - 1)
