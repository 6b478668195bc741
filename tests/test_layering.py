"""Import layering: the sans-I/O protocol is light, and the model/engine code knows nothing of the server.

Each check runs in a fresh interpreter, so modules other tests already imported do not count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROTOCOL_CHECK = (
    "import streamtts.protocol, sys; "
    "bad=[m for m in sys.modules if m.split('.')[0] in ('torch','onnxruntime','engines') "
    "or m.startswith('streamtts.server')]; print(bad); sys.exit(1 if bad else 0)"
)

# Imports every module of the model, pack and engine packages (pkgutil), one after another, and
# names the first module after whose import some streamtts.server module was loaded. A module
# that cannot be imported for a missing optional dependency (onnxruntime, say) is skipped.
MODEL_CHECK = r"""
import importlib, json, pkgutil, sys

def server_modules():
    return {m for m in sys.modules if m == "streamtts.server" or m.startswith("streamtts.server.")}

names = ["streamtts.models", "streamtts.pack", "engines", "engines.base"]
for pkg in ("streamtts.models", "streamtts.pack", "engines"):
    mod = importlib.import_module(pkg)
    names += [info.name for info in pkgutil.walk_packages(mod.__path__, pkg + ".")]
offenders, skipped, errors, seen = {}, {}, {}, set()
for name in dict.fromkeys(names):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] in ("streamtts", "engines"):
            errors[name] = repr(e)
        else:
            skipped[name] = e.name
        continue
    except Exception as e:
        errors[name] = repr(e)
        continue
    new = server_modules() - seen
    if new:
        offenders[name] = sorted(new)
        seen |= new
print(json.dumps({"checked": list(dict.fromkeys(names)), "offenders": offenders, "skipped": skipped,
                  "errors": errors}))
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_protocol_imports_no_torch_engines_or_server():
    proc = _run(PROTOCOL_CHECK)
    assert proc.returncode == 0, f"streamtts.protocol pulled in: {proc.stdout.strip()}\n{proc.stderr}"


def test_codec_and_constants_are_light():
    proc = _run(PROTOCOL_CHECK.replace("import streamtts.protocol,", "import streamtts.audio.codec, streamtts.constants,"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_models_pack_and_engines_do_not_import_the_server():
    proc = _run(MODEL_CHECK)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "engines.base" in result["checked"]
    assert not result["errors"], f"modules failed to import: {result['errors']}"
    assert not result["offenders"], f"these import streamtts.server: {result['offenders']}"


# What a client-only install (the base dependencies, no `server` extra) runs: the WebSocket
# client, `say`, and the CLI's argument parser (which `streamtts say` builds).
CLIENT_CHECK = (
    "import sys, clients.client, clients.say, streamtts.cli, streamtts.extras; streamtts.cli.build_parser(); "
    "bad=[m for m in sys.modules if m.split('.')[0] in ('torch','onnxruntime','aiohttp','soxr','engines','pypinyin',"
    "'jieba') or m.startswith('streamtts.server')]; print(bad); sys.exit(1 if bad else 0)"
)


def test_clients_need_only_the_base_install():
    proc = _run(CLIENT_CHECK)
    assert proc.returncode == 0, f"the clients pulled in: {proc.stdout.strip()}\n{proc.stderr}"
