"""Admission control: at most ``capacity`` streams are admitted at once (plus the extra slots
below), so admitted streams never stall. One API for every transport: a :class:`Slot`, taken now
or after a wait in a bounded FIFO queue (told its position), given back once. ``Busy``
(``server_busy``) when the queue is full, the wait runs out, or the caller does not queue and no
slot is free::

    admission = Admission(capacity=8, queue_size=16, queue_timeout_s=30.0)
    async with admission.slot(queue=True, on_position=session.queued):   # WebSocket: waits in line
        ...
    async with admission.slot(queue=False):                               # a slot now or Busy
        ...
    slot = await admission.wait_unless(stop)  # HTTP, Wyoming: waits in line unless stop() returns
                                              # an exception (client gone, drain), then raises it
    slot = admission.take()          # a slot now or Busy, for a holder that gives it back later
    slot.release()                   # idempotent
    admission.set_extra(3)           # the engine has headroom now: 3 slots beyond the capacity

Extra slots. ``capacity`` is what the engine keeps at real time with every stream computing at
once. Conversations are bursty: several turns start together, compute ahead of their listeners,
then hold their slots while they wait for more text or play out. While the engine has
headroom (every playing stream has audio in hand, few newcomers still wait for their first
audio: ``CapacityEstimator.extra``), it lets that many streams more in, so a turn does not queue
behind streams that are only ahead of their listeners. When the headroom goes, the limit is the
capacity again: streams admitted meanwhile keep their slots, and newcomers queue until enough
give theirs back.

Event-loop only (no locks): every method runs on the server's asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import AsyncIterator, Callable, Optional


class Busy(Exception):
    """No slot: the queue is full, the wait in it ran out, or the caller would not wait."""

    code = "server_busy"

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.message, self.retry_after_s = message, retry_after_s


class Slot:
    """One admitted stream; :meth:`release` gives it back (once, however often called)."""

    def __init__(self, admission: "Admission"):
        self._admission: Optional[Admission] = admission

    def release(self) -> None:
        admission, self._admission = self._admission, None
        if admission is not None:
            admission._release()

    @property
    def held(self) -> bool:
        return self._admission is not None


class Admission:
    def __init__(self, capacity: int, queue_size: int = 16, queue_timeout_s: float = 30.0):
        self.capacity = max(1, int(capacity))
        self.extra = 0  # slots beyond the capacity while the engine has headroom
        self.queue_size = max(0, int(queue_size))
        self.queue_timeout_s = queue_timeout_s
        self.admitted = 0
        self.refused = 0
        self._waiting: deque[asyncio.Future] = deque()
        self.on_change: Optional[Callable[[], None]] = None  # after every change (metrics)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def limit(self) -> int:
        """Streams admitted at most now: the capacity, plus the extra slots of the headroom."""
        return self.capacity + self.extra if self.capacity else 0

    def set_capacity(self, capacity: int) -> None:
        self.capacity = max(0, int(capacity))
        self._hand_over()

    def set_extra(self, extra: int) -> None:
        self.extra = max(0, int(extra))
        self._hand_over()

    def retry_after_s(self) -> int:
        return 1 + len(self._waiting) // max(1, self.capacity)

    def take(self) -> Slot:
        """A slot now, if one is free and nobody is queued for it; else Busy."""
        if self.admitted < self.limit and not self._waiting:
            return self._grant()
        self.refused += 1
        self._changed()
        raise Busy(f"the server is at its capacity of {self.capacity} streams; try again shortly",
                   self.retry_after_s())

    async def wait(self, on_position: Optional[Callable[[int], None]] = None) -> Slot:
        """A slot, after a wait in the queue if none is free (``on_position`` hears its place)."""
        if self.admitted < self.limit and not self._waiting:
            return self._grant()
        if len(self._waiting) >= self.queue_size:
            self.refused += 1
            self._changed()
            raise Busy(f"the server is at its capacity of {self.capacity} streams and its queue of "
                       f"{self.queue_size} is full; try again later", self.retry_after_s())
        fut = asyncio.get_running_loop().create_future()
        fut.position_cb = on_position  # type: ignore[attr-defined]
        self._waiting.append(fut)
        self._tell_positions()
        try:
            await asyncio.wait_for(asyncio.shield(fut), self.queue_timeout_s)
        except asyncio.TimeoutError:
            if fut.done() and not fut.cancelled():  # admitted at the last moment
                return Slot(self)
            self._remove(fut)
            self.refused += 1
            self._changed()
            raise Busy(f"no stream slot freed within {self.queue_timeout_s:g} s; try again later",
                       self.retry_after_s()) from None
        except BaseException:  # the caller went away while queued
            if fut.done() and not fut.cancelled():
                self._release()  # the slot it was given goes to the next in line
            else:
                self._remove(fut)
            raise
        return Slot(self)

    async def wait_unless(self, stop: Callable[[], Optional[BaseException]], poll_s: float = 0.1,
                          on_position: Optional[Callable[[int], None]] = None) -> Slot:
        """:meth:`wait`, for a caller that nobody cancels when its client leaves (an HTTP handler, a
        Wyoming synthesis): every ``poll_s`` it asks ``stop()``, and an exception returned there
        ends the wait, its place going to the next in line, and is raised."""
        if self.admitted < self.limit and not self._waiting:
            return self._grant()
        waiter = asyncio.ensure_future(self.wait(on_position))
        try:
            while True:
                await asyncio.wait({waiter}, timeout=poll_s)
                if waiter.done():
                    return waiter.result()
                exc = stop()
                if exc is not None:
                    raise exc
        except BaseException:
            if not waiter.done():
                waiter.cancel()  # wait() leaves the queue, or hands a slot granted meanwhile on
            waiter.add_done_callback(_give_back)
            raise

    @contextlib.asynccontextmanager
    async def slot(self, queue: bool = True,
                   on_position: Optional[Callable[[int], None]] = None) -> AsyncIterator[Slot]:
        slot = await self.wait(on_position) if queue else self.take()
        try:
            yield slot
        finally:
            slot.release()

    def _grant(self) -> Slot:
        self.admitted += 1
        self._changed()
        return Slot(self)

    def _release(self) -> None:
        self.admitted -= 1
        self._hand_over()

    def _remove(self, fut: asyncio.Future) -> None:
        try:
            self._waiting.remove(fut)
        except ValueError:
            return
        fut.cancel()
        self._tell_positions()

    def _hand_over(self) -> None:
        while self._waiting and self.admitted < self.limit:
            fut = self._waiting.popleft()
            if fut.done():
                continue
            self.admitted += 1
            fut.set_result(None)
        self._tell_positions()

    def _tell_positions(self) -> None:
        for i, fut in enumerate(self._waiting):
            cb = getattr(fut, "position_cb", None)
            if cb is not None and getattr(fut, "position", None) != i:
                fut.position = i  # type: ignore[attr-defined]
                cb(i)
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


def _give_back(waiter: asyncio.Future) -> None:
    """A wait nobody takes the result of: its slot, if it got one, goes back (and its Busy is read)."""
    if not waiter.cancelled() and waiter.exception() is None:
        waiter.result().release()
