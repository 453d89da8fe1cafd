"""What the journal writer and the send phase need from a journal store.

:class:`batch_cancel.journal.store.Journal` (SQLite) implements it; a second
store (PostgreSQL, for a fleet) implements the same few methods. The writer
(:class:`batch_cancel.journal.writer.JournalWriter`) opens its store on its own
thread and makes every call from that thread, one at a time, so a store needs no
locking of its own; a call may block (a busy lock, a slow disk), never the event loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from batch_cancel.journal.rows import RowEvent, RowState, RowToSend

__all__ = ["SendStore"]


class SendStore(Protocol):
    """The send phase's view of a journal."""

    @property
    def location(self) -> str:
        """Where the journal is, for messages (a path; a DSN without its password)."""
        ...

    def save_states(self, states: Sequence[RowState], events: Sequence[RowEvent]) -> Sequence[int]:
        """Write new record states and their events in one transaction, or raise and write nothing.

        Fenced: a row this writer no longer owns (another worker holds it, or another
        run took the journal's lock) is not written, nor its events; those rows are
        answered, and the writer drops them (it never overwrites another's outcome)."""
        ...

    def add_unmatched(self, rows: Sequence[tuple[float, str | None, str, str]]) -> None:
        """Keep notifications that matched no row: (time, channel, why, the message as JSON)."""
        ...

    def to_send(self, *, after_row: int, limit: int, retry_timed_out: bool) -> list[RowToSend]:
        """Up to ``limit`` records after ``after_row`` with no outcome yet, in row order
        (planned or sent; timed out too when asked)."""
        ...

    def get_meta(self, key: str) -> Any:
        """A value of the run's identity (JSON), or None."""
        ...

    def set_meta(self, **values: Any) -> None:
        """Store values of the run's identity (JSON)."""
        ...

    def close(self) -> None: ...
