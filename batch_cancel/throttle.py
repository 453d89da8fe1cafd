"""Shared pacing for every sender: the rate limit and the pause after throttling.

A 429 or 503 seen by one worker pauses all of them: GWS is telling the client,
not one request, to slow down. A pause is only ever extended, never cut short
by a later, shorter Retry-After.
"""

from __future__ import annotations

import math
import random
from collections.abc import Awaitable, Callable

from aiolimiter import AsyncLimiter

__all__ = ["Pacer"]


class Pacer:
    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        rng: random.Random | None = None,
        base_backoff: float = 0.5,
        max_backoff: float = 30.0,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._base = base_backoff
        self._max = max_backoff
        self._limiter: AsyncLimiter | None = None
        if rate > 0:
            # A bucket of about 10 ms of tokens: any 1 s window then holds at most
            # rate + 1% requests, while a high rate is not throttled by timer resolution.
            burst = max(1, math.floor(rate / 100))
            self._limiter = AsyncLimiter(burst, burst / rate)
        self.rate = rate
        self.paused_until = 0.0
        self.pauses = 0
        self.paused_seconds = 0.0
        self._streak = 0

    def pause(self, retry_after: float | None, reason: str) -> float:
        """Pause everyone; without Retry-After back off exponentially with jitter."""
        if retry_after is None:
            self._streak += 1
            ceiling = min(self._max, self._base * 2 ** (self._streak - 1))
            retry_after = self._rng.uniform(ceiling / 2, ceiling)
        until = self._clock() + retry_after
        if until > self.paused_until:
            start = max(self.paused_until, self._clock())
            self.paused_seconds += until - start
            self.paused_until = until
            self.pauses += 1
        return retry_after

    def calm(self) -> None:
        """A request went through: the next throttling starts a fresh backoff."""
        self._streak = 0

    async def wait_pause(self) -> None:
        while (left := self.paused_until - self._clock()) > 0:
            await self._sleep(left)

    async def acquire(self) -> None:
        await self.wait_pause()
        if self._limiter is not None:
            await self._limiter.acquire()
