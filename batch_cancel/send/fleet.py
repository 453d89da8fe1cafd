"""One worker of a fleet that drains a PostgreSQL journal's job together.

The worker joins the job's ``workers`` table, feeds the sender with rows it
claims (leased, in small batches, so a dead worker strands few rows), and while
it runs, a heartbeat renews its leases and takes its share of the job's rate
(``journal/postgres.py`` says how shares never add up to more than the rate).
When nothing is left to claim it keeps watching until every row of the job has
an outcome: another worker's lease may still expire, and those rows are then
this worker's to resend with the same referenceId.

**Bounded silence.** The worker keeps its own deadline on its monotonic clock:
the start of its last successful renewal plus (nine tenths of) a lease. The
moment it passes, sending is held (the pacer lets no request start), whether or
not the database call in progress has returned: past a full lease the rows may
be claimed by others, and sending them here too would send them twice. A renewal
that succeeds again opens the gate; one that finds the worker marked lost (its
rows were taken) stops it (exit 3, :class:`LeaseLost`). A database that cannot be
reached is ridden through (reconnecting, sending held) for up to ``max_outage``
seconds; past that the worker stops with exit 3 and one line saying so.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING

from batch_cancel.exceptions import JournalUnavailable, LeaseLost
from batch_cancel.log_once import OncePerInterval
from batch_cancel.send.outcomes import Record

if TYPE_CHECKING:
    from batch_cancel.journal.postgres import PgJournal
    from batch_cancel.send.pacer import Pacer

__all__ = ["DEADLINE_SHARE", "FleetWorker"]

log = logging.getLogger("batch_cancel.send.fleet")

# Sending is held from this share of a lease after the last renewal began: a request
# that starts just before must still reach GWS before the lease can run out.
DEADLINE_SHARE = 0.9


class FleetWorker:
    def __init__(self, journal: PgJournal, *, rate: float, batch: int, retry_timed_out_before: float | None,
                 stop: asyncio.Event, max_outage: float, keep_sent_for: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.journal = journal
        self.id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(2)}"
        self._rate = rate
        self._batch = max(1, batch)
        self._stop = stop
        self._retry_before = retry_timed_out_before
        self._max_outage = max_outage
        self._keep_sent_for = keep_sent_for
        self._clock = clock
        self.lease = journal.db.lease
        # planning is over: a worker's calls are small, and one that hangs (a link that
        # stopped forwarding) is ended after a lease (journal/postgres.py's watchdog)
        journal.call_limit = max(1.0, self.lease)
        self.heartbeat_every = min(1.0, self.lease / 3)
        self._poll = min(0.5, self.lease / 4)
        self.share = 0.0
        self.claimed = 0
        self.holds = 0  # how often the deadline passed and sending was held
        self.refused = 0  # rows whose writes the journal refused (no longer this worker's)
        self._pacer: Pacer | None = None
        self._deadline = -math.inf  # nothing may be sent before joining
        self._last_ok = clock()
        self.held = True
        self._held_since = clock()
        self._log = OncePerInterval(log)

    # -- the gate -------------------------------------------------------------------
    def _rate_for_pacer(self) -> float:
        return self.share if self._rate > 0 else math.inf

    def _apply(self, share: float) -> None:
        """A new share from the journal (called on its thread, maybe before its commit)."""
        self.share = share
        pacer = self._pacer
        if pacer is None or self.held:
            return
        pacer.set_rate(self._rate_for_pacer())
        if self._is_held():  # the gate closed meanwhile (on the loop's thread): it wins
            pacer.set_rate(0)

    def _is_held(self) -> bool:
        return self.held

    def _hold(self, why: str) -> None:
        if self.held:
            return
        self.held = True
        self._held_since = self._clock()
        self.holds += 1
        if self._pacer is not None:
            self._pacer.set_rate(0)
        log.warning("sending held: %s", why)

    def _renewed(self, began: float) -> None:
        self._last_ok = self._clock()
        self._deadline = began + DEADLINE_SHARE * self.lease
        if self.held and self._clock() < self._deadline:
            self.held = False
            if self._pacer is not None:
                self._pacer.set_rate(self._rate_for_pacer())
            if self.holds:
                log.info("lease renewed: sending again")

    def refused_rows(self, rows: Sequence[int]) -> None:
        """The journal refused writes for rows another worker holds now: stop sending at once
        (the next renewal says whether this worker was taken for lost)."""
        self.refused += len(rows)
        self._deadline = -math.inf
        self._hold(f"the journal refused {len(rows)} row(s) now held by another worker")

    # -- joining and renewing ---------------------------------------------------------
    def may_send(self) -> bool:
        """Asked by the pacer right before each request: within this worker's deadline."""
        return not self.held and self._clock() < self._deadline

    async def join(self, pacer: Pacer) -> None:
        self._pacer = pacer
        pacer.set_rate(0)  # held until the first renewal
        pacer.gate = self.may_send
        began = self._clock()
        self.share = await asyncio.to_thread(self.journal.join, self.id, self._rate, self._apply)
        self._renewed(began)
        log.info("joined job %s as worker %s (epoch %s)%s", self.journal.run_id, self.id,
                 self.journal.owner.epoch,
                 f", share of the rate: {self.share:g}/s" if self._rate > 0 else "")  # fmt: skip

    async def heartbeat(self, pacer: Pacer) -> None:
        """Renew leases and the rate share until cancelled, and hold sending whenever the
        worker's own deadline passes; stop the run past ``max_outage`` or when lost."""
        guard = asyncio.create_task(self._guard(), name="fleet-deadline")  # it never raises
        try:
            await self._beat()
        finally:
            guard.cancel()

    async def _guard(self) -> None:
        """Hold sending the moment the deadline passes (a database call may still hang)."""
        while True:
            now = self._clock()
            if now >= self._deadline:
                self._hold(f"no lease renewal for {now - self._last_ok:.1f} s (lease {self.lease:g} s); "
                           "the rows held here may go to other workers")  # fmt: skip
                await asyncio.sleep(0.05)
            else:
                await asyncio.sleep(min(0.05, self._deadline - now))

    async def _beat(self) -> None:
        delay = self.heartbeat_every
        while True:
            await asyncio.sleep(delay)
            delay = self.heartbeat_every
            began = self._clock()
            # renewals that succeed but come back too late to open the gate (a database call
            # slower than the deadline's margin) would keep this worker's rows forever while
            # it sends none of them: after a lease of that, its rows' leases are let run out
            stuck = self.held and began - self._held_since > self.lease
            try:
                share = await asyncio.to_thread(functools.partial(
                    self.journal.heartbeat, self.id, self._rate, self._apply, renew_rows=not stuck))
            except LeaseLost:
                self._hold("this worker was taken for lost")
                raise  # the send phase's task group ends the run (exit 3) naming it
            except Exception as exc:
                self._check_outage(exc)
                # never send what the journal cannot record (nor renew): held until it can
                self._hold(f"journal unreachable ({_one_line(exc)})")
                self._log.warning("fleet-heartbeat", "journal %s: heartbeat failed, retrying: %s",
                                  self.journal.db.display, _one_line(exc))  # fmt: skip
                delay = min(0.5, self.heartbeat_every)
                continue
            self._renewed(began)
            if share != self.share:
                log.info("share of the job's rate now %g/s", share)
            self.share = share

    def _check_outage(self, exc: BaseException) -> None:
        silent = self._clock() - self._last_ok
        if silent > self._max_outage:
            raise JournalUnavailable(
                f"journal {self.journal.db.display} unreachable for {silent:.0f} s (more than "
                f"--max-outage {self._max_outage:g} s): this worker stopped sending; "
                f"run it again to rejoin the job ({_one_line(exc)})"
            ) from None

    # -- claiming --------------------------------------------------------------------
    async def records(self, device_path: str | None) -> AsyncIterator[Record]:
        """Rows claimed for this worker, until every row of the job has an outcome."""
        waiting = False
        while not self._stop.is_set():
            if self.held:  # no claim while this worker cannot vouch for its leases
                await asyncio.sleep(self._poll)
                continue
            try:
                rows = await asyncio.to_thread(self.journal.claim, self.id, self._batch,
                                               retry_timed_out_before=self._retry_before)  # fmt: skip
                left = 1 if rows else await asyncio.to_thread(self.journal.open_rows)
            except Exception as exc:  # the heartbeat decides when an outage is too long
                self._log.warning("fleet-claim", "journal %s: claim failed, retrying: %s",
                                  self.journal.db.display, _one_line(exc))  # fmt: skip
                await asyncio.sleep(self._poll)
                continue
            if rows:
                waiting = False
                self.claimed += len(rows)
                for row in rows:
                    yield Record.from_journal(row, device_path)
                continue
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
            return self.journal.leave(self.id, state, keep_sent_for=self._keep_sent_for)
        except Exception as exc:
            log.warning("could not leave job %s cleanly (its leases expire on their own): %s",
                        self.journal.run_id, _one_line(exc))  # fmt: skip
            return False


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
