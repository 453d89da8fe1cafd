"""The run's journal: one SQLite file (WAL) that makes every record's fate answerable.

It holds the run's identity (run id, input files with size and SHA-256, the
effective configuration, never a secret), one row per input row with its current
state, and an append-only log of state transitions. The report is always
rebuilt from it. While records are sent, the state changes are buffered by
:class:`batch_cancel.journal.writer.Recorder` and committed in batches by the
journal writer, on a thread and a connection of its own (see
:mod:`batch_cancel.journal.interface` for what it needs from a store).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from batch_cancel.journal.base import (
    RECORD_COLUMNS,
    ROUND_RESET,
    JournalBase,
    next_round_reference,
    round_changes,
)
from batch_cancel.journal.rows import RowEvent, RowState, Status

__all__ = ["BUSY_TIMEOUT", "PLAN_COLUMNS", "RECORD_COLUMNS", "ROUND_RESET", "Journal", "next_round_reference",
           "round_changes"]  # fmt: skip

SCHEMA_VERSION = "1"

# The SQL for the send phase's shapes is built from their fields (journal/rows.py).
_SAVE_STATE = (f"UPDATE records SET {', '.join(f'{c}=?' for c in RowState._fields[:-1])} "
               "WHERE row=?")  # fmt: skip
# Fenced by the run lock's token: a run whose lock was taken over writes nothing.
_SAVE_STATE_FENCED = _SAVE_STATE + " AND EXISTS (SELECT 1 FROM run_lock WHERE id = 1 AND token = ?)"
# A record in flight (sent, no outcome yet) has no notification, error or ack time: its
# state is written by a narrower statement, those columns NULL in the SQL itself. Half
# the CPU of the whole row's (3.6 against 6.0 us a row, executemany of 10,000 rows, medians
# of 7), and it is about every other state a run writes: a record whose ack comes after
# the commit that took its POST is written once in flight, once with its outcome.
_IN_FLIGHT = ("status", "attempts", "http_status", "status_code", "sent_at", "record_handle")
_SAVE_IN_FLIGHT = (f"UPDATE records SET {', '.join(f'{c}=?' for c in _IN_FLIGHT)}, "
                   "notification_type=NULL, error=NULL, acked_at=NULL, latency_ms=NULL WHERE row=?"
                   " AND EXISTS (SELECT 1 FROM run_lock WHERE id = 1 AND token = ?)")  # fmt: skip
_ADD_EVENT = (f"INSERT INTO events({', '.join(RowEvent._fields)}) "
              f"VALUES({', '.join('?' * len(RowEvent._fields))})")  # fmt: skip
# What the planner supplies per row; status and reference_id follow from them.
PLAN_COLUMNS = (
    "row", "source", "phone_number", "phone_e164", "phone_sent", "application_id",
    "campaign", "calling_list", "chain_attribute", "device_path", "error", "warnings",
)  # fmt: skip
# A status is bound as its text. Without an adapter the sqlite3 module asks each
# StrEnum member for ``__conform__`` (an AttributeError raised and caught per value)
# before binding it as the str it is: measured 1.9 against 2.6-3.3 us per row of
# two statuses (executemany of 50,000 rows, medians of 5).
sqlite3.register_adapter(Status, str.__str__)
_ROWS_PER_INSERT = 50  # a fifth faster than one row per statement; more gains nothing
# Events go _ROWS_PER_INSERT to a statement too (each statement executed also hands
# the interpreter lock back to the event loop and takes it again): the writer's CPU
# per record is 0.66-0.86x of one event per statement (benchmarks/journal_writes.py).
_ADD_EVENTS = _ADD_EVENT + "".join(
    f", ({', '.join('?' * len(RowEvent._fields))})" for _ in range(_ROWS_PER_INSERT - 1)
)
# How long a statement waits for another connection's lock before it fails (the
# sqlite3 module's default, made explicit): the writer retries a failed commit.
BUSY_TIMEOUT = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    row INTEGER PRIMARY KEY, source TEXT, phone_number TEXT, phone_e164 TEXT, phone_sent TEXT,
    application_id INTEGER, campaign TEXT, calling_list TEXT, chain_attribute TEXT,
    device_path TEXT, reference_id TEXT, status TEXT NOT NULL, attempts INTEGER NOT NULL,
    http_status INTEGER, status_code INTEGER, notification_type TEXT, error TEXT,
    warnings TEXT, duplicate_of INTEGER, sent_at REAL, acked_at REAL, latency_ms REAL,
    record_handle INTEGER
);
CREATE TABLE IF NOT EXISTS plan_snapshot (first_row INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, row INTEGER NOT NULL, at REAL NOT NULL, event TEXT NOT NULL,
    attempt INTEGER, http_status INTEGER, status_code INTEGER, detail TEXT
);
-- what the server told that matched no row: kept, so nothing it says is lost
CREATE TABLE IF NOT EXISTS unmatched (
    id INTEGER PRIMARY KEY, at REAL NOT NULL, channel TEXT, note TEXT, data TEXT NOT NULL
);
"""
# Columns added after the first journals were written: (table, column, type).
_ADDED_COLUMNS = (("records", "record_handle", "INTEGER"),)


