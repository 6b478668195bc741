"""The cuda backend's CPU dry run (engines/cuda_backend.py): the same slot, bucket and padding code
that runs under CUDA graphs on a GPU, run eagerly, against the torch backend's numbers."""

from __future__ import annotations

import gc

import numpy as np
import pytest
import torch

from engines.cuda_backend import CudaTacotron, CudaUnavailableError, CudaVocoder
from engines.cuda_slots import SlotsExhaustedError, bucket_for, t_bucket
from engines.torch_backend import TorchTacotron, TorchVocoder
from streamtts.text import phonemize
from streamtts.voices import speaker_vector

TEXTS = ("你好。", "今天天气很好，我们去散步。", "谢谢。")
STEPS = 24


@pytest.fixture(scope="module")
def models():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield TorchTacotron(), CudaTacotron(device="cpu", max_rows=4)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ids():
    return [np.asarray(phonemize(t).ids, np.int64) for t in TEXTS]


def _speak(model, ids, batched: bool, seed: int = 3):
    """Decode every utterance to the end, together (one call per block) or each alone."""
    spk = speaker_vector("biaobei")
    rows = [model.start(i, spk, seed + k) for k, i in enumerate(ids)]
    mels = [[] for _ in rows]
    aligns = [[] for _ in rows]
    while not all(r.finished for r in rows):
        for group in ([list(range(len(rows)))] if batched else [[k] for k in range(len(rows))]):
            outs = model.decode([rows[k] for k in group], STEPS)
            for k, out in zip(group, outs):
                mels[k].append(out.mel)
                aligns[k].append(out.alignments)
    return ([np.concatenate(m, axis=1) for m in mels], [np.concatenate(a) for a in aligns],
            [r.steps for r in rows])


@pytest.fixture(scope="module")
def spoken(models, ids):
    ref, cuda = models
    return {(name, batched): _speak(model, ids, batched)
            for name, model in (("torch", ref), ("cuda", cuda)) for batched in (False, True)}


@pytest.mark.parametrize("batched", [False, True])
def test_dry_run_matches_torch_backend(spoken, batched):
    ref_mels, ref_aligns, ref_steps = spoken[("torch", batched)]
    mels, aligns, steps = spoken[("cuda", batched)]
    assert steps == ref_steps  # the same stop step for every row
    for ref, got, ra, ga in zip(ref_mels, mels, ref_aligns, aligns):
        assert got.shape == ref.shape and ga.shape == ra.shape
        # tight: the torch backend's own batched-vs-solo difference is of this order (padding
        # changes float summation order, and the decoder feeds its frames back)
        assert np.abs(got - ref).max() < 5e-3
        assert np.abs(got - ref).mean() < 1e-4
        assert np.abs(ga - ra).max() < 1e-3


def test_rows_of_different_lengths_share_one_padded_bucket(models, ids, spoken):
    _, cuda = models
    # three rows ran in the bucket of 4, their memory padded to the bucket width of the longest
    tb = t_bucket(max(len(i) for i in ids), cuda.max_symbols)
    assert (4, tb, STEPS) in cuda._blocks
    assert all(k[0] in (1, 4) for k in cuda._blocks)
    # the padding row (the dummy slot) attends over zeros: finite state, no NaN leaking anywhere
    buf = cuda.buffers
    for t in (buf.att_h, buf.dec_h, buf.weights, buf.context, buf.frame):
        assert torch.isfinite(t).all()
    # solo and batched give the same mel within the batching tolerance
    for solo, batched in zip(spoken[("cuda", False)][0], spoken[("cuda", True)][0]):
        assert np.abs(solo - batched).max() < 1e-2


def test_buckets():
    assert [bucket_for(n) for n in (1, 2, 3, 5, 64, 65, 1000, 1024)] == [1, 2, 4, 8, 64, 128, 1024, 1024]
    with pytest.raises(ValueError):
        bucket_for(1025)
    with pytest.raises(ValueError):
        bucket_for(0)
    assert [t_bucket(t, 256) for t in (1, 16, 17, 100, 256)] == [16, 16, 32, 128, 256]
    assert t_bucket(300, 256) == 256


