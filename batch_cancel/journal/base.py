"""The journal interface, written once over two SQL dialects.

Planning, sending, the report, ``status`` and ``merge`` use :class:`JournalBase`;
:class:`batch_cancel.journal.store.Journal` (SQLite, one file per run) and
:class:`batch_cancel.journal.postgres.PgJournal` (PostgreSQL, one job among many)
are its two dialects. What is the same in both is here, once: the run's identity
(meta), the plan snapshot, resetting an interrupted plan, retry rounds, and the
reads of the report and ``status``. A dialect supplies a few primitives:

* ``_select`` / ``_execute``: run a statement written here once, where ``?`` marks
  a parameter, ``{t}`` stands before each table name (PostgreSQL's schema) and
  ``{job}`` is a condition true of this job's rows only (``run_id = …`` in
  PostgreSQL, always true in SQLite, whose file is one run);
* ``_put_meta``, ``_add_events``, ``_round_guard``, ``transaction`` and ``reading``
  (one consistent snapshot for a report taken while workers write), and what only
  it can do fast (planning inserts, fenced state writes).
"""

from __future__ import annotations

import contextlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from batch_cancel.journal.rows import RowEvent, RowState, RowToSend, Status

__all__ = ["RECORD_COLUMNS", "ROUND_RESET", "JournalBase", "next_round_reference", "round_changes"]

# Order matters: it is the column order of `records` and of planned-row tuples.
RECORD_COLUMNS = (
    "row", "source", "phone_number", "phone_e164", "phone_sent", "application_id",
    "campaign", "calling_list", "chain_attribute", "device_path", "reference_id",
    "status", "attempts", "http_status", "status_code", "notification_type", "error",
    "warnings", "duplicate_of", "sent_at", "acked_at", "latency_ms", "record_handle",
)  # fmt: skip
# What a retry round resets on a failed row (its new referenceId is the first parameter).
ROUND_RESET = ("status='planned', reference_id=?1, attempts=0, http_status=NULL, status_code=NULL, "
               "notification_type=NULL, error=NULL, acked_at=NULL, latency_ms=NULL, record_handle=NULL")
_TO_SEND = ", ".join(RowToSend._fields)


