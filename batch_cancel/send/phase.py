"""Wires the moving parts of a sending run: session, ack channel, outcomes, sender.

Order matters: log in, subscribe to the ack channel, and only then send; stop
sending while the channel is down; after a signal, wait a short grace for
outstanding acknowledgements before returning.

Lifetimes: the senders and the tasks they rely on (journal writer, watchdog,
CometD supervisor, progress, anything passed ``alongside``) share one
``asyncio.TaskGroup``; if one fails, the others are cancelled at once and the
run ends with one error naming it (exit 3). Whatever ended it, what the recorder
holds is committed before returning, so the journal stays resumable.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from batch_cancel.config import GwsConfig, RunConfig
from batch_cancel.exceptions import (
    AbortedError,
    BackgroundTaskFailed,
    BatchCancelError,
    ConfigError,
    JournalUnwritable,
    SystematicFailure,
    TransientError,
)
from batch_cancel.gws.ack_channel import AckChannel
from batch_cancel.gws.network import route_for, trust_store
from batch_cancel.gws.session import GwsSession
from batch_cancel.journal.base import JournalBase
from batch_cancel.journal.rows import Status
from batch_cancel.journal.store import BUSY_TIMEOUT
from batch_cancel.journal.writer import JournalWriter, Recorder
from batch_cancel.send.breaker import Breaker, FailureKind, Verdict
from batch_cancel.send.controller import Controller
from batch_cancel.send.outcomes import Outcomes, Record
from batch_cancel.send.pacer import Pacer
from batch_cancel.send.sender import Sender, SenderSettings

if TYPE_CHECKING:
    from batch_cancel.journal.interface import SendStore
    from batch_cancel.send.fleet import FleetWorker

__all__ = ["Engine", "background", "fewer_gc_pauses", "one_error"]

log = logging.getLogger("batch_cancel")

_READ_BATCH = 2000  # records read from the journal at a time


class Engine:
    def __init__(
        self,
        config: RunConfig,
        gws: GwsConfig,
        journal: JournalBase,
        *,
        stop: asyncio.Event,
        progress: Callable[[dict[str, int]], None] | None = None,
        on_latency: Callable[[float], None] | None = None,
        fleet: FleetWorker | None = None,
    ) -> None:
        self._config = config
        self._gws = gws
        self._journal = journal
        self._stop = stop
        self._progress = progress
        self._on_latency = on_latency
        self._fleet = fleet  # a worker of a PostgreSQL job (send/fleet.py), or None
        self.interrupted = False
        self._sender: Sender | None = None
        self._outcomes: Outcomes | None = None
        self._channel: AckChannel | None = None
        self._pacer: Pacer | None = None
        self._controls: Controller | None = None
        self._session: GwsSession | None = None
        self._started = time.monotonic()
        self.breaker = Breaker(config.breaker)
        # the breaker's probes: how many are wanted, rows sent ahead of their turn, how far
        # the list is read (None: all of it) and its last row
        self._probes_wanted = 0
        self._probed: set[int] = set()
        self._read_up_to: int | None = 0
        self._last_row = 0

    async def run(self, *, journaling: bool = True,
                  alongside: Mapping[str, Callable[[], Awaitable[None]]] | None = None) -> None:
        """Send every record with no outcome yet. ``alongside``: more background work
        (by name) to run in the send phase's task group while records are sent."""
        with fewer_gc_pauses():
            await self._run(journaling, alongside)

    async def _run(self, journaling: bool,
                   alongside: Mapping[str, Callable[[], Awaitable[None]]] | None) -> None:  # fmt: skip
        cfg = self._config
        # the send phase's journal I/O runs on the writer's thread, over a connection of its own
        path = self._journal.location
        writer = JournalWriter(self._store_opener(), path)
        recorder = Recorder(writer if journaling else None, clock=time.time,
                            monotonic=time.monotonic, stall_limit=cfg.max_outage,
                            on_refused=self._fleet.refused_rows if self._fleet else None)  # fmt: skip
        self._recorder = recorder
        session = GwsSession(self._gws, max_connections=cfg.concurrency + 2,
                             write_gate=self._fleet.may_send if self._fleet else None)  # fmt: skip
        self._session = session
        channel: AckChannel | None = None
        failed = True
        try:
            cometd_route = route_for(self._gws.notifications_url, self._gws, session.route.ssl)
            log.info("GWS %s: proxy %s; CometD proxy %s; trust store %s; record POSTs on %s",
                     self._gws.base_url, session.route.proxy_shown, cometd_route.proxy_shown,
                     trust_store(self._gws), session.record_client)  # fmt: skip
            await session.login_within(cfg.max_outage)
            log.info("logged in to %s as %s", self._gws.base_url, self._gws.credentials.username)
            device = await self._device_path(session, writer)
            run_id = await writer.call(lambda s: s.get_meta("run_id"))
            sender_ref: list[Sender] = []
            outcomes = Outcomes(
                operation=cfg.defaults.operation, ack_timeout=cfg.ack_timeout, recorder=recorder,
                clock=time.monotonic, wall=time.time, resend=lambda r: sender_ref[0].resend(r),
                max_attempts=cfg.max_attempts, on_latency=self._on_latency,
                on_outcome=self._on_outcome, on_unmatched=recorder.unmatched,
                ref_prefix=f"bc-{run_id}-" if run_id else None,
            )  # fmt: skip
            self._outcomes = outcomes
            channel = AckChannel(
                self._gws.notifications_url,
                channels=self._gws.ack_channels,
                headers=session.auth_headers,
                on_messages=outcomes.on_messages,
                route=cometd_route,
                http=lambda: session.http_for(cometd_route),  # the long polls ride on the REST pool
                on_state=self._on_channel_state,
                poll_timeout=self._gws.poll_timeout,
                poll_margin=self._gws.poll_margin,
                # outcomes published while the Bayeux session was lost: rows accepted since
                # are asked again under their referenceId, not expired
                on_gap=lambda gap: outcomes.gap(gap.since),
            )
            self._channel = channel
            outcomes.heard_since = channel.heard_since
            await channel.start(timeout=min(60.0, cfg.max_outage), supervise=False)
            log.info("subscribed to %s", ", ".join(self._gws.ack_channels))
            pacer = Pacer(cfg.rate, clock=time.monotonic, sleep=asyncio.sleep,
                          adaptive=cfg.adaptive_rate)  # fmt: skip
            self._pacer = pacer
            controls = self._controls = Controller(pacer, clock=time.monotonic)
            sender = Sender(
                SenderSettings(cfg.defaults.operation, cfg.concurrency, cfg.max_attempts,
                               cfg.max_outage, self._gws.request_timeout, grace=cfg.grace),
                session=session, channel=channel, outcomes=outcomes, recorder=recorder,
                pacer=pacer, controller=controls, stop=self._stop, clock=time.monotonic, wall=time.time,
            )  # fmt: skip
            sender_ref.append(sender)
            self._sender = sender
            try:
                await self._send(sender, recorder, session, channel, writer, device,
                                 dict(alongside or {}))
            except BaseExceptionGroup as group:
                raise one_error(group) from None
            failed = False
            if self._stop.is_set():
                if self.breaker.tripped is not None:
                    # a clean stop: what is buffered is drained in full before it is raised
                    raise SystematicFailure(self.breaker.describe())
                self.interrupted = True
        finally:
            # no outcome may arrive once the last commit starts: the ack channel stops
            # first, then whatever ended the run, everything buffered goes to the journal
            # (a store that is failing already gets one more try, not the whole stall limit)
            if channel is not None:
                await channel.close()
            drained = await recorder.drain(0.0 if failed else None)
            # after success, failure, abort or a signal alike: log the agent out again
            with contextlib.suppress(Exception):
                await session.end_cc_session()
            await session.aclose()
            await writer.close()
            if self._progress is not None:
                self._progress(self.counts())
        if not drained:
            raise JournalUnwritable(
                f"journal {path}: the last state changes could not be written; "
                "resume with the same --state (records in flight are sent again)",
                location=str(path),
            )

    def _store_opener(self) -> Callable[[], SendStore]:
        """How the writer's thread opens its own connection to the same journal."""
        # one statement never waits on a lock for longer than the stall the run allows
        return self._journal.reopen(min(BUSY_TIMEOUT, self._config.max_outage / 2))

    def _on_outcome(self, rec: Record) -> None:
        """Every row's outcome goes past the breaker for systematic failure."""
        if rec.status == Status.CANCELLED:
            self.breaker.success(probe=rec.probe)
            return
        kind = FailureKind(rec.error_code, rec.error or str(rec.status))
        if rec.status == Status.TIMED_OUT and rec.doubt and kind.per_record:
            # 'Record not found' for a row that may already be cancelled is what GWS answers
            # a repeat of a done request (--retry-timed-out): no sign of a wrong list
            return
        verdict = self.breaker.failure(kind, probe=rec.probe)
        if verdict is Verdict.PROBE:
            log.warning("breaker: %d rows in a row failed with %r, which may be about those numbers "
                        "alone: asking %d rows from elsewhere in the list first",
                        self.breaker.threshold, kind.text, self.breaker.probes)  # fmt: skip
            if self._read_up_to is None:  # the whole list is read: nothing elsewhere to ask
                verdict = self.breaker.nothing_to_probe()
            else:
                self._probes_wanted = self.breaker.probes
        if verdict is Verdict.TRIP:
            self._trip()

    def _trip(self) -> None:
        log.error("breaker: %s", self.breaker.describe())
        self._stop.set()

    async def _send(self, sender: Sender, recorder: Recorder, session: GwsSession,
                    channel: AckChannel, writer: JournalWriter, device: str | None,
                    alongside: dict[str, Callable[[], Awaitable[None]]]) -> None:
        """The senders, and beside them the tasks they rely on, in one task group:
        if one of those fails, the run ends at once with an error naming it."""
        async with asyncio.TaskGroup() as group:
            helpers = [
                group.create_task(background("journal writer", recorder.run()),
                                  name="journal-writer"),
                group.create_task(background("watchdog", self._watchdog(session, channel)),
                                  name="watchdog"),
                group.create_task(background("CometD supervisor", channel.supervise()),
                                  name="cometd-supervisor"),
            ]  # fmt: skip
            if self._progress is not None:
                helpers.append(group.create_task(
                    background("progress display", self._report_progress()), name="progress"))
            for name, work in alongside.items():
                helpers.append(group.create_task(background(name, work()), name=name))
            fleet = self._fleet
            if fleet is not None:
                assert self._pacer is not None
                await fleet.join(self._pacer)
                helpers.append(group.create_task(
                    background("fleet heartbeat", fleet.heartbeat(self._pacer)), name="fleet-heartbeat"))
            if fleet is not None:
                self._read_up_to = None  # a fleet worker sends only the rows it claimed: no probes
                await sender.run(fleet.records(device))
            else:
                # the list's extent, for the breaker's probes from elsewhere in it
                self._last_row = sum(self._journal.counts().values())
                await sender.run(self._records(writer, device))
            if self._stop.is_set() and self._outcomes is not None:
                await self._grace(self._outcomes, since=sender.stopped_at)
            for task in helpers:
                task.cancel()

    async def _records(self, writer: JournalWriter, device: str | None) -> AsyncIterator[Record]:
        """The records with no outcome yet, read in batches on the writer's thread, in
        row order; rows the breaker asked for ahead of their turn are not sent twice."""
        after = 0
        while batch := await writer.to_send(after_row=after, limit=_READ_BATCH,
                                            retry_timed_out=self._config.retry_timed_out):  # fmt: skip
            for row in batch:
                # where the list is sent up to: probes come from the rows after it (a batch
                # read ahead is not sent yet, so its rows count as elsewhere)
                self._read_up_to = row.row
                if self._probes_wanted:
                    await self._probe(writer, device)
                if row.row not in self._probed:
                    yield Record.from_journal(row, device)
            after = batch[-1].row
        self._read_up_to = None  # everything is read: nothing is left elsewhere
        if self._probes_wanted:
            await self._probe(writer, device)

    async def _probe(self, writer: JournalWriter, device: str | None) -> None:
        """Send rows from elsewhere in the list (spread over what is not read yet) ahead of
        their turn, for the breaker to tell a bad block of numbers from a wrong list."""
        wanted, self._probes_wanted = self._probes_wanted, 0
        start, end = self._read_up_to, self._last_row
        found: list[Record] = []
        if start is not None and end > start:
            step = max(1, (end - start) // (wanted + 1))
            for i in range(1, wanted + 1):
                rows = await writer.to_send(after_row=start + i * step, limit=1,
                                            retry_timed_out=self._config.retry_timed_out)  # fmt: skip
                if rows and rows[0].row not in self._probed:
                    self._probed.add(rows[0].row)
                    found.append(Record.from_journal(rows[0], device))
        if len(found) < wanted:
            # too few rows elsewhere to tell: the streak stands for the list
            if self.breaker.nothing_to_probe() is Verdict.TRIP:
                self._trip()
            return
        assert self._sender is not None
        for rec in found:
            rec.probe = True
            self._sender.resend(rec)

    async def _device_path(self, session: GwsSession, writer: JournalWriter) -> str | None:
        if self._config.defaults.device_path:
            return self._config.defaults.device_path
        # a fleet's workers may log in as different users: each uses its own user's device
        # (one worker's saved device would be refused for another user's session)
        shared = self._fleet is not None
        saved = None if shared else await writer.call(lambda s: s.get_meta("device_path"))
        if saved:
            return str(saved)
        devices = await session.devices()
        if not devices or not devices[0].get("id"):
            raise ConfigError("no --device-path given and GWS lists no device for this user")
        path = f"/devices/{devices[0]['id']}"
        log.info("no device path given: using the user's first device %s", path)
        if not shared:
            await writer.call(lambda s: s.set_meta(device_path=path))
        return path

    def _on_channel_state(self, up: bool, reason: str) -> None:
        if self._outcomes is not None:
            self._outcomes.channel_changed(up)
        if up:
            log.info("CometD subscription active (%s): sending", reason)
        else:
            log.info("CometD subscription lost (%s): sending paused", reason)

    async def _watchdog(self, session: GwsSession, channel: AckChannel) -> None:
        """While the ack channel is down, make sure the HTTP session it rides on is alive."""
        while True:
            await asyncio.sleep(1.0)
            if channel.up.is_set() or channel.outage() < 2.0:
                continue
            generation = session.generation
            with contextlib.suppress(TransientError):
                if not await session.check():
                    await session.relogin(generation)

    async def _grace(self, outcomes: Outcomes, since: float | None) -> None:
        # one grace from the moment the senders saw the stop, shared by the requests
        # still unanswered then (Sender) and the acks still awaited (here)
        deadline = (since if since is not None else time.monotonic()) + self._config.grace
        while outcomes.awaiting() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        left = outcomes.awaiting()
        if left:
            log.info("interrupted: %d record(s) still awaiting an outcome stay pending", left)

    async def _report_progress(self) -> None:
        assert self._progress is not None
        while True:
            self._progress(self.counts())
            await asyncio.sleep(0.5)

    def counts(self) -> dict[str, int]:
        recorder: Recorder | None = getattr(self, "_recorder", None)  # set when run() starts
        out = dict(recorder.outcomes) if recorder is not None else {}
        out["awaiting"] = self._outcomes.awaiting() if self._outcomes else 0
        out["requests"] = self._sender.requests if self._sender else 0
        return out

    def gauges(self) -> dict[str, float]:
        """Figures of this instant (for --metrics-file): in flight, awaiting, the rate limit."""
        limit = self._pacer.current if self._pacer is not None else self._config.rate
        return {
            "in_flight": float(self._sender.in_flight) if self._sender else 0.0,
            "awaiting_ack": float(self._outcomes.awaiting()) if self._outcomes else 0.0,
            "rate_limit": limit if math.isfinite(limit) else 0.0,
        }

    def stats(self) -> dict[str, float]:
        s = self._sender
        out: dict[str, float] = {}
        if s is not None:
            span = (s.last_request or 0) - (s.first_request or 0)
            out.update(
                requests=s.requests, retries=s.retries, relogins=s.relogins,
                unanswered=s.unanswered, lone_failures=s.lone_failures,
                post_p50_ms=round(s.post_latency_ms.quantile(0.5) or 0.0, 3),
                post_p95_ms=round(s.post_latency_ms.quantile(0.95) or 0.0, 3),
                peak_in_flight=s.peak_in_flight,
                achieved_rate=round(s.requests / span, 2) if span > 0 else 0.0,
            )  # fmt: skip
        pacer = self._pacer
        if pacer is not None:
            out.update(throttle_pauses=pacer.pauses, paused_s=round(pacer.paused_seconds, 3),
                       probes=pacer.probes)  # fmt: skip
            controls = self._controls
            if controls is not None and controls.adaptive:
                # inf (unlimited until the first throttling) is not JSON: report 0 as --rate does
                def finite(rate: float) -> float:
                    return round(rate, 2) if math.isfinite(rate) else 0.0

                out.update(adaptive_rate=finite(controls.current), adaptive_min_rate=finite(controls.minimum),
                           adaptive_ceiling=finite(controls.ceiling),
                           adaptive_decreases=controls.decreases,
                           delay_decreases=controls.delay_decreases,
                           calm_latency_ms=round((controls.delays.baseline or 0.0) * 1000, 3))  # fmt: skip
        if self._channel is not None:
            out.update(cometd_handshakes=self._channel.handshakes,
                       cometd_reconnects=self._channel.reconnects)  # fmt: skip
        if self._outcomes is not None:
            out.update(duplicate_acks=self._outcomes.duplicate_acks,
                       gap_resends=self._outcomes.gap_resends,
                       unmatched_notifications=self._outcomes.unmatched,
                       record_handles=self._outcomes.record_handles,
                       error_events=self._outcomes.error_events)  # fmt: skip
        if self._session is not None:
            out.update(logins=self._session.logins)
        return out


# -- fewer garbage-collector pauses while records are sent -------------------------------------
# CPython's cyclic collector runs its youngest generation every 700 new container
# objects. A POST and its acknowledgement allocate a few dozen (aiohttp's request and
# response, the body, the record's state and events), and each collection also walks
# what survived into the older generations: by the time records are sent, the
# process holds pyarrow's, aiohttp's and the plan's objects too. Measured at 64 in
# flight: about 0.04 ms of CPU per record, a tenth of the client's time, went to the
# collector, against a twentieth of that for a bare aiohttp script.
#
# So, for the send phase: after one full collection, everything alive at its start
# (modules, the plan) is moved out of the collector's sight (``gc.freeze``), and the youngest generation is
# collected every ``young`` allocations instead of 700. Reference counting still
# frees almost everything at once; only cycles (an exception and its traceback, a
# task and its callbacks) wait a little longer, a bounded few megabytes. Both are
# undone when the last send phase in the process ends, so a host process (an
# Airflow worker calling ``run_job``) gets its own settings back.

_YOUNG = 20_000

_lock = threading.Lock()
_depth = 0
_saved: tuple[int, int, int] | None = None


@contextmanager
def fewer_gc_pauses(young: int = _YOUNG) -> Iterator[None]:
    """Within: the collector's youngest threshold is ``young`` and older objects are frozen."""
    global _depth, _saved
    with _lock:
        if _depth == 0:
            threshold = gc.get_threshold()
            _saved = (threshold[0], threshold[1], threshold[2])
            # the garbage of planning goes now (once, before the first POST), not frozen with the rest
            gc.collect()
            gc.freeze()
            gc.set_threshold(max(young, _saved[0]), _saved[1], _saved[2])
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _saved is not None:
                gc.set_threshold(*_saved)
                gc.unfreeze()
                _saved = None


# -- task lifetimes ----------------------------------------------------------------------------
# Task lifetimes: a background task's failure named, and an ExceptionGroup reduced to one error.
#
# The send phase and the sender run their tasks in :class:`asyncio.TaskGroup`s, so
# a task that fails cancels its siblings at once. What the CLI maps to an exit
# code is one error, though: the first :class:`AbortedError` (exit 3) of the
# group, or else its first other error. A cancellation is never turned into an
# error here, nor swallowed.

async def background(name: str, work: Awaitable[None]) -> None:
    """Run ``work``; an unexpected failure becomes :class:`BackgroundTaskFailed` naming it."""
    try:
        await work
    except BatchCancelError:
        raise  # already says what went wrong (e.g. JournalUnwritable names the journal)
    except Exception as exc:
        raise BackgroundTaskFailed(name, exc) from exc


def one_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error that stands for the group: aborts first, then our errors, then the rest."""
    leaves = list(_leaves(group))
    for kind in (AbortedError, BatchCancelError, Exception):
        for error in leaves:
            if isinstance(error, kind):
                return error
    return leaves[0]


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]
