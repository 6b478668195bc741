"""One session of ``streamtts loadtest``: its plan (what the client does, drawn up front from the
run's seed), what it saw (:class:`SessionLog`) and the protocol checks made on every frame
(:class:`Wire`). The run, the clients and the report are :mod:`streamtts.loadtest`.

How to call (inside an event loop)::

    plan = draw_plan(rng, "cancel_playback", texts, refs_keys)
    log = await run_session(url, plan, session_id, headers, timeout_s=45.0)
    log.violations            # [] when the server kept the protocol
    log.utterances[k].segments  # [(text, start_sample, end_sample)], positions in log.audio

Behaviours (each a coroutine below; every wait is under the session's deadline):

* ``llm``: text in 1-4-character fragments with small random delays, then ``end``; reads as
  fast as frames come; expects ``done`` and close 1000.
* ``playback``: the same, read at playback speed (the next frame is read when the audio received
  so far has played on a clock started at the first audio); measures its lag (see
  :attr:`SessionLog.max_lag_s`).
* ``slow``: the same, read at half playback speed for a bounded time, then a normal close.
* ``cancel_fast`` / ``cancel_playback``: text without ``end``; ``cancel`` once the first audio
  came (fast reader) or once 0.5-2 s of audio played (playback-speed reader, still reading at that
  speed until ``cancelled``); checks that no binary frame and no ``segment`` arrive after
  ``cancelled`` (until the next text is sent); then speaks a second text and ``end`` (or ``end``
  alone) and expects ``done``.
* ``disconnect``: ``llm`` text, reads some audio, then drops the TCP connection (no close frame).
* ``reference`` (not in the mix): one solo session, the whole text in one message, for parity.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

ADMISSION_CODES = ("server_busy", "too_many_sessions", "rate_limited")  # capacity answers, not faults
BEHAVIOURS = ("llm", "playback", "slow", "cancel_fast", "cancel_playback", "disconnect")
WIDTH = {"pcm_s16le": 2, "pcm_f32le": 4}
RATE = 22050
QUIET_AFTER_CANCEL_S = 0.3  # after `cancelled`, how long the client listens for stray old audio
SLOW_FACTOR = 2.0  # a slow reader takes 2 s of wall time per second of audio (0.5x playback)

Key = tuple  # (text, voice, seed) of a parity reference


@dataclass
class Plan:
    """What one session does; all its random choices are made here, so a seed fixes the run."""

    behaviour: str
    voice: str
    seed: int
    format: str
    texts: list  # utterance texts: [text] or [text, text spoken after the cancel]
    pieces: list  # (fragment, delay_s) of texts[0]
    read_s: float = 0.0  # cancel_playback: audio played before the cancel; disconnect: audio read
    # before dropping; slow: wall seconds of slow reading
    end_after_cancel: bool = True  # cancel_*: send `end` after the cancel (else just close)


@dataclass
class Utterance:
    text: str
    key: Optional[Key]  # parity reference it must match, if any
    segments: list = field(default_factory=list)  # (text, start_sample, end_sample)


@dataclass
class SessionLog:
    """What one session saw (times: ``time.monotonic()``)."""

    id: str
    client: int
    behaviour: str
    voice: str
    seed: int
    outcome: str = "open"  # done | closed | disconnected | refused | failed | hung
    admission: list = field(default_factory=list)  # "queued", ADMISSION_CODES
    t_connect: Optional[float] = None
    t_ready: Optional[float] = None
    t_first_text: Optional[float] = None
    t_first_audio: Optional[float] = None
    errors: list = field(default_factory=list)  # error codes received (all)
    cancel_latency_s: Optional[float] = None
    # playback-speed readers: the most the audio received fell behind the wall clock started at
    # the first audio, i.e. max over frames of (arrival - first audio) - audio received before it
    max_lag_s: Optional[float] = None
    violations: list = field(default_factory=list)
    utterances: list = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    width: int = 2
    close_code: Optional[int] = None
    done: Optional[dict] = None
    waiting_for: str = "connect"  # what the session waits for now (said when it hangs)

    @property
    def ttfa_s(self) -> Optional[float]:
        if self.t_first_audio is None or self.t_first_text is None:
            return None
        return self.t_first_audio - self.t_first_text

    @property
    def received_s(self) -> float:
        return len(self.audio) / self.width / RATE

    def violate(self, what: str) -> None:
        self.violations.append(what)


def fragments(rng: random.Random, text: str) -> list:
    """``text`` as an LLM sends it: pieces of 1-4 characters, 10-50 ms apart (~33 messages a second,
    under the server's 60)."""
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, 4)
        out.append((text[i:i + n], rng.uniform(0.010, 0.050)))
        i += n
    return out


