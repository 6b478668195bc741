"""``streamtts loadtest``: a bounded load and soak run against a real server, with checks.

How to call::

    streamtts loadtest --url ws://127.0.0.1:8000/v1/stream --clients 4 --duration 60 --json out.json
    # exit 0: no violation; 1: violations (printed, and in the JSON); 2: the server is not there

    from streamtts.loadtest.run import run
    report = run(url, clients=4, duration_s=60, seed=0)     # the JSON's dict

What it does:

1. ``GET /ready`` (engine, capacity). Then each parity reference (:data:`N_REFS` of them: a test
   sentence with a comma, a voice, a seed) is spoken once alone, the whole text in one message, format
   pcm_f32le; its segments' samples are kept.
2. ``clients`` loops run for ``duration_s``; each opens one session after another (the
   ``websockets`` asyncio client), its behaviour taken from a shuffled round of all
   :data:`~streamtts.loadtest.session.BEHAVIOURS` drawn from ``Random(seed, client)``, so every
   behaviour comes once per six sessions of a client and a seed fixes the run. Behaviours:
   :mod:`streamtts.loadtest.session`. No session starts after ``duration_s``; each has a deadline
   (``session_timeout_s``), so the run ends by ``duration_s + session_timeout_s``.
3. Every few seconds (``rss_interval_s``) ``GET /metrics``: ``process_resident_memory_bytes``,
   ``streamtts_cache_bytes``, ``streamtts_admitted``.
4. After the last session the server must give back every slot: ``streamtts_admitted`` and
   ``streamtts_active_sessions{api="ws"}`` reach 0 within :data:`SETTLE_S`.

Definitions (the JSON's fields, :func:`streamtts.loadtest.report.summarize`):

* ``ttfa_ms``: first ``text`` sent to first binary frame received (after admission: ``start`` was
  answered by ``ready``); ``queue_wait_ms``: connect to ``ready``.
* ``playback``: a playback-speed reader (behaviour ``playback``) reads the next frame only once
  the audio so far has played on a clock started at its first audio; its lag is the most that the
  audio received fell behind that clock, max over frames of (arrival - first audio) - audio
  received before it. It *underran* when its lag exceeded ``underrun_s`` (default: the 200 ms start
  buffer of the capacity benchmark's player, so a player with that buffer would have run dry).
  Reported, not a violation (it measures the server's real time on this machine).
* ``cancel_latency_ms``: ``cancel`` sent to ``cancelled`` received, separately for fast readers
  (``cancel_fast``: cancel at the first audio, reading as fast as frames come) and playback-speed
  readers (``cancel_playback``: cancel after 0.5-2 s of audio played, still reading at that speed
  until ``cancelled``, i.e. behind everything the server sent ahead). A playback-speed reader's
  latency over ``max_cancel_s`` is a violation. The server paces a stream to at most
  ``max_lead_s`` ahead of real time before it sends a frame, and a frame holds up to one engine
  tick's audio (80 mel frames, 0.93 s), so such a reader waits at most about max_lead_s + 0.93 s;
  the default 3.5 s is that (2 + 0.93) plus 0.5 s for a busy machine (``--max-cancel-s 2.1`` checks
  the stricter 100 ms + max_lead_s).
* ``errors_by_code``: every ``error`` event (and refused upgrade) by code, except the capacity
  answers ``server_busy``, ``too_many_sessions`` and ``rate_limited``, which with ``queued`` are
  ``admission`` outcomes (expected when ``clients`` exceeds the capacity), not violations. Any other
  code is a violation: this load sends nothing invalid.
* ``parity``: each complete segment a loaded session received of a reference (text, voice, seed)
  against the reference's: same text and length, samples within ``parity_tolerance`` (default
  1e-3 in float32, the bound tests/test_server_capacity.py holds batched sessions to; the engine
  is built to give batched rows the solo audio, and ``bit_exact`` counts how often it is exact).
  ``via``: ``synthesis`` when the server has no phrase cache, else ``cache`` (a loaded session of a
  reference is then served from the cache: the check covers delivery, not batching; run the
  server with ``--cache-mb 0`` to check batching).
* ``rss``: samples over time, warm-up end (the later of a third of the run and the phrase cache
  reaching 99 % of its largest size), growth after warm-up and its slope; ``max_rss_growth_mb``
  (off by default) makes growth beyond it a violation.
* ``violations``: audio or a segment after ``cancelled``, a parity mismatch, an unexpected error
  code, a session past its deadline, a protocol violation (audio before ``ready``, a frame that
  splits a sample, segment indexes or audio positions that do not add up, ``done`` counts that do
  not match, a frame after ``done``, a close other than 1000 after ``done``, a close while waiting),
  slots not given back.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
import time
import urllib.error
import urllib.request
from typing import Optional
from urllib.parse import urlsplit

from streamtts.errors import StreamTTSError
from streamtts.loadtest.session import BEHAVIOURS, Plan, draw_plan, run_session

DEFAULT_URL = "ws://127.0.0.1:8000/v1/stream"
N_REFS = 3
SETTLE_S = 15.0  # after the last session: time the server has to give its slots back
EXTRA_SENTENCES = (  # besides the test sentences: numbers, Latin, quotes, an ellipsis
    "会议定在2026年3月15日下午3点半开始。",
    "这款手机只要1999元，比去年便宜了20%。",
    "他笑着说：“我明天就回来。”",
    "我们用Python写了一个小程序。",
    "等一下……让我再想一想。",
)


class LoadtestError(StreamTTSError):
    code = "loadtest"


def _http_base(url: str) -> str:
    u = urlsplit(url)
    if u.scheme not in ("ws", "wss") or not u.netloc:
        raise LoadtestError(f"--url must be ws://host:port/v1/stream or wss://..., not {url!r}")
    return f"{'https' if u.scheme == 'wss' else 'http'}://{u.netloc}"


def _get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def scrape(base: str) -> dict:
    """The few /metrics values the run follows (None where the server has none)."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {"rss_bytes": None, "cache_bytes": None, "admitted": None, "active_ws": None}
    try:
        status, body = _get(base + "/metrics")
    except OSError as exc:  # the server is gone (the sessions say so too)
        return {**out, "error": f"{type(exc).__name__}: {exc}"}
    if status != 200:
        return {**out, "error": f"HTTP {status}"}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if s.name == "process_resident_memory_bytes":
                out["rss_bytes"] = s.value
            elif s.name == "streamtts_cache_bytes":
                out["cache_bytes"] = s.value
            elif s.name == "streamtts_admitted":
                out["admitted"] = s.value
            elif s.name == "streamtts_active_sessions" and s.labels.get("api") == "ws":
                out["active_ws"] = s.value
    return out


