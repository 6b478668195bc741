"""Optional dependency groups: which commands need the ``server`` extra, and a typed error when
it is missing.

    require_server("serve")   # raises MissingExtraError naming the extra; else returns

The base install (numpy, websockets, sounddevice) is enough for the clients (``clients.client``,
``streamtts say``, the ``voices`` list); synthesis, the server and the voice pack need
``pip install 'streamtts[server]'`` (torch, onnxruntime, aiohttp, the text frontend ...).
"""

from __future__ import annotations

import importlib.util
import re
from importlib import metadata

from streamtts.errors import MissingExtraError

# import name -> distribution name of the packages the server cannot start without. The rest of
# the `server` extra is read from the installed package's metadata (missing_server_packages).
SERVER_MODULES = {
    "torch": "torch", "safetensors": "safetensors", "onnxruntime": "onnxruntime", "onnx": "onnx",
    "aiohttp": "aiohttp", "prometheus_client": "prometheus-client", "soxr": "soxr",
    "pypinyin": "pypinyin", "jieba": "jieba", "cn2an": "cn2an", "opencc": "opencc", "av": "av",
}
SERVER_COMMANDS = ("fetch", "frontend", "synth", "bench", "serve")
_SERVER_EXTRA = re.compile(r"""extra\s*==\s*["']server["']""")


def missing_server_packages() -> list[str]:
    """Distribution names of the server extra that are not installed: SERVER_MODULES by find_spec
    (nothing is imported), and every requirement of the extra in streamtts's metadata (absent in
    a checkout run without installing it)."""
    missing = [dist for mod, dist in SERVER_MODULES.items() if importlib.util.find_spec(mod) is None]
    try:
        requires = metadata.requires("streamtts") or []
    except metadata.PackageNotFoundError:
        requires = []
    for req in requires:
        name = re.match(r"[A-Za-z0-9._-]+", req).group(0)
        if _SERVER_EXTRA.search(req) and name not in missing:
            try:
                metadata.distribution(name)
            except metadata.PackageNotFoundError:
                missing.append(name)
    return missing


def require_server(command: str) -> None:
    """Raise MissingExtraError (code ``missing_extra``) if ``command`` lacks the server extra."""
    missing = missing_server_packages()
    if missing:
        raise MissingExtraError(
            f"`streamtts {command}` needs the server extra, which is not installed (missing: "
            f"{', '.join(missing)}); install it with: pip install 'streamtts[server]'")
