"""Concurrent, paced CancelRecord requests with retries (tenacity).

``concurrency`` workers share one queue. Each request waits, in order, for the
ack channel to be subscribed (a request sent while it is down would have its
outcome lost), for any throttling pause, and for a rate token. The referenceId
is registered with the matcher and the attempt journaled before the POST.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential_jitter

from batch_cancel.exceptions import (
    GwsUnavailable,
    NotificationChannelLost,
    RequestRejected,
    SessionExpired,
    TransientError,
)
from batch_cancel.gws.session import Answer
from batch_cancel.journal.rows import Status
from batch_cancel.journal.writer import Recorder
from batch_cancel.log_once import OncePerInterval
from batch_cancel.report.charts import LatencyHistogram
from batch_cancel.send.failure_cluster import FailureCluster
from batch_cancel.send.matcher import Matcher
from batch_cancel.send.pacer import Pacer
from batch_cancel.send.record import Record

__all__ = ["Channel", "Sender", "SenderSettings", "Session"]

log = logging.getLogger("batch_cancel.send.sender")

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
        matcher: Matcher,
        recorder: Recorder,
        pacer: Pacer,
        stop: asyncio.Event,
        clock: Callable[[], float],
        wall: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._s = settings
        self._session = session
        self._channel = channel
        self._matcher = matcher
        self._recorder = recorder
        self._pacer = pacer
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
        self._cluster = FailureCluster(clock)
        self.post_latency_ms = LatencyHistogram()  # POST -> its HTTP answer, answered ones
        self.stopped_at: float | None = None  # when the senders saw the stop (self._clock)
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
            self._matcher.expire()
            self._changed.set()

    def _finished(self) -> bool:
        return (
            self._fed
            and self._queue.empty()
            and self._retry.empty()
            and self._matcher.awaiting() == 0
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
        # Most requests succeed at once: that first attempt runs without tenacity,
        # whose per-record machinery cost about a seventh of the client's CPU at 64
        # in flight. A failure is handed to tenacity as its first attempt (replayed),
        # so stop and backoff decisions are exactly those of a tenacity-only loop.
        try:
            await self._attempt(rec)
            return
        except RequestRejected as exc:
            self._matcher.give_up(rec, str(exc))
            return
        except (TransientError, SessionExpired) as exc:
            first_error: Exception = exc
        await self._retry_send(rec, first_error)

    async def _retry_send(self, rec: Record, first_error: Exception) -> None:
        session_errors = 1 if isinstance(first_error, SessionExpired) else 0
        replay: Exception | None = first_error

        def give_up(state: RetryCallState) -> bool:
            return (
                rec.final
                or rec.counted_attempts >= self._s.max_attempts
                or session_errors > _MAX_SESSION_RETRIES
                or self._stop.is_set()
            )

        def wait(state: RetryCallState) -> float:
            exc = state.outcome.exception() if state.outcome else None
            if isinstance(exc, SessionExpired) or (
                isinstance(exc, TransientError) and (exc.retry_after is not None or exc.unreachable)
            ):
                return 0.0  # the pacer's shared pause (or the re-login) already waited
            return float(self._backoff(state))

        retrying = AsyncRetrying(
            retry=retry_if_exception_type((TransientError, SessionExpired)),
            stop=give_up,
            wait=wait,
            sleep=self._sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    if replay is not None:
                        error, replay = replay, None
                        raise error
                    self.retries += 1
                    try:
                        await self._attempt(rec)
                    except SessionExpired:
                        session_errors += 1
                        raise
        except RequestRejected as exc:
            self._matcher.give_up(rec, str(exc))
        except (TransientError, SessionExpired) as exc:
            if self._stop.is_set():
                return
            if rec.unanswered and rec.unanswered >= rec.counted_attempts:
                self._matcher.no_answer(rec, (
                    f"no HTTP answer to {rec.unanswered} attempt(s) within "
                    f"{self._s.request_timeout:g} s and no outcome: unknown whether GWS processed it"
                ))  # fmt: skip
                return
            self._matcher.give_up(rec, f"gave up after {rec.attempts} attempts: {exc}")

    _backoff = wait_exponential_jitter(multiplier=0.2, max=10.0, jitter=0.2)

    async def _ready(self) -> None:
        """Block while the ack channel is down; give up past the allowed outage."""
        while not self._channel.up.is_set():
            if self._stop.is_set():
                return
            if self._channel.outage() > self._s.max_outage:
                raise NotificationChannelLost(
                    f"CometD subscription lost for more than {self._s.max_outage:g} s"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._channel.up.wait(), 0.5)
        # the journal writer is behind (a slow disk): do not outrun it without bound
        if not self._recorder.has_room:
            await self._recorder.room()
        if not self._pacer.take_free():
            await self._pacer.acquire()
        # the pause or the rate token may have taken a while: check again
        if not self._channel.up.is_set():
            await self._ready()

    async def _attempt(self, rec: Record) -> None:
        await self._ready()
        if rec.final or self._stop.is_set():
            return
        rec.attempts += 1
        self.requests += 1
        now = self._clock()
        self.first_request = self.first_request or now
        self.last_request = now
        rec.status = Status.SENT
        rec.sent_at = self._wall()
        self._matcher.register(rec)
        self._recorder.event(rec, Status.SENT)
        generation = self._session.generation
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        started = self._clock()
        # no deadline of ours unless the outcome arrives first: then Matcher.cut_short
        # cancels this task's wait a little later (a Timeout per request cost more)
        poster = rec.poster = asyncio.current_task()
        rec.cut_fired = False
        try:
            answer = await self._session.post_record(rec.body(self._s.operation))
        except asyncio.CancelledError:
            # ours alone (no other cancellation pending): the outcome is known, so
            # nothing more is to be learnt from the HTTP answer; the run's is raised
            if rec.cut_fired and poster is not None and poster.uncancel() == 0:
                return
            raise
        except SessionExpired as exc:
            rec.http_status, rec.status_code = exc.http_status, exc.status_code
            self._pacer.answered_any()
            self.relogins += 1
            await self._session.relogin(generation)
            raise
        except TransientError as exc:
            rec.http_status, rec.status_code = exc.http_status, exc.status_code
            self._on_transient(rec, exc)
            raise
        except RequestRejected as exc:
            rec.http_status, rec.status_code = exc.http_status, exc.status_code
            self._pacer.answered_any()
            self._cluster.answered(False)
            raise
        finally:
            rec.poster = None
            self.in_flight -= 1
        self._unreachable_since = None
        latency = self._clock() - started
        self.post_latency_ms.add(latency * 1000.0)
        self._pacer.answered(latency)
        self._cluster.answered(False)
        self._pacer.calm()
        rec.http_status, rec.status_code = answer.http_status, answer.status_code
        self._matcher.accepted(rec)

    def _on_transient(self, rec: Record, exc: TransientError) -> None:
        if exc.unreachable:
            now = self._clock()
            self._unreachable_since = self._unreachable_since or now
            if now - self._unreachable_since > self._s.max_outage:
                raise GwsUnavailable(
                    f"GWS unreachable for more than {self._s.max_outage:g} s: {exc}"
                ) from exc
            waited = self._pacer.pause(None)
            self._events.info("unreachable", "GWS unreachable (%s): all senders pause %.1f s",
                              exc, waited)  # fmt: skip
            return
        rec.counted_attempts += 1
        if exc.unanswered:
            # maybe processed, maybe not: retried with the same referenceId, and
            # time without any answer counts towards --max-outage
            rec.unanswered += 1
            self.unanswered += 1
            self._pacer.answered_any()
            now = self._clock()
            self._unreachable_since = self._unreachable_since or now
            if now - self._unreachable_since > self._s.max_outage:
                raise GwsUnavailable(
                    f"GWS unreachable or not answering for more than {self._s.max_outage:g} s: {exc}"
                ) from exc
            self._events.info("unanswered", "no HTTP answer within %g s: retrying with the same "
                              "referenceId", self._s.request_timeout)  # fmt: skip
            self._recorder.event(rec, "retry", str(exc))
            return
        clustered = self._cluster.answered(True)
        if exc.http_status == 429 or exc.retry_after is not None or clustered:
            # GWS asks the client, not this request, to slow down: everyone pauses
            self._pacer.throttled()
            waited = self._pacer.pause(exc.retry_after)
            why = "failures cluster" if clustered and exc.http_status != 429 else "GWS throttled"
            self._events.info(f"throttled-{exc.http_status}", "%s (%s): all senders pause %.1f s",
                              why, exc.http_status, waited)  # fmt: skip
        elif exc.http_status is not None and exc.http_status >= 500:
            # a lone 503: this request backs off on its own; the rate adapts a little
            self.lone_failures += 1
            self._pacer.throttled(lone=True)
            self._pacer.answered_any()
            self._events.info(f"lone-{exc.http_status}", "HTTP %s, retrying this request after a "
                              "back-off: %s", exc.http_status, exc)  # fmt: skip
        else:
            self._events.info(f"retry-{type(exc).__name__}-{exc.http_status}",
                              "request failed, retrying with the same referenceId: %s", exc)  # fmt: skip
        self._recorder.event(rec, "retry", str(exc))
