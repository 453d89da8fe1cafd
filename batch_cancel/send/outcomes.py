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
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from batch_cancel.journal.rows import IN_PLAY, RowState, RowToSend, Status
from batch_cancel.log_once import OncePerInterval

__all__ = ["TRANSITIONS", "Event", "EventMatch", "Outcomes", "Record", "Rule", "UserEventIndex",
           "UserEventVerdict", "apply", "describe_failure", "earlier_references", "error_text",
           "whole_number"]  # fmt: skip

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
    # (digits, campaign, list): how /me/internal user events name it (UserEventIndex)
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
        # rows whose deadline came while no long poll had completed since GWS accepted them
        # (a half-open poll may be holding their outcome): judged once one completes
        self._held: list[str] = []
        # the ack channel's word on whether a poll completed after a (monotonic) time; set
        # by the send phase (AckChannel.last_poll_completed); None: the channel is trusted
        self.heard_since: Callable[[float], bool] | None = None
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
        # no event: the outcome implies the acceptance (journal/writer.py); the state
        # (the answer's HTTP status and statusCode) is written at the next commit
        self._recorder.touched(rec)

    def not_written(self, rec: Record, error: str) -> None:
        """The attempt stopped before any of it was written (the fleet's write fence): it is
        not counted, and the row is not in doubt (retried, if ever, with the same referenceId)."""
        if rec.final:
            return
        rec.attempts = max(0, rec.attempts - 1)
        apply(rec, Event.NOT_PROCESSED)
        self._recorder.event(rec, "retry", f"not processed: {error}")

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
        self._recorder.outcome(rec, rec.error)
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
            self._recorder.outcome(rec, f"acknowledged {older}" if older else None)
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
            if rec.record_handle is not None:
                # a column of the row, written with its outcome's state when they come together
                self._recorder.touched(rec)
            else:  # not a whole number: no column holds it, so the event log keeps OCS's text
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

    def gap(self, since: float) -> None:
        """The ack channel learnt it heard nothing from ``since`` (monotonic) on (a long
        poll that hung): rows accepted since then are asked again when their deadline comes."""
        for rec in self.pending.values():
            if rec.accepted_mono is not None and rec.accepted_mono >= since:
                rec.gap = True

    def expire(self) -> None:
        now = self._clock()
        if self._held:
            held, self._held = self._held, []
            for ref in held:
                rec = self.pending.get(ref)
                # still awaiting the outcome of the acceptance it was held for
                if rec is not None and not rec.final and rec.accepted_mono is not None \
                        and rec.deadline is not None and rec.deadline <= now:
                    self._due(rec, ref)
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, ref = self._deadlines.popleft()
            rec = self.pending.get(ref)
            if rec is None or rec.final or rec.deadline != deadline:
                continue  # settled meanwhile, or accepted again (a newer deadline is queued)
            self._due(rec, ref)

    def _due(self, rec: Record, ref: str) -> None:
        """The row's deadline came: time out, ask again after a gap, or wait for the channel."""
        heard = self.heard_since
        if heard is not None and rec.accepted_mono is not None and not heard(rec.accepted_mono):
            # no long poll completed since GWS accepted it: the outcome may sit in a poll
            # that hangs (half-open). The poll's bound ends that wait: either a poll
            # completes (then the row is judged) or the channel goes down (a gap: resent)
            self._held.append(ref)
            return
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
            return
        self._end(rec, Event.DEADLINE, f"no acknowledgement within {self._ack_timeout:g} s", "timeout")

    @property
    def deaf(self) -> bool:
        """A row's deadline came and no long poll completed since GWS accepted it: the ack
        channel may be half-open, so what is sent now could not be heard either."""
        return bool(self._held)

    def awaiting(self) -> int:
        """Rows sent or accepted whose outcome is still unknown."""
        return self._in_flight


# -- OCS's user events on /me/internal ------------------------------------------------------
# OCS's desktop-protocol user events, as GWS relays them on ``/me/internal``.
#
# They carry no referenceId: ``userData`` names the record by ``GSW_PHONE``,
# ``GSW_CAMPAIGN_NAME`` and ``GSW_CALLING_LIST``, and ``GSW_APPLICATION_ID`` when the
# event carries it (the same list and campaign names may exist in two OCS applications).
# Two kinds matter here:
#
# - an acknowledgement's companion (``GSW_RECORD_HANDLE``, no ``GSW_ERROR``): the OCS
#   record that was cancelled, kept with the row as the strongest evidence there is;
# - an error (``GSW_ERROR``, ``GSW_ERROR_NUMBER``): the event's name is not documented,
#   so any event with ``GSW_ERROR`` is one, even one named like an acknowledgement.
#
# A row is found by its number, campaign and list among the records in flight (and,
# for a companion that trails its acknowledgement, the rows cancelled lately). When
# the same number is in flight twice the event cannot be pinned on one row: it is
# kept as evidence only.

_Key = tuple[str, str, str]
# Rows cancelled lately whose companion may still be on its way; a companion is
# published with its acknowledgement, so a few seconds' worth of rows is plenty.
_SETTLED_KEPT = 50_000


