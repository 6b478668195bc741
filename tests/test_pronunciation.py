"""SSML, inline readings and the user lexicon end to end: the real server (torch engine) over a
real WebSocket, and the real command line. Short texts; the phrase cache (keyed by model ids)
makes the repeated chunks free."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("aiohttp")

from support.servers import ThreadServer, shared_engine  # noqa: E402
from support.ws import collect, events, jsend, ws_connect  # noqa: E402

from streamtts.protocol import Limits  # noqa: E402
from streamtts.server import ServerConfig  # noqa: E402
from streamtts.text import phonemize  # noqa: E402

RATE = 22050  # native rate, s16le: no resampling between what is compared


def lexicon_server(pack, tmp_path_factory, words: str) -> ThreadServer:
    lexicon = tmp_path_factory.mktemp("lexicon") / "words.tsv"
    lexicon.write_text(f"# deployer's words\n{words}\n", encoding="utf-8")
    config = ServerConfig(port=0, static_dir=None, limits=Limits(rate=40, burst=60), capacity=4, lexicon=lexicon)
    return ThreadServer(config, shared_engine(pack))


@pytest.fixture(scope="module")
def server(pack, tmp_path_factory):
    with lexicon_server(pack, tmp_path_factory, "银行\tyin2 xing2") as srv:
        yield srv


@pytest.fixture(scope="module")
def other_server(pack, tmp_path_factory, server):
    """A second app in this process, with another reading of the same word (the same engine
    object: the two are only ever used one after the other)."""
    with lexicon_server(pack, tmp_path_factory, "银行\tyin1 hang2") as srv:
        yield srv


def say(server, *texts: str, text_format: str = "text", each: str | None = None) -> tuple[np.ndarray, list[dict]]:
    """One session (``text_format`` in its start, ``each`` in every text message if given): the
    texts as `text` messages, then end. Returns (samples, segments)."""
    per_text = {} if each is None else {"text_format": each}
    with ws_connect(server) as ws:
        jsend(ws, type="start", format="pcm_s16le", sample_rate=RATE, text_format=text_format)
        for t in texts:
            jsend(ws, type="text", text=t, **per_text)
        jsend(ws, type="end")
        items, code = collect(ws)
    assert code == 1000, events(items, "error")
    pcm = b"".join(m for m in items if isinstance(m, bytes))
    return np.frombuffer(pcm, np.int16), events(items, "segment")


def chunk_audio(samples: np.ndarray, seg: dict) -> np.ndarray:
    return samples[round(seg["audio_start_ms"] * RATE / 1000): round(seg["audio_end_ms"] * RATE / 1000)]


PHONEME = '<phoneme alphabet="pinyin" ph="hang2">行</phoneme>'


def test_break_sub_phoneme_and_char_times(server):
    doc = '<speak>好。<break time="{}"/><sub alias="世卫">WHO</sub>{}。</speak>'
    with_break, segs = say(server, doc.format("500ms", PHONEME), text_format="ssml")
    without, segs0 = say(server, doc.format("0ms", PHONEME), text_format="ssml")
    added = (len(with_break) - len(without)) / RATE
    assert 0.45 < added < 0.55, added  # the break's silence, and nothing else changed
    assert [s["text"] for s in segs] == [s["text"] for s in segs0] == ["好。", "WHO行。"]
    second = segs[1]
    assert second["normalized"] == "世卫行."
    # chars are the user's: W, H, O cover what the alias says, then the phoneme's hanzi
    assert [c["char"] for c in second["chars"]] == ["W", "H", "O", "行"]
    starts = [c["start_ms"] for c in second["chars"]]
    assert starts == sorted(starts)
    # the break's silence opens the second segment; its speech (and first char) come after it
    lead_ms = starts[0] - second["audio_start_ms"]
    lead0_ms = segs0[1]["chars"][0]["start_ms"] - segs0[1]["audio_start_ms"]
    assert 450 < lead_ms - lead0_ms < 550
    silence = chunk_audio(with_break, second)[: round(0.45 * RATE)]
    assert np.abs(silence.astype(np.int32)).max() == 0
    # the phoneme reads 行 as hang2: the same audio as the inline form of that reading (the same
    # model ids), other audio than the default reading (xing2)
    phoneme, _ = say(server, f"<speak>世卫{PHONEME}。</speak>", text_format="ssml")
    inline, inline_segs = say(server, "世卫{行|hang2}。")
    plain, plain_segs = say(server, "世卫行。")
    assert np.array_equal(phoneme, inline) and not np.array_equal(phoneme, plain)
    assert inline_segs[0]["text"] == "世卫{行|hang2}。" and plain_segs[0]["normalized"] == "世卫行."
    assert [c["char"] for c in inline_segs[0]["chars"]] == ["世", "卫", "行"]


def test_prosody_rate_slows_the_sentence_down(server):
    normal, segs = say(server, '<speak>好。</speak>', text_format="ssml")
    slow, slow_segs = say(server, '<speak><prosody rate="50%">好。</prosody></speak>', text_format="ssml")
    assert slow_segs[0]["text"] == segs[0]["text"] == "好。"
    d_normal = segs[0]["audio_end_ms"] - segs[0]["audio_start_ms"]
    d_slow = slow_segs[0]["audio_end_ms"] - slow_segs[0]["audio_start_ms"]
    assert d_slow > 1.5 * d_normal, (d_slow, d_normal)
    # the per-text field overrides the session's format: plain text here, ssml for one message
    again, _ = say(server, '<speak><prosody rate="50%">好。</prosody></speak>', text_format="text", each="ssml")
    assert np.array_equal(again, slow)


def test_inline_reading_in_fragments_equals_whole(server):
    whole, segs = say(server, "世卫{行|hang2}。")
    parts, part_segs = say(server, "世卫{", "行|ha", "ng2", "}。")
    assert np.array_equal(whole, parts)
    assert [s["text"] for s in part_segs] == [s["text"] for s in segs] == ["世卫{行|hang2}。"]


def test_the_servers_lexicon_reaches_the_engine(server):
    lexicon, _ = say(server, "银行。")  # ServerConfig.lexicon, read at create_app
    inline, _ = say(server, "{银行|yin2 xing2}。")
    assert np.array_equal(lexicon, inline)
    assert phonemize("银行").pinyin == ["yin2", "hang2"]  # the app's lexicon is not the process's


def test_two_apps_in_one_process_each_read_with_their_own_lexicon(server, other_server):
    first, _ = say(server, "银行。")
    second, _ = say(other_server, "银行。")
    assert np.array_equal(first, say(server, "{银行|yin2 xing2}。")[0])
    assert np.array_equal(second, say(other_server, "{银行|yin1 hang2}。")[0])
    assert not np.array_equal(first, second)
    assert np.array_equal(first, say(server, "银行。")[0])  # the second app changed nothing in the first


def test_invalid_ssml_is_an_error_and_the_session_goes_on(server):
    with ws_connect(server) as ws:
        jsend(ws, type="start", format="pcm_s16le", sample_rate=RATE, text_format="ssml")
        jsend(ws, type="text", text="<speak>\n好<break time='soon'/></speak>")
        jsend(ws, type="text", text="<speak>好。</speak>")
        jsend(ws, type="end")
        items, code = collect(ws)
    assert code == 1000
    [err] = events(items, "error")
    assert err["code"] == "invalid_ssml" and err["message"].startswith("line 2, column 2: ") and not err["fatal"]
    assert [s["text"] for s in events(items, "segment")] == ["好。"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streamtts", *args], capture_output=True, text=True, timeout=300)


def test_a_bad_lexicon_line_stops_the_cli_with_its_line_number(tmp_path):
    bad = tmp_path / "bad.tsv"
    bad.write_text("# words\n行长\thang2 zhang3\n\n银行\tyin2\n", encoding="utf-8")
    for args in (("synth", "你好。", "-o", str(tmp_path / "x.wav")), ("serve", "--port", "0")):
        proc = run_cli(*args, "--lexicon", str(bad))
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.strip() == (f"error [bad_lexicon]: {bad}, line 4: 2 hanzi but 1 syllables: "
                                       "give one syllable per hanzi")
        assert not (tmp_path / "x.wav").exists()
