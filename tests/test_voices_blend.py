"""Voice blends: ``"Aiyue:0.7,biaobei:0.3"`` is the weighted sum of the two speaker vectors.

Pure parts (parsing, canonical form, errors, the vector) first; then the real torch engine (a
one-voice blend sounds exactly like that voice) and a real server on a loopback port spoken to
over WebSocket and the OpenAI-compatible HTTP endpoint.
"""

from __future__ import annotations

import hashlib
import json
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streamtts.errors import BadVoiceError, UnknownVoiceError
from streamtts.protocol import ProtocolError, parse_options
from streamtts.voices import MAX_BLEND, VOICES, WEIGHT_UNITS, blend_weights, resolve_voice, speaker_vector

BLEND = "Aiyue:0.7,biaobei:0.3"


def md5_vector(name: str) -> np.ndarray:
    """The training-time speaker vector, written out independently of streamtts.voices."""
    return np.array([(int(d, 16) - 7) / 10 for d in hashlib.md5(name.encode()).hexdigest()], np.float32)


# ---- parsing and the canonical form (pure) ----------------------------------------------------

@pytest.mark.parametrize("spec,canonical", [
    (None, "biaobei"),
    ("", "biaobei"),
    ("aiyue", "Aiyue"),  # a single name resolves as it always did
    (" BIAOBEI ", "biaobei"),
    (BLEND, BLEND),
    ("biaobei:0.3,Aiyue:0.7", BLEND),  # order does not matter: heaviest first
    ("aiyue:7, BIAOBEI:3", BLEND),  # weights are normalized, names canonical, spaces ignored
    ({"Aiyue": 0.7, "biaobei": 0.3}, BLEND),  # the object form
    ({"biaobei": 3, "aiyue": 7}, BLEND),
    ("Aiyue,biaobei", "Aiyue:0.5,biaobei:0.5"),  # an omitted weight is 1
    ("Aiyue:1", "Aiyue"),  # one voice is that voice
    ({"Aiyue": 2}, "Aiyue"),
    ("Aiyue:1,biaobei:0", "Aiyue"),  # a zero weight drops the voice
    ("Aiyue:1,biaobei:0.00001", "Aiyue"),  # as does a share below 1/10000
    ("Aiyue:1,biaobei:1,Aibao:1", "Aibao:0.3334,Aiyue:0.3333,biaobei:0.3333"),  # ties: VOICES order
    ("Aiyue:.25,Aibao:0.75", "Aibao:0.75,Aiyue:0.25"),
])
def test_canonical_spec(spec, canonical):
    assert resolve_voice(spec) == canonical
    assert resolve_voice(canonical) == canonical


@pytest.mark.parametrize("spec,error,words", [
    ("Aiyue:-0.5,biaobei:1", BadVoiceError, "negative"),
    ({"Aiyue": -1, "biaobei": 1}, BadVoiceError, "negative"),
    ("Aiyue:nan,biaobei:1", BadVoiceError, "decimal"),
    ({"Aiyue": float("nan"), "biaobei": 1}, BadVoiceError, "finite"),
    ({"Aiyue": float("inf")}, BadVoiceError, "finite"),
    ("Aiyue:1e999,biaobei:1", BadVoiceError, "decimal"),
    ("Aiyue:0,biaobei:0", BadVoiceError, "zero"),
    ({}, BadVoiceError, "at least one"),
    (",".join(VOICES[:MAX_BLEND + 1]), BadVoiceError, "at most 8"),
    ("Aiyue:1,aiyue:2", BadVoiceError, "twice"),
    ("Aiyue:1,:1", BadVoiceError, "no voice name"),
    ("Aiyue:1,", BadVoiceError, "no voice name"),
    ({"Aiyue": "0.7"}, BadVoiceError, "number"),
    ({"Aiyue": True}, BadVoiceError, "number"),
    ("Aiyue:" + "1" * 300, BadVoiceError, "characters"),
    ("Aiyue:0.7,Nobody:0.3", UnknownVoiceError, "Nobody"),
    ({"robot": 1}, UnknownVoiceError, "robot"),
])
def test_bad_blends_are_typed_errors(spec, error, words):
    with pytest.raises(error) as info:
        resolve_voice(spec)
    assert words in info.value.message
    assert info.value.code == ("unknown_voice" if error is UnknownVoiceError else "bad_voice")