def test_slots_are_freed_and_reused(models, ids):
    _, cuda = models
    spk = speaker_vector("biaobei")
    assert cuda.pool.in_use == 0  # every finished row gave its slot back
    rows = [cuda.start(ids[0], spk, k) for k in range(cuda.max_rows)]
    assert cuda.pool.in_use == cuda.max_rows
    with pytest.raises(SlotsExhaustedError) as err:
        cuda.start(ids[0], spk, 9)
    assert err.value.code == "slots_exhausted"
    freed = rows[1].private.slot
    del rows[1]  # a row dropped unfinished (a cancelled request) gives its slot back when collected
    gc.collect()
    assert cuda.pool.in_use == cuda.max_rows - 1
    again = cuda.start(ids[0], spk, 5)
    assert again.private.slot == freed  # the freed slot is taken again, its state reset
    assert not cuda.buffers.att_h[freed].any() and not cuda.buffers.weights_cum[freed].any()
    # a reused slot decodes like a fresh one: same mel as a new row with the same seed elsewhere
    del rows
    gc.collect()
    fresh = cuda.start(ids[0], spk, 5)
    a, b = cuda.decode([again], STEPS)[0], cuda.decode([fresh], STEPS)[0]
    assert np.array_equal(a.mel, b.mel)
    del again, fresh
    gc.collect()
    assert cuda.pool.in_use == 0


def test_vocoder_dry_run_matches_torch(models):
    from engines.base import MelWindow
    from streamtts.pack import ensure_pack

    pack = ensure_pack()
    ref, cuda = TorchVocoder(pack.load_vocoder(), "melgan"), CudaVocoder(pack.load_vocoder(), "melgan", device="cpu")
    rng = np.random.default_rng(0)
    mel = rng.normal(-5, 2, (80, 60)).astype(np.float32)
    windows = [MelWindow(mel[:, :30], True, False, 0), MelWindow(mel[:, 20:], False, True, 20),
               MelWindow(mel[:, 10:50], False, False, 10)]
    for (a, fa), (b, fb) in zip(ref.vocode(windows), cuda.vocode(windows)):
        assert fa == fb and a.shape == b.shape
        assert np.abs(a - b).max() < 1e-5


def test_half_precision_dry_run(ids):
    """float16 weights and state through the same code (dtype plumbing), MelGAN kept in float32."""
    from engines.base import ModelPair
    from streamtts.bench.gpu import Utterance, synthesize
    from streamtts.pack import ensure_pack

    pack = ensure_pack()
    utt = Utterance(ids[0], speaker_vector("biaobei"), 1)
    mels = {}
    for dtype in ("float32", "float16"):
        acoustic = CudaTacotron(pack, "cpu", dtype=dtype, max_rows=1)
        engine = ModelPair(acoustic, CudaVocoder(pack.load_vocoder(), "melgan", acoustic=acoustic))
        assert acoustic.buffers.memory.dtype == getattr(torch, dtype) and engine.vocoder.dtype == torch.float32
        mels[dtype], audio, _ = synthesize(engine, utt)
        assert np.isfinite(audio).all() and np.abs(audio).max() > 0.01
    n = min(mels["float32"].shape[1], mels["float16"].shape[1])
    assert abs(mels["float32"].shape[1] - mels["float16"].shape[1]) <= 2
    assert np.abs(mels["float16"][:, :n] - mels["float32"][:, :n]).mean() < 0.05


def test_cuda_engine_without_cuda_is_a_typed_error(monkeypatch):
    from engines.cuda_backend import DRY_RUN_ENV
    from engines.registry import create_models

    monkeypatch.delenv(DRY_RUN_ENV, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without CUDA, anywhere
    with pytest.raises(CudaUnavailableError) as err:
        create_models("cuda")
    assert err.value.code == "cuda_unavailable" and DRY_RUN_ENV in err.value.message


def test_cuda_engine_dry_run_by_env(monkeypatch):
    from engines.cuda_backend import DRY_RUN_ENV
    from engines.registry import create_models

    monkeypatch.setenv(DRY_RUN_ENV, "1")
    engine = create_models("cuda", vocoder="melgan")
    assert engine.name == "cuda+melgan-cuda"
    assert engine.acoustic.device.type == "cpu" and not engine.acoustic.use_graphs


def test_bench_device_cuda_without_cuda_exits_2(capsys, monkeypatch):
    from streamtts.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without CUDA, anywhere
    assert main(["bench", "--device", "cuda", "--concurrency", "1,2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error [cuda_unavailable]:") and "Traceback" not in err
