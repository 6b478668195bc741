"""Our models compute what ttskit's original modules compute, given the same dropout masks.

The originals are loaded from the cached wheel with ``torch.load`` (see upstream_ref.py); the ids
come from phkit, the frontend the model was trained with."""

from __future__ import annotations

import pytest
import torch

from streamtts.models.acoustic import prenet_masks
from streamtts.pack.store import MEMBERS
from streamtts.voices import speaker_vector

phkit_chinese = pytest.importorskip("phkit.chinese")

SENTENCES = [("今天天气很好，我们一起去公园散步吧。", "biaobei", 0),
             ("请把窗户关上，外面风很大。", "Aiyue", 7)]


@pytest.fixture(scope="module")
def originals(wheel):
    import upstream_ref

    return (upstream_ref, upstream_ref.load_original(wheel, MEMBERS["acoustic"]),
            upstream_ref.load_original(wheel, MEMBERS["vocoder"]))


@pytest.mark.parametrize("text,voice,seed", SENTENCES)
def test_same_masks_same_mel_same_audio(originals, synth, text, voice, seed):
    upstream, acoustic, vocoder = originals
    ids = phkit_chinese.text_to_sequence(text, cleaner_names="hanzi")
    steps = 1200  # the pickled decoder's max_decoder_steps
    masks = prenet_masks(synth.config, steps, 1, torch.Generator().manual_seed(seed))
    upstream.DROPOUT.masks = [m for step in masks for m in step]
    text_t, spk = torch.tensor([ids]), torch.from_numpy(speaker_vector(voice))[None]
    with torch.no_grad():
        mels, mels_post, gates, aligns = acoustic.inference((text_t, 0, spk, None))
        ref_audio = vocoder.inference(mels_post).float() / 32768.0
    n = mels.shape[2]
    assert 50 < n < 1200, "upstream must stop on its gate for these sentences"

    dec = synth.model.decoder
    with torch.inference_mode():
        memory = synth.model.encode(text_t, spk)
        keys = dec.attention.memory_keys(memory)
        state, frame = dec.initial_state(memory), dec.go_frame(memory)
        frames, logits, weights = [], [], []
        for i in range(n):
            out = dec.step(frame, masks[i], memory, keys, state)
            frames.append(out.frame[0]), logits.append(out.gate_logit[0]), weights.append(out.alignment[0])
            frame, state = out.frame, out.state
    ours = torch.stack(frames, 1)
    torch.testing.assert_close(ours, mels[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.stack(logits), gates.reshape(-1), rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.stack(weights), aligns[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(synth.postnet(ours), mels_post[0], rtol=0, atol=1e-5)
    audio = torch.from_numpy(synth.vocode(mels_post[0]))
    assert audio.shape == ref_audio.shape
    # upstream returns int16 (truncated): ours must agree to within one quantization step
    assert (audio - ref_audio).abs().max().item() <= 2.0 / 32768
