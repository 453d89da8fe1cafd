"""A row's state while it is sent, and every change of it: one transition table.

Each POST (an *attempt*) ends one of four ways:

- **not processed**: it never reached GWS (connect refused), or GWS answered with an
  error of its own that a retry may get past (its JSON 503/429, a 401): nothing changed;
- **refused**: GWS's own JSON error that no retry fixes (400, 404…): nothing changed;
- **may have been processed**: no answer, a reset after the request was written, an
  intermediary's 502/504/408 page, statusCode 9; GWS may well have done it;
- **accepted** (statusCode 0, or 7): the outcome comes over CometD.

A row is *in doubt* once any attempt under any of its referenceIds may have been
processed (an unanswered or ambiguous attempt, an accepted one that was asked again
after a CometD gap, one that timed out, one that was in flight when an earlier run
ended). Doubt decides what a refusal means: without it the row ``failed`` (GWS said
no and nothing was done); with it the row ends ``timed_out``, *unconfirmed*, its
error saying what GWS said and that the number may already be cancelled: a repeat
for a number GWS cancelled earlier is answered "Record not found". So a ``failed``
row is one whose every attempt is known not to have been processed, and only such a
row is given a new referenceId by ``--retry-failed``.

An acknowledgement carrying any referenceId the row ever used (this round's, or an
earlier round's ``R``/``R-r1``… after ``--retry-failed``) makes it ``cancelled``
whenever it arrives, upgrading ``failed`` and ``timed_out``; an earlier round's is
kept on the row as evidence (an event in the journal).

:data:`TRANSITIONS` is the whole table (the README shows the same); :func:`apply` is
the only code that changes ``Record.status``. What is not in the table changes nothing;
a cancelled row is final (it is forgotten at once: whatever comes for it later is counted
as a duplicate).
:class:`Outcomes` feeds it from the sender (attempts) and from CometD (by referenceId,
and OCS's user events on ``/me/internal``, which name a number instead).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from batch_cancel.journal.rows import IN_PLAY, RowState, RowToSend, Status
from batch_cancel.log_once import OncePerInterval
from batch_cancel.send.user_events import UserEventIndex, UserEventVerdict, whole_number

__all__ = ["TRANSITIONS", "Event", "Outcomes", "Record", "Rule", "apply", "describe_failure",
           "earlier_references"]  # fmt: skip

log = logging.getLogger("batch_cancel.send.outcomes")


class Event(StrEnum):
    """What can happen to a row while it is sent."""

    POST = "post"  # an attempt starts
    ACCEPTED = "accepted"  # GWS accepted it (statusCode 0 or 7): the outcome comes over CometD
    NOT_PROCESSED = "not_processed"  # known not done: retried with the same referenceId
    MAYBE_PROCESSED = "maybe_processed"  # may have been done: retried with the same referenceId
    REFUSED = "refused"  # GWS's own error that no retry fixes
    GAVE_UP = "gave_up"  # retries exhausted (--max-attempts, or too many re-logins)
    ACK = "ack"  # an acknowledgement under any referenceId the row used
    FAILURE = "failure"  # a failure notification, or OCS's error event for the row
    GAP = "gap"  # no outcome by the deadline, accepted around a CometD gap: ask again
    DEADLINE = "deadline"  # no outcome within --ack-timeout


class Rule(NamedTuple):
    to: Status
    doubt: bool | None  # the row's doubt after it (None: unchanged)
    why: str


_ANY = None
# (from, event, in doubt?) -> rule; ``_ANY`` doubt matches both. Kept as a list in the
# order of the README's table, and checked for clashes when the dict is built.
_TABLE: list[tuple[Status, Event, bool | None, Rule]] = [
    (Status.PLANNED, Event.POST, _ANY, Rule(Status.SENT, None, "first attempt")),
    (Status.SENT, Event.POST, _ANY, Rule(Status.SENT, None, "retry or gap resend, same referenceId")),
    (Status.SENT, Event.ACCEPTED, _ANY, Rule(Status.SENT, None, "the ack deadline starts")),
    (Status.SENT, Event.NOT_PROCESSED, _ANY, Rule(Status.SENT, None, "retried, same referenceId")),
    (Status.SENT, Event.MAYBE_PROCESSED, _ANY, Rule(Status.SENT, True, "retried, same referenceId")),
    (Status.SENT, Event.REFUSED, False, Rule(Status.FAILED, None, "GWS said no; nothing was done")),
    (Status.SENT, Event.REFUSED, True, Rule(Status.TIMED_OUT, None, "unconfirmed: may be cancelled")),
    (Status.SENT, Event.GAVE_UP, False, Rule(Status.FAILED, None, "every attempt known not done")),
    (Status.SENT, Event.GAVE_UP, True, Rule(Status.TIMED_OUT, None, "unconfirmed: may be cancelled")),
    (Status.SENT, Event.FAILURE, False, Rule(Status.FAILED, None, "the outcome is a failure")),
    (Status.SENT, Event.FAILURE, True, Rule(Status.TIMED_OUT, None, "unconfirmed: may be cancelled")),
    (Status.SENT, Event.ACK, _ANY, Rule(Status.CANCELLED, None, "acknowledged")),
    (Status.SENT, Event.GAP, _ANY, Rule(Status.SENT, True, "resent with the same referenceId")),
    (Status.SENT, Event.DEADLINE, _ANY, Rule(Status.TIMED_OUT, True, "no outcome in time")),
    (Status.TIMED_OUT, Event.ACK, _ANY, Rule(Status.CANCELLED, None, "a late ack upgrades")),
    (Status.FAILED, Event.ACK, _ANY, Rule(Status.CANCELLED, None, "a late ack upgrades")),
    (Status.TIMED_OUT, Event.FAILURE, _ANY, Rule(Status.TIMED_OUT, None, "kept as evidence only")),
    (Status.FAILED, Event.FAILURE, _ANY, Rule(Status.FAILED, None, "a repeat")),
]


def _build() -> dict[tuple[Status, Event, bool], Rule]:
    table: dict[tuple[Status, Event, bool], Rule] = {}
    for start, event, doubt, rule in _TABLE:
        for d in (False, True) if doubt is None else (doubt,):
            if (start, event, d) in table:
                raise AssertionError(f"two rules for {start} + {event} (doubt {d})")
            table[(start, event, d)] = rule
    return table


TRANSITIONS: dict[tuple[Status, Event, bool], Rule] = _build()


def apply(rec: Record, event: Event) -> Rule | None:
    """Move ``rec`` by the table; None (and no change) when the table has no rule."""
    rule = TRANSITIONS.get((rec.status, event, rec.doubt))
    if rule is None:
        return None
    rec.status = rule.to
    if rule.doubt is not None:
        rec.doubt = rule.doubt
    return rule


def earlier_references(ref: str) -> list[str]:
    """The referenceIds of a row's earlier rounds (``--retry-failed``): ``R-r2`` -> R, R-r1."""
    stem, sep, number = ref.rpartition("-r")
    if not (sep and stem and number.isdigit()):
        return []
    return [stem] + [f"{stem}-r{i}" for i in range(1, int(number))]


