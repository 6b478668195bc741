"""Routing by load: a Serve request router that ranks replicas by headroom, their live capacity
(from each replica's ``record_routing_stats``) minus the calls they hold (the larger of what the
replica reported and what this process sent it since). It runs in the caller's process (the
front end) and publishes the replicas it knows to :mod:`streamtts.cluster.registry`.

A call whose first argument is a dict may steer it: ``{"replica": id}`` goes to that replica only,
``{"avoid": [id, ...]}`` never to those (replicas that died under this chunk).
"""

from __future__ import annotations

from typing import Optional

from ray.serve.request_router import FIFOMixin, PendingRequest, RequestRouter, RunningReplica

from streamtts.cluster import registry


def headroom(stats: dict, sent: int) -> float:
    return (stats.get("capacity") or 0) - max(stats.get("calls", 0), sent)


class LoadRouter(FIFOMixin, RequestRouter):
    async def choose_replicas(self, candidate_replicas: list[RunningReplica],
                              pending_request: Optional[PendingRequest] = None) -> list[list[RunningReplica]]:
        steer = {}
        if pending_request is not None and pending_request.args and isinstance(pending_request.args[0], dict):
            steer = pending_request.args[0]
        target, avoid = steer.get("replica"), set(steer.get("avoid") or ())
        pool = [r for r in candidate_replicas if r.replica_id.unique_id not in avoid
                and (target is None or r.replica_id.unique_id == target)]
        pool.sort(key=lambda r: -headroom(r.routing_stats or {}, registry.sent(r.replica_id.unique_id)))
        if pool and pending_request is not None:
            registry.chosen(pending_request.metadata.internal_request_id, pool[0].replica_id.unique_id)
        return [[r] for r in pool]

    def on_request_routed(self, pending_request, replica_id, result) -> None:
        registry.routed(pending_request.metadata.internal_request_id, replica_id.unique_id)

    def on_request_completed(self, replica_id, internal_request_id: str) -> None:
        registry.completed(internal_request_id)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self._publish()

    def on_replica_actor_died(self, replica_id) -> None:
        super().on_replica_actor_died(replica_id)
        self._publish()

    def _publish(self) -> None:
        registry.publish({r.replica_id.unique_id: dict(r.routing_stats or {}) for r in self._replicas_list})