def draw_plan(rng: random.Random, behaviour: str, texts: Sequence[str], refs: Sequence[Key],
              voices: Sequence[str]) -> Plan:
    """A session's plan. Half the ``llm``/``playback``/``slow`` sessions and half the texts spoken
    after a cancel are a parity reference (text, voice, seed): those use pcm_f32le; the others
    speak 1-2 random sentences with a random voice and seed (so they miss the phrase cache)."""
    def sentences(k: int) -> str:
        return "".join(rng.sample(list(texts), k))

    use_ref = bool(refs) and rng.random() < 0.5
    ref = rng.choice(list(refs)) if refs else None
    if use_ref:
        voice, seed, fmt = ref[1], ref[2], "pcm_f32le"
    else:
        voice, seed, fmt = rng.choice(list(voices)), rng.randrange(2 ** 31), "pcm_s16le"
    if behaviour.startswith("cancel"):
        first = sentences(2)
        again = rng.random() < 0.5
        second = ref[0] if (use_ref and again) else (sentences(1) if again else None)
        plan = Plan(behaviour, voice, seed, fmt, [first] + ([second] if second else []), fragments(rng, first),
                    read_s=rng.uniform(0.5, 2.0), end_after_cancel=again or rng.random() < 0.5)
        return plan
    text = ref[0] if use_ref else sentences(rng.randint(1, 2))
    read_s = {"disconnect": rng.uniform(0.2, 2.0), "slow": rng.uniform(3.0, 8.0)}.get(behaviour, 0.0)
    return Plan(behaviour, voice, seed, fmt, [text], fragments(rng, text), read_s=read_s)


class Closed(Exception):
    """The server closed the socket (code in the log)."""


