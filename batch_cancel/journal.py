"""The run's journal: one SQLite file (WAL) that makes every record's fate answerable.

It holds the run's identity (run id, input files with size and SHA-256, the
effective configuration, never a secret), one row per input row with its current
state, and an append-only log of state transitions. The report is always
rebuilt from it. Writes are buffered by :class:`batch_cancel.recorder.Recorder`
and committed in batches, so the journal does not cap throughput.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["FINAL", "RECORD_COLUMNS", "Journal"]

SCHEMA_VERSION = "1"

# Order matters: it is the column order of `records` and of planned-row tuples.
RECORD_COLUMNS = (
    "row", "source", "phone_number", "phone_e164", "phone_sent", "application_id",
    "campaign", "calling_list", "chain_attribute", "device_path", "reference_id",
    "status", "attempts", "http_status", "status_code", "notification_type", "error",
    "warnings", "duplicate_of", "sent_at", "acked_at", "latency_ms",
)  # fmt: skip
STATE_COLUMNS = (
    "status", "attempts", "http_status", "status_code", "notification_type", "error",
    "sent_at", "acked_at", "latency_ms",
)  # fmt: skip
FINAL = frozenset({"cancelled", "failed", "timed_out", "rejected", "duplicate"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    row INTEGER PRIMARY KEY, source TEXT, phone_number TEXT, phone_e164 TEXT, phone_sent TEXT,
    application_id INTEGER, campaign TEXT, calling_list TEXT, chain_attribute TEXT,
    device_path TEXT, reference_id TEXT, status TEXT NOT NULL, attempts INTEGER NOT NULL,
    http_status INTEGER, status_code INTEGER, notification_type TEXT, error TEXT,
    warnings TEXT, duplicate_of INTEGER, sent_at REAL, acked_at REAL, latency_ms REAL
);
CREATE TABLE IF NOT EXISTS dedupe (key TEXT PRIMARY KEY, row INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY, row INTEGER NOT NULL, at REAL NOT NULL, event TEXT NOT NULL,
    attempt INTEGER, http_status INTEGER, status_code INTEGER, detail TEXT
);
"""


class Journal:
    """Thin typed access to the journal file; all SQL lives here."""

    def __init__(self, path: Path, db: sqlite3.Connection) -> None:
        self.path = path
        self._db = db

    @classmethod
    def open(cls, path: Path) -> Journal:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode survives a process crash (what Airflow's SIGKILL is);
        # only a power cut could lose the last commit.
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        return cls(path, db)

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
            self._db.execute("DELETE FROM dedupe")
            self._db.execute("DELETE FROM events")

    def claim(self, keys: Sequence[tuple[str, int]]) -> dict[int, int]:
        """Record first rows for dedupe keys; answer {row: earlier row} for repeats.

        The index lives on disk, so de-duplicating millions of rows costs no memory.
        """
        duplicates: dict[int, int] = {}
        cur = self._db.cursor()
        for key, row in keys:
            cur.execute("INSERT OR IGNORE INTO dedupe(key, row) VALUES(?, ?)", (key, row))
            if cur.rowcount == 0:
                first = cur.execute("SELECT row FROM dedupe WHERE key=?", (key,)).fetchone()
                duplicates[row] = int(first[0])
        return duplicates

    def add_records(self, rows: Iterable[Sequence[Any]]) -> None:
        marks = ",".join("?" * len(RECORD_COLUMNS))
        self._db.executemany(f"INSERT INTO records VALUES({marks})", rows)

    # -- sending -----------------------------------------------------------------
    def iter_to_send(self, *, retry_timed_out: bool, batch: int = 2000) -> Iterator[dict[str, Any]]:
        """Records with no outcome yet, in input order; timed-out ones too when asked."""
        statuses = ["planned", "sent"] + (["timed_out"] if retry_timed_out else [])
        marks = ",".join("?" * len(statuses))
        last = 0
        while True:
            cur = self._db.execute(
                f"SELECT * FROM records WHERE row > ? AND status IN ({marks}) "
                f"ORDER BY row LIMIT ?",
                (last, *statuses, batch),
            )
            names = [d[0] for d in cur.description]
            rows = cur.fetchall()
            if not rows:
                return
            for values in rows:
                yield dict(zip(names, values, strict=True))
            last = rows[-1][0]

    def save_states(self, states: Sequence[Sequence[Any]], events: Sequence[Sequence[Any]]) -> None:
        """One transaction: new record states (STATE_COLUMNS + row) and their events."""
        sets = ", ".join(f"{c}=?" for c in STATE_COLUMNS)
        with self.transaction():
            if states:
                self._db.executemany(f"UPDATE records SET {sets} WHERE row=?", states)
            if events:
                self._db.executemany(
                    "INSERT INTO events(row, at, event, attempt, http_status, status_code, detail)"
                    " VALUES(?,?,?,?,?,?,?)",
                    events,
                )

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


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