@dataclass(slots=True, eq=False)
class Record:
    """A row being worked on. Only rows in flight (and, for late acks, this run's failed and
    timed-out ones) exist as objects; everything else lives in the journal."""

    row: int
    reference_id: str
    phone_sent: str
    application_id: int
    campaign: str
    calling_list: str | None
    device_path: str | None
    chain_attribute: str | None
    status: Status = Status.PLANNED
    doubt: bool = False  # some attempt may have been processed (see the module's docstring)
    attempts: int = 0
    counted_attempts: int = 0  # attempts that count towards --max-attempts
    http_status: int | None = None
    status_code: int | None = None
    notification_type: str | None = None
    error: str | None = None
    # what identifies its failure for the breaker: statusCode, errorCode, GSW_ERROR_NUMBER, else text
    error_code: str | None = None
    sent_at: float | None = None  # wall clock (epoch seconds) of the last POST
    acked_at: float | None = None
    latency_ms: float | None = None
    accepted_mono: float | None = None  # monotonic time GWS accepted the last POST
    deadline: float | None = None
    gap: bool = False  # accepted while the ack channel was (or went) down
    record_handle: int | None = None  # OCS's record, from the ack's /me/internal companion
    probe: bool = False  # sent ahead of its turn for the breaker (send/breaker.py)
    # set when the row gets its outcome: its sender awaits the POST and this together
    settled: asyncio.Future[None] | None = None
    # (digits, campaign, list): how /me/internal user events name it (send/user_events.py)
    event_key: tuple[str, str, str] | None = None

    @classmethod
    def from_journal(cls, row: RowToSend, device_path: str | None) -> Record:
        status = Status(row.status)
        return cls(
            row=int(row.row),
            reference_id=str(row.reference_id),
            phone_sent=str(row.phone_sent),
            application_id=int(row.application_id),
            campaign=str(row.campaign),
            calling_list=row.calling_list or None,
            device_path=row.device_path or device_path,
            chain_attribute=row.chain_attribute,
            # a timed-out row handed back (--retry-timed-out) is in play again
            status=Status.SENT if status == Status.TIMED_OUT else status,
            # sent before (in flight when a run ended, or unconfirmed): it may have been done
            doubt=status in (Status.SENT, Status.TIMED_OUT),
            attempts=int(row.attempts or 0),
            http_status=row.http_status,
            status_code=row.status_code,
            sent_at=row.sent_at,
            record_handle=row.record_handle,
        )

    @property
    def final(self) -> bool:
        return self.status in IN_PLAY

    def body(self, operation: str) -> dict[str, Any]:
        body: dict[str, Any] = {
            "operationName": operation,
            "applicationId": self.application_id,
            "campaignName": self.campaign,
            "phoneNumber": self.phone_sent,
            "devicePath": self.device_path,
            "referenceId": self.reference_id,
        }
        if self.calling_list:  # DoNotCallRecord by phone number needs none
            body["callingList"] = self.calling_list
        if self.chain_attribute:
            body["chainAttribute"] = self.chain_attribute
        return body

    def state(self) -> RowState:
        return RowState(self.status, self.attempts, self.http_status, self.status_code,
                        self.notification_type, self.error, self.sent_at, self.acked_at,
                        self.latency_ms, self.record_handle, self.row)  # fmt: skip