class Wire:
    """The client end of one session: every frame received goes through :meth:`feed`, which
    records it and checks the protocol (docs/protocol.md)."""

    def __init__(self, ws, log: SessionLog, keys: dict):
        self.ws, self.log, self.keys = ws, log, keys
        self.ready = False
        self.after_cancel = False  # `cancelled` came and no new text was sent since
        self.cancel_at: Optional[float] = None
        self.next_index = 0
        self.measure_lag = False
        self.utterance: Optional[Utterance] = None

    # ---- sending ----------------------------------------------------------------------------

    async def send(self, **msg) -> None:
        await self.ws.send(json.dumps(msg, ensure_ascii=False))

    def begin(self, text: str) -> None:
        """A new utterance starts with the next text sent."""
        self.after_cancel = False
        self.utterance = Utterance(text, self.keys.get((text, self.log.voice, self.log.seed)))
        self.log.utterances.append(self.utterance)

    async def send_text(self, text: str) -> None:
        if self.log.t_first_text is None:
            self.log.t_first_text = time.monotonic()
        await self.send(type="text", text=text)

    async def send_pieces(self, pieces: list, stop: Optional[asyncio.Event] = None) -> None:
        for piece, delay in pieces:
            if stop is not None and stop.is_set():
                return
            await self.send_text(piece)
            await asyncio.sleep(delay)

    async def cancel(self) -> None:
        self.cancel_at = time.monotonic()
        await self.send(type="cancel")

    # ---- receiving --------------------------------------------------------------------------

    async def recv(self):
        from websockets.exceptions import ConnectionClosed

        try:
            msg = await self.ws.recv()
        except ConnectionClosed as exc:
            self.log.close_code = exc.rcvd.code if exc.rcvd is not None else 1006
            raise Closed() from None
        self.feed(msg, time.monotonic())
        return msg

    def feed(self, msg, t: float) -> None:
        log = self.log
        if log.done is not None:
            log.violate(f"a frame after done: {_brief(msg)}")
        if isinstance(msg, bytes):
            if not self.ready:
                log.violate("audio before ready")
            if self.after_cancel:
                log.violate(f"a binary frame ({len(msg)} bytes) after cancelled")
            if len(msg) % log.width:
                log.violate(f"a binary frame of {len(msg)} bytes splits a sample")
            if not msg:
                return
            if log.t_first_audio is None:
                log.t_first_audio = t
            elif self.measure_lag:
                lag = (t - log.t_first_audio) - log.received_s
                log.max_lag_s = lag if log.max_lag_s is None else max(log.max_lag_s, lag)
            log.audio += msg
            return
        try:
            m = json.loads(msg)
            kind = m["type"]
        except (ValueError, TypeError, KeyError):
            log.violate(f"not a JSON event: {_brief(msg)}")
            return
        if kind == "queued":
            if "queued" not in log.admission:
                log.admission.append("queued")
        elif kind == "ready":
            if self.ready:
                log.violate("a second ready")
            self.ready = True
            log.t_ready = t
            if m.get("voice", "").lower() != log.voice.lower() or m.get("seed") != log.seed:
                log.violate(f"ready does not echo the options: {m}")
        elif kind == "segment":
            self._segment(m)
        elif kind == "cancelled":
            if self.cancel_at is None:
                log.violate("cancelled without a cancel")
            elif log.cancel_latency_s is None:
                log.cancel_latency_s = t - self.cancel_at
            self.after_cancel = True
        elif kind == "done":
            log.done = m
        elif kind == "error":
            code = m.get("code")
            log.errors.append(code)
            if code in ADMISSION_CODES:
                log.admission.append(code)
            else:
                log.violate(f"error {code}: {m.get('message')}")
        else:
            log.violate(f"unknown event type {kind!r}")

    def _segment(self, m: dict) -> None:
        log = self.log
        if self.after_cancel:
            log.violate(f"a segment after cancelled: {m.get('text')!r}")
        if m.get("index") != self.next_index:
            log.violate(f"segment index {m.get('index')}, expected {self.next_index}")
        self.next_index = (m.get("index") if isinstance(m.get("index"), int) else self.next_index) + 1
        samples = len(log.audio) // log.width
        try:
            start = round(m["audio_start_ms"] * RATE / 1000)
            end = round(m["audio_end_ms"] * RATE / 1000)
        except (KeyError, TypeError):
            log.violate(f"segment without audio positions: {m}")
            return
        if abs(end - samples) > 1:  # documented: exactly the samples sent up to it
            log.violate(f"segment {m.get('text')!r} ends at sample {end}, but {samples} samples came")
        if not 0 <= start <= end:
            log.violate(f"segment range {start}..{end}")
        if self.utterance is not None:  # the end is exact (the segment follows its last audio frame);
            # the start, from a position rounded to 0.1 ms, is within a sample of the truth
            self.utterance.segments.append((m.get("text"), min(start, samples), samples))

    async def read(self, until: Callable[[], bool], pace: float = 0.0) -> None:
        """Read frames until ``until()`` holds. ``pace`` > 0: read the next frame only once the audio
        received so far has played at ``1/pace`` speed on a clock started at the first audio."""
        while not until():
            if pace and self.log.t_first_audio is not None:
                due = self.log.t_first_audio + pace * self.log.received_s
                await asyncio.sleep(max(0.0, due - time.monotonic()))
            await self.recv()

    async def until_closed(self) -> None:
        """After ``done`` (or a fatal error) the server closes; nothing else may come."""
        try:
            while True:
                await self.recv()
        except Closed:
            pass


def _brief(msg) -> str:
    return f"{len(msg)} bytes of audio" if isinstance(msg, bytes) else str(msg)[:120]


# ---- the session ------------------------------------------------------------------------------

