"""Wires the moving parts of a sending run: session, ack channel, matcher, sender.

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
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from batch_cancel.config import GwsConfig, RunConfig
from batch_cancel.exceptions import ConfigError, JournalUnwritable, SystematicFailure, TransientError
from batch_cancel.gws.ack_channel import AckChannel
from batch_cancel.gws.network import route_for, trust_store
from batch_cancel.gws.session import GwsSession
from batch_cancel.journal.base import JournalBase
from batch_cancel.journal.rows import Status
from batch_cancel.journal.store import BUSY_TIMEOUT
from batch_cancel.journal.writer import JournalWriter, Recorder
from batch_cancel.send.breaker import Breaker, FailureKind
from batch_cancel.send.gc_pauses import fewer_gc_pauses
from batch_cancel.send.matcher import Matcher
from batch_cancel.send.pacer import Pacer
from batch_cancel.send.record import Record
from batch_cancel.send.sender import Sender, SenderSettings
from batch_cancel.send.supervision import background, one_error

if TYPE_CHECKING:
    from batch_cancel.journal.interface import SendStore
    from batch_cancel.send.fleet import FleetWorker

__all__ = ["Engine"]

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
        self._matcher: Matcher | None = None
        self._channel: AckChannel | None = None
        self._pacer: Pacer | None = None
        self._session: GwsSession | None = None
        self._started = time.monotonic()
        self.breaker = Breaker(config.breaker)

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
        session = GwsSession(self._gws, max_connections=cfg.concurrency + 2)
        self._session = session
        channel: AckChannel | None = None
        failed = True
        try:
            cometd_route = route_for(self._gws.notifications_url, self._gws, session.route.ssl)
            log.info("GWS %s: proxy %s; CometD proxy %s; trust store %s", self._gws.base_url,
                     session.route.proxy_shown, cometd_route.proxy_shown, trust_store(self._gws))  # fmt: skip
            await session.login_within(cfg.max_outage)
            log.info("logged in to %s as %s", self._gws.base_url, self._gws.credentials.username)
            device = await self._device_path(session, writer)
            run_id = await writer.call(lambda s: s.get_meta("run_id"))
            sender_ref: list[Sender] = []
            matcher = Matcher(
                operation=cfg.defaults.operation, ack_timeout=cfg.ack_timeout, recorder=recorder,
                clock=time.monotonic, wall=time.time, resend=lambda r: sender_ref[0].resend(r),
                max_attempts=cfg.max_attempts, on_latency=self._on_latency,
                on_outcome=self._on_outcome, on_unmatched=recorder.unmatched,
                ref_prefix=f"bc-{run_id}-" if run_id else None,
            )  # fmt: skip
            self._matcher = matcher
            channel = AckChannel(
                self._gws.notifications_url,
                channels=self._gws.ack_channels,
                headers=session.auth_headers,
                on_messages=matcher.on_messages,
                route=cometd_route,
                on_state=self._on_channel_state,
            )
            self._channel = channel
            await channel.start(timeout=min(60.0, cfg.max_outage), supervise=False)
            log.info("subscribed to %s", ", ".join(self._gws.ack_channels))
            pacer = Pacer(cfg.rate, clock=time.monotonic, sleep=asyncio.sleep,
                          adaptive=cfg.adaptive_rate)  # fmt: skip
            self._pacer = pacer
            sender = Sender(
                SenderSettings(cfg.defaults.operation, cfg.concurrency, cfg.max_attempts,
                               cfg.max_outage, self._gws.request_timeout, grace=cfg.grace),
                session=session, channel=channel, matcher=matcher, recorder=recorder,
                pacer=pacer, stop=self._stop, clock=time.monotonic, wall=time.time,
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
            # whatever ended the run, what is buffered goes to the journal (a store
            # that is failing already gets one more try, not the whole stall limit)
            drained = await recorder.drain(0.0 if failed else None)
            if channel is not None:
                await channel.close()
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
            self.breaker.success()
        elif rec.status == Status.FAILED:
            kind = FailureKind(rec.status_code if rec.status_code else None, rec.error or "failed")
            if self.breaker.failure(kind):
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
            await sender.run(fleet.records(device) if fleet is not None else self._records(writer, device))
            if self._stop.is_set() and self._matcher is not None:
                await self._grace(self._matcher, since=sender.stopped_at)
            for task in helpers:
                task.cancel()

    async def _records(self, writer: JournalWriter, device: str | None) -> AsyncIterator[Record]:
        """The records with no outcome yet, read in batches on the writer's thread."""
        after = 0
        while batch := await writer.to_send(after_row=after, limit=_READ_BATCH,
                                            retry_timed_out=self._config.retry_timed_out):  # fmt: skip
            for row in batch:
                yield Record.from_journal(row, device)
            after = batch[-1].row

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
        if self._matcher is not None:
            self._matcher.channel_changed(up)
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

    async def _grace(self, matcher: Matcher, since: float | None) -> None:
        # one grace from the moment the senders saw the stop, shared by the requests
        # still unanswered then (Sender) and the acks still awaited (here)
        deadline = (since if since is not None else time.monotonic()) + self._config.grace
        while matcher.awaiting() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        left = matcher.awaiting()
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
        out["awaiting"] = self._matcher.awaiting() if self._matcher else 0
        out["requests"] = self._sender.requests if self._sender else 0
        return out

    def gauges(self) -> dict[str, float]:
        """Figures of this instant (for --metrics-file): in flight, awaiting, the rate limit."""
        limit = self._pacer.current if self._pacer is not None else self._config.rate
        return {
            "in_flight": float(self._sender.in_flight) if self._sender else 0.0,
            "awaiting_ack": float(self._matcher.awaiting()) if self._matcher else 0.0,
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
            if pacer.adaptive:
                # inf (unlimited until the first throttling) is not JSON: report 0 as --rate does
                def finite(rate: float) -> float:
                    return round(rate, 2) if math.isfinite(rate) else 0.0

                out.update(adaptive_rate=finite(pacer.current), adaptive_min_rate=finite(pacer.minimum),
                           adaptive_ceiling=finite(pacer.ceiling),
                           adaptive_decreases=pacer.decreases,
                           delay_decreases=pacer.delay_decreases,
                           calm_latency_ms=round((pacer.delays.baseline or 0.0) * 1000, 3))  # fmt: skip
        if self._channel is not None:
            out.update(cometd_handshakes=self._channel.handshakes,
                       cometd_reconnects=self._channel.reconnects)  # fmt: skip
        if self._matcher is not None:
            out.update(duplicate_acks=self._matcher.duplicate_acks,
                       gap_resends=self._matcher.gap_resends,
                       unmatched_notifications=self._matcher.unmatched,
                       record_handles=self._matcher.record_handles,
                       error_events=self._matcher.error_events)  # fmt: skip
        if self._session is not None:
            out.update(logins=self._session.logins)
        return out

