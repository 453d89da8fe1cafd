"""Matches CometD messages to the requests that caused them, by referenceId.

Messages without a referenceId are OCS user events relayed on ``/me/internal``
(user_events.py): an acknowledgement's companion gives the row its record handle,
an error event (``GSW_ERROR``) fails the row it names. Whatever matches no row
is handed to ``on_unmatched``, so nothing the server says is lost.

A referenceId is registered *before* its POST goes out, because GWS may publish
the outcome before it answers the HTTP request. Deadlines start when GWS accepts
the request; the ack timeout is the same for every record, so deadlines arrive
in acceptance order and a deque is enough.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from batch_cancel.journal.rows import Status
from batch_cancel.journal.writer import Recorder
from batch_cancel.log_once import OncePerInterval
from batch_cancel.send.record import Record
from batch_cancel.send.user_events import UserEventIndex, UserEventVerdict

__all__ = ["Matcher", "describe_failure"]

log = logging.getLogger("batch_cancel.send.matcher")

SUCCESS = {"CancelRecord": "RecordCancelAcknowledge", "DoNotCallRecord": "DoNotCallAcknowledge"}
_TEXT_KEYS = ("errorMessage", "statusMessage", "error", "message", "reason", "description")


def describe_failure(data: dict[str, Any]) -> str:
    """Keep whatever text GWS gave; the failure's exact shape is not documented."""
    parts = [str(data.get(k)) for k in ("messageType", "notificationType") if data.get(k)]
    code = data.get("errorCode", data.get("statusCode"))
    if code is not None:
        parts.append(f"code {code}")
    parts.extend(str(data[k]) for k in _TEXT_KEYS if data.get(k))
    return ": ".join(parts) if parts else "unrecognised notification"