async def run_session(url: str, plan: Plan, session_id: str, client: int, keys: dict,
                      headers: Optional[dict] = None, timeout_s: float = 45.0) -> SessionLog:
    """Run ``plan`` as one session within ``timeout_s``; never raises for what the server does."""
    log = SessionLog(session_id, client, plan.behaviour, plan.voice, plan.seed, width=WIDTH[plan.format])
    try:
        await asyncio.wait_for(_session(url, plan, log, keys, headers or {}), timeout_s)
    except asyncio.TimeoutError:
        log.outcome = "hung"
        log.violate(f"hung past its deadline ({timeout_s:g} s), waiting for {log.waiting_for}")
    return log


async def _session(url: str, plan: Plan, log: SessionLog, keys: dict, headers: dict) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    log.t_connect = time.monotonic()
    try:
        ws = await connect(url, additional_headers=headers, proxy=None, compression=None, max_size=None,
                           ping_interval=None, open_timeout=30, close_timeout=10)
    except InvalidStatus as exc:
        status = exc.response.status_code
        code = _refusal_code(exc)
        log.errors.append(code)
        log.outcome = "refused"
        if code in ADMISSION_CODES:
            log.admission.append(code)
        else:
            log.violate(f"the upgrade was refused: HTTP {status} {code}")
        return
    except (OSError, asyncio.TimeoutError) as exc:
        log.outcome = "failed"
        log.violate(f"could not connect: {type(exc).__name__}: {exc}")
        return
    wire = Wire(ws, log, keys)
    try:
        log.waiting_for = "ready"
        await wire.send(type="start", voice=plan.voice, seed=plan.seed, format=plan.format)
        await wire.read(lambda: wire.ready or any(c in ADMISSION_CODES for c in log.errors))
        if not wire.ready:
            log.outcome = "refused"
            await wire.until_closed()
            return
        await BEHAVIOUR_RUNNERS[plan.behaviour](wire, plan)
    except Closed:
        if log.outcome == "open":
            log.outcome = "failed"
            if not any(c in ADMISSION_CODES for c in log.errors):
                log.violate(f"the server closed the socket ({log.close_code}) while the client waited for "
                            f"{log.waiting_for}")
    except asyncio.CancelledError:  # the deadline: drop the socket at once
        ws.transport.abort()
        raise
    finally:
        if log.outcome != "disconnected" and ws.transport is not None and not ws.transport.is_closing():
            await ws.close()


def _refusal_code(exc) -> str:
    try:
        return json.loads(exc.response.body)["code"]
    except (ValueError, TypeError, KeyError):
        return f"http_{exc.response.status_code}"


async def _finish(wire: Wire) -> None:
    """Wait for ``done`` and the close 1000 that follows it."""
    log = wire.log
    log.waiting_for = "done"
    await wire.read(lambda: log.done is not None)
    log.waiting_for = "the close after done"
    await wire.until_closed()
    log.outcome = "done"
    if log.close_code != 1000:
        log.violate(f"closed with {log.close_code} after done, not 1000")


def _check_done(wire: Wire) -> None:
    log = wire.log
    done = log.done or {}
    segments = sum(len(u.segments) for u in log.utterances)
    if done.get("segments") != segments:
        log.violate(f"done says {done.get('segments')} segments, {segments} came")
    audio_ms = 1000 * log.received_s
    if abs((done.get("audio_ms") or 0) - audio_ms) > 1.0:
        log.violate(f"done says {done.get('audio_ms')} ms of audio, {audio_ms:.1f} ms came")


async def _spoken(wire: Wire, plan: Plan, pace: float) -> None:
    """llm / playback: fragments then end, read at ``pace`` until done."""
    wire.begin(plan.texts[0])
    wire.measure_lag = pace == 1.0
    sender = asyncio.create_task(_send_then_end(wire, plan.pieces))
    try:
        await _finish_paced(wire, pace)
    finally:
        await _stop(sender)
    _check_done(wire)


async def _finish_paced(wire: Wire, pace: float) -> None:
    log = wire.log
    log.waiting_for = "done"
    await wire.read(lambda: log.done is not None, pace)
    await _finish(wire)


async def _send_then_end(wire: Wire, pieces: list) -> None:
    await wire.send_pieces(pieces)
    await wire.send(type="end")


async def _send_then_flush(wire: Wire, pieces: list, stop: asyncio.Event) -> None:
    await wire.send_pieces(pieces, stop)
    if not stop.is_set():  # all sent before the cancel point: speak the last sentence too
        await wire.send(type="flush")


