"""Fake time for the state machines' unit tests: the clock moves only when every task waits."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


class FakeTime:
    """``clock``/``sleep`` to inject. :meth:`run` drives a coroutine: whenever all tasks
    are blocked, time jumps to the earliest sleeper's wake-up, so sleeps that overlap
    in time overlap on this clock too (unlike a clock that adds every sleep)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._order), future))
        await future

    def advance(self, seconds: float) -> None:
        """Move the clock by hand and wake the sleepers that are due (for code not run by :meth:`run`)."""
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    async def run(self, work: Awaitable[T], *, limit: float = 3600.0) -> T:
        task = asyncio.ensure_future(work)
        end = self.now + limit
        while not task.done():
            for _ in range(50):  # let every task that can run, run
                await asyncio.sleep(0)
            if task.done():
                break
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)  # a cancelled sleep
            if not self._sleepers:
                task.cancel()
                raise AssertionError("deadlock: every task waits and nobody sleeps")
            at, _, future = heapq.heappop(self._sleepers)
            if at > end:
                task.cancel()
                raise AssertionError(f"still running after {limit} fake seconds")
            self.now = max(self.now, at)
            future.set_result(None)
        return task.result()
