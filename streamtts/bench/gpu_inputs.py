"""The GPU check's inputs: everything ``scripts/gpu-check.py`` needs, prepared on a CPU machine.

A bare GPU machine has torch, numpy, safetensors and onnx but no network, no voice cache and no
text frontend, so ``scripts/gpu-prep.py`` writes one folder (git-ignored; it travels with the
working tree as an ignored path)::

    acoustic.fp16.safetensors   the acoustic model's weights in float16, config in the metadata
    hifigan.fp16.safetensors    HiFiGAN V1's, the same way
    inputs.json                 test sentences: text, input ids, speaker vector, seed; settings;
                                sha256 of the weight files; references' step counts
    reference.safetensors       CPU float32 reference per reference sentence: mel_<i> (80, F),
                                audio_<i> (S,), from the same float16-rounded weights (upcast)

The references are computed from the rounded weights, so a float32 run on the GPU is compared with
the CPU on equal weights and its difference is the device's arithmetic alone; float16 weights halve
the folder, which keeps it under the 64 MiB a device check may carry.

How to call::

    write_inputs(folder, texts, voice="biaobei", references=4)     # CPU side, needs the packs
    inputs = load_inputs(folder)                                    # GPU side: torch/numpy/safetensors only
    inputs.acoustic_pack.load_acoustic("cuda")   -> Tacotron2 (float32, from the float16 file)
    inputs.load_vocoder()                        -> HiFiGAN (float32)
    inputs.utterances, inputs.references         # bench_gpu.Utterance list, [(mel, audio, steps)]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from streamtts.bench.gpu import Utterance
from streamtts.cachefiles import sha256_file
from streamtts.errors import StreamTTSError
from streamtts.models.acoustic import Tacotron2
from streamtts.models.config import AcousticConfig
from streamtts.models.hifigan import HiFiGAN, HiFiGANConfig

FORMAT = 1
ACOUSTIC = "acoustic.fp16.safetensors"
HIFIGAN = "hifigan.fp16.safetensors"
REFERENCE = "reference.safetensors"
LIMIT_BYTES = 64 * 2 ** 20


class GpuInputsError(StreamTTSError):
    """The GPU check's input folder is missing, incomplete or of another format."""

    code = "gpu_inputs"


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def _save_half(path: Path, state: dict[str, torch.Tensor], config: dict[str, Any]) -> None:
    half = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(half, str(path), metadata={"config": json.dumps(config)})


def _load_model(cls: Any, config_cls: Any, path: Path, device: Any) -> Any:
    state, meta = _read(path)
    model = cls(config_cls.from_dict(json.loads(meta["config"])))
    model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in state.items()})
    return model.eval().requires_grad_(False).to(device)


@dataclass(frozen=True)
class LocalAcoustic:
    """Stands for a VoicePack where the backends only call ``load_acoustic(device)``."""

    path: Path

    def load_acoustic(self, device: Any = "cpu") -> Tacotron2:
        return _load_model(Tacotron2, AcousticConfig, self.path, device)


@dataclass(frozen=True)
class GpuInputs:
    folder: Path
    meta: dict[str, Any]
    utterances: list[Utterance]
    references: list[tuple[np.ndarray, np.ndarray, int]]

    @property
    def acoustic_pack(self) -> LocalAcoustic:
        return LocalAcoustic(self.folder / ACOUSTIC)

    def load_vocoder(self, device: Any = "cpu") -> HiFiGAN:
        return _load_model(HiFiGAN, HiFiGANConfig, self.folder / HIFIGAN, device)


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).iterdir() if p.is_file())


def write_inputs(folder: Path, texts: Sequence[str], voice: str = "biaobei", references: int = 4,
                 steps: int | None = None) -> dict[str, Any]:
    """Prepare ``folder`` (CPU side): needs the voice pack, HiFiGAN and the text frontend."""
    from engines.base import ModelPair
    from engines.torch_backend import TorchTacotron, TorchVocoder
    from streamtts.bench.gpu import STEPS, synthesize
    from streamtts.pack import ensure_pack
    from streamtts.pack.hifigan import ensure_hifigan
    from streamtts.text import phonemize
    from streamtts.voices import resolve_voice, speaker_vector

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pack, hifigan = ensure_pack(), ensure_hifigan()
    for src, dst in ((pack.path / "acoustic.safetensors", ACOUSTIC), (hifigan.path / "generator.safetensors", HIFIGAN)):
        state, meta = _read(src)
        _save_half(folder / dst, state, json.loads(meta["config"]))
    voice = resolve_voice(voice)
    spk = speaker_vector(voice)
    sentences = [{"text": t, "ids": [int(i) for i in phonemize(t).ids], "seed": k} for k, t in enumerate(texts)]
    inputs = load_inputs(folder, meta={"sentences": sentences, "speaker": spk.tolist()}, partial=True)
    # the CPU float32 reference, from the same float16-rounded weights
    steps = steps or STEPS
    ref = ModelPair(TorchTacotron(inputs.acoustic_pack), TorchVocoder(inputs.load_vocoder(), "hifigan"))
    tensors, ref_steps = {}, []
    for i, utt in enumerate(inputs.utterances[:references]):
        mel, audio, n = synthesize(ref, utt, steps)
        tensors[f"mel_{i}"], tensors[f"audio_{i}"] = torch.from_numpy(mel), torch.from_numpy(audio)
        ref_steps.append(int(n))
    save_file(tensors, str(folder / REFERENCE))
    meta = {"format": FORMAT, "voice": voice, "speaker": spk.tolist(), "sentences": sentences,
            "reference_steps": ref_steps, "steps": steps,
            "sha256": {name: sha256_file(folder / name) for name in (ACOUSTIC, HIFIGAN, REFERENCE)}}
    (folder / "inputs.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1))
    size = folder_bytes(folder)
    if size > LIMIT_BYTES:
        raise GpuInputsError(f"{folder} holds {size / 2 ** 20:.1f} MiB, over the {LIMIT_BYTES / 2 ** 20:.0f} MiB "
                             "that travel with the working tree")
    meta["bytes"] = size
    return meta


def load_inputs(folder: Path, meta: dict[str, Any] | None = None, partial: bool = False) -> GpuInputs:
    """The prepared folder, checked (format, files, sha256); ``partial``: no references yet."""
    folder = Path(folder)
    if meta is None:
        try:
            meta = json.loads((folder / "inputs.json").read_text())
        except (OSError, ValueError) as exc:
            raise GpuInputsError(f"no GPU check inputs in {folder} ({exc}); run scripts/gpu-prep.py first") from exc
        if meta.get("format") != FORMAT:
            raise GpuInputsError(f"{folder} is of format {meta.get('format')}, expected {FORMAT}; run "
                                 "scripts/gpu-prep.py again")
        for name, digest in meta["sha256"].items():
            if not (folder / name).is_file() or sha256_file(folder / name) != digest:
                raise GpuInputsError(f"{folder / name} is missing or does not match inputs.json; run "
                                     "scripts/gpu-prep.py again")
    spk = np.asarray(meta["speaker"], np.float32)
    utts = [Utterance(np.asarray(s["ids"], np.int64), spk, int(s["seed"])) for s in meta["sentences"]]
    refs: list[tuple[np.ndarray, np.ndarray, int]] = []
    if not partial:
        tensors, _ = _read(folder / REFERENCE)
        refs = [(tensors[f"mel_{i}"].numpy(), tensors[f"audio_{i}"].numpy(), int(n))
                for i, n in enumerate(meta["reference_steps"])]
    return GpuInputs(folder, meta, utts, refs)