class Matcher:
    def __init__(
        self,
        *,
        operation: str,
        ack_timeout: float,
        recorder: Recorder,
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
        self.pending: dict[str, Record] = {}
        self._timed_out: dict[str, Record] = {}
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
        # the ack channel's AckChannel.heard_since: whether a poll came back after a moment;
        # a row goes on waiting for a deaf channel up to max_deaf s past its deadline
        self.heard_since: Callable[[float], bool] | None = None
        self.max_deaf = 0.0
        self._on_outcome = on_outcome
        self._on_unmatched = on_unmatched
        # referenceIds of this run start so; another one is not a duplicate of ours
        self._ref_prefix = ref_prefix
        self.user_events = UserEventIndex()
        self._events = OncePerInterval(log)
        self._on_latency = on_latency  # POST -> outcome seconds, for --metrics-file

    # -- requests ---------------------------------------------------------------
    def register(self, rec: Record) -> None:
        self.pending[rec.reference_id] = rec
        self._timed_out.pop(rec.reference_id, None)
        self.user_events.track(rec)

    def accepted(self, rec: Record) -> None:
        if rec.final:  # the outcome beat the HTTP answer
            return
        now = self._clock()
        rec.accepted_mono = now
        rec.deadline = now + self._ack_timeout
        if not self.channel_up:
            rec.gap = True
        self._deadlines.append((rec.deadline, rec.reference_id))
        self._recorder.event(rec, "accepted")

    def give_up(self, rec: Record, error: str) -> None:
        """The request itself failed for good (4xx, or retries exhausted)."""
        if rec.final:
            return
        self.pending.pop(rec.reference_id, None)
        rec.status = Status.FAILED
        rec.error = error
        self._recorder.event(rec, Status.FAILED, error)
        self._settled(rec)

    def no_answer(self, rec: Record, error: str) -> None:
        """Every attempt went unanswered and no outcome came: unknown, not failed.

        Kept among the timed-out records, so a late acknowledgement still upgrades it.
        """
        if rec.final:
            return
        self.pending.pop(rec.reference_id, None)
        rec.status = Status.TIMED_OUT
        rec.error = error
        self._timed_out[rec.reference_id] = rec
        self._recorder.event(rec, Status.TIMED_OUT, error)
        self._settled(rec)

    def _settled(self, rec: Record) -> None:
        cut_short(rec)
        self.user_events.settled(rec)
        if self._on_outcome is not None:
            self._on_outcome(rec)

    # -- notifications ----------------------------------------------------------
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
            rec = self.pending.pop(ref, None)
            if rec is not None:
                self._resolve(rec, data)
                continue
            late = self._timed_out.pop(ref, None)
            if late is not None and data.get("notificationType") == self._success:
                self._resolve(late, data)
                self._recorder.upgraded(late, Status.TIMED_OUT)
                self._settled(late)
            elif late is not None:
                self._timed_out[ref] = late
            elif self._ref_prefix is not None and not ref.startswith(self._ref_prefix):
                self._unmatched(channel, "referenceId of no row of this run", data)
            else:
                self.duplicate_acks += 1

    def _user_event(self, channel: str | None, data: dict[str, Any]) -> None:
        match = self.user_events.match(data)
        rec = match.record
        if match.verdict is UserEventVerdict.HANDLE and rec is not None:
            rec.record_handle = _handle(match.handle)
            self.record_handles += 1
            self._recorder.event(rec, "record_handle", str(match.handle))
        elif match.verdict is UserEventVerdict.ERROR and rec is not None:
            self.error_events += 1
            self.pending.pop(rec.reference_id, None)
            user_data = data.get("userData") or {}
            event = user_data.get("GSW_USER_EVENT") or data.get("messageType")
            rec.notification_type = str(event) if event else None
            rec.acked_at = self._wall()
            if rec.sent_at is not None:
                rec.latency_ms = round(max(0.0, rec.acked_at - rec.sent_at) * 1000.0, 3)
            rec.status, rec.error = Status.FAILED, match.error
            self._recorder.event(rec, Status.FAILED, rec.error)
            self._settled(rec)
        else:
            self._unmatched(channel, match.note, data)

    def _unmatched(self, channel: str | None, note: str, data: dict[str, Any]) -> None:
        self.unmatched += 1
        if self._on_unmatched is not None:
            self._on_unmatched(channel, note, data)

    def _resolve(self, rec: Record, data: dict[str, Any]) -> None:
        notification = data.get("notificationType") or data.get("messageType")
        rec.notification_type = str(notification) if notification else None
        rec.acked_at = self._wall()
        if rec.accepted_mono is not None or rec.sent_at is not None:
            sent = rec.sent_at if rec.sent_at is not None else rec.acked_at
            rec.latency_ms = round(max(0.0, rec.acked_at - sent) * 1000.0, 3)
            if self._on_latency is not None:
                self._on_latency(rec.latency_ms / 1000.0)
        was_timed_out = rec.status == Status.TIMED_OUT
        if data.get("notificationType") == self._success:
            rec.status, rec.error = Status.CANCELLED, None
        else:
            rec.status, rec.error = Status.FAILED, describe_failure(data)
        if not was_timed_out:
            self._recorder.event(rec, rec.status, rec.error)
            self._settled(rec)

    # -- time -------------------------------------------------------------------
    def channel_changed(self, up: bool) -> None:
        self.channel_up = up
        if not up:
            # whatever was sent may have had its ack published into the gap, even a
            # request whose HTTP answer is still on its way
            for rec in self.pending.values():
                rec.gap = True

    def expire(self) -> None:
        now = self._clock()
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, ref = self._deadlines.popleft()
            rec = self.pending.get(ref)
            if rec is None or rec.final or rec.deadline != deadline:
                continue  # settled meanwhile, or accepted again (a newer deadline is queued)
            if (self.heard_since is not None and rec.accepted_mono is not None
                    and now < rec.accepted_mono + self._ack_timeout + self.max_deaf
                    and not self.heard_since(rec.accepted_mono)):
                # no poll came back since GWS accepted it: the outcome may be held by a
                # deaf channel, so this is no time-out yet. Look again in a second (the
                # deque stays nearly ordered: a few entries wait up to 1 s): a poll that
                # comes back proves the channel heard all along (then a time-out), one
                # given up takes the channel down, which makes the row a gap (resent)
                rec.deadline = now + _DEAF_RECHECK
                self._deadlines.append((rec.deadline, ref))
                continue
            if rec.gap and rec.attempts < self.max_attempts:
                # the ack may have been published while nobody listened: ask once more
                # (once per gap the record was caught in, within --max-attempts POSTs)
                rec.gap = False
                rec.accepted_mono = None
                self.gap_resends += 1
                self._events.info("gap", "no outcome for a request sent around a CometD gap: "
                                  "asking again with the same referenceId")  # fmt: skip
                self._recorder.event(rec, "gap_resend")
                self._resend(rec)
                continue
            self.pending.pop(rec.reference_id, None)
            rec.status = Status.TIMED_OUT
            rec.error = f"no acknowledgement within {self._ack_timeout:g} s"
            self._timed_out[rec.reference_id] = rec
            self._recorder.event(rec, Status.TIMED_OUT, rec.error)
            self._settled(rec)

    def awaiting(self) -> int:
        """Records sent or accepted whose outcome is still unknown."""
        return len(self.pending)


_DEAF_RECHECK = 1.0

# An outcome that beats its HTTP answer is normal (the answer follows in
# milliseconds); only a POST still unanswered this long after it is cut short.
_CUT_AFTER = 1.0


def cut_short(rec: Record) -> None:
    """The row has its outcome: stop waiting for the POST's HTTP answer soon."""
    if rec.poster is not None:
        asyncio.get_running_loop().call_later(_CUT_AFTER, _cut, rec, rec.poster, rec.attempts)


def _cut(rec: Record, poster: asyncio.Task[Any], attempt: int) -> None:
    # still waiting on that same POST (not an answered one, not a later attempt)
    if rec.poster is poster and rec.attempts == attempt and not rec.cut_fired:
        rec.cut_fired = True
        poster.cancel()


def _handle(value: object) -> int | None:
    """OCS record handles are integers; anything else stays in the row's events only."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None