def test_at_most_eight_voices_blend():
    spec = resolve_voice(",".join(VOICES[:MAX_BLEND]))
    assert len(blend_weights(spec)) == MAX_BLEND and sum(w for _, w in blend_weights(spec)) == pytest.approx(1)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.sampled_from(VOICES), st.integers(0, 10**6), min_size=1, max_size=MAX_BLEND),
       st.integers(1, 50), st.randoms(use_true_random=False))
def test_canonical_form_is_a_fixed_point_invariant_to_order_and_scale(weights, scale, rnd):
    if not any(weights.values()):
        with pytest.raises(BadVoiceError):
            resolve_voice(weights)
        return
    spec = resolve_voice(weights)
    assert resolve_voice(spec) == spec
    items = list(weights.items())
    rnd.shuffle(items)
    text = ",".join(f"{n.upper() if rnd.random() < 0.5 else n}:{w * scale}" for n, w in items)
    assert resolve_voice(text) == spec
    parts = blend_weights(spec)
    assert round(sum(w for _, w in parts) * WEIGHT_UNITS) == WEIGHT_UNITS
    assert [w for _, w in parts] == sorted((w for _, w in parts), reverse=True) and all(w > 0 for _, w in parts)
    total = sum(weights.values())
    for name, w in parts:  # each share within one unit of the exact normalized weight
        assert abs(w - weights[name] / total) <= 1 / WEIGHT_UNITS


def test_speaker_vector_is_the_weighted_sum():
    assert np.array_equal(speaker_vector("biaobei"), md5_vector("biaobei"))  # unchanged for a name
    assert np.array_equal(speaker_vector("aiyue:1"), md5_vector("Aiyue"))
    blend = speaker_vector("biaobei:3,Aiyue:7")
    assert blend.dtype == np.float32 and blend.shape == (32,)
    np.testing.assert_allclose(blend, 0.7 * md5_vector("Aiyue") + 0.3 * md5_vector("biaobei"), atol=1e-6)
    three = speaker_vector({"Aibao": 1, "Aida": 1, "Xiaobei": 2})
    np.testing.assert_allclose(three, 0.25 * md5_vector("Aibao") + 0.25 * md5_vector("Aida") +
                               0.5 * md5_vector("Xiaobei"), atol=1e-6)


def test_start_message_takes_the_object_form():
    assert parse_options({"voice": {"biaobei": 0.3, "Aiyue": 0.7}}).voice == BLEND
    assert parse_options({"voice": "biaobei:0.3,aiyue:0.7"}).voice == BLEND
    for voice, code in [({"Aiyue": -1}, "bad_voice"), ({"robot": 1}, "unknown_voice"), ([BLEND], "bad_message")]:
        with pytest.raises(ProtocolError) as info:
            parse_options({"voice": voice})
        assert info.value.code == code


def test_cli_rejects_a_bad_blend_before_loading_models(tmp_path, capsys):
    from streamtts.cli import main

    assert main(["synth", "你好。", "-o", str(tmp_path / "x.wav"), "--voice", "Aiyue:-1,biaobei:1"]) == 2
    assert "error [bad_voice]" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()


# ---- the real engine and server -------------------------------------------------------------

from support.servers import ThreadServer, shared_engine  # noqa: E402
from support.ws import collect, events, jsend, ws_connect  # noqa: E402


def test_a_one_voice_blend_sounds_like_that_voice(pack):
    from streamtts.speaker import Speaker

    speaker = Speaker(shared_engine(pack))
    alone = speaker.synthesize("你好。", "Aiyue")
    assert alone.size and np.array_equal(speaker.synthesize("你好。", {"Aiyue": 1, "biaobei": 0}), alone)


@pytest.fixture(scope="module")
def server(pack):
    from streamtts.protocol import Limits
    from streamtts.server import ServerConfig

    config = ServerConfig(port=0, static_dir=None, limits=Limits(rate=40, burst=60), capacity=4)
    with ThreadServer(config, shared_engine(pack)) as srv:
        yield srv


