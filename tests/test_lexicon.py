"""The user lexicon as a value: passed to the frontend, the chunker and the engine core, never
process state. Two lexicons in one process read the same word their own way; the chunker never
cuts inside a user word."""

from __future__ import annotations

import gc
import weakref

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamtts.errors import LexiconError
from streamtts.text import DEFAULT_LEXICON, Lexicon, phonemize
from streamtts.text.chunker import SentenceChunker, split_text
from streamtts.text.g2p import pinyin_run
from streamtts.text.markup_chunker import MarkupChunker

BANK_XING = Lexicon({"银行": ("yin2", "xing2")}, "xing.tsv")
BANK_YIN1 = Lexicon({"银行": "yin1 hang2"}, "yin1.tsv")
# Each lexicon with words of its own holds a whole segmenter: the chunker tests share one.
# jieba's own dictionary cuts 深度|求索: a cap between the two must not split the user's word.
LONG_WORD = "中华人民共和国国务院新闻办公室"  # longer than the chars the cut looks past the cap
USER_WORDS = ["深度求索", "行长", "长期", "通义千问", "月之暗面", LONG_WORD]
LEX = Lexicon({w: "shen1 du4 qiu2 suo3" if w == "深度求索" else " ".join(["a1"] * len(w)) for w in USER_WORDS})
FILLER = list("我们今天一起讨论的模型和它训练方法以及未来发展方向银行在这里")
DEEPSEEK_TEXT = "我们今天一起讨论深度求索的模型和它的训练方法以及未来的发展方向"


# ---- the frontend --------------------------------------------------------------------------------

def test_two_lexicons_read_the_same_word_each_their_own_way():
    text = "我们去银行。"
    default = phonemize(text)
    for _ in range(2):  # interleaved and repeated: the cached readings are per lexicon
        xing, yin1 = phonemize(text, BANK_XING), phonemize(text, BANK_YIN1)
        assert xing.pinyin[-2:] == ["yin2", "xing2"]
        assert yin1.pinyin[-2:] == ["yin1", "hang2"]
        assert phonemize(text).pinyin[-2:] == ["yin2", "hang2"]
        assert phonemize(text, DEFAULT_LEXICON).ids == default.ids
        assert len({tuple(default.ids), tuple(xing.ids), tuple(yin1.ids)}) == 3
    assert pinyin_run("银行", BANK_XING) == ("yin2", "xing2")
    assert pinyin_run("银行") == ("yin2", "hang2")


def test_a_lexicon_file_is_read_into_a_value(tmp_path):
    path = tmp_path / "words.tsv"
    path.write_text("# words\n深度求索\tshen1 du4 qiu2 suo3\n银行\t yin2  xing2 \n", encoding="utf-8")
    lex = Lexicon.load(path)
    assert dict(lex.readings) == {"深度求索": ("shen1", "du4", "qiu2", "suo3"), "银行": ("yin2", "xing2")}
    assert len(lex) == 2 and "银行" in lex and lex.reading("银") is None and lex.longest == 4
    assert lex.source == str(path) and str(path) in repr(lex)
    with pytest.raises(TypeError):
        lex.readings["行"] = ("hang2",)  # read-only: a lexicon's readings never change under a cache


def test_entries_given_in_code_are_checked_too():
    with pytest.raises(LexiconError) as e:
        Lexicon({"银行": ("yin2",)}, "mine")
    assert e.value.code == "bad_lexicon"
    assert e.value.message == "mine: '银行': 2 hanzi but 1 syllables: give one syllable per hanzi"
    with pytest.raises(LexiconError, match="not a toned pinyin syllable"):
        Lexicon({"行": "hang7"})


def test_lexicons_without_words_share_one_segmenter_and_user_words_stay_in_theirs():
    assert Lexicon().tokenizer is DEFAULT_LEXICON.tokenizer  # no per-request (or per-app) build
    assert BANK_XING.tokenizer is BANK_YIN1.tokenizer  # the same words: the same segmentation
    assert LEX.tokenizer is not DEFAULT_LEXICON.tokenizer
    assert LEX.is_word("深度求索") and not DEFAULT_LEXICON.is_word("深度求索")
    assert LEX.cut("深度求索") == ["深度求索"]
    assert DEFAULT_LEXICON.cut("深度求索") == ["深度", "求索"]
    import jieba

    assert not jieba.dt.FREQ.get("深度求索")  # jieba's global tokenizer is never touched


def test_the_frontends_caches_do_not_keep_a_lexicon_or_its_segmenter_alive():
    lex = Lexicon({"银行": "yin2 xing2", "深度求索": "shen1 du4 qiu2 suo3"})
    assert phonemize("银行", lex).pinyin == ["yin2", "xing2"]  # cached, and its segmenter built
    refs = weakref.ref(lex), weakref.ref(lex.tokenizer)
    del lex
    gc.collect()
    assert [r() for r in refs] == [None, None]


def test_find_gives_every_occurrence_of_a_user_word():
    lex = Lexicon({"行长": "hang2 zhang3", "长期": "chang2 qi1", "行": "hang2"})
    assert lex.find("银行长期行长") == [(1, 3), (2, 4), (4, 6)]  # one-hanzi words cannot be cut
    assert DEFAULT_LEXICON.find("银行长期") == []


