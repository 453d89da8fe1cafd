"""A throttle that only delays: POST latency against the calm latency of the start.

Jetty's DoS filter (in front of GWS) holds requests over its per-session rate back
before it refuses any, so the first sign of it is answers that get slower. The
calm baseline is the median latency of the first ``baseline_samples`` answers,
lowered later whenever a calm stretch is faster still. The answers are slow when
the median of the last ``recent`` is more than ``factor`` times the baseline and
at least ``min_extra`` seconds above it: on loopback a calm answer takes a few
milliseconds, and on a busy box scheduling noise alone can triple one (measured: p50
3.4 ms, p95 9.5 ms at 20/s), so one slow answer says nothing; three of five do.
"""

from __future__ import annotations

import statistics
from collections import deque
from enum import StrEnum

__all__ = ["DelayWatch", "Latency"]


class Latency(StrEnum):
    LEARNING = "learning"  # the baseline, or enough recent answers, not known yet
    CALM = "calm"
    SLOW = "slow"


class DelayWatch:
    def __init__(
        self,
        *,
        baseline_samples: int = 20,
        recent: int = 5,
        factor: float = 2.0,
        min_extra: float = 0.008,
    ) -> None:
        self._needed = baseline_samples
        self._first: list[float] = []
        self._recent: deque[float] = deque(maxlen=recent)
        self._factor = factor
        self._min_extra = min_extra
        self.baseline: float | None = None

    def answered(self, latency: float) -> Latency:
        if self.baseline is None:
            self._first.append(latency)
            if len(self._first) < self._needed:
                return Latency.LEARNING
            self.baseline = statistics.median(self._first)
            self._first.clear()
            return Latency.CALM
        self._recent.append(latency)
        if len(self._recent) < (self._recent.maxlen or 1):
            return Latency.LEARNING  # too few answers since the last judgement
        typical = statistics.median(self._recent)
        if typical > self.baseline * self._factor and typical > self.baseline + self._min_extra:
            return Latency.SLOW
        # a calm stretch faster than the first answers becomes the new baseline
        self.baseline = min(self.baseline, typical)
        return Latency.CALM

    def forget_recent(self) -> None:
        """After the rate was lowered, judge only answers to requests sent since."""
        self._recent.clear()
