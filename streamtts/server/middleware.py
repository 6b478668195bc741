"""The guard's checks on every ``/v1/`` request, as an aiohttp middleware.

    app = web.Application(middlewares=[guard_middleware])   # needs app[STATE] (its guard, its metrics)

Here rather than beside :class:`~streamtts.server.limits.Guard`: the middleware reads the app's
:class:`~streamtts.server.state.ServerState`, which holds the guard, so in limits.py it would make
limits and state import each other.
"""

from __future__ import annotations

import math

from aiohttp import web

from streamtts.server.errors import http_error
from streamtts.server.state import STATE

__all__ = ["guard_middleware"]


@web.middleware
async def guard_middleware(request: web.Request, handler):
    """On ``/v1/``: refuse other sites' pages (403 ``origin_not_allowed``) and client IPs that
    failed authentication too often (429 ``rate_limited``, Retry-After); count every 401."""
    if not request.path.startswith("/v1/") or request.method == "OPTIONS":
        return await handler(request)  # preflights answer for themselves (app._preflight)
    state = request.app[STATE]
    guard = state.guard
    # the WebSocket's refusals have the protocol's error shape, the HTTP API's OpenAI's
    shape = "stream" if request.path == "/v1/stream" else "openai"
    if not guard.origin_allowed(request):
        origin = (request.headers.get("Origin") or "")[:100]
        return http_error("origin_not_allowed",
                          f"Origin {origin!r} is not allowed (the server allows its own page and --allowed-origin)",
                          shape=shape, metrics=state.metrics)
    if guard.keyed:
        wait = guard.auth_retry_after(request)
        if wait > 0:
            retry = str(max(1, math.ceil(min(wait, 86400.0))))
            return http_error("rate_limited", f"too many failed authentications from this address; retry in {retry} s",
                              shape=shape, metrics=state.metrics, headers={"Retry-After": retry})
    response = await handler(request)
    if response.status == 401:
        guard.auth_failed(request)
    return response