class Journal(JournalBase):
    """The SQLite dialect of the journal (base.py): one run per file."""

    # one run holds the file's lock: a retry round asked for is always this run's own
    _rounds_shared = False

    def __init__(self, path: Path, db: sqlite3.Connection, fence: str | None = None) -> None:
        self.path = path
        self._db = db
        # the run lock's token (journal/lock.py): every state write carries it
        self.fence = fence

    def reopen(self, busy_timeout: float = BUSY_TIMEOUT) -> Callable[[], Journal]:
        """How another thread opens its own connection to this journal, with the same fence."""
        path, fence = self.path, self.fence
        return lambda: Journal.open(path, busy_timeout=busy_timeout, fence=fence)

    def running_workers(self) -> int:
        """Other runs working on this journal now: none (one run per journal, by its lock)."""
        return 0

    @classmethod
    def open(cls, path: Path, *, busy_timeout: float = BUSY_TIMEOUT, fence: str | None = None) -> Journal:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=busy_timeout, isolation_level=None,
                             check_same_thread=False)  # fmt: skip
        db.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (what Airflow's SIGKILL is);
        # only a power cut could lose the last commit.
        db.execute("PRAGMA synchronous=NORMAL")
        # all the tables or none: a disk that fills up half-way must not leave a journal
        # that the next run cannot tell from another program's database
        db.executescript(f"BEGIN IMMEDIATE;\n{_SCHEMA}\nCOMMIT;")
        for table, column, kind in _ADDED_COLUMNS:
            have = {r[1] for r in db.execute(f"PRAGMA table_info({table})")}
            if column not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        return cls(path, db, fence)

    @property
    def location(self) -> str:
        return str(self.path)

    @property
    def spill_dir(self) -> Path:
        """Where planning may spill temporary files: beside the journal."""
        return self.path.parent

    def close(self) -> None:
        self._db.close()

    # -- the dialect's primitives (base.py) ------------------------------------------
    def _sql(self, query: str) -> str:
        return query.format(t="", job="1=1", run="")

    def _select(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self._db.execute(self._sql(query), params).fetchall())

    def _execute(self, query: str, params: Sequence[Any] = ()) -> int:
        return int(self._db.execute(self._sql(query), params).rowcount)

    def _put_meta(self, values: Mapping[str, Any]) -> None:
        self._db.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)",
                             [(k, json.dumps(v, sort_keys=True)) for k, v in values.items()])  # fmt: skip

    def _add_events(self, events: Sequence[tuple[Any, ...]]) -> None:
        self._db.executemany("INSERT INTO events(row, at, event, attempt, http_status, status_code, detail)"
                             " VALUES(?,?,?,?,?,?,?)", events)  # fmt: skip

    @contextlib.contextmanager
    def _round_guard(self) -> Iterator[tuple[bool, float]]:
        yield False, time.time()

    def reading(self) -> contextlib.AbstractContextManager[Any]:
        """A read transaction: in WAL mode every read inside sees one commit's state."""
        return _Transaction(self._db, "BEGIN DEFERRED")

    # -- planning ----------------------------------------------------------------
    @contextlib.contextmanager
    def planning(self) -> Iterator[None]:
        """While a plan is written, its commits need not reach the disk one by one.

        Nothing is sent while planning, and a plan that did not finish is thrown
        away and made again (``reset_plan``), so only the end matters: a full
        checkpoint with syncing back on makes the whole plan durable before any
        record can be sent. Not syncing on the way saves a tenth of planning.
        """
        self._db.execute("PRAGMA synchronous=OFF")
        try:
            yield
        finally:
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA wal_checkpoint(FULL)")

    def add_plan(self, columns: Mapping[str, Sequence[Any]], constants: Mapping[str, Any],
                 ref_prefix: str) -> None:
        """Insert the plan of one batch: a row is ``planned`` unless it has an error.

        ``columns`` (a list per row-varying name of PLAN_COLUMNS, "row" and
        "error" among them) and ``constants`` (one value for every row) cover
        PLAN_COLUMNS between them. This insert is most of planning's time, so:
        text in ``columns`` is "" for NULL (the sqlite3 module binds None several
        times slower than a string), constants are literals in the statement,
        and one statement inserts _ROWS_PER_INSERT rows. A planned row's
        reference is ``ref_prefix`` + its row number.
        """
        order = [name for name in PLAN_COLUMNS if name in columns]
        if "row" not in order or "error" not in order:
            raise ValueError("add_plan needs per-row 'row' and 'error' columns")
        n = len(columns["row"])
        fixed = {name: constants[name] for name in PLAN_COLUMNS
                 if name not in columns and constants.get(name) is not None}
        fixed["reference prefix"] = ref_prefix
        literals = {k: self._literal(v) for k, v in fixed.items()}
        extra = [k for k, v in literals.items() if v is None]  # bound after all
        width = len(order) + len(extra)
        full = n - n % _ROWS_PER_INSERT
        for start, stop, rows in ((0, full, _ROWS_PER_INSERT), (full, n, 1)):
            if start == stop:
                continue
            sql = self._plan_insert(order, literals, extra, rows)
            values: list[Iterable[Any]] = [columns[name][start:stop] for name in order]
            values += [itertools.repeat(fixed[k], stop - start) for k in extra]
            flat = itertools.chain.from_iterable(zip(*values, strict=True))
            self._db.executemany(sql, zip(*[flat] * (width * rows), strict=True))

    @staticmethod
    def _plan_insert(order: list[str], literals: dict[str, str | None], extra: list[str],
                     rows: int) -> str:
        width = len(order) + len(extra)
        tuples = []
        for r in range(rows):
            mark = {name: f"?{r * width + i + 1}" for i, name in enumerate(order + extra)}
            value = {name: m if name in ("row", "application_id") else f"NULLIF({m}, '')"
                     for name, m in mark.items() if name in order}
            value.update({k: mark[k] if v is None else v for k, v in literals.items()})
            error, row, prefix = mark["error"], mark["row"], value.pop("reference prefix")
            tuples.append("(" + ", ".join(value[name] for name in PLAN_COLUMNS if name in value)
                          + f", CASE WHEN {error} = '' THEN 'planned' ELSE 'rejected' END"
                          + f", CASE WHEN {error} = '' THEN {prefix} || {row} END, 0)")
        names = [name for name in PLAN_COLUMNS if name in order or name in literals]
        return (f"INSERT INTO records({', '.join(names)}, status, reference_id, attempts) "
                f"VALUES {', '.join(tuples)}")

    @staticmethod
    def _literal(value: Any) -> str | None:
        """SQL for a constant, or None when it must be bound (a NUL in text, a float)."""
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
        if isinstance(value, str) and "\0" not in value:
            return "'" + value.replace("'", "''") + "'"
        return None

    def mark_duplicates(self, pairs: Iterable[tuple[int, int]]) -> int:
        """(row, first row): the row repeats the first one and will not be sent."""
        cur = self._db.executemany(
            "UPDATE records SET status='duplicate', reference_id=NULL, duplicate_of=?2 "
            "WHERE row=?1 AND status='planned'",
            pairs,
        )
        return cur.rowcount

    def add_records(self, rows: Iterable[Sequence[Any]]) -> None:
        """Insert whole records (RECORD_COLUMNS), as they are."""
        self._drop_snapshot()
        marks = ",".join("?" * len(RECORD_COLUMNS))
        self._db.executemany(f"INSERT INTO records VALUES({marks})", rows)

    def add_snapshot(self, first_row: int, data: bytes) -> None:
        self._db.execute("INSERT INTO plan_snapshot(first_row, data) VALUES(?, ?)",
                         (first_row, data))

    # -- sending -----------------------------------------------------------------
    def add_unmatched(self, rows: Sequence[tuple[float, str | None, str, str]]) -> None:
        """Notifications that matched no row: (time, channel, note, JSON data)."""
        if rows:
            with self.transaction():
                self._db.executemany(
                    "INSERT INTO unmatched(at, channel, note, data) VALUES(?,?,?,?)", rows
                )

    def save_states(self, states: Sequence[RowState], events: Sequence[RowEvent]) -> list[int]:
        """One transaction: new record states and their events (all or nothing).

        With a fence (the run lock's token), the UPDATE itself checks that the lock is
        still this run's: when another run took it over, nothing is written and every
        row is answered as refused.
        """
        try:
            with self.transaction():
                if states and self.fence is not None:
                    fence = self.fence
                    whole, in_flight = _split(states, fence)
                    written = 0
                    if whole:
                        written += self._db.executemany(_SAVE_STATE_FENCED, whole).rowcount
                    if in_flight:
                        written += self._db.executemany(_SAVE_IN_FLIGHT, in_flight).rowcount
                    if written < len(states):
                        raise _Refused  # the lock is the whole journal's: all or nothing
                elif states:
                    self._db.executemany(_SAVE_STATE, states)
                self._drop_snapshot()
                full = len(events) - len(events) % _ROWS_PER_INSERT
                if full:
                    flat = itertools.chain.from_iterable(events[:full])
                    width = len(RowEvent._fields) * _ROWS_PER_INSERT
                    self._db.executemany(_ADD_EVENTS, zip(*[flat] * width, strict=True))
                if full < len(events):
                    self._db.executemany(_ADD_EVENT, events[full:])
        except _Refused:
            return sorted({int(s[-1]) for s in states})
        return []

    def transaction(self) -> _Transaction:
        return _Transaction(self._db)


