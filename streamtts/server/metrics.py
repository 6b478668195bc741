"""Prometheus metrics of one server (its own registry, so several apps can live in one process).

    metrics = Metrics()
    metrics.ttfa.labels(api="ws").observe(0.12)
    metrics.errors.labels(code="bad_json").inc()
    body, content_type = metrics.render()       # for GET /metrics

The worker thread and the event loop both update them; prometheus-client is thread-safe.
"""

from __future__ import annotations

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector,
                               generate_latest)

_LATENCY_BUCKETS = (0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0)
_RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 5.0)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.ttfa = Histogram("streamtts_ttfa_seconds", "Time from the first text of an utterance to its "
                              "first audio byte handed to the socket", ["api"], buckets=_LATENCY_BUCKETS, registry=r)
        self.rtf = Histogram("streamtts_rtf", "Engine tick time / audio it produced, per tick with audio",
                             buckets=_RTF_BUCKETS, registry=r)
        self.last_rtf = Gauge("streamtts_rtf_last", "RTF of the last engine tick with audio", registry=r)
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
        self.capacity = Gauge("streamtts_capacity", "Streams admitted at once (configured, or live: what the engine "
                              "keeps at real time now)", registry=r)
        self.extra_slots = Gauge("streamtts_extra_slots", "Slots admitted beyond the capacity now, while the engine "
                                 "has headroom (every playing stream has audio in hand)", registry=r)
        self.admitted = Gauge("streamtts_admitted", "Streams holding a slot now", registry=r)
        self.queued = Gauge("streamtts_queued", "Utterances (any transport) waiting for a stream slot", registry=r)
        self.refused = Counter("streamtts_refused", "Sessions and requests refused for capacity (server_busy)",
                               ["api"], registry=r)
        self.batch_rows = Histogram("streamtts_batch_rows", "Rows in one batched decoder call",
                                    buckets=(1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 128), registry=r)
        self.tick_seconds = Histogram("streamtts_tick_seconds", "Wall time of one engine tick (decode + vocode)",
                                      buckets=_LATENCY_BUCKETS, registry=r)
        self.ready = Gauge("streamtts_ready", "1 once the engine is loaded and warm", registry=r)
        self.engine_failed = Gauge("streamtts_engine_failed", "1 when the engine failed to load, crashed or "
                                   "stalled (then /ready is 503 and sessions get engine_unavailable)", registry=r)
        self.draining = Gauge("streamtts_draining", "1 while shutting down (refusing new work)", registry=r)
        # process_resident_memory_bytes, process_cpu_seconds_total, ... (Linux /proc; nothing elsewhere):
        # what a soak (streamtts loadtest) watches for growth
        ProcessCollector(registry=r)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
