"""The front end's gauges of the cluster path on ``/metrics``: replicas, their capacity and load,
chunk calls, failovers, cancels, the last failover's gap, and the other front ends' streams."""

from __future__ import annotations


class ClusterMetrics:
    """Gauges and counters of the cluster path on the front end's /metrics."""

    def __init__(self, metrics, client):  # client: the ClusterEngineClient whose counters it shows
        from prometheus_client import Gauge

        r = metrics.registry
        self.metrics, self.client = metrics, client
        self.replicas = Gauge("streamtts_cluster_replicas", "Engine replicas that report in", registry=r)
        self.capacity = Gauge("streamtts_cluster_replica_capacity", "A replica's live capacity (streams)",
                              ["replica"], registry=r)
        self.load = Gauge("streamtts_cluster_replica_calls", "Chunk calls a replica holds now", ["replica"],
                          registry=r)
        self.failovers = Gauge("streamtts_cluster_failovers", "Chunk calls sent again after a replica failed",
                               registry=r)
        self.cancels = Gauge("streamtts_cluster_cancels", "Chunk calls cancelled (cancel, close, client gone)",
                             registry=r)
        self.calls = Gauge("streamtts_cluster_calls", "Chunk calls made", registry=r)
        self.gap = Gauge("streamtts_cluster_failover_gap_seconds_last", "From a replica's failure to audio from "
                         "another, for the last failover", registry=r)
        self.others = Gauge("streamtts_cluster_other_front_ends_streams", "Streams the other front ends of "
                            "the cluster hold (this one admits the replicas' capacity less them)", registry=r)
        self._known: set[str] = set()

    def update(self, replicas: dict, capacity: int, others: int) -> None:
        stats = self.client.stats
        self.replicas.set(len(replicas))
        for rid, s in replicas.items():
            self.capacity.labels(replica=rid).set(s.get("capacity") or 0)
            self.load.labels(replica=rid).set(max(s.get("calls", 0), s.get("sent", 0)))
        for gone in self._known - set(replicas):
            self.capacity.remove(gone)
            self.load.remove(gone)
        self._known = set(replicas)
        self.failovers.set(stats.failovers)
        self.cancels.set(stats.cancels)
        self.calls.set(stats.calls)
        if stats.gaps:
            self.gap.set(stats.gaps[-1])
        self.others.set(others)
        self.metrics.capacity.set(capacity)
        self.metrics.ready.set(1 if self.client.ready else 0)
