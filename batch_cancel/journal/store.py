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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from batch_cancel.journal.rows import RowEvent, RowState, RowToSend, Status

__all__ = ["BUSY_TIMEOUT", "PLAN_COLUMNS", "RECORD_COLUMNS", "ROUND_RESET", "Journal", "next_round_reference",
           "round_changes"]  # fmt: skip

SCHEMA_VERSION = "1"

# Order matters: it is the column order of `records` and of planned-row tuples.
RECORD_COLUMNS = (
    "row", "source", "phone_number", "phone_e164", "phone_sent", "application_id",
    "campaign", "calling_list", "chain_attribute", "device_path", "reference_id",
    "status", "attempts", "http_status", "status_code", "notification_type", "error",
    "warnings", "duplicate_of", "sent_at", "acked_at", "latency_ms", "record_handle",
)  # fmt: skip
# The SQL for the send phase's shapes is built from their fields (journal/rows.py).
_SAVE_STATE = (f"UPDATE records SET {', '.join(f'{c}=?' for c in RowState._fields[:-1])} "
               "WHERE row=?")  # fmt: skip
# Fenced by the run lock's token: a run whose lock was taken over writes nothing.
_SAVE_STATE_FENCED = _SAVE_STATE + " AND EXISTS (SELECT 1 FROM run_lock WHERE id = 1 AND token = ?)"
_ADD_EVENT = (f"INSERT INTO events({', '.join(RowEvent._fields)}) "
              f"VALUES({', '.join('?' * len(RowEvent._fields))})")  # fmt: skip
_SELECT_TO_SEND = f"SELECT {', '.join(RowToSend._fields)} FROM records"
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


