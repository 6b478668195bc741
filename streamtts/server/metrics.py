"""Prometheus metrics of one server (its own registry, so several apps can live in one process).

    metrics = Metrics()
    metrics.ttfa.labels(api="ws").observe(0.12)
    metrics.errors.labels(code="bad_json").inc()
    body, content_type = metrics.render()       # for GET /metrics

The worker thread and the event loop both update them; prometheus-client is thread-safe.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
_RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 5.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.ttfa = Histogram("streamtts_ttfa_seconds", "Time from the first text of an utterance to its "
                              "first audio byte handed to the socket", ["api"], buckets=_LATENCY_BUCKETS, registry=r)
        self.rtf = Histogram("streamtts_rtf", "Synthesis compute time / audio duration, per synthesized chunk",
                             buckets=_RTF_BUCKETS, registry=r)
        self.last_rtf = Gauge("streamtts_rtf_last", "RTF of the last synthesized chunk", registry=r)
        self.active_sessions = Gauge("streamtts_active_sessions", "Open WebSocket sessions and HTTP speech "
                                     "requests", ["api"], registry=r)
        self.queue_depth = Gauge("streamtts_queue_depth", "Requests with synthesis work waiting for the worker",
                                 registry=r)
        self.cache_hits = Counter("streamtts_cache_hits", "Phrase cache hits (chunks)", registry=r)
        self.cache_misses = Counter("streamtts_cache_misses", "Phrase cache misses (chunks)", registry=r)
        self.cache_bytes = Gauge("streamtts_cache_bytes", "Bytes held by the phrase cache", registry=r)
        self.errors = Counter("streamtts_errors", "Errors sent to clients, by code", ["code"], registry=r)
        self.audio_seconds = Counter("streamtts_audio_seconds", "Seconds of audio produced (cache hits "
                                     "included)", registry=r)
        self.requests = Counter("streamtts_requests", "Sessions and HTTP speech requests started", ["api"],
                                registry=r)
        self.ready = Gauge("streamtts_ready", "1 once the engine is loaded and warm", registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
