"""Jetty's DoSFilter as GWS deployments run it: a per-session rate that delays, then refuses.

Jetty counts each session's requests within the last second (``maxRequestsPerSec``,
default 25). A request over that rate is not refused at once: it is held back
(``delayMs``, then a throttle queue bounded by ``maxWaitMs``) and refused (429, or 503
in older set-ups) only when it would have to wait too long. Here the held-back requests
are served in order as the one-second window lets them through, so a client that sends
faster than the rate sees its answers slow down first and 429s only when the queue is
full: rising latency is the first signal it gets.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["DosFilter"]


class DosFilter:
    """Admission times per key (a session id or a client address)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._starts: dict[str, deque[float]] = {}

    def admit(self, key: str, max_per_sec: float, max_wait: float) -> float | None:
        """Seconds this request must wait before it is looked at; None: refuse it (429).

        ``max_per_sec`` <= 0 switches the filter off. A refused request takes no place
        in the window, as Jetty does not count what it rejects.
        """
        if max_per_sec <= 0:
            return 0.0
        limit = max(1, int(max_per_sec))
        now = self._clock()
        starts = self._starts.get(key)
        if starts is None or starts.maxlen != limit:
            # The last ``limit`` admissions are all that decide the next one.
            starts = self._starts[key] = deque(starts or (), maxlen=limit)
        start = now
        if len(starts) == limit:
            start = max(now, starts[0] + 1.0)
        wait = start - now
        if wait > max_wait:
            return None
        starts.append(start)
        return wait

    def forget(self, key: str) -> None:
        self._starts.pop(key, None)
