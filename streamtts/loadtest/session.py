"""One session of ``streamtts loadtest``: its plan (what the client does, drawn up front from the
run's seed) and the behaviours that carry it out. What a session saw and the protocol checks on
every frame are :mod:`streamtts.loadtest.wire`; the run, the clients and the report are
:mod:`streamtts.loadtest.run`.

How to call (inside an event loop)::

    plan = draw_plan(rng, "cancel_playback", texts, ref_keys, VOICES)
    log = await run_session(url, plan, "c0s3", client=0, keys=keys, headers={}, timeout_s=45.0)
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
from dataclasses import dataclass
from typing import Optional, Sequence

from streamtts.loadtest.wire import ADMISSION_CODES, WIDTH, Closed, Key, SessionLog, Wire, check_done

BEHAVIOURS = ("llm", "playback", "slow", "cancel_fast", "cancel_playback", "disconnect")
QUIET_AFTER_CANCEL_S = 0.3  # after `cancelled`, how long the client listens for stray old audio
SLOW_FACTOR = 2.0  # a slow reader takes 2 s of wall time per second of audio (0.5x playback)


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


async def run_session(url: str, plan: Plan, session_id: str, client: int, keys: dict,
                      headers: Optional[dict] = None, timeout_s: float = 45.0) -> SessionLog:
    """Run ``plan`` as one session within ``timeout_s``; never raises for what the server does."""
    log = SessionLog(session_id, client, plan.behaviour, plan.voice, plan.seed, width=WIDTH[plan.format])
    log.keep_audio = plan.behaviour == "reference" or any((t, plan.voice, plan.seed) in keys for t in plan.texts)
    try:
        await asyncio.wait_for(_session(url, plan, log, keys, headers or {}), timeout_s)
    except asyncio.TimeoutError:
        log.outcome = "hung"
        log.violate(f"hung past its deadline ({timeout_s:g} s), waiting for {log.waiting_for}")
    except Exception as exc:  # a fault of this client: said as such, and the run goes on
        log.outcome = "failed"
        log.violate(f"loadtest client error while waiting for {log.waiting_for}: {type(exc).__name__}: {exc}")
    return log


async def _session(url: str, plan: Plan, log: SessionLog, keys: dict, headers: dict) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidHandshake, InvalidStatus

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
    except (OSError, asyncio.TimeoutError, InvalidHandshake) as exc:
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


async def _spoken(wire: Wire, plan: Plan, pace: float) -> None:
    """llm / playback: fragments then end, read at ``pace`` until done."""
    wire.begin(plan.texts[0])
    wire.measure_lag = pace == 1.0
    sender = asyncio.create_task(_send_then_end(wire, plan.pieces))
    try:
        await _finish_paced(wire, pace)
    finally:
        await _stop(sender)
    check_done(wire)


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


def _begin_whole(wire: Wire, plan: Plan, waiting_for: str) -> asyncio.Task:
    """Start the session's one utterance, sending all its text then ``end`` in the background."""
    wire.begin(plan.texts[0])
    wire.log.waiting_for = waiting_for
    return asyncio.create_task(_send_then_end(wire, plan.pieces))


async def _slow(wire: Wire, plan: Plan) -> None:
    log = wire.log
    sender = _begin_whole(wire, plan, "audio at half speed")
    try:
        await asyncio.wait_for(wire.read(lambda: log.done is not None, SLOW_FACTOR), plan.read_s)
    except asyncio.TimeoutError:
        pass  # the bounded slow read is over: leave with a close frame
    await _stop(sender)
    if log.done is not None:
        await _finish(wire)
        check_done(wire)
        return
    log.waiting_for = "the close handshake"
    await wire.ws.close()
    log.outcome = "closed"


async def _disconnect(wire: Wire, plan: Plan) -> None:
    log = wire.log
    sender = _begin_whole(wire, plan, "audio before dropping the connection")
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
    check_done(wire)


BEHAVIOUR_RUNNERS = {"llm": _llm, "playback": _playback, "slow": _slow, "cancel_fast": _cancel,
                     "cancel_playback": _cancel, "disconnect": _disconnect, "reference": reference}
