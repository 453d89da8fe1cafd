"""The journal in PostgreSQL: one job shared by a fleet of workers on any hosts.

The same journal as ``store.py`` (identity, inputs and fingerprint, per-row state,
the append-only event log, the plan snapshot), scoped by run id inside one schema
per installation, plus what a fleet needs:

- **leases**: a worker claims a batch of rows (``SELECT … FOR UPDATE SKIP LOCKED``)
  and renews its claim while it works; rows whose lease expired (the worker was
  killed or lost its host) are claimed again by another worker, which resends
  them with the same referenceId. All lease times are the server's clock, so the
  hosts' clocks need not agree.
- **workers**: one row per worker with a heartbeat and its share of the job's
  rate. A worker's share is at most ``rate / live workers`` and at most what the
  others leave, and a worker lowers its pacer before it declares a lower share
  and raises it only after declaring a higher one, so the declared shares (and
  so the sending) never add up to more than the job's rate.
- **planning**: the first worker plans under an advisory lock; the others wait
  for the plan (and take over if the planner dies: its lock goes with its
  connection).

Tables are created on first use and versioned (``schema_version``).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from batch_cancel.config import StateDb
from batch_cancel.exceptions import ConfigError, JournalUnavailable, LeaseLost
from batch_cancel.journal.rows import FINAL, RowEvent, RowState, RowToSend, Status
from batch_cancel.journal.store import PLAN_COLUMNS, RECORD_COLUMNS

# The SQL for the send phase's shapes is built from their fields (journal/rows.py).
STATE_COLUMNS = RowState._fields[:-1]
_TO_SEND = ", ".join(RowToSend._fields)

__all__ = ["SCHEMA_VERSION", "PgJournal", "is_state_url", "parse_state_url"]

SCHEMA_VERSION = 1
_OURS = ("schema", "lease")  # URL options for us; every other one goes to libpq
_TYPES = {
    "row": "BIGINT NOT NULL", "application_id": "BIGINT", "attempts": "INTEGER NOT NULL DEFAULT 0",
    "http_status": "INTEGER", "status_code": "INTEGER", "duplicate_of": "BIGINT",
    "sent_at": "DOUBLE PRECISION", "acked_at": "DOUBLE PRECISION", "latency_ms": "DOUBLE PRECISION",
    "status": "TEXT NOT NULL", "record_handle": "BIGINT",
}  # fmt: skip
_SCHEMA = """
CREATE TABLE IF NOT EXISTS {s}.jobs (
    run_id TEXT PRIMARY KEY, created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS {s}.meta (
    run_id TEXT NOT NULL REFERENCES {s}.jobs ON DELETE CASCADE, key TEXT NOT NULL,
    value TEXT NOT NULL, PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS {s}.records (
    run_id TEXT NOT NULL REFERENCES {s}.jobs ON DELETE CASCADE, {columns},
    lease_owner TEXT, lease_until TIMESTAMPTZ, PRIMARY KEY (run_id, row)
);
CREATE INDEX IF NOT EXISTS records_open ON {s}.records (run_id, row)
    WHERE status IN ('planned', 'sent');
CREATE TABLE IF NOT EXISTS {s}.plan_snapshot (
    run_id TEXT NOT NULL REFERENCES {s}.jobs ON DELETE CASCADE, first_row BIGINT NOT NULL,
    data BYTEA NOT NULL, PRIMARY KEY (run_id, first_row)
);
CREATE TABLE IF NOT EXISTS {s}.events (
    id BIGSERIAL PRIMARY KEY, run_id TEXT NOT NULL REFERENCES {s}.jobs ON DELETE CASCADE,
    row BIGINT NOT NULL, at DOUBLE PRECISION NOT NULL, event TEXT NOT NULL, attempt INTEGER,
    http_status INTEGER, status_code INTEGER, detail TEXT, worker TEXT
);
CREATE INDEX IF NOT EXISTS events_row ON {s}.events (run_id, row);
-- what the server told that matched no row: kept, so nothing it says is lost
CREATE TABLE IF NOT EXISTS {s}.unmatched (
    id BIGSERIAL PRIMARY KEY, run_id TEXT NOT NULL REFERENCES {s}.jobs ON DELETE CASCADE,
    at DOUBLE PRECISION NOT NULL, channel TEXT, note TEXT, data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS {s}.workers (
    run_id TEXT NOT NULL REFERENCES {s}.jobs ON DELETE CASCADE, worker TEXT NOT NULL,
    host TEXT NOT NULL, pid INTEGER NOT NULL, state TEXT NOT NULL,
    started_at TIMESTAMPTZ NOT NULL DEFAULT now(), heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    finished_at TIMESTAMPTZ, rate_share DOUBLE PRECISION NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, worker)
);
"""


def is_state_url(value: str) -> bool:
    return value.startswith(("postgresql://", "postgres://"))


def parse_state_url(url: str, password: str | None = None) -> StateDb:
    """``postgresql://USER@HOST:PORT/DB[?options]`` → StateDb; a password in it is refused.

    Our options: ``schema`` (default batch_cancel), ``lease`` (seconds, default 30);
    the others (sslmode, connect_timeout, …) go to libpq as they are.
    """
    parts = urlsplit(url)
    if parts.password is not None:
        raise ConfigError("--state: a password in the URL would be logged; give it in PGPASSWORD, "
                          "~/.pgpass or --state-password-file")  # fmt: skip
    if not parts.hostname or not parts.path.strip("/"):
        raise ConfigError("--state: use postgresql://USER@HOST:PORT/DB[?options]")
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"--state: {exc}") from None
    options = parse_qsl(parts.query, keep_blank_values=True)
    ours = {k: v for k, v in options if k in _OURS}
    rest = [(k, v) for k, v in options if k not in _OURS]
    schema = ours.get("schema", "batch_cancel")
    if not schema.replace("_", "").isalnum() or schema[0].isdigit() or len(schema) > 63:
        raise ConfigError(f"--state: schema {schema!r} must be letters, digits and _ (at most 63)")
    try:
        lease = float(ours.get("lease", "30"))
    except ValueError:
        raise ConfigError(f"--state: lease {ours['lease']!r} is not a number of seconds") from None
    if not 0.5 <= lease <= 3600:  # also refuses NaN
        raise ConfigError("--state: lease must be within 0.5..3600 seconds")
    conninfo = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(rest), ""))
    host = parts.hostname + (f":{port}" if port else "")
    display = f"postgresql://{parts.username or ''}@{host}{parts.path}?schema={schema}"
    return StateDb(conninfo=conninfo, display=display, schema=schema, lease=lease, password=password)


def _connect(db: StateDb) -> psycopg.Connection[Any]:
    try:
        kwargs: dict[str, Any] = {"autocommit": True, "application_name": "batch-cancel"}
        if db.password is not None:
            kwargs["password"] = db.password
        return psycopg.connect(db.conninfo, **kwargs)
    except psycopg.Error as exc:
        # libpq's message names host and user, never the password
        message = f"journal {db.display}: {' '.join(str(exc).split())}"
        if any(s in message for s in ("authentication failed", "does not exist", "no password")):
            raise ConfigError(message) from None  # a retry cannot fix these
        raise JournalUnavailable(message) from None


class PgJournal:
    """One job (run id) in a PostgreSQL journal; the same methods as the SQLite store.

    One connection, used under a lock so the writer thread and the loop's reads
    can share it (psycopg connections are thread-safe, transactions are not).
    """

    kind = "postgresql"

    def __init__(self, db: StateDb, run_id: str, conn: psycopg.Connection[Any]) -> None:
        self.db = db
        self.run_id = run_id
        self.location = f"{db.display} (run {run_id})"
        self._conn = conn
        self._lock = threading.RLock()
        self._s = sql.Identifier(db.schema)
        self._plan_lock: psycopg.Connection[Any] | None = None

    # -- opening -------------------------------------------------------------------
    @classmethod
    def open(cls, db: StateDb, run_id: str) -> PgJournal:
        conn = _connect(db)
        journal = cls(db, run_id, conn)
        try:
            journal._ensure_schema()
        except BaseException:
            conn.close()
            raise
        return journal

    def _ensure_schema(self) -> None:
        with self._lock, self._conn.transaction():
            # workers starting together must not race on CREATE … IF NOT EXISTS
            self._x("SELECT pg_advisory_xact_lock(hashtext(%s))", [self.db.schema])
            self._x("CREATE SCHEMA IF NOT EXISTS {s}")
            self._x("CREATE TABLE IF NOT EXISTS {s}.schema_version (version INTEGER NOT NULL)")
            row = self._x("SELECT max(version) FROM {s}.schema_version").fetchone()
            found = row[0] if row else None
            if found is not None and found > SCHEMA_VERSION:
                raise ConfigError(f"journal {self.db.display} has schema version {found}; this "
                                  f"batch-cancel knows {SCHEMA_VERSION}: upgrade batch-cancel")  # fmt: skip
            columns = ", ".join(f"{c} {_TYPES.get(c, 'TEXT')}" for c in RECORD_COLUMNS)
            self._x(_SCHEMA.replace("{columns}", columns))
            # a column added after the first schema of this version; only altered when
            # missing (an ALTER takes a lock that running workers' updates would deadlock on)
            have = self._x("SELECT 1 FROM information_schema.columns WHERE table_schema=%s AND "
                           "table_name='records' AND column_name='record_handle'",
                           [self.db.schema]).fetchone()  # fmt: skip
            if have is None:
                self._x("ALTER TABLE {s}.records ADD COLUMN record_handle BIGINT")
            if found is None:
                self._x("INSERT INTO {s}.schema_version VALUES (%s)", [SCHEMA_VERSION])

    def close(self) -> None:
        if self._plan_lock is not None:
            self._plan_lock.close()
        self._conn.close()

    def _x(self, query: str, params: Sequence[Any] | None = None) -> psycopg.Cursor[Any]:
        """Execute with ``{s}`` standing for the schema (an identifier, never text)."""
        q = sql.SQL(query).format(s=self._s)
        with self._lock:
            return self._conn.execute(q, params)

    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        return _Locked(self._lock, self._conn)

    @property
    def spill_dir(self) -> Path:
        """Where planning may spill temporary files (the journal is on another host)."""
        return Path(tempfile.gettempdir())

    # -- identity --------------------------------------------------------------------
    def create(self, **values: Any) -> bool:
        """Make the job with its identity unless it exists; True if this call made it."""
        with self.transaction():
            made = self._x("INSERT INTO {s}.jobs(run_id) VALUES (%s) ON CONFLICT DO NOTHING "
                           "RETURNING run_id", [self.run_id]).fetchone()  # fmt: skip
            if made:
                self._put_meta(values)
        return made is not None

    def get_meta(self, key: str) -> Any:
        row = self._x("SELECT value FROM {s}.meta WHERE run_id=%s AND key=%s",
                      [self.run_id, key]).fetchone()  # fmt: skip
        return None if row is None else json.loads(row[0])

    def set_meta(self, **values: Any) -> None:
        with self.transaction():
            self._x("INSERT INTO {s}.jobs(run_id) VALUES (%s) ON CONFLICT DO NOTHING", [self.run_id])
            self._put_meta(values)

    def _put_meta(self, values: Mapping[str, Any]) -> None:
        with self._lock, self._conn.cursor() as cur:
            cur.executemany(
                sql.SQL("INSERT INTO {s}.meta(run_id, key, value) VALUES (%s, %s, %s) "
                        "ON CONFLICT (run_id, key) DO UPDATE SET value=EXCLUDED.value").format(s=self._s),
                [(self.run_id, k, json.dumps(v, sort_keys=True)) for k, v in values.items()],
            )

    def is_new(self) -> bool:
        return self.get_meta("run_id") is None

    def jobs(self) -> list[str]:
        return [r[0] for r in self._x("SELECT run_id FROM {s}.jobs ORDER BY created_at")]

    # -- planning --------------------------------------------------------------------
    @contextlib.contextmanager
    def plan_lock(self, wait: float, stop: Callable[[], bool] | None = None) -> Iterator[bool]:
        """Hold the job's planning lock (a session advisory lock on a connection of its own,
        so it goes when the holder's process does). Yields False if not got within ``wait``."""
        conn = _connect(self.db)
        key = f"{self.db.schema}/{self.run_id}"
        deadline = time.monotonic() + wait
        try:
            while True:
                got = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [key]).fetchone()
                if got and got[0]:
                    break
                if time.monotonic() > deadline or (stop is not None and stop()):
                    yield False
                    return
                time.sleep(0.1)
            yield True
        finally:
            conn.close()  # releases the lock

    def reset_plan(self) -> None:
        with self.transaction():
            for table in ("records", "events", "plan_snapshot"):
                self._x(f"DELETE FROM {{s}}.{table} WHERE run_id=%s", [self.run_id])
            self._x("DELETE FROM {s}.meta WHERE run_id=%s AND key='plan_snapshot'", [self.run_id])

    @contextlib.contextmanager
    def planning(self) -> Iterator[None]:
        # a plan that did not finish is thrown away and made again (reset_plan), so its
        # commits need not wait for the server's disk one by one
        self._x("SET synchronous_commit = off")
        try:
            yield
        finally:
            self._x("SET synchronous_commit = on")

    def add_plan(self, columns: Mapping[str, Sequence[Any]], constants: Mapping[str, Any],
                 ref_prefix: str) -> None:
        """The plan of one batch (see ``Journal.add_plan``), through COPY."""
        order = [name for name in PLAN_COLUMNS if name in columns]
        fixed = [name for name in PLAN_COLUMNS if name not in columns and constants.get(name) is not None]
        names = ["run_id", *order, *fixed, "status", "reference_id", "attempts"]
        const = [constants[name] for name in fixed]
        rows, errors = columns["row"], columns["error"]
        per_row = [columns[name] for name in order]
        copy = sql.SQL("COPY {s}.records ({cols}) FROM STDIN").format(
            s=self._s, cols=sql.SQL(", ").join(map(sql.Identifier, names)))
        with self._lock, self._conn.cursor() as cur, cur.copy(copy) as cp:
            for i, values in enumerate(zip(*per_row, strict=True)):
                ok = errors[i] in ("", None)
                cp.write_row([self.run_id, *[None if v == "" else v for v in values], *const,
                              "planned" if ok else "rejected",
                              f"{ref_prefix}{rows[i]}" if ok else None, 0])  # fmt: skip

    def mark_duplicates(self, pairs: Iterable[tuple[int, int]]) -> int:
        pairs = list(pairs)
        if not pairs:
            return 0
        cur = self._x(
            "UPDATE {s}.records r SET status='duplicate', reference_id=NULL, duplicate_of=d.first "
            "FROM unnest(%s::bigint[], %s::bigint[]) AS d(row, first) "
            "WHERE r.run_id=%s AND r.row=d.row AND r.status='planned'",
            [[p[0] for p in pairs], [p[1] for p in pairs], self.run_id],
        )
        return cur.rowcount

    def add_records(self, rows: Iterable[Sequence[Any]]) -> None:
        self._drop_snapshot()
        copy = sql.SQL("COPY {s}.records (run_id, {cols}) FROM STDIN").format(
            s=self._s, cols=sql.SQL(", ").join(map(sql.Identifier, RECORD_COLUMNS)))
        with self._lock, self._conn.cursor() as cur, cur.copy(copy) as cp:
            for row in rows:
                cp.write_row([self.run_id, *row])

    def duplicates_between(self, first: int, last: int) -> list[tuple[int, int]]:
        cur = self._x("SELECT row, duplicate_of FROM {s}.records WHERE run_id=%s AND row BETWEEN %s "
                      "AND %s AND status='duplicate' ORDER BY row", [self.run_id, first, last])  # fmt: skip
        return [(int(r), int(d)) for r, d in cur.fetchall()]

    # -- the plan snapshot (see store.py) ------------------------------------------------
    def add_snapshot(self, first_row: int, data: bytes) -> None:
        self._x("INSERT INTO {s}.plan_snapshot(run_id, first_row, data) VALUES (%s, %s, %s)",
                [self.run_id, first_row, data])

    def seal_snapshot(self, info: dict[str, Any]) -> None:
        self.set_meta(plan_snapshot=info)

    def snapshot(self) -> tuple[dict[str, Any], Iterator[bytes]] | None:
        info = self.get_meta("plan_snapshot")
        if not info:
            return None

        def blobs() -> Iterator[bytes]:
            last = -1
            while True:
                row = self._x("SELECT first_row, data FROM {s}.plan_snapshot WHERE run_id=%s AND "
                              "first_row > %s ORDER BY first_row LIMIT 1", [self.run_id, last]).fetchone()
                if row is None:
                    return
                last = row[0]
                yield bytes(row[1])

        return info, blobs()

    def _drop_snapshot(self) -> None:
        self._x("DELETE FROM {s}.meta WHERE run_id=%s AND key='plan_snapshot'", [self.run_id])
        self._x("DELETE FROM {s}.plan_snapshot WHERE run_id=%s", [self.run_id])

    # -- sending, one process (as the SQLite store) ----------------------------------------
    def to_send(self, *, after_row: int, limit: int, retry_timed_out: bool) -> list[RowToSend]:
        """Records with no outcome yet after ``after_row``, in row order; timed-out ones when asked."""
        statuses = [Status.PLANNED, Status.SENT] + ([Status.TIMED_OUT] if retry_timed_out else [])
        cur = self._x(f"SELECT {_TO_SEND} FROM {{s}}.records WHERE run_id=%s AND row > %s "
                      "AND status = ANY(%s) ORDER BY row LIMIT %s",
                      [self.run_id, after_row, [str(s) for s in statuses], limit])  # fmt: skip
        return [RowToSend._make(values) for values in cur.fetchall()]

    def save_states(self, states: Sequence[RowState], events: Sequence[RowEvent],
                    worker: str | None = None) -> None:
        """One transaction: new record states (STATE_COLUMNS + row) and their events.

        A row that reaches a final status gives up its lease with it.
        """
        with self.transaction():
            if self.get_meta("plan_snapshot") is not None:
                self._drop_snapshot()
            if states:
                # rows locked in row order, as every other statement here locks them
                self._x("SELECT row FROM {s}.records WHERE run_id=%s AND row = ANY(%s) ORDER BY row "
                        "FOR UPDATE", [self.run_id, sorted({s[-1] for s in states})])  # fmt: skip
                cols = [*STATE_COLUMNS, "row"]
                # a Status is text to PostgreSQL (psycopg would send an Enum by its name)
                arrays = [[str(v) if isinstance(v, Status) else v for v in col]
                          for col in zip(*states, strict=True)]
                types = [_array_type(c) for c in cols]
                unnest = ", ".join(f"%s::{t}[]" for t in types)
                sets = ", ".join(f"{c}=u.{c}" for c in STATE_COLUMNS)
                self._x(
                    f"UPDATE {{s}}.records r SET {sets}, "
                    "lease_owner = CASE WHEN u.status = ANY(%s) THEN NULL ELSE r.lease_owner END, "
                    "lease_until = CASE WHEN u.status = ANY(%s) THEN NULL ELSE r.lease_until END "
                    f"FROM unnest({unnest}) AS u({', '.join(cols)}) WHERE r.run_id=%s AND r.row=u.row",
                    [[str(f) for f in FINAL], [str(f) for f in FINAL], *arrays, self.run_id],
                )
            if events:
                copy = sql.SQL("COPY {s}.events (run_id, row, at, event, attempt, http_status, "
                               "status_code, detail, worker) FROM STDIN").format(s=self._s)
                with self._conn.cursor() as cur, cur.copy(copy) as cp:
                    for e in events:
                        cp.write_row([self.run_id, *(str(v) if isinstance(v, Status) else v for v in e),
                                      worker])

    # -- a fleet: leases --------------------------------------------------------------------
    def claim(self, worker: str, limit: int, *, retry_timed_out_before: float | None = None
              ) -> list[RowToSend]:
        """Lease up to ``limit`` rows with no outcome that nobody holds (or whose lease
        expired), in row order; rows locked by another claim right now are skipped."""
        timed_out = "OR (status = 'timed_out' AND sent_at < %s)" if retry_timed_out_before else ""
        params: list[Any] = [self.run_id]
        if retry_timed_out_before:
            params.append(retry_timed_out_before)
        params += [limit, worker, self.db.lease, self.run_id]
        with self.transaction():
            # MATERIALIZED: the locking SELECT runs once; as a join's inner side it would
            # be rescanned per row, each rescan locking (and handing out) further rows
            cur = self._x(
                "WITH c AS MATERIALIZED (SELECT row FROM {s}.records WHERE run_id=%s "
                f"AND (status IN ('planned', 'sent') {timed_out}) "
                "AND (lease_until IS NULL OR lease_until < now()) ORDER BY row LIMIT %s "
                "FOR UPDATE SKIP LOCKED) "
                "UPDATE {s}.records r SET lease_owner=%s, lease_until=now() + make_interval(secs => %s) "
                "FROM c WHERE r.run_id=%s AND r.row=c.row "
                f"RETURNING {', '.join('r.' + c for c in RowToSend._fields)}",
                params,
            )
            rows = [RowToSend._make(v) for v in cur.fetchall()]
        rows.sort(key=lambda r: int(r.row))
        return rows

    def open_rows(self) -> int:
        """Rows of the job with no outcome yet (held by anyone or no one)."""
        row = self._x("SELECT count(*) FROM {s}.records WHERE run_id=%s AND status IN ('planned', 'sent')",
                      [self.run_id]).fetchone()  # fmt: skip
        return int(row[0]) if row else 0

    def release(self, worker: str) -> int:
        """Give back the rows this worker holds and has no outcome for (a clean stop)."""
        with self.transaction():
            return self._set_leases(worker, "lease_owner=NULL, lease_until=NULL", [])

    # -- a fleet: workers ------------------------------------------------------------------
    def join(self, worker: str, job_rate: float, apply: Callable[[float], None]) -> float:
        """Register this worker; answers (and applies) its first share of the job's rate."""
        with self.transaction():
            self._x("INSERT INTO {s}.workers(run_id, worker, host, pid, state) "
                    "VALUES (%s, %s, %s, %s, 'running')",
                    [self.run_id, worker, socket.gethostname(), os.getpid()])  # fmt: skip
        return self.heartbeat(worker, job_rate, apply)

    def heartbeat(self, worker: str, job_rate: float, apply: Callable[[float], None]) -> float:
        """Renew this worker's leases and heartbeat, forget dead workers, and take this
        worker's share of the job's rate: ``min(rate / live, rate - the others' shares)``.

        ``apply`` sets the pacer: before the commit when the share goes down, after
        it when the share goes up, so the declared shares always bound the sending.
        """
        lease = self.db.lease
        with self.transaction():
            # one worker at a time decides shares: the job's row is the lock. NO KEY: the
            # event log's foreign key takes KEY SHARE on that row for every insert, and a
            # worker's writer must not wait for the heartbeat that waits for its rows
            self._x("SELECT run_id FROM {s}.jobs WHERE run_id=%s FOR NO KEY UPDATE", [self.run_id])
            me = self._x("UPDATE {s}.workers SET heartbeat_at=now() WHERE run_id=%s AND worker=%s "
                         "RETURNING state", [self.run_id, worker]).fetchone()  # fmt: skip
            if me is None or me[0] != "running":
                apply(0.0)
                raise LeaseLost(f"worker {worker} was silent for more than its lease "
                                f"({lease:g} s): its rows may have gone to other workers, so it stops")
            self._set_leases(worker, "lease_until=now() + make_interval(secs => %s)", [lease])
            self._x("UPDATE {s}.workers SET state='lost', rate_share=0 WHERE run_id=%s AND "
                    "state='running' AND heartbeat_at < now() - make_interval(secs => %s)",
                    [self.run_id, lease])  # fmt: skip
            found = self._x(
                "SELECT count(*), coalesce(sum(rate_share) FILTER (WHERE worker <> %s), 0), "
                "coalesce(max(rate_share) FILTER (WHERE worker = %s), 0) FROM {s}.workers "
                "WHERE run_id=%s AND state='running'", [worker, worker, self.run_id]).fetchone()  # fmt: skip
            live, others, mine = found if found else (0, 0.0, 0.0)
            mine = float(mine)
            if job_rate <= 0:
                return 0.0  # unlimited: nothing to share
            share = max(0.0, min(job_rate / max(1, live), job_rate - float(others)))
            self._x("UPDATE {s}.workers SET rate_share=%s WHERE run_id=%s AND worker=%s",
                    [share, self.run_id, worker])
            if share < mine:
                apply(share)
        if share >= mine:
            apply(share)
        return share

    def leave(self, worker: str, state: str) -> bool:
        """This worker stops (``done`` or ``stopped``); answers True if no other worker of
        the job is still running (this one is the last to finish)."""
        with self.transaction():
            self._x("SELECT run_id FROM {s}.jobs WHERE run_id=%s FOR NO KEY UPDATE", [self.run_id])
            self._set_leases(worker, "lease_owner=NULL, lease_until=NULL", [])
            self._x("UPDATE {s}.workers SET state=%s, rate_share=0, finished_at=now() "
                    "WHERE run_id=%s AND worker=%s", [state, self.run_id, worker])  # fmt: skip
            row = self._x("SELECT count(*) FROM {s}.workers WHERE run_id=%s AND state='running' "
                          "AND heartbeat_at >= now() - make_interval(secs => %s)",
                          [self.run_id, self.db.lease]).fetchone()  # fmt: skip
        return not row or int(row[0]) == 0

    def _set_leases(self, worker: str, assignment: str, params: list[Any]) -> int:
        """Update the rows a worker holds, locking them in row order first.

        The worker's writer thread updates the same rows (save_states, also in row
        order) over another connection: locks taken in one order cannot deadlock.
        """
        cur = self._x(
            "WITH held AS MATERIALIZED (SELECT row FROM {s}.records WHERE run_id=%s AND lease_owner=%s "
            f"ORDER BY row FOR UPDATE) UPDATE {{s}}.records r SET {assignment} FROM held "
            "WHERE r.run_id=%s AND r.row=held.row",
            [self.run_id, worker, *params, self.run_id])  # fmt: skip
        return cur.rowcount

    def running_workers(self) -> int:
        """Workers of the job that are running and alive (heartbeat within a lease)."""
        row = self._x("SELECT count(*) FROM {s}.workers WHERE run_id=%s AND state='running' "
                      "AND heartbeat_at >= now() - make_interval(secs => %s)",
                      [self.run_id, self.db.lease]).fetchone()  # fmt: skip
        return int(row[0]) if row else 0

    def workers(self) -> list[dict[str, Any]]:
        cur = self._x(
            "SELECT w.worker, w.host, w.pid, w.state, w.started_at, w.heartbeat_at, w.finished_at, "
            "w.rate_share, (SELECT count(*) FROM {s}.records r WHERE r.run_id=w.run_id AND "
            "r.lease_owner=w.worker AND r.lease_until >= now()) AS leased, "
            "(SELECT min(r.lease_until) FROM {s}.records r WHERE r.run_id=w.run_id AND "
            "r.lease_owner=w.worker) AS lease_until, "
            "extract(epoch FROM now() - w.heartbeat_at) AS heartbeat_age "
            "FROM {s}.workers w WHERE w.run_id=%s ORDER BY w.started_at", [self.run_id])
        names = [d.name for d in cur.description or []]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    # -- reading -------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        cur = self._x("SELECT status, count(*) FROM {s}.records WHERE run_id=%s GROUP BY status",
                      [self.run_id])
        return {status: int(n) for status, n in cur.fetchall()}

    def duplicate_of_unsuccessful(self) -> int:
        row = self._x(
            "SELECT count(*) FROM {s}.records d JOIN {s}.records f ON f.run_id=d.run_id "
            "AND d.duplicate_of=f.row WHERE d.run_id=%s AND d.status='duplicate' "
            "AND f.status <> 'cancelled'", [self.run_id]).fetchone()  # fmt: skip
        return int(row[0]) if row else 0

    def iter_rows(self, batch: int = 5000) -> Iterator[dict[str, Any]]:
        last = -1
        while True:
            rows = self._x(f"SELECT {', '.join(RECORD_COLUMNS)} FROM {{s}}.records WHERE run_id=%s "
                           "AND row > %s ORDER BY row LIMIT %s", [self.run_id, last, batch]).fetchall()
            if not rows:
                return
            for values in rows:
                yield dict(zip(RECORD_COLUMNS, values, strict=True))
            last = rows[-1][0]

    def first_rejected(self, limit: int = 10) -> list[tuple[int, str, str]]:
        cur = self._x("SELECT row, coalesce(phone_number, ''), coalesce(error, '') FROM {s}.records "
                      "WHERE run_id=%s AND status='rejected' ORDER BY row LIMIT %s",
                      [self.run_id, limit])  # fmt: skip
        return [(int(r), str(p), str(e)) for r, p, e in cur.fetchall()]

    def add_unmatched(self, rows: Sequence[tuple[float, str | None, str, str]]) -> None:
        """Notifications that matched no row: (time, channel, note, JSON data)."""
        if not rows:
            return
        with self.transaction(), self._conn.cursor() as cur:
            cur.executemany(
                sql.SQL("INSERT INTO {s}.unmatched (run_id, at, channel, note, data) "
                        "VALUES (%s, %s, %s, %s, %s)").format(s=self._s),
                [(self.run_id, *r) for r in rows],
            )

    def unmatched_count(self) -> int:
        row = self._x("SELECT count(*) FROM {s}.unmatched WHERE run_id=%s", [self.run_id]).fetchone()
        return int(row[0]) if row else 0

    def first_unmatched(self, limit: int = 50) -> list[tuple[float, str | None, str, str]]:
        cur = self._x("SELECT at, channel, note, data FROM {s}.unmatched WHERE run_id=%s "
                      "ORDER BY id LIMIT %s", [self.run_id, limit])  # fmt: skip
        return [(float(a), c, str(n or ""), str(d)) for a, c, n, d in cur.fetchall()]

    def retry_failed(self, at: float) -> int:
        """As Journal.retry_failed: failed rows planned again, each with a new referenceId."""
        from batch_cancel.journal.store import next_round_reference

        rows = self._x("SELECT row, reference_id, error FROM {s}.records WHERE run_id=%s AND "
                       "status='failed' ORDER BY row", [self.run_id]).fetchall()  # fmt: skip
        if not rows:
            return 0
        with self.transaction(), self._conn.cursor() as cur:
            cur.executemany(
                sql.SQL("UPDATE {s}.records SET status='planned', reference_id=%s, attempts=0, "
                        "http_status=NULL, status_code=NULL, notification_type=NULL, error=NULL, "
                        "acked_at=NULL, latency_ms=NULL, record_handle=NULL "
                        "WHERE run_id=%s AND row=%s").format(s=self._s),
                [(next_round_reference(str(ref)), self.run_id, row) for row, ref, _ in rows],
            )
            cur.executemany(
                sql.SQL("INSERT INTO {s}.events (run_id, row, at, event, detail) "
                        "VALUES (%s, %s, %s, 'retry_failed', %s)").format(s=self._s),
                [(self.run_id, row, at, f"was {ref}: {error or 'failed'}") for row, ref, error in rows],
            )
        return len(rows)

    def events_for(self, row: int) -> list[tuple[Any, ...]]:
        cur = self._x("SELECT at, event, attempt, http_status, status_code, detail FROM {s}.events "
                      "WHERE run_id=%s AND row=%s ORDER BY id", [self.run_id, row])  # fmt: skip
        return list(cur.fetchall())


def _array_type(column: str) -> str:
    t = _TYPES.get(column, "TEXT").split()[0]
    return {"DOUBLE": "float8", "BIGINT": "int8", "INTEGER": "int4"}.get(t, "text")


class _Locked:
    """A transaction on the shared connection, held under its lock."""

    def __init__(self, lock: threading.RLock, conn: psycopg.Connection[Any]) -> None:
        self._lock = lock
        self._conn = conn
        self._tx: contextlib.AbstractContextManager[Any] | None = None

    def __enter__(self) -> None:
        self._lock.acquire()
        try:
            self._tx = self._conn.transaction()
            self._tx.__enter__()
        except BaseException:
            self._lock.release()
            raise

    def __exit__(self, *exc: Any) -> None:
        try:
            assert self._tx is not None
            self._tx.__exit__(*exc)
        finally:
            self._lock.release()

