"""When failures cluster: the signal for a pause shared by every sender.

A lone 503 (no Retry-After) is one request's bad luck: that request backs off on
its own. Only when a high share of the latest requests fail does the server need
silence from all of them. The window is the last ``window`` answers no older than
``max_age`` seconds; it clusters when at least ``min_failures`` of them failed and
they are at least ``share`` of it. With 5 % of answers failing at random, 5 of 10
failing together happens about once in 16,000 windows; when every request fails
it takes five answers to notice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

__all__ = ["FailureCluster"]


class FailureCluster:
    def __init__(
        self,
        clock: Callable[[], float],
        *,
        window: int = 10,
        min_failures: int = 5,
        share: float = 0.5,
        max_age: float = 2.0,
    ) -> None:
        self._clock = clock
        self._window = window
        self._min = min_failures
        self._share = share
        self._max_age = max_age
        self._answers: deque[tuple[float, bool]] = deque()
        self._failures = 0  # failed answers in the window, kept as it changes (asked per answer)

    def answered(self, failed: bool) -> bool:
        """Record one answer; True when failures now cluster."""
        now = self._clock()
        answers = self._answers
        answers.append((now, failed))
        self._failures += failed
        oldest = now - self._max_age
        while answers and (len(answers) > self._window or answers[0][0] < oldest):
            self._failures -= answers.popleft()[1]
        failures = self._failures
        return failures >= self._min and failures >= self._share * len(answers)

    def clear(self) -> None:
        self._answers.clear()
        self._failures = 0
