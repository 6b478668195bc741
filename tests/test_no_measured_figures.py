"""Words that stay true: comments and docstrings of the code say why, not how fast. Measured
figures (timings, RTF, error rates, memory) live in the README and the bench JSON, which are
re-measured together; a figure copied into the code goes stale without anybody noticing.

A conservative check: the forms such figures took (``RTF 0.08``, ``0.58 ms/step``, ``7.8
GFLOP``, ``2.8x slower``, ``1.4 % ... errors``, "measured on ..."). A setting or a spec value
(``22050 Hz``, ``0.25 s`` frames, ``64 KiB``) is not one of them."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = re.compile(
    r"RTF\s*[=:]?\s*\d"
    r"|\bms\s*(/|per)\s*step"
    r"|GFLOP"
    r"|\d(\.\d+)?\s*[x×]\s*(slower|faster|as much|MelGAN)"
    r"|\d\s*%\s*[^,;.]{0,40}\berror"
    r"|\bmeasured\s+(on|with|here|in one run)\b|(?-i:\bMeasured:)"
    r"|\bMB\s+(less|more)\s+peak",
    re.IGNORECASE)


def _texts(path: Path):
    src = path.read_text(encoding="utf-8")
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            yield tok.start[0], tok.string
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                for i, line in enumerate(doc.splitlines()):
                    yield node.body[0].lineno + i, line


def test_no_measured_figures_in_comments_or_docstrings():
    found = [f"{path.relative_to(ROOT)}:{line}: {text.strip()}"
             for pkg in ("streamtts", "engines", "clients") for path in sorted((ROOT / pkg).rglob("*.py"))
             for line, text in _texts(path) if FIGURES.search(text)]
    assert not found, "measured figures in the code's words (say why; the figure goes to the README):\n  " + \
        "\n  ".join(found)


def test_the_check_catches_the_old_forms():
    for old in ("decoder ms/step at batch 1: torch 2.4-2.7", "MelGAN needs 7.8 GFLOP per second",
                "(RTF 0.51 against 0.08)", "makes the postnet 2.8x slower", "0.8 gave 1.4 % toneless-pinyin errors",
                "Measured on 8 sentences: no slower", "Measured: with timestamp tokens"):
        assert FIGURES.search(old), old
    for setting in ("s16le mono at 22050 Hz", "frames hold at most 0.25 s", "64 KiB", "1 thread"):
        assert not FIGURES.search(setting), setting