class JournalBase(ABC):
    """One run's journal, whichever database holds it."""

    # a retry round may be shared with other workers (PostgreSQL); SQLite: one run per file
    _rounds_shared = True

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the journal is, for messages (a path; a DSN without its password)."""

    # -- the dialect's primitives ------------------------------------------------------
    @abstractmethod
    def _select(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of ``query`` (``?``, ``{t}``, ``{job}``: see the module's docstring)."""

    @abstractmethod
    def _execute(self, query: str, params: Sequence[Any] = ()) -> int:
        """Run a statement written the same way; answers the rows it changed."""

    @abstractmethod
    def _put_meta(self, values: Mapping[str, Any]) -> None:
        """Store identity values (JSON), inside the caller's transaction."""

    @abstractmethod
    def _add_events(self, events: Sequence[tuple[Any, ...]]) -> None:
        """Append events (row, at, event, attempt, http_status, status_code, detail)."""

    @abstractmethod
    def _round_guard(self) -> contextlib.AbstractContextManager[tuple[bool, float]]:
        """Inside the caller's transaction: (another worker's round is under way, the
        database's time now). One run per SQLite journal: never."""

    @abstractmethod
    def transaction(self) -> contextlib.AbstractContextManager[Any]: ...

    @abstractmethod
    def reading(self) -> contextlib.AbstractContextManager[Any]:
        """Reads inside see one consistent state of the journal (a report taken while
        workers write: every row as of one moment, never half a commit)."""

    @abstractmethod
    def close(self) -> None: ...

    # -- what only a dialect does fast (planning inserts) or safely (fenced writes) -----
    @property
    @abstractmethod
    def spill_dir(self) -> Path:
        """Where planning may spill temporary files."""

    @abstractmethod
    def planning(self) -> contextlib.AbstractContextManager[None]:
        """While a plan is written (a plan that did not finish is made again)."""

    @abstractmethod
    def add_plan(self, columns: Mapping[str, Sequence[Any]], constants: Mapping[str, Any],
                 ref_prefix: str) -> None:
        """Insert the plan of one batch (PLAN_COLUMNS between ``columns`` and ``constants``)."""

    @abstractmethod
    def mark_duplicates(self, pairs: Iterable[tuple[int, int]]) -> int:
        """(row, first row): the row repeats the first one and will not be sent."""

    @abstractmethod
    def add_records(self, rows: Iterable[Sequence[Any]]) -> None:
        """Insert whole records (RECORD_COLUMNS), as they are."""

    @abstractmethod
    def save_states(self, states: Sequence[RowState], events: Sequence[RowEvent]) -> Sequence[int]:
        """New record states and their events in one transaction, fenced (interface.SendStore)."""

    @abstractmethod
    def add_unmatched(self, rows: Sequence[tuple[float, str | None, str, str]]) -> None:
        """Notifications that matched no row: (time, channel, note, JSON data)."""

    @abstractmethod
    def reopen(self, busy_timeout: float) -> Callable[[], JournalBase]:
        """How another thread opens its own connection to this journal, with the same fence."""

    @abstractmethod
    def running_workers(self) -> int:
        """Other workers of this job running now (SQLite: none, one run per file)."""

    # -- identity ------------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        rows = self._select("SELECT value FROM {t}meta WHERE {job} AND key=?", [key])
        return None if not rows else json.loads(rows[0][0])

    def set_meta(self, **values: Any) -> None:
        with self.transaction():
            self._put_meta(values)

    def is_new(self) -> bool:
        return self.get_meta("run_id") is None

    # -- planning ------------------------------------------------------------------
    def reset_plan(self) -> None:
        """Forget a plan that was interrupted half-way (nothing was sent from it)."""
        with self.transaction():
            for table in ("records", "events", "plan_snapshot"):
                self._execute(f"DELETE FROM {{t}}{table} WHERE {{job}}")
            self._execute("DELETE FROM {t}meta WHERE {job} AND key='plan_snapshot'")
            self._snapshot_dropped()

    def duplicates_between(self, first: int, last: int) -> list[tuple[int, int]]:
        """(row, duplicate_of) of the duplicates among rows first..last, in row order."""
        rows = self._select("SELECT row, duplicate_of FROM {t}records WHERE {job} AND row BETWEEN ? AND ? "
                            "AND status='duplicate' ORDER BY row", [first, last])  # fmt: skip
        return [(int(r), int(d)) for r, d in rows]

    # -- the plan snapshot ---------------------------------------------------------
    # Reading a million rows back costs far more than planning them, so the planner
    # also stores each batch as it went in (opaque bytes, see snapshot.py). It
    # describes the records exactly until the first state change, which drops it.
    @abstractmethod
    def add_snapshot(self, first_row: int, data: bytes) -> None: ...

    def seal_snapshot(self, info: dict[str, Any]) -> None:
        """Planning is over: the snapshot (with ``info``) now stands for the records."""
        self.set_meta(plan_snapshot=info)
        self._snapshot_live = True

    def snapshot(self) -> tuple[dict[str, Any], Iterator[bytes]] | None:
        """The sealed snapshot's info and its batches in row order; None if there is none."""
        info = self.get_meta("plan_snapshot")
        if not info:
            return None

        def blobs() -> Iterator[bytes]:
            last = -1
            while True:
                rows = self._select("SELECT first_row, data FROM {t}plan_snapshot WHERE {job} AND "
                                    "first_row > ? ORDER BY first_row LIMIT 1", [last])  # fmt: skip
                if not rows:
                    return
                last = rows[0][0]
                yield bytes(rows[0][1])

        return info, blobs()

    def snapshot_blob(self, key: int) -> bytes | None:
        """The snapshot's part kept under ``key`` (snapshot.py keeps one outside the batches)."""
        rows = self._select("SELECT data FROM {t}plan_snapshot WHERE {job} AND first_row = ?", [key])
        return bytes(rows[0][0]) if rows else None

    _snapshot_live: bool | None = None  # unknown until looked at

    def _drop_snapshot(self) -> None:
        if self._snapshot_live is False:
            return
        self._execute("DELETE FROM {t}meta WHERE {job} AND key='plan_snapshot'")
        self._execute("DELETE FROM {t}plan_snapshot WHERE {job}")
        self._snapshot_dropped()

    def _snapshot_dropped(self) -> None:
        self._snapshot_live = False

    # -- sending -----------------------------------------------------------------
    def to_send(self, *, after_row: int, limit: int, retry_timed_out: bool) -> list[RowToSend]:
        """Records with no outcome yet after ``after_row``, in input order; timed-out ones when asked."""
        statuses = [Status.PLANNED, Status.SENT] + ([Status.TIMED_OUT] if retry_timed_out else [])
        marks = ", ".join("?" * len(statuses))
        rows = self._select(f"SELECT {_TO_SEND} FROM {{t}}records WHERE {{job}} AND row > ? "
                            f"AND status IN ({marks}) ORDER BY row LIMIT ?",
                            [after_row, *map(str, statuses), limit])  # fmt: skip
        return [RowToSend._make(values) for values in rows]

    def start_round(self, *, retry_failed: bool, retry_timed_out: bool, at: float,
                    window: float = 60.0) -> tuple[int, float | None]:
        """A retry round of the job, one step done once per request, atomically.

        Failed rows are planned again (``--retry-failed``, each with a new
        referenceId); timed-out rows sent before ``at`` are sent again
        (``--retry-timed-out``). Workers started together with the same request
        (or a worker joining a running fleet) must not each start a round: under
        the dialect's guard, a round starts only when no other worker is running
        and none began within ``window`` seconds; otherwise this worker joins the
        round there is. Answers (failed rows planned again by this call, the time
        before which timed-out rows are sent again; None: no such bound).
        """
        again = 0
        with self.transaction(), self._round_guard() as (busy, now):
            last = self.get_meta("round_started_at")
            joining = busy or (self._rounds_shared and last is not None and now - float(last) < window)
            if (retry_failed or retry_timed_out) and not joining:
                self._put_meta({"round_started_at": now})
                if retry_timed_out:
                    self._put_meta({"timed_out_before": at})
                if retry_failed:
                    failed = self._select("SELECT row, reference_id, error FROM {t}records WHERE {job} "
                                          "AND status='failed' ORDER BY row")  # fmt: skip
                    updates, events = round_changes(failed, at)
                    again = len(updates)
                    if updates:
                        self._drop_snapshot()
                        for ref, row in updates:
                            self._execute(f"UPDATE {{t}}records SET {ROUND_RESET.replace('?1', '?')} "
                                          "WHERE {job} AND row=?", [ref, row])  # fmt: skip
                        self._add_events(events)
            before = self.get_meta("timed_out_before") if retry_timed_out else None
        return again, None if before is None else float(before)

    # -- reading -------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        """Records by status (only statuses some record has)."""
        tallied = self._plan_tallies()
        if tallied is not None:
            return tallied
        rows = self._select("SELECT status, COUNT(*) FROM {t}records WHERE {job} GROUP BY status")
        return {str(status): int(n) for status, n in rows}

    def _plan_tallies(self) -> dict[str, int] | None:
        """The planner's own counts while its snapshot stands for the records, else None.

        The snapshot's info goes with the first state change (in that change's
        transaction), so while it is there the counts the planner sealed into it are
        the records' (a scan of a million records costs a third of a second); journals
        sealed before the counts were kept there are scanned.
        """
        if self._snapshot_live is False:  # this connection dropped it: no meta to read
            return None
        info = self.get_meta("plan_snapshot")
        counts = info.get("counts") if isinstance(info, dict) else None
        if not isinstance(counts, dict):
            return None
        return {str(status): int(n) for status, n in counts.items() if n}

    def duplicate_of_unsuccessful(self) -> int:
        """Duplicates whose first row did not end cancelled (they spoil a green run)."""
        tallied = self._plan_tallies()
        if tallied is not None:  # nothing sent yet: no first row is cancelled
            return tallied.get(Status.DUPLICATE, 0)
        rows = self._select("SELECT COUNT(*) FROM {t}records d WHERE {job} AND d.status='duplicate' AND "
                            "EXISTS (SELECT 1 FROM {t}records f WHERE {job} AND f.row = d.duplicate_of "
                            "AND f.status <> 'cancelled')")  # fmt: skip
        return int(rows[0][0]) if rows else 0

    def iter_rows(self, batch: int = 5000) -> Iterator[dict[str, Any]]:
        """Every record in row order (inside ``reading()``, all as of one moment)."""
        last = -1
        while True:
            rows = self._select(f"SELECT {', '.join(RECORD_COLUMNS)} FROM {{t}}records WHERE {{job}} "
                                "AND row > ? ORDER BY row LIMIT ?", [last, batch])  # fmt: skip
            if not rows:
                return
            for values in rows:
                yield dict(zip(RECORD_COLUMNS, values, strict=True))
            last = rows[-1][0]

    def first_rejected(self, limit: int = 10) -> list[tuple[int, str, str]]:
        rows = self._select("SELECT row, COALESCE(phone_number, ''), COALESCE(error, '') FROM {t}records "
                            "WHERE {job} AND status='rejected' ORDER BY row LIMIT ?", [limit])  # fmt: skip
        return [(int(r), str(p), str(e)) for r, p, e in rows]

    def unmatched_count(self) -> int:
        rows = self._select("SELECT COUNT(*) FROM {t}unmatched WHERE {job}")
        return int(rows[0][0]) if rows else 0

    def first_unmatched(self, limit: int = 50) -> list[tuple[float, str | None, str, str]]:
        rows = self._select("SELECT at, channel, note, data FROM {t}unmatched WHERE {job} "
                            "ORDER BY id LIMIT ?", [limit])  # fmt: skip
        return [(float(a), c, str(n or ""), str(d)) for a, c, n, d in rows]

    def events_for(self, row: int) -> list[tuple[Any, ...]]:
        return self._select("SELECT at, event, attempt, http_status, status_code, detail FROM {t}events "
                            "WHERE {job} AND row=? ORDER BY id", [row])  # fmt: skip


def round_changes(failed: Sequence[Sequence[Any]], at: float
                  ) -> tuple[list[tuple[str, int]], list[tuple[Any, ...]]]:  # fmt: skip
    """A retry round for failed rows ``(row, referenceId, error)``:
    (new referenceId, row) per row, and the ``retry_failed`` event of each.

    A failure is final for the referenceId it answered: a late or repeated failure
    message of the first round must not be taken for the outcome of the new one.
    So the row's referenceId gets a round suffix (``-r1``, ``-r2``…), and the old
    one stays in the row's events.
    """
    updates, events = [], []
    for row, ref, error in failed:
        updates.append((next_round_reference(str(ref)), int(row)))
        events.append((int(row), at, "retry_failed", None, None, None,
                       f"was {ref}: {error or 'failed'}"))  # fmt: skip
    return updates, events


def next_round_reference(ref: str) -> str:
    """``R`` -> ``R-r1`` -> ``R-r2``: the referenceId of a failed row's next round."""
    stem, sep, number = ref.rpartition("-r")
    if sep and number.isdigit() and stem:
        return f"{stem}-r{int(number) + 1}"
    return f"{ref}-r1"