def _ready(base: str) -> dict:
    try:
        status, body = _get(base + "/ready")
    except OSError as exc:
        raise LoadtestError(f"no server at {base}: {exc}") from None
    if status != 200:
        raise LoadtestError(f"the server at {base} is not ready: HTTP {status} {body[:200]!r}")
    return json.loads(body)


def _references(rng: random.Random) -> list:
    from streamtts.evaluation.sentences import TEST_SENTENCES
    from streamtts.voices import VOICES

    # one sentence with a comma: two chunks (the first chunk ends at a soft break), a short solo run
    texts = rng.sample([t for t in TEST_SENTENCES if "，" in t], N_REFS)
    voices = rng.sample(list(VOICES), N_REFS)
    return [(texts[k], voices[k], 1000 + k) for k in range(N_REFS)]


async def _run(url: str, base: str, clients: int, duration_s: float, seed: int, headers: dict,
               session_timeout_s: float, rss_interval_s: float, parity_tolerance: float,
               max_rss_growth_mb: Optional[float], underrun_s: float, max_cancel_s: float,
               progress) -> dict:
    from streamtts.evaluation.sentences import TEST_SENTENCES
    from streamtts.loadtest.report import Parity, reference_segments, rss_summary, summarize
    from streamtts.voices import VOICES

    server = _ready(base)
    clients = clients or int(server.get("capacity") or 1)  # 0: as many as the server admits at once
    rng = random.Random(seed)
    keys = {k: k for k in _references(rng)}
    refs, extra = {}, []
    for n, key in enumerate(keys):  # each alone on the server
        plan = Plan("reference", key[1], key[2], "pcm_f32le", [key[0]], [])
        log = await run_session(url, plan, f"ref{n}", -1, {}, headers, session_timeout_s)
        for code in ("unauthorized", "origin_not_allowed"):
            if code in log.errors:
                raise LoadtestError(f"the server refused the session ({code}): "
                                    + ("a wrong --api-key?" if headers else "it needs --api-key"))
        if log.violations or log.outcome != "done":
            extra += [f"reference {key}: {v}" for v in log.violations] or [f"reference {key}: {log.outcome}"]
        else:
            refs[key] = reference_segments(log)
    after_refs = await asyncio.to_thread(scrape, base)
    server["cache"] = "on" if (after_refs["cache_bytes"] or 0) > 0 else "off"
    progress(f"{len(refs)} parity references recorded; {clients} clients for {duration_s:g} s ...")

    texts = list(TEST_SENTENCES) + list(EXTRA_SENTENCES)
    parity = Parity(refs, parity_tolerance)
    logs: list = []
    t0 = time.monotonic()
    stop_at = t0 + duration_s
    max_sessions = int(duration_s * 4) + 10  # a session lasts well over 0.25 s: only a bound

    async def client(i: int) -> None:
        crng = random.Random(f"{seed}:{i}")
        await asyncio.sleep(min(2.0, duration_s / 10) * i / max(clients, 1))
        order: list = []
        for n in range(max_sessions):
            if time.monotonic() >= stop_at:
                return
            if not order:
                order = list(BEHAVIOURS)
                crng.shuffle(order)
            plan = draw_plan(crng, order.pop(), texts, list(refs), VOICES)
            log = await run_session(url, plan, f"c{i}s{n}", i, keys, headers, session_timeout_s)
            parity.check(log)
            log.audio = bytearray()  # compared: a long soak keeps no audio
            logs.append(log)
            if log.outcome == "refused" or log.outcome == "failed":
                await asyncio.sleep(crng.uniform(0.5, 1.0))  # back off before trying again

    samples: list = []
    done = asyncio.Event()

    async def sampler() -> None:
        while not done.is_set():
            m = await asyncio.to_thread(scrape, base)
            samples.append({"t_s": time.monotonic() - t0, **m})
            try:
                await asyncio.wait_for(done.wait(), rss_interval_s)
            except asyncio.TimeoutError:
                pass

    watch = asyncio.create_task(sampler())
    try:
        await asyncio.wait_for(asyncio.gather(*(client(i) for i in range(clients))),
                               duration_s + session_timeout_s + 30)
    except asyncio.TimeoutError:
        extra.append("the client loops did not end within duration + session timeout")
    finally:
        done.set()
        await watch
    wall = time.monotonic() - t0

    settle_end = time.monotonic() + SETTLE_S  # every slot and socket is given back
    m = await asyncio.to_thread(scrape, base)
    while (m["admitted"] or 0) > 0 or (m["active_ws"] or 0) > 0 or "error" in m:
        if "error" in m:
            extra.append(f"/metrics after the run: {m['error']}")
            break
        if time.monotonic() > settle_end:
            extra.append(f"{SETTLE_S:g} s after the last session the server still holds {m['admitted']} slots "
                         f"and {m['active_ws']} WebSocket sessions")
            break
        await asyncio.sleep(0.5)
        m = await asyncio.to_thread(scrape, base)

    parity = {**parity.summary(), "via": "cache" if server["cache"] == "on" else "synthesis"}
    rss = rss_summary(samples, duration_s)
    if max_rss_growth_mb is not None and (rss.get("growth_after_warmup_mb") or 0) > max_rss_growth_mb:
        extra.append(f"server RSS grew {rss['growth_after_warmup_mb']} MiB after warm-up "
                     f"(limit {max_rss_growth_mb:g})")
    config = {"url": url, "clients": clients, "duration_s": duration_s, "seed": seed,
              "session_timeout_s": session_timeout_s, "rss_interval_s": rss_interval_s,
              "max_rss_growth_mb": max_rss_growth_mb}
    return summarize(logs, rss, parity, config, server, extra, wall, underrun_s, max_cancel_s)