# ---- the chunker ---------------------------------------------------------------------------------

def cuts(chunks) -> set[int]:
    return {c.end for c in chunks[:-1]}


def inside(text: str, lexicon: Lexicon) -> set[int]:
    return {k for a, b in lexicon.find(text) for k in range(a + 1, b)}


def test_a_cap_between_the_halves_of_a_user_word_moves_before_it():
    kw = dict(max_chars=10, first_max_chars=10)
    start = DEEPSEEK_TEXT.index("深度求索")
    default = split_text(DEEPSEEK_TEXT, **kw)
    assert start + 2 in cuts(default)  # the default segmenter cuts 深度|求索 at the cap
    mine = split_text(DEEPSEEK_TEXT, lexicon=LEX, **kw)
    assert not cuts(mine) & inside(DEEPSEEK_TEXT, LEX)
    assert [c.text for c in mine][:2] == ["我们今天一起讨论", "深度求索的模型和它的"]
    assert "".join(c.text for c in mine) == DEEPSEEK_TEXT
    # the request's chunker keeps it whole as well
    marked = MarkupChunker(1.0, lexicon=LEX, **kw)
    assert [c.text for c in marked.push(DEEPSEEK_TEXT) + marked.flush()] == [c.text for c in mine]


def test_a_word_longer_than_the_lookahead_is_still_kept_whole():
    text = "今天上午" + LONG_WORD + "举行发布会"
    assert any(cuts(split_text(text, max_chars=cap, first_max_chars=cap)) & inside(text, LEX)
               for cap in range(5, len(text)))  # the default segmenter would cut it somewhere
    for cap in range(5, len(text)):
        chunks = split_text(text, max_chars=cap, first_max_chars=cap, lexicon=LEX)
        assert not cuts(chunks) & inside(text, LEX), cap
        assert "".join(c.text for c in chunks) == text


@settings(max_examples=60, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(USER_WORDS), st.sampled_from(FILLER)), min_size=1, max_size=40),
       st.integers(3, 16), st.integers(1, 16), st.randoms(use_true_random=False))
def test_no_chunk_ends_inside_a_user_word_however_the_text_arrives(pieces, cap, first, rnd):
    text = "".join(pieces)
    kw = dict(max_chars=cap, first_max_chars=first, lexicon=LEX)
    whole = split_text(text, **kw)
    assert not cuts(whole) & inside(text, LEX)
    assert "".join(c.text for c in whole) == text
    ch = SentenceChunker(**kw)
    got, i = [], 0
    while i < len(text):
        j = i + rnd.randint(1, 6)
        got += ch.push(text[i:j])
        i = j
    assert got + ch.flush() == whole


# ---- the engine core -----------------------------------------------------------------------------

class RecordingAcoustic:
    """The real acoustic model, noting the ids of every chunk it starts."""

    def __init__(self, inner):
        self.inner, self.ids = inner, []

    def start(self, ids, speaker, seed):
        self.ids.append([int(i) for i in ids])
        return self.inner.start(ids, speaker, seed)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def models(torch_engine):
    return torch_engine


def recording_speaker(models, lexicon, **chunker_options):
    from engines.base import ModelPair
    from streamtts.speaker import Speaker

    acoustic = RecordingAcoustic(models.acoustic)
    return Speaker(ModelPair(acoustic, models.vocoder), chunker_options=chunker_options, lexicon=lexicon), acoustic


def test_two_cores_in_one_process_each_read_with_their_own_lexicon(models):
    xing, xing_ids = recording_speaker(models, BANK_XING)
    yin1, yin1_ids = recording_speaker(models, BANK_YIN1)
    plain, plain_ids = recording_speaker(models, None)
    for speaker in (xing, yin1, plain, xing):  # the later ones change nothing in the earlier
        speaker.synthesize("银行。")
    assert xing_ids.ids == [phonemize("银行。", BANK_XING).ids] * 2
    assert yin1_ids.ids == [phonemize("银行。", BANK_YIN1).ids]
    assert plain_ids.ids == [phonemize("银行。").ids]
    assert len({tuple(x.ids[0]) for x in (xing_ids, yin1_ids, plain_ids)}) == 3


def test_a_cores_requests_cut_text_with_its_lexicon(models):
    from streamtts.speaker import Segment

    text = DEEPSEEK_TEXT[:20] + "。"
    kw = dict(max_chars=10, first_max_chars=10)
    mine, ids = recording_speaker(models, LEX, **kw)
    plain, _ = recording_speaker(models, None, **kw)
    plain_segments = [e.text for e in plain.speak(text) if isinstance(e, Segment)]
    assert plain_segments[0].endswith("深度")  # without the lexicon the cap splits the word
    segments = [e.text for e in mine.speak(text) if isinstance(e, Segment)]
    assert segments == ["我们今天一起讨论", "深度求索的模型和它的", "训练。"]
    assert segments == [c.text for c in split_text(text, lexicon=LEX, **kw)]
    assert ids.ids[1] == phonemize("深度求索的模型和它的", LEX).ids
