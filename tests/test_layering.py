"""Import layering: the sans-I/O protocol is light, and the model/engine code knows nothing of the server.

Each check runs in a fresh interpreter, so modules other tests already imported do not count.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path
from typing import Optional

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


# ---- import cycles ---------------------------------------------------------------------------------
#
# The module import graph of streamtts/, engines/ and clients/, read statically (ast), so that an
# import hidden in a function counts as much as one at the top: it runs when the function does,
# and a cycle through it is still a cycle (modules half-initialised, order-dependent imports).
# Edges:
# * ``import a.b.c`` -> a.b.c;  ``from a.b import c`` -> a.b.c when that is a module, else a.b
#   (``c`` is a name defined in a/b/__init__.py); relative imports are resolved first;
# * imports under ``if TYPE_CHECKING:`` count too: they say which module depends on which, and a
#   cycle through one is one runtime import away from a real one;
# * NOT to the parent packages whose ``__init__`` runs first. Those run before the module is even
#   looked for, whoever imports it; an edge from every ``pkg.sub`` importer to ``pkg`` would make
#   every package whose ``__init__`` re-exports its submodules (streamtts.protocol, say) a cycle
#   with each submodule that imports a sibling by its full name. Python resolves those: the
#   package is in sys.modules while its __init__ runs and ``from pkg.sub import x`` loads pkg.sub
#   directly. Where a module does need the package's own names (``from pkg import x``, x defined
#   in or re-exported by pkg/__init__.py), the edge goes to ``pkg`` and a cycle through it counts.

PACKAGES = ("streamtts", "engines", "clients")


def _module_index() -> dict[str, Path]:
    index = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            index[".".join(parts)] = path
    return index


def _resolve(module: str, is_package: bool, level: int, name: Optional[str]) -> str:
    """The absolute name of ``from <level dots><name> import ...`` inside ``module``."""
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([name] if name else []))


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {imported module of ours: line of the first such import}."""
    index = _module_index()
    graph: dict[str, dict[str, int]] = {m: {} for m in index}
    for module, path in index.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node.level, node.module)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in index else base)
            for target in targets:
                # `import a.b.c` of a module we lack (a typo, an optional one): its longest known prefix
                while target and target not in index:
                    target = target.rpartition(".")[0]
                if target and target != module:
                    graph[module].setdefault(target, node.lineno)
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively; components of more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def _cycle(graph: dict[str, dict[str, int]], component: list[str]) -> str:
    """One shortest cycle through the component's first module, with the importing lines."""
    members = set(component)
    start = component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child == start:
                    path = paths[node] + [start]
                    return " -> ".join(f"{a} (line {graph[a][b]})" for a, b in zip(path, path[1:])) + f" -> {start}"
                if child in members and child not in paths:
                    paths[child] = paths[node] + [child]
                    nxt.append(child)
        frontier = nxt
    return " <-> ".join(component)


def test_the_import_graph_sees_hidden_and_relative_imports():
    graph = import_graph()
    assert "streamtts.protocol.messages" in graph["streamtts.protocol"]  # from streamtts.protocol.messages import
    assert "streamtts.errors" in graph["streamtts.protocol.messages"]
    assert "engines.registry" in graph["streamtts.cli"]  # imported inside a function
    assert strongly_connected({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}, "d": {"a": 1}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b": 1}, "b": {}}) == []


def test_no_import_cycles():
    graph = import_graph()
    cycles = [f"{', '.join(component)}: {_cycle(graph, component)}" for component in strongly_connected(graph)]
    assert not cycles, "import cycles (break each: move the shared part to a module both import):\n  " + \
        "\n  ".join(cycles)
