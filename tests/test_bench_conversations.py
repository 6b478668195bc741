"""`streamtts bench --conversations`: simulated voice-bot calls against a real `streamtts serve`
write a report whose counts add up, whose TTFA is measured from each turn's first text, and
which counts an interrupted turn as such. Relations only, never absolute timings; and the pure
player model on hand-made arrivals."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from streamtts.bench.conversations import play, tokens
from streamtts.bench.streams import SR


def test_tokens_are_one_to_three_characters_and_join_to_the_text():
    text = "今天天气很好，我们一起去公园散步吧。"
    toks = tokens(text, random.Random(3))
    assert "".join(toks) == text
    assert all(1 <= len(t) <= 3 for t in toks)


def test_player_counts_a_late_piece_and_stops_at_a_barge_in():
    quarter = SR // 4
    on_time = [(0.0, quarter), (0.1, quarter), (0.2, quarter)]
    p = play(on_time, start_buffer_s=0.2)
    assert p["underruns"] == 0 and p["played_s"] == pytest.approx(0.75, abs=1e-3)
    # the third piece is due at 0.2 + 0.5 = 0.7 s and arrives at 1.0 s: 0.3 s dry
    late = [(0.0, quarter), (0.1, quarter), (1.0, quarter)]
    p = play(late, start_buffer_s=0.2)
    assert p["underruns"] == 1 and p["stall_total_s"] == pytest.approx(0.3, abs=1e-3)
    # barge-in at 0.45 s: the player stopped after 0.25 s of audio; nothing later counts
    p = play(late, start_buffer_s=0.2, stop_at=0.45, more_expected=True)
    assert p["underruns"] == 0 and p["played_s"] == pytest.approx(0.25, abs=1e-3)
    # barge-in at 0.9 s while dry since 0.7 s, with audio still to come: a stall until then
    p = play(late, start_buffer_s=0.2, stop_at=0.9, more_expected=True)
    assert p["underruns"] == 1 and p["stall_total_s"] == pytest.approx(0.2, abs=1e-3) and p["played_s"] == pytest.approx(0.5, abs=1e-3)


def test_conversation_bench_against_a_real_server(tmp_path, pack):
    out = tmp_path / "conv.json"
    # talk ratio 0.9: short listening phases, so each call has several turns in a few seconds;
    # call 0's first turn is one of the interrupted ones (one in five)
    proc = subprocess.run([sys.executable, "-m", "streamtts", "bench", "--conversations", "2", "--talk-ratio", "0.9",
                           "--duration-s", "6", "--engine", "onnx-int8", "--vocoder", "melgan", "--ws",
                           "--json", str(out)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["kind"] == "conversations" and report["engine"] == "onnx-int8+melgan"
    assert {"cpu", "cores"} <= set(report["machine"]) and report["settings"]["talk_ratio"] == 0.9
    (row,) = report["rows"]
    assert row["n"] == row["calls"] == 2 and row["calls_failed"] == 0, row["call_failures"]
    turns = row["per_turn"]
    # counts add up
    assert row["turns"] == len(turns) >= 2 and {t["call"] for t in turns} == {0, 1}
    assert row["turns_held"] == sum(t["held"] for t in turns) <= row["turns"]
    assert row["turns_queued"] == sum(t["queued"] for t in turns)
    assert row["turns_refused"] == sum(t["refused"] for t in turns)
    assert row["turns_interrupted"] == sum(t["interrupted"] for t in turns) >= 1
    assert 0 <= row["calls_held"] <= row["calls"]
    for call in (0, 1):
        mine = [t for t in turns if t["call"] == call]
        assert [t["turn"] for t in mine] == list(range(len(mine)))
    # TTFA from the turn's first text: positive, and never shorter than from its first chunk (the
    # one the server cut, early or not; unknown only for a turn interrupted before its segment)
    spoken = [t for t in turns if not t["refused"]]
    assert spoken and all(t["ttfa_ms"] is not None and t["ttfa_ms"] > 0 for t in spoken)
    timed = [t for t in spoken if t["ttfa_chunk_ms"] is not None]
    assert timed and all(t["ttfa_ms"] >= t["ttfa_chunk_ms"] > 0 for t in timed)
    assert all(t["ttfa_chunk_ms"] is not None for t in spoken if not t["interrupted"])
    assert row["turn_ttfa_ms_p50"] <= row["turn_ttfa_ms_p99"] <= row["turn_ttfa_ms_max"]
    # the interrupted turn: planned, cancelled mid-audio, answered, and silent after `cancelled`
    first = next(t for t in turns if t["call"] == 0 and t["turn"] == 0)
    assert first["planned_interrupt_s"] is not None and first["interrupted"], first
    assert first["cancel_to_cancelled_ms"] is not None and first["cancel_to_cancelled_ms"] >= 0
    assert first["audio_after_cancelled_bytes"] == 0
    # the player stopped at the cancel: the planned point, give or take the event loop's wake-up
    assert first["planned_interrupt_s"] - first["stall_total_s"] - 1e-3 <= first["played_s"]
    assert first["played_s"] <= first["planned_interrupt_s"] + 0.5
    # a turn not interrupted played all the audio it got, and all its sentences had their segment
    for t in spoken:
        if not t["interrupted"] and t["held"]:
            assert t["played_s"] == pytest.approx(t["audio_s"], abs=1e-3) and t["segments"] >= 1
    # the server was watched while the calls ran
    assert row["capacity_at_start"] >= 1 and row["capacity_min"] >= 1 and row["samples"] >= 1
    assert row["server_rss_mb_max"] > 50 and row["admitted_max"] >= 1
    assert len(row["extra_slots_trace"]) == len(row["capacity_trace"]) and row["extra_slots_mean"] >= 0
    # ... and its capacity changes come with their reasons, from its log: the calibration first
    assert row["capacity_changes"] and row["capacity_changes"][0].startswith("capacity: "), row["capacity_changes"]
    assert "calibrated" in row["capacity_changes"][0]
    assert "| calls | held |" in proc.stdout and "| 2 |" in proc.stdout