class UserEventVerdict(StrEnum):
    HANDLE = "record_handle"  # the companion of a row's acknowledgement
    ERROR = "error"  # a row's failure
    AMBIGUOUS = "ambiguous"  # names a number in flight more than once
    UNMATCHED = "unmatched"  # names no row of ours (or carries nothing we know)


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 3x (one per event)
class EventMatch:
    verdict: UserEventVerdict
    record: Record | None = None
    handle: int | str | None = None
    error: str | None = None
    error_number: int | None = None
    note: str = ""


def error_text(user_data: dict[str, Any]) -> str:
    """The row's error as the server told it: GSW_ERROR with its number and event."""
    number = user_data.get("GSW_ERROR_NUMBER")
    text = str(user_data.get("GSW_ERROR") or "")
    head = f"GSW_ERROR_NUMBER {number}: " if number is not None else ""
    return head + text


def _digits(phone: object) -> str:
    text = str(phone or "")
    # most numbers are sent as bare digits: nothing to strip
    return text if text.isdigit() else "".join(filter(str.isdigit, text))


def whole_number(value: object) -> int | None:
    """An id OCS sends as an int (GSW_APPLICATION_ID, GSW_RECORD_HANDLE), which may come as
    text; None when absent or not a whole number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _key(phone: object, campaign: object, calling_list: object) -> _Key:
    return (_digits(phone), str(campaign or ""), str(calling_list or ""))


class UserEventIndex:
    """Records in flight (and lately cancelled) by number, campaign and list."""

    def __init__(self) -> None:
        self._live: dict[_Key, list[Record]] = {}
        self._settled: OrderedDict[_Key, list[Record]] = OrderedDict()
        self._settled_count = 0

    def _rec_key(self, rec: Record) -> _Key:
        # asked on track, settle and match: the record's fields do not change in flight
        if rec.event_key is None:
            rec.event_key = _key(rec.phone_sent, rec.campaign, rec.calling_list)
        return rec.event_key

    def track(self, rec: Record) -> None:
        key = self._rec_key(rec)
        live = self._live.get(key)
        if live is None:
            self._live[key] = [rec]  # the common case: the number is in flight once
        elif not any(r is rec for r in live):
            live.append(rec)

    def settled(self, rec: Record) -> None:
        """The row has its outcome; a cancelled one waits a while for its companion."""
        key = self._rec_key(rec)
        live = self._live.get(key)
        if live is not None:
            if len(live) == 1 and live[0] is rec:
                del self._live[key]
            else:
                live[:] = [r for r in live if r is not rec]
                if not live:
                    del self._live[key]
        if rec.status == Status.CANCELLED and rec.record_handle is None:
            self._settled.setdefault(key, []).append(rec)
            self._settled.move_to_end(key)
            self._settled_count += 1
            while self._settled_count > _SETTLED_KEPT and self._settled:
                _, old = self._settled.popitem(last=False)
                self._settled_count -= len(old)

    def match(self, data: dict[str, Any]) -> EventMatch:
        user_data = data.get("userData")
        if not isinstance(user_data, dict) or "GSW_PHONE" not in user_data:
            return EventMatch(UserEventVerdict.UNMATCHED, note="no GSW_PHONE")
        key = _key(
            user_data.get("GSW_PHONE"),
            user_data.get("GSW_CAMPAIGN_NAME"),
            user_data.get("GSW_CALLING_LIST"),
        )
        app = whole_number(user_data.get("GSW_APPLICATION_ID"))
        live = [r for r in self._live.get(key, ()) if not r.final and app in (None, r.application_id)]
        if "GSW_ERROR" in user_data:
            number = user_data.get("GSW_ERROR_NUMBER")
            text = error_text(user_data)
            code = number if isinstance(number, int) else None
            if len(live) == 1:
                return EventMatch(UserEventVerdict.ERROR, live[0], error=text, error_number=code)
            if live:
                return EventMatch(UserEventVerdict.AMBIGUOUS, error=text,
                                  note=f"error for a number in flight {len(live)} times")  # fmt: skip
            return EventMatch(UserEventVerdict.UNMATCHED, error=text, note="error for no row in flight")
        handle = user_data.get("GSW_RECORD_HANDLE")
        if handle is None:
            return EventMatch(UserEventVerdict.UNMATCHED, note="user event without record handle")
        settled = [r for r in self._settled.get(key, []) if app in (None, r.application_id)]
        candidates = settled + live
        if len(candidates) == 1:
            rec = candidates[0]
            if settled:
                self._forget_settled(key, rec)
            return EventMatch(UserEventVerdict.HANDLE, rec, handle=handle)
        if candidates:
            note = f"record handle for a number in flight {len(candidates)} times"
            return EventMatch(UserEventVerdict.AMBIGUOUS, handle=handle, note=note)
        return EventMatch(UserEventVerdict.UNMATCHED, handle=handle, note="record handle for no row of ours")

    def _forget_settled(self, key: _Key, rec: Record) -> None:
        rest = [r for r in self._settled.get(key, []) if r is not rec]
        self._settled_count -= 1
        if rest:
            self._settled[key] = rest
        else:
            self._settled.pop(key, None)