SUCCESS = {"CancelRecord": "RecordCancelAcknowledge", "DoNotCallRecord": "DoNotCallAcknowledge"}
_TEXT_KEYS = ("errorMessage", "statusMessage", "error", "message", "reason", "description")
UNCONFIRMED = "unconfirmed, the number may already be cancelled (an earlier attempt may have been processed)"


def describe_failure(data: dict[str, Any]) -> str:
    """Keep whatever text GWS gave; the failure's exact shape is not documented."""
    parts = [str(data.get(k)) for k in ("messageType", "notificationType") if data.get(k)]
    code = data.get("errorCode", data.get("statusCode"))
    if code is not None:
        parts.append(f"code {code}")
    parts.extend(str(data[k]) for k in _TEXT_KEYS if data.get(k))
    return ": ".join(parts) if parts else "unrecognised notification"


def failure_code(data: dict[str, Any]) -> str | None:
    """The code of a CometD failure notification (errorCode, else statusCode)."""
    if data.get("errorCode") is not None:
        return f"errorCode {data['errorCode']}"
    if data.get("statusCode") is not None:
        return f"statusCode {data['statusCode']}"
    return None


class Outcomes:
    """Rows in flight by referenceId; every status change goes through :func:`apply`.

    A referenceId is registered *before* its POST goes out, because GWS may publish
    the outcome before it answers. Deadlines start when GWS accepts the request; the
    ack timeout is the same for every row, so deadlines come in acceptance order and
    a deque is enough.
    """

    def __init__(
        self,
        *,
        operation: str,
        ack_timeout: float,
        recorder: Any,  # journal/writer.py's Recorder (not imported: it imports Record from here)
        clock: Callable[[], float],
        wall: Callable[[], float],
        resend: Callable[[Record], None],
        max_attempts: int = 5,
        on_latency: Callable[[float], None] | None = None,
        on_outcome: Callable[[Record], None] | None = None,
        on_unmatched: Callable[[str | None, str, dict[str, Any]], None] | None = None,
        ref_prefix: str | None = None,
    ) -> None:
        self._success = SUCCESS.get(operation, "RecordCancelAcknowledge")
        self._ack_timeout = ack_timeout
        self._recorder = recorder
        self._clock = clock
        self._wall = wall
        self._resend = resend
        # every referenceId of a row in flight (its earlier rounds' too) -> the row
        self.pending: dict[str, Record] = {}
        self._in_flight = 0
        # this run's failed and timed-out rows, by every referenceId: a late ack upgrades them
        self._ended: dict[str, Record] = {}
        # (deadline, referenceId): not the record itself, so a record is freed as soon as
        # it is settled instead of at its deadline (ack timeout x throughput records)
        self._deadlines: deque[tuple[float, str]] = deque()
        self.channel_up = True
        self.max_attempts = max_attempts  # the run's --max-attempts; bounds gap resends too
        self.duplicate_acks = 0
        self.unmatched = 0
        self.record_handles = 0
        self.error_events = 0
        self.gap_resends = 0
        self.late_acks = 0
        self.unconfirmed = 0
        self._on_outcome = on_outcome
        self._on_unmatched = on_unmatched
        self._ref_prefix = ref_prefix  # referenceIds of this run start so
        self.user_events = UserEventIndex()
        self._events = OncePerInterval(log)
        self._on_latency = on_latency  # POST -> outcome seconds, for --metrics-file

    # -- the sender's side: attempts --------------------------------------------------
    def posting(self, rec: Record) -> None:
        """An attempt starts: registered before the POST, journaled as sent."""
        apply(rec, Event.POST)
        rec.attempts += 1
        rec.sent_at = self._wall()
        if rec.reference_id not in self.pending:
            self._in_flight += 1
            for ref in (rec.reference_id, *earlier_references(rec.reference_id)):
                self.pending[ref] = rec
                self._ended.pop(ref, None)
            self.user_events.track(rec)
        self._recorder.event(rec, Status.SENT)

    def accepted(self, rec: Record) -> None:
        if rec.final:  # the outcome beat the HTTP answer
            return
        apply(rec, Event.ACCEPTED)
        now = self._clock()
        rec.accepted_mono = now
        rec.deadline = now + self._ack_timeout
        if not self.channel_up:
            rec.gap = True
        self._deadlines.append((rec.deadline, rec.reference_id))
        self._recorder.event(rec, "accepted")

    def retrying(self, rec: Record, maybe_processed: bool, error: str) -> None:
        """The attempt failed in a way a retry (same referenceId) may get past."""
        if rec.final:
            return
        apply(rec, Event.MAYBE_PROCESSED if maybe_processed else Event.NOT_PROCESSED)
        meaning = "may have been processed" if maybe_processed else "not processed"
        self._recorder.event(rec, "retry", f"{meaning}: {error}")

    def refused(self, rec: Record, error: str, code: str | None, *, gave_up: bool = False) -> None:
        """GWS refused for good, or the retries ran out: failed, or unconfirmed in doubt."""
        if rec.final:
            return
        self._end(rec, Event.GAVE_UP if gave_up else Event.REFUSED, error, code)

    def _end(self, rec: Record, event: Event, error: str, code: str | None) -> None:
        was_in_doubt = rec.doubt
        if apply(rec, event) is None:
            return
        rec.error_code = code
        if rec.status == Status.TIMED_OUT and was_in_doubt:
            self.unconfirmed += 1
            rec.error = f"{error}; {UNCONFIRMED}"
        else:
            rec.error = error
        self._recorder.event(rec, rec.status, rec.error)
        self._settle(rec)

    def _forget(self, rec: Record) -> list[str]:
        refs = [rec.reference_id, *earlier_references(rec.reference_id)]
        if self.pending.pop(rec.reference_id, None) is not None:
            self._in_flight -= 1
        for ref in refs[1:]:
            self.pending.pop(ref, None)
        return refs

    def _settle(self, rec: Record) -> None:
        refs = self._forget(rec)
        if rec.status in (Status.FAILED, Status.TIMED_OUT):
            for ref in refs:
                self._ended[ref] = rec
        if rec.settled is not None and not rec.settled.done():
            rec.settled.set_result(None)
        self.user_events.settled(rec)
        if self._on_outcome is not None:
            self._on_outcome(rec)

    # -- CometD's side ------------------------------------------------------------------
    def on_messages(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            data = message.get("data")
            channel = message.get("channel")
            channel = channel if isinstance(channel, str) else None
            if not isinstance(data, dict):
                self._unmatched(channel, "no data object", {"message": message})
                continue
            ref = data.get("referenceId")
            if not isinstance(ref, str):
                self._user_event(channel, data)
                continue
            rec = self.pending.get(ref) or self._ended.get(ref)
            if rec is not None:
                self._notified(rec, ref, data)
            elif self._ref_prefix is not None and not ref.startswith(self._ref_prefix):
                self._unmatched(channel, "referenceId of no row of this run", data)
            else:
                self.duplicate_acks += 1

    def _notified(self, rec: Record, ref: str, data: dict[str, Any]) -> None:
        acked = data.get("notificationType") == self._success
        if not acked and rec.final:
            # a failure for a row already failed or unconfirmed: the table keeps it so, and
            # the message is kept as evidence
            apply(rec, Event.FAILURE)
            self._recorder.event(rec, "late_failure", f"{ref}: {describe_failure(data)}")
            return
        before = rec.status
        notification = data.get("notificationType") or data.get("messageType")
        rec.notification_type = str(notification) if notification else None
        rec.acked_at = self._wall()
        if rec.sent_at is not None:
            rec.latency_ms = round(max(0.0, rec.acked_at - rec.sent_at) * 1000.0, 3)
            if self._on_latency is not None and before == Status.SENT:
                self._on_latency(rec.latency_ms / 1000.0)
        if not acked:
            self._end(rec, Event.FAILURE, describe_failure(data), failure_code(data))
            return
        apply(rec, Event.ACK)
        rec.error = rec.error_code = None
        older = f"under an earlier round's referenceId {ref}" if ref != rec.reference_id else ""
        if before == Status.SENT:
            self._recorder.event(rec, rec.status, f"acknowledged {older}" if older else None)
            self._settle(rec)
            return
        # failed or timed out, and acknowledged after all: kept as evidence on the row
        self.late_acks += 1
        self._recorder.upgraded(rec, before, f"late acknowledgement {older or ref} (was {before})")
        self._settle_late(rec)

    def _settle_late(self, rec: Record) -> None:
        """A failed or timed-out row acknowledged after all: forget it, tell the breaker."""
        for ref in (rec.reference_id, *earlier_references(rec.reference_id)):
            self._ended.pop(ref, None)
        self.user_events.settled(rec)
        if self._on_outcome is not None:
            self._on_outcome(rec)

    def _user_event(self, channel: str | None, data: dict[str, Any]) -> None:
        match = self.user_events.match(data)
        rec = match.record
        if match.verdict is UserEventVerdict.HANDLE and rec is not None:
            rec.record_handle = whole_number(match.handle)
            self.record_handles += 1
            self._recorder.event(rec, "record_handle", str(match.handle))
        elif match.verdict is UserEventVerdict.ERROR and rec is not None:
            self.error_events += 1
            user_data = data.get("userData") or {}
            event = user_data.get("GSW_USER_EVENT") or data.get("messageType")
            rec.notification_type = str(event) if event else None
            rec.acked_at = self._wall()
            if rec.sent_at is not None:
                rec.latency_ms = round(max(0.0, rec.acked_at - rec.sent_at) * 1000.0, 3)
            code = f"GSW_ERROR_NUMBER {match.error_number}" if match.error_number is not None else None
            self._end(rec, Event.FAILURE, match.error or "GSW_ERROR", code)
        else:
            self._unmatched(channel, match.note, data)

    def _unmatched(self, channel: str | None, note: str, data: dict[str, Any]) -> None:
        self.unmatched += 1
        if self._on_unmatched is not None:
            self._on_unmatched(channel, note, data)

    # -- time ---------------------------------------------------------------------------
    def channel_changed(self, up: bool) -> None:
        self.channel_up = up
        if not up:
            # whatever was sent may have had its ack published into the gap, even a
            # request whose HTTP answer is still on its way
            for rec in self.pending.values():
                rec.gap = True

    def gap(self, since: float) -> int:
        """The ack channel learnt it heard nothing from ``since`` (monotonic) on (a long
        poll that hung): rows accepted since then are asked again when their deadline comes."""
        marked = 0
        for rec in self.pending.values():
            if rec.accepted_mono is not None and rec.accepted_mono >= since and not rec.gap:
                rec.gap = True
                marked += 1
        return marked

    def expire(self) -> None:
        now = self._clock()
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, ref = self._deadlines.popleft()
            rec = self.pending.get(ref)
            if rec is None or rec.final or rec.deadline != deadline:
                continue  # settled meanwhile, or accepted again (a newer deadline is queued)
            if rec.gap and rec.attempts < self.max_attempts:
                # the ack may have been published while nobody listened: ask once more
                # (once per gap the record was caught in, within --max-attempts POSTs)
                apply(rec, Event.GAP)
                rec.gap = False
                rec.accepted_mono = None
                self.gap_resends += 1
                self._events.info("gap", "no outcome for a request sent around a CometD gap: "
                                  "asking again with the same referenceId")  # fmt: skip
                self._recorder.event(rec, "gap_resend")
                self._resend(rec)
                continue
            self._end(rec, Event.DEADLINE, f"no acknowledgement within {self._ack_timeout:g} s", "timeout")

    def awaiting(self) -> int:
        """Rows sent or accepted whose outcome is still unknown."""
        return self._in_flight

