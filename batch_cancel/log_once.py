"""Log a recurring event once, then at most once per interval with a count.

Thousands of retries during an outage must not flood an Airflow log, yet each
kind of event must be visible with its reason the first time it happens.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["OncePerInterval"]


class OncePerInterval:
    def __init__(
        self, logger: logging.Logger, interval: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def info(self, kind: str, message: str, *args: object) -> None:
        """``kind`` groups events; the count since the last line is appended."""
        self._emit(logging.INFO, kind, message, *args)

    def warning(self, kind: str, message: str, *args: object) -> None:
        self._emit(logging.WARNING, kind, message, *args)

    def _emit(self, level: int, kind: str, message: str, *args: object) -> None:
        self._counts[kind] = self._counts.get(kind, 0) + 1
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            return
        self._last[kind] = now
        count = self._counts.pop(kind)
        suffix = f" ({count} since the last such line)" if last is not None and count > 1 else ""
        from batch_cancel.log_records import event

        self._log.log(level, message + suffix, *args, extra=event(kind, count=count))
