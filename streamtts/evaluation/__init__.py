"""Intelligibility measurement: transcribe synthesized speech with Whisper base and score it
against the input text by toneless-pinyin syllable error rate.

How to call::

    from streamtts.evaluation import TEST_SENTENCES, Transcriber, corpus_error_rate

    asr = Transcriber()
    pairs = [(s, asr.transcribe(synthesize(s), 22050)) for s in TEST_SENTENCES]
    corpus_error_rate(pairs)       # target <= 0.06

faster-whisper and the Whisper model data come from the ``test`` extra; they are only needed
once a Transcriber is created.
"""

from streamtts.evaluation.asr import (
    ASRModelError,
    Transcriber,
    shared_transcriber,
    to_whisper_rate,
    whisper_model_dir,
)
from streamtts.evaluation.metrics import (
    corpus_error_rate,
    edit_distance,
    syllable_error_rate,
    toneless_pinyin,
)
from streamtts.evaluation.sentences import TEST_SENTENCES

__all__ = [
    "ASRModelError",
    "TEST_SENTENCES",
    "Transcriber",
    "corpus_error_rate",
    "edit_distance",
    "shared_transcriber",
    "syllable_error_rate",
    "to_whisper_rate",
    "toneless_pinyin",
    "whisper_model_dir",
]