def _split(states: Sequence[RowState], fence: str
           ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:  # fmt: skip
    """The states to write whole, and those of records in flight (_SAVE_IN_FLIGHT), each
    with the fence's token last."""
    whole: list[tuple[Any, ...]] = []
    in_flight: list[tuple[Any, ...]] = []
    sent = Status.SENT
    for (status, attempts, http_status, status_code, notification_type, error, sent_at, acked_at,
         latency_ms, record_handle, row) in states:  # fmt: skip
        if status is sent and notification_type is None and error is None and acked_at is None \
                and latency_ms is None:
            in_flight.append((status, attempts, http_status, status_code, sent_at, record_handle, row,
                              fence))  # fmt: skip
        else:
            whole.append((status, attempts, http_status, status_code, notification_type, error, sent_at,
                          acked_at, latency_ms, record_handle, row, fence))  # fmt: skip
    return whole, in_flight


class _Refused(Exception):
    """The fence refused a write (rolled back by the transaction's exit)."""


class _Transaction:
    def __init__(self, db: sqlite3.Connection, begin: str = "BEGIN IMMEDIATE") -> None:
        self._db = db
        self._begin = begin

    def __enter__(self) -> None:
        self._db.execute(self._begin)

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is not None:
            self._db.execute("ROLLBACK")
            return
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error:
            # a COMMIT that failed (disk full, I/O error) may leave the transaction
            # open: end it, so the caller's retry starts from a clean state
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise
