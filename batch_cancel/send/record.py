"""The in-memory state of a record while it is being worked on.

Only records in flight (sent, awaiting an acknowledgement, or waiting to be
retried) exist as objects; everything else lives in the journal.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from batch_cancel.journal.rows import IN_PLAY, RowState, RowToSend, Status

__all__ = ["Record"]


@dataclass(slots=True, eq=False)
class Record:
    row: int
    reference_id: str
    phone_sent: str
    application_id: int
    campaign: str
    calling_list: str | None
    device_path: str | None
    chain_attribute: str | None
    status: Status = Status.PLANNED
    attempts: int = 0
    counted_attempts: int = 0
    http_status: int | None = None
    status_code: int | None = None
    notification_type: str | None = None
    error: str | None = None
    sent_at: float | None = None  # wall clock (epoch seconds) of the last POST
    acked_at: float | None = None
    latency_ms: float | None = None
    accepted_mono: float | None = None  # monotonic time GWS accepted the last POST
    deadline: float | None = None
    gap: bool = False  # accepted while the ack channel was (or went) down
    record_handle: int | None = None  # OCS's record, from the ack's /me/internal companion
    unanswered: int = 0  # attempts whose POST got no HTTP answer within --request-timeout
    # the task waiting on the POST's HTTP answer: an outcome that arrives first cuts
    # that wait short (send/matcher.py cut_short), so a hung request does not hold
    # its sender any longer
    poster: asyncio.Task[Any] | None = None
    cut_fired: bool = False
    # (digits, campaign, list): how /me/internal user events name it (send/user_events.py)
    event_key: tuple[str, str, str] | None = None

    @classmethod
    def from_journal(cls, row: RowToSend, device_path: str | None) -> Record:
        return cls(
            row=int(row.row),
            reference_id=str(row.reference_id),
            phone_sent=str(row.phone_sent),
            application_id=int(row.application_id),
            campaign=str(row.campaign),
            calling_list=row.calling_list or None,
            device_path=row.device_path or device_path,
            chain_attribute=row.chain_attribute,
            # a timed-out record handed back (--retry-timed-out) is in play again
            status=Status.SENT if row.status == Status.TIMED_OUT else Status(row.status),
            attempts=int(row.attempts or 0),
            http_status=row.http_status,
            status_code=row.status_code,
            sent_at=row.sent_at,
            record_handle=row.record_handle,
        )

    @property
    def final(self) -> bool:
        return self.status in IN_PLAY

    def settled(self) -> bool:
        """``final``, asked again after an await (the outcome may have come meanwhile)."""
        return self.final

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