async def _stop(task: asyncio.Task) -> None:
    from websockets.exceptions import ConnectionClosed

    if not task.done():
        task.cancel()
    try:
        await task
    except (asyncio.CancelledError, ConnectionClosed):
        pass


async def _llm(wire: Wire, plan: Plan) -> None:
    await _spoken(wire, plan, 0.0)


async def _playback(wire: Wire, plan: Plan) -> None:
    await _spoken(wire, plan, 1.0)


async def _slow(wire: Wire, plan: Plan) -> None:
    log = wire.log
    wire.begin(plan.texts[0])
    sender = asyncio.create_task(_send_then_end(wire, plan.pieces))
    log.waiting_for = "audio at half speed"
    try:
        await asyncio.wait_for(wire.read(lambda: log.done is not None, SLOW_FACTOR), plan.read_s)
    except asyncio.TimeoutError:
        pass  # the bounded slow read is over: leave with a close frame
    await _stop(sender)
    if log.done is not None:
        await _finish(wire)
        _check_done(wire)
        return
    log.waiting_for = "the close handshake"
    await wire.ws.close()
    log.outcome = "closed"


async def _disconnect(wire: Wire, plan: Plan) -> None:
    log = wire.log
    wire.begin(plan.texts[0])
    sender = asyncio.create_task(_send_then_end(wire, plan.pieces))
    log.waiting_for = "audio before dropping the connection"
    try:
        await wire.read(lambda: log.done is not None or (log.t_first_audio is not None and log.received_s >= plan.read_s))
    finally:
        await _stop(sender)
    if log.done is not None:  # all audio came before the drop point: an ordinary session
        await _finish(wire)
        return
    wire.ws.transport.abort()  # TCP closed without a close frame, mid-audio
    log.outcome = "disconnected"


async def _cancel(wire: Wire, plan: Plan) -> None:
    log = wire.log
    pace = 1.0 if plan.behaviour == "cancel_playback" else 0.0
    wire.begin(plan.texts[0])
    wire.measure_lag = pace == 1.0
    stop = asyncio.Event()
    sender = asyncio.create_task(_send_then_flush(wire, plan.pieces, stop))  # no `end`: mid-utterance
    log.waiting_for = "the first audio" if not pace else f"{plan.read_s:.1f} s of audio at playback speed"
    want = plan.read_s if pace else 0.0
    text, segments = plan.texts[0], wire.utterance.segments

    def cancel_now() -> bool:  # enough audio came, or all of it (a text shorter than read_s)
        spoken = sender.done() and segments and text.endswith(segments[-1][0] or "\0")
        return log.t_first_audio is not None and (log.received_s >= want or bool(spoken))

    await wire.read(cancel_now, pace)
    stop.set()
    await sender  # ends after its current fragment (no message is cut)
    await wire.cancel()
    log.waiting_for = "cancelled"
    await wire.read(lambda: wire.after_cancel, pace)
    log.waiting_for = "silence after cancelled"
    try:  # anything the server sends now is old audio: Wire.feed flags it
        await asyncio.wait_for(wire.read(lambda: False), QUIET_AFTER_CANCEL_S)
    except asyncio.TimeoutError:
        pass
    if len(plan.texts) > 1:
        wire.begin(plan.texts[1])
        wire.measure_lag = False
        await wire.send_text(plan.texts[1])
        await wire.send(type="end")
        await _finish(wire)
        return
    if plan.end_after_cancel:
        await wire.send(type="end")
        await _finish(wire)
        return
    log.waiting_for = "the close handshake"
    await wire.ws.close()
    log.outcome = "closed"


async def reference(wire: Wire, plan: Plan) -> None:
    """A parity reference: the whole text in one message, alone on the server."""
    wire.begin(plan.texts[0])
    await wire.send_text(plan.texts[0])
    await wire.send(type="end")
    await _finish(wire)
    _check_done(wire)


BEHAVIOUR_RUNNERS = {"llm": _llm, "playback": _playback, "slow": _slow, "cancel_fast": _cancel,
                     "cancel_playback": _cancel, "disconnect": _disconnect, "reference": reference}
