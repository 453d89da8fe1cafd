"""Concurrent, paced CancelRecord requests, each retried in one plain loop.

``concurrency`` workers share one queue. Each request waits, in order, for the
ack channel to be subscribed (a request sent while it is down would have its
outcome lost), for any throttling pause, and for a rate token. The referenceId
is registered (send/outcomes.py) and the attempt journaled before the POST; the
POST and the row's outcome are awaited together, so a row whose outcome came first
does not wait on a hung request. What each failed attempt means (not processed,
refused, may have been processed) goes to the row's transitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from batch_cancel.exceptions import (
    GwsUnavailable,
    NotificationChannelLost,
    NotWritten,
    RequestError,
    RequestRejected,
    SessionExpired,
    TransientError,
)
from batch_cancel.gws.session import Answer
from batch_cancel.journal.writer import Recorder
from batch_cancel.log_once import OncePerInterval
from batch_cancel.report.charts import LatencyHistogram
from batch_cancel.send.controller import Controller
from batch_cancel.send.outcomes import Outcomes, Record
from batch_cancel.send.pacer import Pacer

__all__ = ["Channel", "Sender", "SenderSettings", "Session"]

log = logging.getLogger("batch_cancel.send.sender")

# When the outcome came before the POST's answer: how long the answer may still take.
_ANSWER_AFTER_OUTCOME = 1.0
# A session error does not count as an attempt (GWS did nothing with the
# request), but a record cannot bounce between logins forever.
_MAX_SESSION_RETRIES = 10


class Session(Protocol):
    """What the sender needs of the GWS session (:class:`batch_cancel.gws.session.GwsSession`)."""

    @property
    def generation(self) -> int: ...

    async def post_record(self, body: Mapping[str, Any]) -> Answer: ...

    async def relogin(self, seen_generation: int) -> None: ...


class Channel(Protocol):
    """What the sender needs to know of the ack channel."""

    @property
    def up(self) -> asyncio.Event: ...

    def outage(self) -> float: ...


@dataclass(frozen=True)
class SenderSettings:
    operation: str
    concurrency: int
    max_attempts: int
    max_outage: float
    request_timeout: float = 15.0
    # after a stop (a signal), how long requests already sent may still take to be
    # answered; past it they are abandoned and stay in flight, for a resume to send
    # again with the same referenceId (a hung POST must not hold a stop for a whole
    # --request-timeout: a scheduler's kill would follow)
    grace: float = 2.0


class Sender:
    def __init__(
        self,
        settings: SenderSettings,
        *,
        session: Session,
        channel: Channel,
        outcomes: Outcomes,
        recorder: Recorder,
        pacer: Pacer,
        controller: Controller | None = None,
        stop: asyncio.Event,
        clock: Callable[[], float],
        wall: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self._rng = rng or random.Random()
        self._s = settings
        self._session = session
        self._channel = channel
        self._outcomes = outcomes
        self._recorder = recorder
        self._pacer = pacer
        # the adaptive controls (failure clusters, delay watch, AIMD) decide from each answer
        self._controls = controller or Controller(pacer, clock=clock)
        self._stop = stop
        self._clock = clock
        self._wall = wall
        self._sleep = sleep
        self._queue: asyncio.Queue[Record] = asyncio.Queue(maxsize=settings.concurrency * 4)
        self._retry: asyncio.Queue[Record] = asyncio.Queue()
        self._fed = False
        self._changed = asyncio.Event()  # a record to take, or the run may be over
        self._tick_interval = 0.05
        self._unreachable_since: float | None = None
        self.in_flight = 0
        self.peak_in_flight = 0
        self.retries = 0
        self._events = OncePerInterval(log)
        self.relogins = 0
        self.requests = 0
        self.first_request: float | None = None
        self.last_request: float | None = None
        self.unanswered = 0
        self.lone_failures = 0
        self.post_latency_ms = LatencyHistogram()  # POST -> its HTTP answer, answered ones
        self.stopped_at: float | None = None  # when the senders saw the stop (self._clock)
        self.not_written = 0  # POSTs the fleet's write fence stopped before they were written
        self.abandoned = 0  # requests still unanswered when the grace after a stop ran out

    def resend(self, rec: Record) -> None:
        self._retry.put_nowait(rec)
        self._changed.set()

    async def run(self, records: AsyncIterable[Record]) -> None:
        """Send every record; return when each one has an outcome (or on stop).

        The workers, the feeder and the ticker share one task group: if any of them
        fails, the others are cancelled at once and the error is raised (in an
        ExceptionGroup; the send phase unwraps it).
        """
        async with asyncio.TaskGroup() as group:
            feeder = group.create_task(self._feed(records), name="sender-feed")
            ticker = group.create_task(self._tick(), name="sender-tick")
            workers = [group.create_task(self._worker(), name=f"sender-{i}")
                       for i in range(self._s.concurrency)]  # fmt: skip
            busy = await self._until_done_or_stopped(workers)
            if busy:
                await self._abandon_after_grace(busy)
            # after a stop the feeder may be blocked on a full queue nobody drains
            feeder.cancel()
            ticker.cancel()

    async def _until_done_or_stopped(self, workers: list[asyncio.Task[None]]) -> set[asyncio.Task[None]]:
        """Wait for every worker, or for the stop: answer the workers still busy then."""
        stopping = asyncio.ensure_future(self._stop.wait())
        busy: set[asyncio.Task[None]] = set(workers)
        try:
            while busy and not stopping.done():
                await asyncio.wait({*busy, stopping}, return_when=asyncio.FIRST_COMPLETED)
                busy = {task for task in busy if not task.done()}
        finally:
            stopping.cancel()
        if busy:
            self.stopped_at = self._clock()
        return busy

    async def _abandon_after_grace(self, busy: set[asyncio.Task[None]]) -> None:
        """After a stop no request starts; those already sent get the grace to be
        answered. A cancelled one stays SENT in the journal: GWS may have processed
        it, so a resume sends it again with the same referenceId, as after a crash."""
        _, late = await asyncio.wait(busy, timeout=self._s.grace)
        if not late:
            return
        self.abandoned = self.in_flight
        for task in late:
            task.cancel()
        await asyncio.wait(late)
        if self.abandoned:
            log.warning("stopping: %d request(s) still unanswered after the %.1f s grace were abandoned; "
                        "they stay in flight, and a resume sends them again with the same referenceId",
                        self.abandoned, self._s.grace)  # fmt: skip

    async def _feed(self, records: AsyncIterable[Record]) -> None:
        try:
            async for rec in records:
                if self._stop.is_set():
                    break
                await self._queue.put(rec)
                self._changed.set()
        finally:
            self._fed = True
            self._changed.set()

    async def _tick(self) -> None:
        """Expire ack deadlines and wake idle workers to re-check whether the run is over.

        One task polls for everyone: idle workers wait on an event instead of each
        polling with a timeout (which cost a task per worker per poll).
        """
        while True:
            await self._sleep(self._tick_interval)
            self._outcomes.expire()
            self._changed.set()

    def _finished(self) -> bool:
        return (
            self._fed
            and self._queue.empty()
            and self._retry.empty()
            and self._outcomes.awaiting() == 0
        )

    async def _next(self) -> Record | None:
        while not self._stop.is_set():
            if not self._retry.empty():
                return self._retry.get_nowait()
            if not self._queue.empty():
                return self._queue.get_nowait()
            if self._finished():
                return None
            # no await between the checks and the clear: nothing can slip in between
            self._changed.clear()
            await self._changed.wait()
        return None

    async def _worker(self) -> None:
        while (rec := await self._next()) is not None:
            await self._send(rec)

    # -- one record ------------------------------------------------------------
    async def _send(self, rec: Record) -> None:
        """One plain retry loop: attempts under the row's own referenceId until it has an
        outcome, GWS refuses it for good, the retries run out, or the run stops (the row
        then stays in flight for a resume)."""
        session_errors = unanswered = counted = 0
        first = True
        while not rec.final and not self._stop.is_set():
            if not first:
                self.retries += 1
            first = False
            try:
                await self._attempt(rec)
                return
            except NotWritten as exc:
                # stopped before a byte was written: no attempt, no doubt; the row waits for
                # the gate (or goes to another worker with the same referenceId when this one stops)
                self.requests -= 1
                self.not_written += 1
                self._outcomes.not_written(rec, str(exc))
                first = True
                continue
            except SessionExpired as exc:
                # GWS did nothing with it: not an attempt, but a row cannot bounce between
                # log-ins forever
                session_errors += 1
                self._outcomes.retrying(rec, may_have_been_processed(exc), str(exc))
                if session_errors > _MAX_SESSION_RETRIES:
                    self._outcomes.refused(rec, f"gave up after {session_errors} re-logins: {exc}",
                                           error_code(exc), gave_up=True)  # fmt: skip
                    return
                continue
            except RequestRejected as exc:
                if may_have_been_processed(exc):
                    self._outcomes.retrying(rec, True, str(exc))
                self._outcomes.refused(rec, str(exc), error_code(exc))
                return
            except TransientError as exc:
                delay = self._on_transient(rec, exc)
                maybe = may_have_been_processed(exc)
                self._outcomes.retrying(rec, maybe, str(exc))
                if not exc.unreachable:
                    counted += 1
                    unanswered += exc.unanswered
                if rec.counted_attempts >= self._s.max_attempts:
                    if self._stop.is_set() or rec.final:
                        return
                    self._outcomes.refused(rec, self._gave_up(rec, exc, unanswered, counted),
                                           error_code(exc), gave_up=True)  # fmt: skip
                    return
                if delay > 0:
                    await self._sleep(delay)

    def _gave_up(self, rec: Record, exc: TransientError, unanswered: int, counted: int) -> str:
        if unanswered == counted:
            return (f"no HTTP answer to {unanswered} attempt(s) within {self._s.request_timeout:g} s "
                    "and no outcome: unknown whether GWS processed it")  # fmt: skip
        return f"gave up after {rec.attempts} attempts: {exc}"

    async def _ready(self) -> None:
        """Wait until a POST may go: the ack channel up and heard from (else its outcome would
        be lost), the journal healthy (else its outcome could not be recorded), a rate slot taken."""
        while not self._stop.is_set():
            if not self._channel.up.is_set():
                if self._channel.outage() > self._s.max_outage:
                    # GWS restarting loses both the channel and the log-ins: whichever limit
                    # is met first ends the run, and both name the bound that ended it
                    raise NotificationChannelLost(
                        f"CometD subscription lost for more than {self._s.max_outage:g} s "
                        f"(--max-outage {self._s.max_outage:g} s)"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._channel.up.wait(), 0.5)
                continue
            if self._outcomes.deaf:
                # nothing heard since rows now due were accepted: hold new POSTs until a
                # long poll completes (or the poll's bound ends it and the channel goes down)
                await self._sleep(self._tick_interval)
                continue
            if not self._recorder.healthy or not self._recorder.has_room:
                # a commit failed (the journal's writer gives up past --max-outage and ends
                # the run), or the disk is slower than the senders: nothing more is sent
                await self._recorder.until_writable(0.5)
                continue
            if not self._pacer.take_free():
                await self._pacer.acquire()
            # the pause or the rate slot may have taken a while: check both again
            if self._channel.up.is_set() and self._recorder.healthy:
                return

    async def _attempt(self, rec: Record) -> None:
        while True:
            await self._ready()
            if rec.final or self._stop.is_set():
                return
            # the fleet's gate once more, with nothing awaited between it and journaling the
            # attempt and handing the POST to aiohttp (whose write fence asks it a last time)
            if self._pacer.gate():
                break
        self._outcomes.posting(rec)
        if rec.settled is None or rec.settled.done():
            rec.settled = asyncio.get_running_loop().create_future()
        self.requests += 1
        now = self._clock()
        self.first_request = self.first_request or now
        self.last_request = now
        generation = self._session.generation
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        started = self._clock()
        post = asyncio.ensure_future(self._session.post_record(rec.body(self._s.operation)))
        try:
            answer = await self._answer(rec, post)
        except SessionExpired as exc:
            rec.http_status, rec.status_code = exc.http_status, exc.status_code
            self._pacer.answered_any()
            self.relogins += 1
            await self._session.relogin(generation)
            raise
        except TransientError as exc:
            rec.http_status, rec.status_code = exc.http_status, exc.status_code
            raise
        except RequestRejected as exc:
            rec.http_status, rec.status_code = exc.http_status, exc.status_code
            self._controls.refused()
            raise
        finally:
            self.in_flight -= 1
        if answer is None:
            return  # the outcome came first and the answer did not follow
        self._unreachable_since = None
        latency = self._clock() - started
        self.post_latency_ms.add(latency * 1000.0)
        self._controls.accepted(latency)
        rec.http_status, rec.status_code = answer.http_status, answer.status_code
        self._outcomes.accepted(rec)

    async def _answer(self, rec: Record, post: asyncio.Future[Answer]) -> Answer | None:
        """The POST's answer; when the row's outcome comes first, the answer gets a moment
        more (it normally follows within milliseconds), then the POST is abandoned: nothing
        more is to be learnt from it. A callback on the outcome rather than ``asyncio.wait``
        on both: this runs for every record, and the answer nearly always comes first."""
        loop = asyncio.get_running_loop()

        def outcome_came(_: object = None) -> None:
            loop.call_later(_ANSWER_AFTER_OUTCOME, post.cancel)  # a no-op once answered

        settled = rec.settled
        watching = settled is not None and not settled.done()
        if settled is not None:
            if watching:
                settled.add_done_callback(outcome_came)
            else:
                outcome_came()
        try:
            return await post  # the run cancelled: so is its request (awaiting a task passes it on)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if post.cancelled() and task is not None and not task.cancelling():
                return None  # abandoned after the outcome, not a cancelled run
            raise
        finally:
            if watching and settled is not None:
                settled.remove_done_callback(outcome_came)

    def _on_transient(self, rec: Record, exc: TransientError) -> float:
        """Count the error against the outage, pause or slow everyone where GWS asks so;
        answer how long this row waits before its next attempt (0: a shared pause waits)."""
        if exc.unreachable:
            self._outage(exc, "GWS unreachable")
            waited = self._pacer.pause(None)
            self._events.info("unreachable", "GWS unreachable (%s): all senders pause %.1f s",
                              exc, waited)  # fmt: skip
            return 0.0
        rec.counted_attempts += 1
        if exc.unanswered:
            # maybe processed, maybe not: retried with the same referenceId, and
            # time without any answer counts towards --max-outage
            self.unanswered += 1
            self._pacer.answered_any()
            self._outage(exc, "GWS unreachable or not answering")
            self._events.info("unanswered", "no HTTP answer within %g s: retrying with the same "
                              "referenceId", self._s.request_timeout)  # fmt: skip
            return self._backoff(rec.counted_attempts)
        reaction = self._controls.overloaded(exc.http_status, exc.retry_after)
        if reaction.pause is not None:
            self._events.info(f"throttled-{exc.http_status}", "%s (%s): all senders pause %.1f s",
                              reaction.why, exc.http_status, reaction.pause)  # fmt: skip
            return 0.0
        if reaction.why == "lone":
            self.lone_failures += 1
            self._events.info(f"lone-{exc.http_status}", "HTTP %s, retrying this request after a "
                              "back-off: %s", exc.http_status, exc)  # fmt: skip
        else:
            self._events.info(f"retry-{type(exc).__name__}-{exc.http_status}",
                              "request failed, retrying with the same referenceId: %s", exc)  # fmt: skip
        return self._backoff(rec.counted_attempts)

    def _outage(self, exc: TransientError, what: str) -> None:
        now = self._clock()
        self._unreachable_since = self._unreachable_since or now
        if now - self._unreachable_since > self._s.max_outage:
            raise GwsUnavailable(f"{what} for more than {self._s.max_outage:g} s: {exc}") from exc

    def _backoff(self, attempt: int) -> float:
        """Exponential, 0.2 s doubling up to 10 s, plus up to 0.2 s of jitter."""
        return float(min(10.0, 0.2 * 2.0 ** max(0, attempt - 1))) + self._rng.uniform(0.0, 0.2)


def may_have_been_processed(exc: RequestError) -> bool:
    """Whether GWS may have done what the failed attempt asked (gws/ classifies it)."""
    return exc.may_have_been_processed


def error_code(exc: RequestError) -> str | None:
    """What identifies a refusal for the breaker: GWS's statusCode, else the HTTP status."""
    if exc.status_code is not None:
        return f"statusCode {exc.status_code}"
    if exc.http_status is not None:
        return f"HTTP {exc.http_status}"
    return None