def run(url: str = DEFAULT_URL, clients: int = 4, duration_s: float = 60.0, seed: int = 0,
        api_key: Optional[str] = None, session_timeout_s: float = 45.0, rss_interval_s: float = 5.0,
        parity_tolerance: float = 1e-3, max_rss_growth_mb: Optional[float] = None,
        underrun_s: Optional[float] = None, max_cancel_s: float = 3.5, progress=None) -> dict:
    """One load run; returns the report dict (``report["ok"]``: no violation)."""
    from streamtts.bench.streams import START_BUFFER_S

    if clients < 0 or duration_s <= 0 or session_timeout_s <= 0 or rss_interval_s <= 0:
        raise LoadtestError("--duration, --session-timeout and --rss-interval must be positive, --clients >= 0")
    base = _http_base(url)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    progress = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    return asyncio.run(_run(url, base, clients, duration_s, seed, headers, session_timeout_s, rss_interval_s,
                            parity_tolerance, max_rss_growth_mb,
                            START_BUFFER_S if underrun_s is None else underrun_s, max_cancel_s, progress))


def main(args) -> int:
    """``streamtts loadtest`` (arguments: :func:`add_arguments`)."""
    from streamtts.loadtest.report import table

    report = run(args.url, args.clients, args.duration, args.seed, args.api_key, args.session_timeout,
                 args.rss_interval, args.parity_tolerance, args.max_rss_growth_mb,
                 None if args.underrun_ms is None else args.underrun_ms / 1000, args.max_cancel_s)
    print(table(report))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, ensure_ascii=False, indent=1)
    return 0 if report["ok"] else 1


