"""Matches CometD messages to the requests that caused them, by referenceId.

A referenceId is registered *before* its POST goes out, because GWS may publish
the outcome before it answers the HTTP request. Deadlines start when GWS accepts
the request; the ack timeout is the same for every record, so deadlines arrive
in acceptance order and a deque is enough.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from batch_cancel.journal.rows import Status
from batch_cancel.journal.writer import Recorder
from batch_cancel.log_once import OncePerInterval
from batch_cancel.send.record import Record

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
        self.gap_resends = 0
        self._events = OncePerInterval(log)
        self._on_latency = on_latency  # POST -> outcome seconds, for --metrics-file

    # -- requests ---------------------------------------------------------------
    def register(self, rec: Record) -> None:
        self.pending[rec.reference_id] = rec
        self._timed_out.pop(rec.reference_id, None)

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

    # -- notifications ----------------------------------------------------------
    def on_messages(self, messages: list[dict[str, Any]]) -> None:
        for message in messages:
            data = message.get("data")
            if not isinstance(data, dict):
                continue
            ref = data.get("referenceId")
            if not isinstance(ref, str):
                continue
            rec = self.pending.pop(ref, None)
            if rec is not None:
                self._resolve(rec, data)
                continue
            late = self._timed_out.pop(ref, None)
            if late is not None and data.get("notificationType") == self._success:
                self._resolve(late, data)
                self._recorder.upgraded(late, Status.TIMED_OUT)
            elif late is not None:
                self._timed_out[ref] = late
            else:
                self.duplicate_acks += 1

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

    def awaiting(self) -> int:
        """Records sent or accepted whose outcome is still unknown."""
        return len(self.pending)
