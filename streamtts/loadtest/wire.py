"""The client end of one ``streamtts loadtest`` session: what it saw (:class:`SessionLog`) and
the protocol checks made on every frame it receives (:class:`Wire`, docs/protocol.md). The
behaviours that drive it are :mod:`streamtts.loadtest.session`.

How to call (inside an event loop, ``ws`` a ``websockets`` client connection)::

    log = SessionLog("c0s1", client=0, behaviour="llm", voice="biaobei", seed=0, width=2)
    wire = Wire(ws, log, keys)            # keys: {(text, voice, seed): key} of parity references
    wire.begin(text); await wire.send_text(text); await wire.send(type="end")
    await wire.read(lambda: log.done is not None)     # every frame goes through wire.feed
    log.violations                        # what the server did wrong, as sentences
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

ADMISSION_CODES = ("server_busy", "too_many_sessions", "rate_limited")  # capacity answers, not faults
WIDTH = {"pcm_s16le": 2, "pcm_f32le": 4}
RATE = 22050

Key = tuple  # (text, voice, seed) of a parity reference


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
    audio: bytearray = field(default_factory=bytearray)  # all audio received, when keep_audio
    keep_audio: bool = False  # the session speaks a parity reference (its audio is compared)
    bytes_received: int = 0
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
        return self.bytes_received / self.width / RATE

    def violate(self, what: str) -> None:
        self.violations.append(what)

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
        self.refused = False  # a non-fatal server_busy dropped the utterance

    # ---- sending ----------------------------------------------------------------------------

    async def send(self, **msg) -> None:
        """Send one message; on a closed socket nothing happens: the frames still to read say why
        (a server_busy refusal, say) and the next read raises :class:`Closed`."""
        from websockets.exceptions import ConnectionClosed

        try:
            await self.ws.send(json.dumps(msg, ensure_ascii=False))
        except ConnectionClosed:
            pass

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

        if self.refused:  # the utterance was refused: this client is through with the session
            raise Closed()
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
            log.bytes_received += len(msg)
            if log.keep_audio:
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
                if not m.get("fatal"):  # server_busy: no slot freed in time, its utterance dropped
                    self.refused = True
                    log.outcome = "refused"
            else:
                log.violate(f"error {code}: {m.get('message')}")
        else:
            log.violate(f"unknown event type {kind!r}")

    def _segment(self, m: dict) -> None:
        log = self.log
        if self.after_cancel:
            log.violate(f"a segment after cancelled: {m.get('text')!r}")
        index = m.get("index")
        # consecutive within an utterance; after a cancel the count may have moved on over
        # segments of the cancelled text that were dropped before they were sent
        skip_ok = self.cancel_at is not None and isinstance(index, int) and index > self.next_index
        if index != self.next_index and not skip_ok:
            log.violate(f"segment index {index}, expected {self.next_index}")
        self.next_index = (index if isinstance(index, int) else self.next_index) + 1
        samples = log.bytes_received // log.width
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


def check_done(wire: Wire) -> None:
    """After ``done`` of a session that was not cancelled: its counts are what came."""
    log = wire.log
    done = log.done or {}
    segments = sum(len(u.segments) for u in log.utterances)
    if done.get("segments") != segments:
        log.violate(f"done says {done.get('segments')} segments, {segments} came")
    audio_ms = 1000 * log.received_s
    if abs((done.get("audio_ms") or 0) - audio_ms) > 1.0:
        log.violate(f"done says {done.get('audio_ms')} ms of audio, {audio_ms:.1f} ms came")
