"""The report of ``streamtts loadtest``: parity of loaded sessions with their solo references,
the summary dict (the JSON) and the printed table. Pure: no sockets.

How to call::

    parity = Parity(refs, tolerance); parity.check(log)   # as each session ends
    parity.summary()                                  # {"segments_compared": ..., "max_abs_diff": ...}
    report = summarize(logs, rss_samples, config)    # the JSON's fields (module docstring of loadtest)
    print(table(report))
"""

from __future__ import annotations

from collections import Counter
from typing import Optional, Sequence

import numpy as np

from streamtts.bench.engines import percentile
from streamtts.loadtest.session import BEHAVIOURS
from streamtts.loadtest.wire import ADMISSION_CODES, SessionLog

MAX_LISTED_VIOLATIONS = 200


def samples(log: SessionLog) -> np.ndarray:
    """The session's audio as float32 in [-1, 1)."""
    raw = bytes(log.audio)
    if log.width == 4:
        return np.frombuffer(raw, "<f4")
    return np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0


def reference_segments(log: SessionLog) -> list:
    """[(text, float32 samples)] of a solo reference session's one utterance."""
    audio = samples(log)
    return [(text, audio[a:b].copy()) for text, a, b in log.utterances[0].segments]


class Parity:
    """Every complete segment a loaded session received for a reference (text, voice, seed) is
    compared with the reference's segment that starts at the same place in the text: same text,
    the same length (within the 2 samples that 0.1 ms positions leave open), samples within
    ``tolerance`` once aligned at their ends (exact: a segment event follows its last audio frame).

    A chunk's audio depends on its text, voice and seed only, so a stream whose text stalled and
    was cut early (``--first-chunk-wait``) has segments the solo run never had: those are counted
    as ``recut`` and not compared, and the segments after them, back on the solo's boundaries, are.
    The segments' texts must still spell the reference text in order. Mismatches are added to the
    session's violations. Call :meth:`check` as each session ends (then its audio may go)."""

    def __init__(self, refs: dict, tolerance: float):
        self.refs, self.tolerance = refs, tolerance
        self.compared, self.exact, self.recut, self.worst = 0, 0, 0, 0.0

    def check(self, log: SessionLog) -> None:
        audio = None
        for utt in log.utterances:
            if utt.key is None or utt.key not in self.refs or not utt.segments:
                continue
            audio = samples(log) if audio is None else audio
            ref = self.refs[utt.key]
            solo, at = {}, 0  # where each solo segment starts in the whitespace-free text
            for ref_text, ref_audio in ref:
                solo[at] = (ref_text, ref_audio)
                at += len(_squash(ref_text))
            whole, at = "".join(_squash(t) for t, _ in ref), 0
            for k, (text, a, b) in enumerate(utt.segments):
                here = _squash(text)
                if whole[at:at + len(here)] != here:
                    log.violate(f"parity: segment {k} {text!r} is not the solo text at character {at} "
                                f"({whole[at:at + len(here) + 4]!r}...)")
                    break
                ref_text, ref_audio = solo.get(at, (None, None))
                at += len(here)
                if ref_text is None or _squash(ref_text) != here:
                    self.recut += 1
                    continue
                self.compared += 1
                if abs((b - a) - len(ref_audio)) > 2:
                    log.violate(f"parity: segment {k} {text!r} ({b - a} samples) differs from the solo "
                                f"{ref_text!r} ({len(ref_audio)} samples)")
                    continue
                # aligned at their exact ends; the starts come from 0.1 ms positions (+-1 sample each)
                n = min(b - a, len(ref_audio))
                got, want = audio[b - n:b], ref_audio[len(ref_audio) - n:]
                diff = float(np.abs(got - want).max()) if n else 0.0
                self.worst = max(self.worst, diff)
                self.exact += diff == 0.0
                if diff > self.tolerance:
                    log.violate(f"parity: segment {k} {text!r} differs from its solo audio by {diff:.3g} "
                                f"(tolerance {self.tolerance:g})")

    def summary(self) -> dict:
        return {"references": len(self.refs), "segments_compared": self.compared, "bit_exact": self.exact,
                "segments_recut": self.recut,
                "max_abs_diff": self.worst, "tolerance": self.tolerance}


