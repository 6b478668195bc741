"""Admission control: at most ``capacity`` streams are admitted at once, so admitted streams never
stall; beyond it a WebSocket session waits in a bounded FIFO queue (told its position), and is
refused with ``server_busy`` when the queue is full or its wait runs out. HTTP requests do not
queue: they get 503 with Retry-After at once (OpenAI clients retry by themselves).

    admission = Admission(capacity=8, queue_size=16, queue_timeout_s=30.0)
    async with admission.slot(on_position=session.queued) as slot:   # raises Busy
        ...                                                          # speak
    slot = admission.try_acquire()     # HTTP: a slot or None; admission.release(slot) after

Event-loop only (no locks): every method runs on the server's asyncio loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import AsyncIterator, Callable, Optional


class Busy(Exception):
    """No slot: the queue is full, or the wait in it ran out."""

    code = "server_busy"

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.message, self.retry_after_s = message, retry_after_s


class Admission:
    def __init__(self, capacity: int, queue_size: int = 16, queue_timeout_s: float = 30.0):
        self.capacity = max(1, int(capacity))
        self.queue_size = max(0, int(queue_size))
        self.queue_timeout_s = queue_timeout_s
        self.admitted = 0
        self.refused = 0
        self._waiting: deque[asyncio.Future] = deque()

    @property
    def queued(self) -> int:
        return len(self._waiting)

    def set_capacity(self, capacity: int) -> None:
        self.capacity = max(1, int(capacity))
        self._hand_over()

    def try_acquire(self) -> bool:
        """A slot now, if one is free and nobody is queued for it."""
        if self.admitted < self.capacity and not self._waiting:
            self.admitted += 1
            return True
        self.refused += 1
        return False

    def release(self) -> None:
        self.admitted -= 1
        self._hand_over()

    def retry_after_s(self) -> int:
        return 1 + len(self._waiting) // max(1, self.capacity)

    @contextlib.asynccontextmanager
    async def slot(self, on_position: Optional[Callable[[int], None]] = None) -> AsyncIterator[None]:
        await self._acquire(on_position)
        try:
            yield
        finally:
            self.release()

    async def _acquire(self, on_position: Optional[Callable[[int], None]]) -> None:
        if self.admitted < self.capacity and not self._waiting:
            self.admitted += 1
            return
        if len(self._waiting) >= self.queue_size:
            self.refused += 1
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
                return
            self._remove(fut)
            self.refused += 1
            raise Busy(f"no stream slot freed within {self.queue_timeout_s:g} s; try again later",
                       self.retry_after_s()) from None
        except BaseException:  # the session went away while queued
            if fut.done() and not fut.cancelled():
                self.release()  # the slot it was given goes to the next in line
            else:
                self._remove(fut)
            raise

    def _remove(self, fut: asyncio.Future) -> None:
        try:
            self._waiting.remove(fut)
        except ValueError:
            return
        fut.cancel()
        self._tell_positions()

    def _hand_over(self) -> None:
        while self._waiting and self.admitted < self.capacity:
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
