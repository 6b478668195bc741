"""The streamtts server (aiohttp): WebSocket streaming, OpenAI-compatible HTTP, metrics, web page.

    from streamtts.server import ServerConfig, create_app, serve
    app = create_app(ServerConfig(api_keys=("k",)), engine=None)   # aiohttp web.Application
    serve(ServerConfig(port=8000))                                  # blocking

Names are imported lazily, so importing a submodule (``streamtts.server.config``, say) does not pull
in aiohttp. The sans-I/O protocol and its audio codec live outside this package
(``streamtts.protocol``, ``streamtts.audio.codec``) and import nothing from it.
"""

from __future__ import annotations

__all__ = ["ServerConfig", "create_app", "serve"]


def __getattr__(name: str):
    if name == "ServerConfig":
        from streamtts.server.config import ServerConfig

        return ServerConfig
    if name in ("create_app", "serve"):
        from streamtts.server import app

        return getattr(app, name)
    raise AttributeError(name)