def add_arguments(p) -> None:
    p.add_argument("--url", default=DEFAULT_URL, help=f"the server's WebSocket endpoint (default {DEFAULT_URL})")
    p.add_argument("--clients", type=int, default=4, metavar="N",
                   help="concurrent client loops (default 4; 0: the server's capacity, from /ready)")
    p.add_argument("--duration", type=float, default=60.0, metavar="S",
                   help="seconds during which sessions start (default 60); the run ends by S + --session-timeout")
    p.add_argument("--seed", type=int, default=0, metavar="K", help="fixes the behaviours, texts, voices (default 0)")
    p.add_argument("--json", metavar="FILE", help="write the report to this JSON file")
    p.add_argument("--api-key", metavar="KEY", help="sent as Authorization: Bearer KEY")
    p.add_argument("--session-timeout", type=float, default=45.0, metavar="S",
                   help="deadline of one session; past it the session is a violation (default 45)")
    p.add_argument("--max-cancel-s", type=float, default=3.5, metavar="S",
                   help="longest cancel -> cancelled for a playback-speed reader (default 3.5: the server's "
                        "max_lead_s 2 + its longest audio frame 0.93 + 0.5 s)")
    p.add_argument("--underrun-ms", type=float, default=None, metavar="MS",
                   help="lag beyond which a playback-speed reader underran (default 200)")
    p.add_argument("--parity-tolerance", type=float, default=1e-3, metavar="X",
                   help="largest sample difference from the solo reference, float32 (default 1e-3)")
    p.add_argument("--rss-interval", type=float, default=5.0, metavar="S", help="/metrics sampling (default 5 s)")
    p.add_argument("--max-rss-growth-mb", type=float, default=None, metavar="MB",
                   help="server RSS growth after warm-up that counts as a violation (default: report only)")
