"""The journal's typed shapes: a record's status, a state change, an event, a row to send.

Each shape is declared once here, and the SQL that writes or reads it is built
from its field names (see :mod:`batch_cancel.journal.store`), so the recorder and
the store cannot drift apart. They are ``NamedTuple``s on purpose: the sqlite3
module binds a tuple directly, and one is created per state change on the hot path.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

__all__ = ["FINAL", "IN_PLAY", "REPORTED", "REPORTED_PENDING", "RowEvent", "RowState", "RowToSend",
           "Status"]  # fmt: skip


class Status(StrEnum):
    """A journal row's status; the report shows ``planned`` and ``sent`` as ``pending``."""

    PLANNED = "planned"  # to be sent, nothing sent yet
    SENT = "sent"  # sent (or being retried), outcome unknown
    CANCELLED = "cancelled"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    REJECTED = "rejected"  # by planning: never sent
    DUPLICATE = "duplicate"  # by planning: repeats an earlier row, never sent
    PENDING = "pending"  # report only: planned or sent when the run ended


# Outcomes that a run does not revisit (a resume with --retry-timed-out excepted).
FINAL = frozenset({Status.CANCELLED, Status.FAILED, Status.TIMED_OUT, Status.REJECTED,
                   Status.DUPLICATE})  # fmt: skip
# What the send phase settles for a record in flight.
IN_PLAY = frozenset({Status.CANCELLED, Status.FAILED, Status.TIMED_OUT})
REPORTED_PENDING = frozenset({Status.PLANNED, Status.SENT})
# The report's vocabulary, in the order pages and summaries show it.
REPORTED = (Status.CANCELLED, Status.FAILED, Status.TIMED_OUT, Status.REJECTED, Status.DUPLICATE,
            Status.PENDING)  # fmt: skip


class RowState(NamedTuple):
    """A record's state after a change: the columns the send phase owns, ``row`` last."""

    status: Status
    attempts: int
    http_status: int | None
    status_code: int | None
    notification_type: str | None
    error: str | None
    sent_at: float | None  # wall clock (epoch seconds) of the last POST
    acked_at: float | None
    latency_ms: float | None
    record_handle: int | None  # OCS's record, from the acknowledgement's /me/internal companion
    row: int


class RowEvent(NamedTuple):
    """One line of the append-only event log."""

    row: int
    at: float  # wall clock
    event: str
    attempt: int
    http_status: int | None
    status_code: int | None
    detail: str | None


class RowToSend(NamedTuple):
    """What the send phase reads back for a record with no outcome yet."""

    row: int
    reference_id: str
    phone_sent: str
    application_id: int
    campaign: str
    calling_list: str | None  # DoNotCallRecord by phone number needs none
    device_path: str | None
    chain_attribute: str | None
    status: str
    attempts: int
    http_status: int | None
    status_code: int | None
    sent_at: float | None
    record_handle: int | None
