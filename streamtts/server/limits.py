"""Who may connect, and how much: API keys, browser Origins, request rate per key, session count.

    guard = Guard(config)
    key = guard.api_key(request)          # the presented key, or None
    guard.authorized(request)             # no keys configured, or a configured key presented
    guard.origin_allowed(request)         # no Origin, no allow-list, same origin, or listed
    guard.admit_request(request)          # token bucket per key (per client IP without keys)
    with guard.session() as ok: ...       # ok False when max_sessions are already open
"""

from __future__ import annotations

import contextlib
import hmac
import time
from typing import Iterator, Optional
from urllib.parse import urlsplit

from aiohttp import web

from streamtts.protocol import TokenBucket
from streamtts.server.config import ServerConfig

_MAX_BUCKETS = 10_000  # distinct keys/IPs remembered; the idlest are forgotten past this


class Guard:
    def __init__(self, config: ServerConfig):
        self.config = config
        self._keys = tuple(k.encode() for k in config.api_keys)
        self._origins = {o.rstrip("/").lower() for o in config.allowed_origins}
        self._buckets: dict[str, TokenBucket] = {}
        self.sessions = 0

    # ---- authentication -----------------------------------------------------------------------

    @staticmethod
    def api_key(request: web.Request) -> Optional[str]:
        header = request.headers.get("Authorization", "")
        if header[:7].lower() == "bearer ":
            return header[7:].strip()
        return request.query.get("api_key")

    def authorized(self, request: web.Request) -> bool:
        if not self._keys:
            return True
        key = (self.api_key(request) or "").encode()
        # compare with every key in constant time: no timing hint of a near miss
        return any(hmac.compare_digest(key, k) for k in self._keys) and bool(key)

    # ---- browsers -----------------------------------------------------------------------------

    def origin_allowed(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        if origin is None or not self._origins:
            return True  # not a browser, or no allow-list
        origin = origin.rstrip("/").lower()
        if origin in self._origins:
            return True
        # the server's own page (same scheme://host:port) is always allowed
        parts = urlsplit(origin)
        return parts.netloc == request.host.lower() and parts.scheme in ("http", "https")

    def cors_origin(self, request: web.Request) -> Optional[str]:
        """The value for Access-Control-Allow-Origin, or None (no CORS headers)."""
        origin = request.headers.get("Origin")
        if origin is None:
            return None
        if not self._origins:
            return "*"
        return origin if self.origin_allowed(request) else None

    # ---- rates and counts ---------------------------------------------------------------------

    def admit_request(self, request: web.Request) -> bool:
        """One more session or speech request for this key (or client IP)? Token bucket."""
        who = self.api_key(request) if self._keys else None
        who = f"key:{who}" if who else f"ip:{request.remote}"
        bucket = self._buckets.get(who)
        if bucket is None:
            if len(self._buckets) >= _MAX_BUCKETS:
                self._forget_full()
            bucket = self._buckets[who] = TokenBucket(self.config.request_rate, self.config.request_burst)
        return bucket.take()

    def _forget_full(self) -> None:
        now = time.monotonic()
        full = [k for k, b in self._buckets.items() if b.tokens + (now - b.stamp) * b.rate >= b.burst]
        for k in full or list(self._buckets)[: len(self._buckets) // 2]:
            del self._buckets[k]

    @contextlib.contextmanager
    def session(self) -> Iterator[bool]:
        """Counts an open session while inside; yields False (and counts nothing) when full."""
        if self.sessions >= self.config.max_sessions:
            yield False
            return
        self.sessions += 1
        try:
            yield True
        finally:
            self.sessions -= 1