def _squash(text: str) -> str:
    return "".join(text.split())


def _stats(values: Sequence[Optional[float]], scale: float = 1000.0) -> dict:
    vals = [v * scale for v in values if v is not None]
    return {"n": len(vals), "p50": _r(percentile(vals, 50)), "p99": _r(percentile(vals, 99)),
            "max": _r(max(vals)) if vals else None}


def _r(x: Optional[float], nd: int = 1) -> Optional[float]:
    return None if x is None else round(x, nd)


def rss_summary(samples_: Sequence[dict], duration_s: float) -> dict:
    """Warm-up ends at the later of a third of the run and the first sample whose
    ``streamtts_cache_bytes`` is within 1 % of the most seen (the phrase cache stopped growing);
    growth is the last sample's RSS minus the RSS at the end of warm-up; the slope is a least-squares
    fit over the samples after warm-up. ``warmup_by`` says which bound ended warm-up."""
    rows = [s for s in samples_ if s.get("rss_bytes") is not None]
    if not rows:
        return {"samples": list(samples_), "note": "the server exports no process_resident_memory_bytes"}
    top_cache = max((s.get("cache_bytes") or 0) for s in rows)
    cache_full = next(s["t_s"] for s in rows if (s.get("cache_bytes") or 0) >= 0.99 * top_cache)
    warm_end = max(duration_s / 3, cache_full)
    warmup_by = "cache" if cache_full > duration_s / 3 else "third"
    if top_cache > 0 and len(rows) > 1 and cache_full >= rows[-1]["t_s"]:
        warmup_by = "cache still growing at the end: no growth measured"
    after = [s for s in rows if s["t_s"] >= warm_end] or rows[-1:]
    mb = 1024 * 1024
    slope = None
    if len(after) >= 3:
        t = np.array([s["t_s"] for s in after]) / 60
        y = np.array([s["rss_bytes"] for s in after]) / mb
        slope = float(np.polyfit(t, y, 1)[0]) if np.ptp(t) > 0 else None
    return {
        "interval_samples": len(rows),
        "warmup_end_s": round(warm_end, 1), "warmup_by": warmup_by,
        "start_mb": _r(rows[0]["rss_bytes"] / mb), "at_warmup_end_mb": _r(after[0]["rss_bytes"] / mb),
        "end_mb": _r(rows[-1]["rss_bytes"] / mb), "max_mb": _r(max(s["rss_bytes"] for s in rows) / mb),
        "growth_after_warmup_mb": _r((rows[-1]["rss_bytes"] - after[0]["rss_bytes"]) / mb),
        "slope_after_warmup_mb_per_min": _r(slope, 2),
        "samples": [{"t_s": round(s["t_s"], 1), "rss_mb": _r(s["rss_bytes"] / mb),
                     "cache_mb": _r((s.get("cache_bytes") or 0) / mb), "admitted": s.get("admitted")}
                    for s in rows],
    }


