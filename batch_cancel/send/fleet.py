"""One worker of a fleet that drains a PostgreSQL journal's job together.

The worker joins the job's ``workers`` table, feeds the sender with rows it
claims (leased, in small batches, so a dead worker strands few rows), and while
it runs, a heartbeat renews its leases and takes its share of the job's rate
(``journal/postgres.py`` says how shares never add up to more than the rate).
When nothing is left to claim it keeps watching until every row of the job has
an outcome: another worker's lease may still expire, and those rows are then
this worker's to resend with the same referenceId.

A heartbeat that cannot reach the database for half a lease stops the worker
(exit 3): past a full lease its rows would be claimed by the others, and
sending them here too would send them twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from batch_cancel.exceptions import JournalUnavailable, LeaseLost
from batch_cancel.send.outcomes import Record

if TYPE_CHECKING:
    from batch_cancel.journal.postgres import PgJournal
    from batch_cancel.send.pacer import Pacer

__all__ = ["FleetWorker"]

log = logging.getLogger("batch_cancel.send.fleet")


class FleetWorker:
    def __init__(self, journal: PgJournal, *, rate: float, batch: int, retry_timed_out: bool,
                 stop: asyncio.Event) -> None:  # fmt: skip
        self.journal = journal
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        self._rate = rate
        self._batch = max(1, batch)
        self._stop = stop
        self._started = time.time()
        self._retry_timed_out = retry_timed_out
        lease = journal.db.lease
        self.heartbeat_every = min(1.0, lease / 3)
        self._poll = min(0.5, lease / 4)
        self.share = 0.0
        self.claimed = 0
        self._last_beat = time.monotonic()

    async def join(self, pacer: Pacer) -> None:
        self.share = await asyncio.to_thread(self.journal.join, self.id, self._rate, pacer.set_rate)
        log.info("joined job %s as worker %s%s", self.journal.run_id, self.id,
                 f" (share of the rate: {self.share:g}/s)" if self._rate > 0 else "")  # fmt: skip

    async def heartbeat(self, pacer: Pacer) -> None:
        """Renew leases and the rate share until cancelled; stop the run if it cannot."""
        lease = self.journal.db.lease
        delay = self.heartbeat_every
        while True:
            await asyncio.sleep(delay)
            delay = self.heartbeat_every
            try:
                share = await asyncio.to_thread(self.journal.heartbeat, self.id, self._rate,
                                                pacer.set_rate)  # fmt: skip
            except LeaseLost:
                raise  # the send phase's task group ends the run (exit 3) naming it
            except Exception as exc:
                if time.monotonic() - self._last_beat > lease / 2:
                    raise JournalUnavailable(
                        f"journal {self.journal.db.display} unreachable for half a lease "
                        f"({lease / 2:g} s): this worker stops before its rows go to others ({exc})"
                    ) from exc
                log.warning("heartbeat failed, retrying: %s", exc)
                delay = min(0.2, self.heartbeat_every)  # again soon: the lease is running out
                continue
            self._last_beat = time.monotonic()
            if share != self.share:
                log.info("share of the job's rate now %g/s", share)
                self.share = share

    async def records(self, device_path: str | None) -> AsyncIterator[Record]:
        """Rows claimed for this worker, until every row of the job has an outcome."""
        before = self._started if self._retry_timed_out else None
        waiting = False
        while not self._stop.is_set():
            rows = await asyncio.to_thread(self.journal.claim, self.id, self._batch,
                                           retry_timed_out_before=before)  # fmt: skip
            if rows:
                waiting = False
                self.claimed += len(rows)
                for row in rows:
                    yield Record.from_journal(row, device_path)
                continue
            left = await asyncio.to_thread(self.journal.open_rows)
            if left == 0:
                return
            if not waiting:
                log.info("nothing left to claim; %d row(s) still in flight here or at other workers",
                         left)  # fmt: skip
                waiting = True
            await asyncio.sleep(self._poll)

    def leave(self, state: str) -> bool:
        """Leave the job; True when no other worker is still running it. When the journal
        cannot be reached, this worker is not the last (the others, or a later run, report)."""
        try:
            return self.journal.leave(self.id, state)
        except Exception as exc:
            log.warning("could not leave job %s cleanly (its leases expire on their own): %s",
                        self.journal.run_id, exc)  # fmt: skip
            return False
