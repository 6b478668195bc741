"""Who may connect, and how much: API keys, browser Origins, request rate per key, session count.

    guard = Guard(config)
    key = guard.api_key(request)          # the presented key, or None
    guard.authorized(request)             # no keys configured, or a configured key presented
    guard.auth_retry_after(request)       # > 0: this client IP failed too often, refuse (429) for now
    guard.auth_failed(request)            # count a 401 against the client IP
    guard.origin_allowed(request)         # no Origin, same origin, listed, or the list holds "*"
    guard.admit_request(request)          # token bucket per key (per client IP without keys)
    with guard.session() as ok: ...       # ok False when max_sessions are already open

    redact_secrets_in_logs()              # ?api_key=... and Bearer tokens never reach a log line

The middleware that applies these checks to every ``/v1/`` request is
:func:`streamtts.server.middleware.guard_middleware` (it needs the app's state; this module does not).
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import math
import re
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
        self._any_origin = "*" in config.allowed_origins  # opened to every page explicitly
        self._origins = {o.rstrip("/").lower() for o in config.allowed_origins if o != "*"}
        self._buckets: dict[str, TokenBucket] = {}
        self._failures: dict[str, TokenBucket] = {}  # failed authentications per client IP
        self.sessions = 0

    # ---- authentication -----------------------------------------------------------------------

    @property
    def keyed(self) -> bool:
        """The server has API keys (else nobody authenticates, and nobody fails to)."""
        return bool(self._keys)

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

    def auth_retry_after(self, request: web.Request) -> float:
        """Seconds until this client IP may try a key again (0: it may now).

        Every 401 takes a token from the IP's failure bucket (``auth_failure_burst`` tokens,
        refilled at ``auth_failure_rate`` a second). While it is empty every request that needs
        a key is refused with 429 *before the key is looked at*, a correct key included: an
        answer that depended on the key would let a guesser go on at full speed."""
        bucket = self._failures.get(f"ip:{request.remote}")
        if bucket is None:
            return 0.0
        tokens = min(bucket.burst, bucket.tokens + (time.monotonic() - bucket.stamp) * bucket.rate)
        if tokens >= 1.0:
            return 0.0
        return (1.0 - tokens) / bucket.rate if bucket.rate > 0 else math.inf

    def auth_failed(self, request: web.Request) -> None:
        """A request from this client IP was refused with 401: one token of its failure bucket."""
        self._bucket(self._failures, f"ip:{request.remote}", self.config.auth_failure_rate,
                     self.config.auth_failure_burst).take()

    # ---- browsers -----------------------------------------------------------------------------

    def origin_allowed(self, request: web.Request) -> bool:
        """No Origin header (not a browser), the server's own page, a listed Origin, or "*" listed.

        Without an allow-list other pages are refused: any site a user visits could otherwise
        drive a server on their localhost (a keyless one above all)."""
        origin = request.headers.get("Origin")
        if origin is None or self._any_origin:
            return True
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
        if self._any_origin:
            return "*"
        return origin if self.origin_allowed(request) else None

    # ---- rates and counts ---------------------------------------------------------------------

    def admit_request(self, request: web.Request) -> bool:
        """One more session or speech request for this key (or client IP)? Token bucket."""
        who = self.api_key(request) if self._keys else None
        who = f"key:{who}" if who else f"ip:{request.remote}"
        return self._bucket(self._buckets, who, self.config.request_rate, self.config.request_burst).take()

    @staticmethod
    def _bucket(buckets: dict[str, TokenBucket], who: str, rate: float, burst: float) -> TokenBucket:
        bucket = buckets.get(who)
        if bucket is None:
            if len(buckets) >= _MAX_BUCKETS:
                _forget_full(buckets)
            bucket = buckets[who] = TokenBucket(rate, burst)
        return bucket

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


def _forget_full(buckets: dict[str, TokenBucket]) -> None:
    # a full bucket is the same as a new one: forgetting it changes nothing
    now = time.monotonic()
    full = [k for k, b in buckets.items() if b.tokens + (now - b.stamp) * b.rate >= b.burst]
    for k in full or list(buckets)[: len(buckets) // 2]:
        del buckets[k]


# ---- logs -----------------------------------------------------------------------------------------

# A key in a query string (?api_key=..., also percent-encoded: api%5Fkey) or an Authorization
# header value; what follows up to the next separator is replaced.
_SECRETS = re.compile(r"(api(?:_|%5f)key=)[^&\s'\"#;,]*|(bearer\s+)[^\s'\",;]+", re.IGNORECASE)
_LOGGERS = ("aiohttp.access", "aiohttp.server", "aiohttp.web", "aiohttp.websocket", "aiohttp.internal",
            "streamtts")


def redact(text: str) -> str:
    """``text`` with API keys replaced by ``***``: ``"GET /v1/stream?api_key=k"`` -> ``"...api_key=***"``."""
    return _SECRETS.sub(lambda m: (m.group(1) or m.group(2)) + "***", text)


class RedactSecrets(logging.Filter):
    """Rewrites a record's message and traceback text without the keys in it (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler to report
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            # aiohttp's parse errors carry the request line (URL and query) in their message
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


_REDACT = RedactSecrets()


def redact_secrets_in_logs() -> None:
    """Install the filter on every logger the server writes to: aiohttp's (access log, request
    errors, WebSocket) and streamtts's. A logger filter sees only records logged on that very
    logger, so each existing ``streamtts.*`` logger gets it too. Idempotent."""
    names = set(_LOGGERS) | {n for n in logging.root.manager.loggerDict if n.startswith(("streamtts.", "aiohttp."))}
    for name in names:
        logger = logging.getLogger(name)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)
