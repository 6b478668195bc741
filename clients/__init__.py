"""Clients of the streamtts server: the async WebSocket client (``clients.client``), the ``say``
command (``clients.say``) and the web page (``clients/web/``, served by the server at ``/``).

    from clients import StreamClient, StreamTTSClientError   # = clients.client.*

Names are imported lazily, so ``clients.say``'s argument parser does not pull in websockets.
"""

from __future__ import annotations

__all__ = ["StreamClient", "StreamTTSClientError", "synthesize"]


def __getattr__(name: str):
    if name in __all__:
        from clients import client

        return getattr(client, name)
    raise AttributeError(name)