class Journal:
    """Thin typed access to the journal file; all SQL lives here."""

    def __init__(self, path: Path, db: sqlite3.Connection, fence: str | None = None) -> None:
        self.path = path
        self._db = db
        self._snapshot_live: bool | None = None  # unknown until looked at
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

    # -- identity --------------------------------------------------------------
    def get_meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def set_meta(self, **values: Any) -> None:
        with self.transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)",
                [(k, json.dumps(v, sort_keys=True)) for k, v in values.items()],
            )

    def is_new(self) -> bool:
        return self.get_meta("run_id") is None

    # -- planning ----------------------------------------------------------------
    def reset_plan(self) -> None:
        """Forget a plan that was interrupted half-way (nothing was sent from it)."""
        with self.transaction():
            self._db.execute("DELETE FROM records")
            self._db.execute("DELETE FROM events")
            self._drop_snapshot()

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

    def duplicates_between(self, first: int, last: int) -> list[tuple[int, int]]:
        """(row, duplicate_of) of the duplicates among rows first..last, in row order."""
        cur = self._db.execute(
            "SELECT row, duplicate_of FROM records WHERE row BETWEEN ? AND ? "
            "AND status='duplicate' ORDER BY row",
            (first, last),
        )
        return [(int(r), int(d)) for r, d in cur.fetchall()]

    # -- the plan snapshot ---------------------------------------------------------
    # Reading a million rows back out of SQLite costs the sqlite3 module far more
    # than planning them, so the planner also stores each batch as it went in
    # (opaque bytes, see snapshot.py). It describes the records exactly until the
    # first state change, which drops it: save_states, add_records, reset_plan.
    def add_snapshot(self, first_row: int, data: bytes) -> None:
        self._db.execute("INSERT INTO plan_snapshot(first_row, data) VALUES(?, ?)",
                         (first_row, data))

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
            last = None
            while True:
                cur = self._db.execute(
                    "SELECT first_row, data FROM plan_snapshot WHERE first_row > ? "
                    "ORDER BY first_row LIMIT 1", (-1 if last is None else last,))
                row = cur.fetchone()
                if row is None:
                    return
                last = row[0]
                yield bytes(row[1])

        return info, blobs()

    def _drop_snapshot(self) -> None:
        if self._snapshot_live is False:
            return
        self._db.execute("DELETE FROM meta WHERE key='plan_snapshot'")
        self._db.execute("DELETE FROM plan_snapshot")
        self._snapshot_live = False

    # -- sending -----------------------------------------------------------------
    def to_send(self, *, after_row: int, limit: int, retry_timed_out: bool) -> list[RowToSend]:
        """Records with no outcome yet after ``after_row``, in input order; timed-out ones when asked."""
        statuses = [Status.PLANNED, Status.SENT] + ([Status.TIMED_OUT] if retry_timed_out else [])
        marks = ",".join("?" * len(statuses))
        cur = self._db.execute(
            f"{_SELECT_TO_SEND} WHERE row > ? AND status IN ({marks}) ORDER BY row LIMIT ?",
            (after_row, *statuses, limit),
        )
        return [RowToSend._make(values) for values in cur.fetchall()]

    def start_round(self, *, retry_failed: bool, retry_timed_out: bool, at: float,
                    window: float = 0.0) -> tuple[int, float | None]:
        """A retry round of the job: failed rows planned again (``--retry-failed``), and the
        time before which timed-out rows are sent again (``--retry-timed-out``).

        One run holds the journal's lock, so a round here is always this run's own:
        answers (failed rows planned again, None: every timed-out row is sent again).
        """
        if not retry_failed:
            return 0, None
        rows = self._db.execute(
            "SELECT row, reference_id, error FROM records WHERE status='failed' ORDER BY row"
        ).fetchall()
        if not rows:
            return 0, None
        updates, events = round_changes(rows, at)
        with self.transaction():
            self._drop_snapshot()
            self._db.executemany(f"UPDATE records SET {ROUND_RESET} WHERE row=?2", updates)
            self._db.executemany(
                "INSERT INTO events(row, at, event, attempt, http_status, status_code, detail)"
                " VALUES(?,?,?,?,?,?,?)",
                events,
            )
        return len(rows), None

    def add_unmatched(self, rows: Sequence[tuple[float, str | None, str, str]]) -> None:
        """Notifications that matched no row: (time, channel, note, JSON data)."""
        if rows:
            with self.transaction():
                self._db.executemany(
                    "INSERT INTO unmatched(at, channel, note, data) VALUES(?,?,?,?)", rows
                )

    def unmatched_count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM unmatched").fetchone()[0])

    def first_unmatched(self, limit: int = 50) -> list[tuple[float, str | None, str, str]]:
        cur = self._db.execute(
            "SELECT at, channel, note, data FROM unmatched ORDER BY id LIMIT ?", (limit,)
        )
        return [(float(a), c, str(n or ""), str(d)) for a, c, n, d in cur.fetchall()]

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
                    cur = self._db.executemany(_SAVE_STATE_FENCED, ((*s, fence) for s in states))
                    if cur.rowcount < len(states):
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

    # -- reading -------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        cur = self._db.execute("SELECT status, COUNT(*) FROM records GROUP BY status")
        return {status: int(n) for status, n in cur.fetchall()}

    def duplicate_of_unsuccessful(self) -> int:
        """Duplicates whose first row did not end cancelled (they spoil a green run)."""
        cur = self._db.execute(
            "SELECT COUNT(*) FROM records d JOIN records f ON d.duplicate_of = f.row "
            "WHERE d.status='duplicate' AND f.status != 'cancelled'"
        )
        return int(cur.fetchone()[0])

    def iter_rows(self, batch: int = 5000) -> Iterator[dict[str, Any]]:
        cur = self._db.execute("SELECT * FROM records ORDER BY row")
        names = [d[0] for d in cur.description]
        while rows := cur.fetchmany(batch):
            for values in rows:
                yield dict(zip(names, values, strict=True))

    def first_rejected(self, limit: int = 10) -> list[tuple[int, str, str]]:
        cur = self._db.execute(
            "SELECT row, COALESCE(phone_number, ''), COALESCE(error, '') FROM records "
            "WHERE status='rejected' ORDER BY row LIMIT ?",
            (limit,),
        )
        return [(int(r), str(p), str(e)) for r, p, e in cur.fetchall()]

    def events_for(self, row: int) -> list[tuple[Any, ...]]:
        cur = self._db.execute(
            "SELECT at, event, attempt, http_status, status_code, detail FROM events "
            "WHERE row=? ORDER BY id",
            (row,),
        )
        return list(cur.fetchall())

    def transaction(self) -> _Transaction:
        return _Transaction(self._db)


# What a retry round resets on a failed row (its new referenceId is the first parameter).
ROUND_RESET = ("status='planned', reference_id=?1, attempts=0, http_status=NULL, status_code=NULL, "
                "notification_type=NULL, error=NULL, acked_at=NULL, latency_ms=NULL, record_handle=NULL")


def round_changes(failed: Iterable[Sequence[Any]], at: float
                  ) -> tuple[list[tuple[str, int]], list[tuple[Any, ...]]]:  # fmt: skip
    """A retry round for failed rows ``(row, referenceId, error)``, for either store:
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


class _Refused(Exception):
    """The fence refused a write (rolled back by the transaction's exit)."""


def next_round_reference(ref: str) -> str:
    """``R`` -> ``R-r1`` -> ``R-r2``: the referenceId of a failed row's next round."""
    stem, sep, number = ref.rpartition("-r")
    if sep and number.isdigit() and stem:
        return f"{stem}-r{int(number) + 1}"
    return f"{ref}-r1"


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

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
