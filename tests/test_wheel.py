"""The built wheel, installed in fresh virtual environments outside the checkout.

1. Server install: the wheel (``--no-deps``) in a fresh venv that sees the main venv's
   site-packages through a ``.pth`` line (a plain path, so the main venv's editable-install hook is
   not run and the wheel's own copy of streamtts is the one imported). ``streamtts serve`` from
   that venv, cwd outside the checkout, serves the packaged web page at ``/`` and speaks over
   ``POST /v1/audio/speech``.
2. Client-only install: the wheel in a second fresh venv whose ``.pth`` names a directory holding
   only the wheel's base requirements (and theirs, from their metadata): no torch, no aiohttp.
   There ``import clients.client`` works, ``streamtts say`` speaks to the server of (1) and writes a
   WAV, and ``streamtts serve`` fails with the typed ``missing_extra`` error naming the extra.

The checkout is copied to tmp_path before building, so nothing is written into the repository.
"""

from __future__ import annotations

import email.parser
import os
import shutil
import subprocess
import sys
import sysconfig
import wave
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from support.servers import ProcessServer, http

packaging_requirements = pytest.importorskip("packaging.requirements")

ROOT = Path(__file__).resolve().parent.parent
MAIN_SITE = Path(sysconfig.get_paths()["purelib"])
SOURCES = ("pyproject.toml", "README.md", "streamtts", "engines", "clients")


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("timeout", 300)
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def _venv(path: Path, site_dir: Path) -> Path:
    """A fresh venv (no pip) whose site-packages also sees ``site_dir``; returns its python."""
    proc = _run([sys.executable, "-m", "venv", "--without-pip", path])
    assert proc.returncode == 0, proc.stderr
    python = path / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "main-site.pth").write_text(f"{site_dir}\n")  # a plain path line: .pth files there are not run
    return python


def _install(python: Path, wheel: Path) -> None:
    proc = _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps",
                 "--no-index", wheel])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _wheel_requires(wheel: Path) -> list[str]:
    """Requires-Dist lines of the wheel's own METADATA."""
    with zipfile.ZipFile(wheel) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(z.read(name).decode()).get_all("Requires-Dist") or []


def _base_closure(requires: list[str]) -> set[str]:
    """Distribution names a base install needs: these requirements without extras, and theirs,
    read from the metadata installed in the main venv."""
    todo = list(requires)
    seen: set[str] = set()
    while todo:
        req = packaging_requirements.Requirement(todo.pop())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = req.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        todo += metadata.distribution(name).requires or []
    return seen


def _link_distributions(names: set[str], into: Path) -> None:
    """Symlink the top-level files of these installed distributions (and their dist-info) into ``into``."""
    into.mkdir()
    for name in names:
        dist = metadata.distribution(name)
        for f in dist.files or []:
            top = f.parts[0]
            if top.endswith(".pth") or top == "..":
                continue
            src, dst = MAIN_SITE / top, into / top
            if src.exists() and not dst.exists():
                dst.symlink_to(src)


@pytest.fixture(scope="module")
def built(tmp_path_factory, pack):
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, src / name, **(
            {"ignore": ignore} if (ROOT / name).is_dir() else {}))
    proc = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", src,
                 "-w", tmp / "dist"], cwd=tmp)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp / "dist").glob("streamtts-*.whl")
    return tmp, wheel


@pytest.fixture(scope="module")
def server_venv(built):
    tmp, wheel = built
    python = _venv(tmp / "server-venv", MAIN_SITE)
    _install(python, wheel)
    return tmp, python


@pytest.fixture(scope="module")
def served(server_venv):
    """The wheel's own ``streamtts serve`` (torch + MelGAN, capacity 2): its base URL."""
    tmp, python = server_venv
    with ProcessServer("--capacity", "2", engine="torch", vocoder="melgan", command=[python.parent / "streamtts"],
                       cwd=tmp, env={**os.environ, "PYTHONPATH": ""}) as srv:
        yield srv.url


def test_the_wheel_copy_is_imported_not_the_checkout(server_venv):
    tmp, python = server_venv
    proc = _run([python, "-c", "import streamtts, engines, clients; "
                 "print(streamtts.__file__); print(engines.__file__); print(clients.__file__)"],
                cwd=tmp, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    site = str(python.parent.parent)
    for line in proc.stdout.split():
        assert line.startswith(site) and not line.startswith(str(ROOT) + "/streamtts"), proc.stdout


def test_installed_server_serves_the_page_and_speech(served):
    status, body = http(served + "/")
    assert status == 200 and b"<title>streamtts" in body, body[:200]
    status, js = http(served + "/pcm-player-worklet.js")
    assert status == 200 and js
    status, pcm = http(served + "/v1/audio/speech",
                        {"model": "tts-1", "input": "你好。", "voice": "alloy", "response_format": "pcm"})
    assert status == 200, pcm[:300]
    assert len(pcm) > 0.3 * 24000 * 2 and len(pcm) % 2 == 0  # pcm: 24 kHz s16le, at least 0.3 s


@pytest.fixture(scope="module")
def client_venv(built):
    tmp, wheel = built
    base = _base_closure(_wheel_requires(wheel))
    assert not base & {"torch", "aiohttp", "onnxruntime", "soxr"}, base
    only = tmp / "client-deps"
    _link_distributions(base, only)
    python = _venv(tmp / "client-venv", only)
    _install(python, wheel)
    return tmp, python


def test_client_only_install_imports_no_torch(client_venv):
    tmp, python = client_venv
    code = ("import importlib.util, sys; import clients.client, clients.say, streamtts.cli; "
            "streamtts.cli.build_parser(); "
            "assert importlib.util.find_spec('torch') is None, 'torch is visible'; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'aiohttp', 'soxr')))")
    proc = _run([python, "-c", code], cwd=tmp, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    proc = _run([python.parent / "streamtts", "say", "--help"], cwd=tmp, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 0 and "--url" in proc.stdout, proc.stderr


def test_client_only_serve_names_the_missing_extra(client_venv):
    tmp, python = client_venv
    proc = _run([python.parent / "streamtts", "serve", "--port", "0"], cwd=tmp, env={**os.environ, "PYTHONPATH": ""})
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "error [missing_extra]" in proc.stderr and "streamtts[server]" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_client_only_say_speaks_through_the_installed_server(client_venv, served):
    tmp, python = client_venv
    out = tmp / "say.wav"
    url = served.replace("http://", "ws://") + "/v1/stream"
    proc = _run([python.parent / "streamtts", "say", "你好。", "--url", url, "--voice", "Aiyue:0.7,biaobei:0.3",
                 "-o", out], cwd=tmp, env={**os.environ, "PYTHONPATH": ""}, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with wave.open(str(out)) as w:
        assert w.getnframes() > 0.3 * w.getframerate()