def ws_speak(server, voice, text="你好。") -> tuple[dict, bytes]:
    """(ready, audio bytes) of one WebSocket session speaking ``text`` with ``voice``."""
    with ws_connect(server) as ws:
        jsend(ws, type="start", voice=voice)
        ready = json.loads(ws.recv(timeout=30))
        assert ready["type"] == "ready", ready
        jsend(ws, type="text", text=text)
        jsend(ws, type="end")
        items, code = collect(ws)
    assert code == 1000 and events(items, "done"), items
    return ready, b"".join(m for m in items if isinstance(m, bytes))


def test_websocket_blend_differs_from_both_parents_and_is_cached_by_its_spec(server):
    before = server.metrics()
    ready, blend = ws_speak(server, {"Aiyue": 0.7, "biaobei": 0.3})
    assert ready["voice"] == BLEND
    _, aiyue = ws_speak(server, "Aiyue")
    _, biaobei = ws_speak(server, "biaobei")
    _, other = ws_speak(server, "Aiyue:0.3,biaobei:0.7")
    ready_again, again = ws_speak(server, "BIAOBEI:3, aiyue:7")  # the same blend, written otherwise
    after = server.metrics()
    assert blend and aiyue and biaobei and other
    assert blend not in (aiyue, biaobei, other), "a blend is a voice of its own"
    assert ready_again["voice"] == BLEND and again == blend
    hits = after["streamtts_cache_hits_total"] - before["streamtts_cache_hits_total"]
    misses = after["streamtts_cache_misses_total"] - before["streamtts_cache_misses_total"]
    assert (misses, hits) == (4, 1), "the cache key holds the canonical blend: other blends miss"


def test_bad_blends_over_websocket_are_errors_and_the_session_goes_on(server):
    with ws_connect(server) as ws:
        codes = []
        for voice in ("Aiyue:-1,biaobei:1", {"Aiyue": "much"}, {"robot": 0.5, "Aiyue": 0.5}, "Aiyue:1,aiyue:1"):
            jsend(ws, type="start", voice=voice)
            err = json.loads(ws.recv(timeout=30))
            assert err["type"] == "error" and err["fatal"] is False, err
            codes.append(err["code"])
        assert codes == ["bad_voice", "bad_voice", "unknown_voice", "bad_voice"]
        jsend(ws, type="start", voice="Xiaobei:0.5,Aiyue:0.5")
        ready = json.loads(ws.recv(timeout=30))
        assert ready["type"] == "ready" and ready["voice"] == "Aiyue:0.5,Xiaobei:0.5"
        jsend(ws, type="text", text="你好。")
        jsend(ws, type="end")
        items, code = collect(ws)
    assert code == 1000 and any(isinstance(m, bytes) for m in items) and events(items, "done")


@pytest.fixture(scope="module")
def openai_client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server.url + "/v1", api_key="dummy", max_retries=0)


def test_openai_blend_differs_from_both_parents(openai_client):
    def speak(voice):  # a text of its own: not in the cache from the WebSocket tests
        return openai_client.audio.speech.create(model="tts-1", voice=voice, input="再见。",
                                                 response_format="pcm").content

    blend, aiyue, biaobei = speak("biaobei:0.3,Aiyue:0.7"), speak("Aiyue"), speak("biaobei")
    assert len(blend) > 0.3 * 24000 * 2
    assert blend not in (aiyue, biaobei)
    assert speak(BLEND) == blend  # the same canonical blend


@pytest.mark.parametrize("voice,code", [("Aiyue:-1,biaobei:1", "bad_voice"), ("Aiyue:0.5,robot:0.5", "unknown_voice"),
                                        (",".join(VOICES[:9]), "bad_voice")])
def test_openai_bad_blends_are_400s(openai_client, voice, code):
    import openai

    with pytest.raises(openai.BadRequestError) as info:
        openai_client.audio.speech.create(model="tts-1", voice=voice, input="你好。", response_format="pcm")
    assert info.value.status_code == 400 and info.value.body["code"] == code
    assert info.value.body["type"] == "invalid_request_error"


def test_random_blends_of_the_object_and_string_forms_agree():
    rnd = random.Random(7)
    for _ in range(50):
        names = rnd.sample(VOICES, rnd.randint(2, MAX_BLEND))
        weights = {n: rnd.randint(1, 1000) / 100 for n in names}
        text = ",".join(f"{n}:{w}" for n, w in weights.items())
        assert resolve_voice(weights) == resolve_voice(text)
