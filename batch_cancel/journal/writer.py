"""The journal's single writer: state changes buffered, committed in batches, off the event loop.

A commit per record would cap throughput at the disk's fsync rate; a batch
every few tens of milliseconds costs almost nothing and bounds what a crash can
forget to the records touched since the last commit. Those are records in
flight, which a resume sends again with the same referenceId.

:class:`JournalWriter` owns one thread and the store connection opened on it:
every store call of the send phase (commits, and the reads of the next records
to send) runs there, one at a time, so a slow disk or a busy lock stalls that
thread and never the event loop (the workers, the CometD long poll).

:class:`Recorder` is the buffer. A batch leaves it only once committed: a commit
that fails puts its batch back (newer changes of the same records win) and is
retried; if the store stays unwritable for longer than ``stall_limit``,
:meth:`Recorder.run` raises :class:`JournalUnwritable`, which ends the run (exit 3).
From a failed commit until one succeeds the recorder is not :attr:`~Recorder.healthy`:
the senders start no POST meanwhile (what the journal cannot record is not sent).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from batch_cancel.exceptions import JournalUnwritable
from batch_cancel.journal.interface import SendStore
from batch_cancel.journal.rows import RowEvent, RowState, RowToSend, Status
from batch_cancel.log_once import OncePerInterval
from batch_cancel.send.outcomes import Record

__all__ = ["JournalWriter", "Recorder"]

log = logging.getLogger("batch_cancel.journal")

T = TypeVar("T")
_RETRY_PAUSE = 0.5  # between commits that fail at once (an I/O error, not a busy wait)


class JournalWriter:
    """One thread, one store connection opened on it; every call runs there in turn."""

    def __init__(self, open_store: Callable[[], SendStore], location: str) -> None:
        self.location = location
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="journal-writer")
        self._store: SendStore | None = None
        self._open_store = open_store

    def _call(self, fn: Callable[[SendStore], T]) -> T:
        if self._store is None:
            self._store = self._open_store()
        return fn(self._store)

    def submit(self, fn: Callable[[SendStore], T]) -> asyncio.Future[T]:
        return asyncio.wrap_future(self._pool.submit(self._call, fn))

    async def call(self, fn: Callable[[SendStore], T]) -> T:
        """Run ``fn(store)`` on the writer's thread. If the caller is cancelled meanwhile,
        the call still finishes (a commit is never cut in half) before it is re-raised."""
        future = self.submit(fn)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await _settle(future)
            raise

    async def to_send(self, *, after_row: int, limit: int, retry_timed_out: bool) -> list[RowToSend]:
        return await self.call(lambda s: s.to_send(after_row=after_row, limit=limit,
                                                   retry_timed_out=retry_timed_out))  # fmt: skip

    async def close(self) -> None:
        def close(store: SendStore) -> None:
            store.close()
            self._store = None

        if self._store is not None:
            with contextlib.suppress(Exception):
                await self.call(close)
        self._pool.shutdown(wait=False)


async def _settle(future: asyncio.Future[Any]) -> None:
    """Wait for a shielded future to finish, whatever else is cancelled meanwhile."""
    while not future.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait([future])


class Recorder:
    """Collects the latest state of each touched record plus its events."""

    def __init__(
        self,
        writer: JournalWriter | None,
        *,
        clock: Callable[[], float],
        monotonic: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        interval: float = 0.05,
        stall_limit: float = 300.0,
        high_water: int = 20_000,
        on_refused: Callable[[Sequence[int]], None] | None = None,
    ) -> None:
        self._writer = writer
        self._clock = clock
        self._monotonic = monotonic
        self._sleep = sleep
        self._interval = interval
        self._stall_limit = stall_limit
        self._high_water = high_water
        # the records touched since the last commit, by row: their state is read when
        # the batch is committed (the latest one is all a commit writes), not on every
        # change, which would build a row several times per record and keep one of them
        self._states: dict[int, Record] = {}
        self._events: list[RowEvent] = []
        self._room = asyncio.Event()
        self._room.set()
        # set while the last commit succeeded (or none was tried): the senders' gate
        self._healthy = asyncio.Event()
        self._healthy.set()
        self._failing_since: float | None = None
        self._log = OncePerInterval(log)
        self._unmatched: list[tuple[float, str | None, str, str]] = []
        self.outcomes: Counter[str] = Counter()
        self.commits = 0
        self.failed_commits = 0
        self.refused = 0  # state changes the store refused: rows this writer no longer owns
        self._on_refused = on_refused

    # -- what the matcher and the sender report ---------------------------------------
    # What the audit needs of a record is in its row (the latest state) and in the event
    # log: every attempt (``sent``), the outcome with its source, and whatever else made
    # the row what it is (retries, gap resends, late acks, late failures, retry rounds).
    # GWS's acceptance is not an event: the outcome implies it (a deadline starts only
    # then; the outcome's event carries the answer's HTTP status and statusCode), and the
    # record handle is a column of the row, written with the outcome's state.
    def event(self, rec: Record, event: str, detail: str | None = None) -> None:
        """A line of the record's event log, and its state."""
        self._states[rec.row] = rec
        if self._writer is not None:
            self._events.append(RowEvent(rec.row, self._clock(), event, rec.attempts,
                                         rec.http_status, rec.status_code, detail))  # fmt: skip
        if len(self._states) >= self._high_water:
            self._room.clear()

    def outcome(self, rec: Record, detail: str | None = None) -> None:
        """The record reached a final status (an event named after it), counted."""
        self.outcomes[rec.status] += 1
        self.event(rec, rec.status, detail)

    def touched(self, rec: Record) -> None:
        """The record's state changed and nothing for the event log (written at the next commit)."""
        self._states[rec.row] = rec
        if len(self._states) >= self._high_water:
            self._room.clear()

    def upgraded(self, rec: Record, previous: Status, detail: str) -> None:
        """A late acknowledgement turned a failed or timed-out record into a cancelled one."""
        self.outcomes[previous] -= 1
        self.outcome(rec, detail)

    def unmatched(self, channel: str | None, note: str, data: dict[str, Any]) -> None:
        """A notification that matched no row: kept with its time and channel."""
        if self._writer is not None:
            text = json.dumps(data, sort_keys=True, default=str)
            self._unmatched.append((self._clock(), channel, note, text))

    @property
    def buffered(self) -> int:
        """Records whose latest state is not committed yet."""
        return len(self._states)

    @property
    def has_room(self) -> bool:
        """False while too much is uncommitted (then :meth:`room` waits)."""
        return self._room.is_set()

    async def room(self) -> None:
        """Wait while too much is uncommitted (the disk is slower than the senders)."""
        await self._room.wait()

    @property
    def healthy(self) -> bool:
        """False from a failed commit until one succeeds."""
        return self._healthy.is_set()

    async def until_writable(self, timeout: float) -> None:
        """Wait (at most ``timeout``) until the journal is healthy and has room."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._healthy.wait()
                await self._room.wait()

    # -- committing ---------------------------------------------------------------------
    async def flush(self) -> None:
        """Commit what is buffered. A failed commit keeps its batch and raises."""
        if not self._states and not self._events and not self._unmatched:
            return
        states, events, unmatched = self._states, self._events, self._unmatched
        self._states, self._events, self._unmatched = {}, [], []
        committed = self._writer is None
        try:
            if self._writer is not None:
                batch = [rec.state() for rec in states.values()]

                def save(store: SendStore) -> Sequence[int]:
                    refused = store.save_states(batch, events)
                    if unmatched:
                        store.add_unmatched(unmatched)
                    return refused

                future = self._writer.submit(save)
                try:
                    await asyncio.shield(future)
                finally:
                    # cancelled while the commit runs on: learn how it ended, so the
                    # batch is neither lost nor written twice (the cancellation goes on)
                    await _settle(future)
                    committed = future.exception() is None
                if committed and future.result():
                    self._dropped(future.result())
        finally:
            if committed:
                self.commits += 1
                self._healthy.set()
            else:
                self._healthy.clear()
                # back in the buffer, under what changed meanwhile: the newer state wins
                states.update(self._states)
                self._states = states
                self._events = events + self._events
                self._unmatched = unmatched + self._unmatched
                self.failed_commits += 1
            if len(self._states) < self._high_water:
                self._room.set()

    def _dropped(self, rows: Sequence[int]) -> None:
        """Rows the store refused (fenced): dropped, never written again from here."""
        self.refused += len(rows)
        where = self._writer.location if self._writer is not None else "journal"
        log.error("journal %s: %d state change(s) refused: those rows are no longer this run's "
                  "(another worker or run holds them); dropped", where, len(rows))  # fmt: skip
        if self._on_refused is not None:
            self._on_refused(rows)

    async def _flush_or_give_up(self) -> None:
        started = self._monotonic()
        try:
            await self.flush()
        except Exception as exc:
            now = self._monotonic()
            # the stall began when the first failing commit did (it may have waited
            # out a busy timeout before failing)
            self._failing_since = self._failing_since if self._failing_since is not None else started
            stalled = now - self._failing_since
            where = self._writer.location if self._writer is not None else "journal"
            if stalled >= self._stall_limit:
                raise JournalUnwritable(
                    f"journal {where} could not be written for {stalled:.0f} s ({exc}); "
                    "sending stopped, resume with the same --state",
                    location=where,
                ) from exc
            self._log.warning("journal-commit", "journal %s: commit failed, retrying (%d state "
                              "changes kept): %s", where, len(self._states), exc)  # fmt: skip
            await self._sleep(_RETRY_PAUSE)
            return
        self._failing_since = None

    async def run(self) -> None:
        """Commit every ``interval`` until cancelled (the caller drains once more after)."""
        while True:
            await self._sleep(self._interval)
            await self._flush_or_give_up()

    async def drain(self, limit: float | None = None) -> bool:
        """Commit everything left, retrying a failing store for up to ``limit`` seconds
        (the stall limit by default); answers whether all of it was committed."""
        limit = self._stall_limit if limit is None else limit
        deadline = self._monotonic() + limit
        while True:
            try:
                await self.flush()
                if self.buffered or self._events or self._unmatched:
                    continue  # what arrived during that commit is written too
                return True
            except Exception as exc:
                if self._monotonic() >= deadline:
                    where = self._writer.location if self._writer is not None else "journal"
                    log.error("journal %s: %d state change(s) could not be written: %s",
                              where, len(self._states), exc)  # fmt: skip
                    return False
                await self._sleep(min(0.5, self._interval * 4))

    def pending_states(self) -> Sequence[RowState]:
        """What is buffered, not yet committed (for tests and diagnostics)."""
        return [rec.state() for rec in self._states.values()]
