"""Buffers state changes and commits them to the journal in batches.

A commit per record would cap throughput at the disk's fsync rate; a batch
every few tens of milliseconds costs almost nothing and bounds what a crash can
forget to the records touched since the last commit. Those are records in
flight, which a resume sends again with the same referenceId.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from typing import Any

from batch_cancel.journal.store import Journal
from batch_cancel.send.record import Record

__all__ = ["Recorder"]


class Recorder:
    """Collects the latest state of each touched record plus its events."""

    def __init__(
        self,
        journal: Journal | None,
        *,
        interval: float = 0.05,
        max_buffer: int = 1000,
        clock: Callable[[], float],
    ) -> None:
        self._journal = journal
        self._interval = interval
        self._max_buffer = max_buffer
        self._clock = clock
        self._states: dict[int, tuple[Any, ...]] = {}
        self._events: list[tuple[Any, ...]] = []
        self.outcomes: Counter[str] = Counter()
        self.commits = 0

    def event(self, rec: Record, event: str, detail: str | None = None) -> None:
        self._states[rec.row] = rec.state()
        if rec.final and event == rec.status:
            self.outcomes[rec.status] += 1
        if self._journal is not None:
            self._events.append(
                (rec.row, self._clock(), event, rec.attempts, rec.http_status, rec.status_code,
                 detail),
            )  # fmt: skip
        if len(self._states) >= self._max_buffer:
            self.flush()

    def upgraded(self, rec: Record, previous: str) -> None:
        """A late acknowledgement turned a timed-out record into a cancelled one."""
        self.outcomes[previous] -= 1
        self.event(rec, rec.status, f"late acknowledgement (was {previous})")

    def flush(self) -> None:
        if not self._states and not self._events:
            return
        states, events = list(self._states.values()), self._events
        self._states, self._events = {}, []
        if self._journal is not None:
            self._journal.save_states(states, events)
        self.commits += 1

    async def run(self) -> None:
        """Commit periodically until cancelled (the caller flushes once more after)."""
        while True:
            await asyncio.sleep(self._interval)
            self.flush()