def summarize(logs: Sequence[SessionLog], rss: dict, parity: dict, config: dict, server: dict,
              extra_violations: Sequence[str], wall_s: float, underrun_s: float, max_cancel_s: float) -> dict:
    served = [lg for lg in logs if lg.t_ready is not None]
    playback = [lg for lg in served if lg.behaviour == "playback" and lg.max_lag_s is not None]
    cancels = {kind: [lg.cancel_latency_s for lg in logs if lg.behaviour == f"cancel_{kind}"]
               for kind in ("fast", "playback")}
    for lg in logs:
        if lg.behaviour == "cancel_playback" and (lg.cancel_latency_s or 0) > max_cancel_s:
            lg.violate(f"cancel latency {lg.cancel_latency_s:.2f} s of a playback-speed reader is over "
                       f"{max_cancel_s:g} s")
    errors = Counter(c for lg in logs for c in lg.errors if c not in ADMISSION_CODES)
    admission = Counter(a for lg in logs for a in lg.admission)
    violations = [{"session": lg.id, "behaviour": lg.behaviour, "what": v} for lg in logs for v in lg.violations]
    violations += [{"session": None, "behaviour": None, "what": v} for v in extra_violations]
    return {
        "ok": not violations,
        "config": config,
        "server": server,
        "wall_s": round(wall_s, 1),
        "sessions": {
            "total": len(logs),
            "by_behaviour": {b: sum(lg.behaviour == b for lg in logs) for b in BEHAVIOURS},
            "served_by_behaviour": {b: sum(lg.behaviour == b for lg in served) for b in BEHAVIOURS},
            "by_outcome": dict(Counter(lg.outcome for lg in logs)),
        },
        "ttfa_ms": _stats([lg.ttfa_s for lg in served]),
        "queue_wait_ms": _stats([lg.t_ready - lg.t_connect for lg in served]),
        "playback": {"streams": len(playback), "underran": sum(lg.max_lag_s > underrun_s for lg in playback),
                     "underrun_threshold_s": underrun_s, "max_lag_ms": _stats([lg.max_lag_s for lg in playback])},
        "cancel_latency_ms": {kind: _stats(v) for kind, v in cancels.items()},
        "max_cancel_s": max_cancel_s,
        "errors_by_code": dict(errors),
        "admission": {"queued": admission.get("queued", 0), **{c: admission.get(c, 0) for c in ADMISSION_CODES}},
        "parity": parity,
        "rss": rss,
        "violation_count": len(violations),
        "violations": violations[:MAX_LISTED_VIOLATIONS],
    }


def table(r: dict) -> str:
    """The report as a few aligned lines for a terminal."""
    def ms(s: dict) -> str:
        return f"p50 {s['p50']} ms  p99 {s['p99']} ms  max {s['max']} ms  (n={s['n']})"

    s = r["sessions"]
    rss = r["rss"]
    lines = [
        f"loadtest {r['config']['url']}: {r['config']['clients']} clients, {r['config']['duration_s']:g} s "
        f"(seed {r['config']['seed']}), wall {r['wall_s']} s; server {r['server'].get('engine')} capacity "
        f"{r['server'].get('capacity')}, phrase cache {r['server'].get('cache')}",
        "sessions      " + "  ".join(f"{b} {n}/{s['served_by_behaviour'][b]}" for b, n in s["by_behaviour"].items())
        + "   (started/served)",
        "outcomes      " + "  ".join(f"{k} {v}" for k, v in sorted(s["by_outcome"].items())),
        "TTFA          " + ms(r["ttfa_ms"]),
        "queue wait    " + ms(r["queue_wait_ms"]),
        f"playback      {r['playback']['streams']} streams, {r['playback']['underran']} underran "
        f"(lag > {r['playback']['underrun_threshold_s']:g} s); lag " + ms(r["playback"]["max_lag_ms"]),
        "cancel fast   " + ms(r["cancel_latency_ms"]["fast"]),
        "cancel play   " + ms(r["cancel_latency_ms"]["playback"]) + f"  (limit {r['max_cancel_s']:g} s)",
        "admission     " + "  ".join(f"{k} {v}" for k, v in r["admission"].items()),
        "errors        " + ("  ".join(f"{k} {v}" for k, v in r["errors_by_code"].items()) or "none"),
        f"parity        {r['parity']['segments_compared']} segments compared, {r['parity']['bit_exact']} bit-exact, "
        f"{r['parity'].get('segments_recut', 0)} cut early (not compared), "
        f"max |diff| {r['parity']['max_abs_diff']:.3g} (tolerance {r['parity']['tolerance']:g}, via "
        f"{r['parity'].get('via')})",
    ]
    if "start_mb" in rss:
        lines.append(f"server RSS    {rss['start_mb']} MiB at start, {rss['at_warmup_end_mb']} after warm-up "
                     f"({rss['warmup_end_s']} s), {rss['end_mb']} at the end (growth "
                     f"{rss['growth_after_warmup_mb']} MiB, {rss['slope_after_warmup_mb_per_min']} MiB/min), "
                     f"max {rss['max_mb']}")
    else:
        lines.append(f"server RSS    {rss.get('note')}")
    lines.append(f"violations    {r['violation_count']}" + ("" if r["ok"] else ":"))
    lines += [f"  {v['session'] or '-'} {v['behaviour'] or ''}: {v['what']}" for v in r["violations"][:40]]
    return "\n".join(lines)
