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

**Fencing.** Every write of a row's state carries its writer's ownership: the
lease owner and the epoch it joined with (:class:`Ownership`). The UPDATE's WHERE
clause refuses a row that another worker holds now, or any row of a worker that is
no longer running; the refused rows are answered to the writer, which drops them.
A claim that takes a row whose lease ran out marks its old owner ``lost`` in the
same transaction, so a frozen worker that thaws finds itself lost at its next
renewal instead of renewing the leases it no longer has.

**Bounded silence.** Connections carry ``statement_timeout``, ``lock_timeout``,
TCP keepalives and ``tcp_user_timeout``, so no call blocks for long on a dead
socket; lease times are ``clock_timestamp()`` (the moment of the statement, not of
the transaction's start); a heartbeat never waits on another worker's lock (the
rate shares are recomputed only when their advisory lock is free at once). A
connection that broke is opened again on the next call (a database restart).

**Migrations** are explicit and numbered (``_MIGRATIONS``), run once by a worker
under an advisory lock; readers (``status``, ``report``) open without any DDL, so a
read-only role can use them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from batch_cancel.config import StateDb
from batch_cancel.exceptions import ConfigError, JournalUnavailable, LeaseLost
from batch_cancel.journal.base import RECORD_COLUMNS, JournalBase
from batch_cancel.journal.rows import FINAL, RowEvent, RowState, RowToSend
from batch_cancel.journal.store import PLAN_COLUMNS

log = logging.getLogger("batch_cancel.journal")

# The SQL for the send phase's shapes is built from their fields (journal/rows.py).
STATE_COLUMNS = RowState._fields[:-1]
_STATUS = RowState._fields.index("status")

__all__ = [
    "SCHEMA_VERSION",
    "Ownership",
    "PgJournal",
    "check_job_rate",
    "connection_settings",
    "is_state_url",
    "parse_state_url",
]  # fmt: skip

SCHEMA_VERSION = 2
_OURS = ("schema", "lease")  # URL options for us; every other one goes to libpq
_TYPES = {
    "row": "BIGINT NOT NULL", "application_id": "BIGINT", "attempts": "INTEGER NOT NULL DEFAULT 0",
    "http_status": "INTEGER", "status_code": "INTEGER", "duplicate_of": "BIGINT",
    "sent_at": "DOUBLE PRECISION", "acked_at": "DOUBLE PRECISION", "latency_ms": "DOUBLE PRECISION",
    "status": "TEXT NOT NULL", "record_handle": "BIGINT",
}  # fmt: skip
_SCHEMA_V1 = """
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
# Version 2: fencing (the epoch a worker joined with; the epoch of a row's lease),
# the job's counter of epochs, and the column a first version-1 schema lacked.
_SCHEMA_V2 = """
ALTER TABLE {s}.records ADD COLUMN IF NOT EXISTS record_handle BIGINT;
ALTER TABLE {s}.records ADD COLUMN IF NOT EXISTS lease_epoch BIGINT;
ALTER TABLE {s}.jobs ADD COLUMN IF NOT EXISTS epochs BIGINT NOT NULL DEFAULT 0;
ALTER TABLE {s}.workers ADD COLUMN IF NOT EXISTS epoch BIGINT;
"""
_MIGRATIONS = {1: _SCHEMA_V1, 2: _SCHEMA_V2}


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
    if any(k.lower() == "password" for k, _ in options):
        # in the query it would sit in `ps`, job files and logs as surely as in the netloc
        raise ConfigError("--state: a password in the URL (?password=) would be logged; give it in "
                          "PGPASSWORD, ~/.pgpass or --state-password-file")  # fmt: skip
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


def connection_settings(db: StateDb) -> dict[str, Any]:
    """libpq settings that bound how long any call can block, scaled to the lease.

    A half-open socket (a cut cable, a firewall that drops without answering) would
    otherwise keep a call waiting for TCP's retries (~15 min): ``tcp_user_timeout``
    ends a write nobody acknowledges, keepalives an idle read. The server ends a
    statement or a lock wait that takes too long, and a session left idle in a
    transaction (its row locks would keep other workers off its rows). Options given
    in the URL win.
    """
    given = dict(parse_qsl(urlsplit(db.conninfo).query))
    lease = db.lease
    out: dict[str, Any] = {
        "keepalives": 1, "keepalives_idle": max(1, int(lease / 3)), "keepalives_interval": 1,
        "keepalives_count": 3, "tcp_user_timeout": max(1000, int(lease * 1000)),
        "connect_timeout": max(2, int(lease)),
        # planning copies batches of tens of thousands of rows: minutes would be wrong,
        # a minute is plenty; a lock is never worth more than a third of a lease
        "options": f"-c statement_timeout={max(60_000, int(lease * 2000))} "
                   f"-c lock_timeout={max(500, int(lease * 1000 / 3))} "
                   # a worker cut off in the middle of a transaction (a link that stops
                   # forwarding) would hold its row locks for as long as the server sees
                   # its socket, and the others skip locked rows: the server ends it
                   f"-c idle_in_transaction_session_timeout={max(10_000, int(lease * 2000))}",
    }  # fmt: skip
    return {k: v for k, v in out.items() if k not in given}


def check_job_rate(run_id: str, job: float | None, mine: float) -> None:
    """A worker given another rate than the job's is refused (exit 2), naming both.

    Refused rather than adopted: the operator who typed ``--rate 100`` believes the job
    goes at 100/s, and a worker that silently went at the job's 10/s (or raised the
    job to 100/s under workers started at 10) would break that belief either way;
    the message says how to get what they meant.
    """
    if job is None or job == mine:
        return

    def shown(r: float) -> str:
        return "0 (unlimited)" if r <= 0 else f"{r:g}/s"

    raise ConfigError(f"job {run_id} runs at --rate {shown(job)} (set by its first running worker); "
                      f"this worker was given --rate {shown(mine)}: start it with --rate {job:g}, "
                      "or once the job's workers are done, or give another --run-id")  # fmt: skip


def _connect(db: StateDb) -> psycopg.Connection[Any]:
    try:
        kwargs: dict[str, Any] = {"autocommit": True, "application_name": "batch-cancel",
                                  **connection_settings(db)}  # fmt: skip
        if db.password is not None:
            kwargs["password"] = db.password
        return psycopg.connect(db.conninfo, **kwargs)
    except psycopg.Error as exc:
        # libpq's message names host and user, never the password
        message = f"journal {db.display}: {' '.join(str(exc).split())}"
        if any(s in message for s in ("authentication failed", "does not exist", "no password")):
            raise ConfigError(message) from None  # a retry cannot fix these
        raise JournalUnavailable(message) from None


@dataclasses.dataclass
class Ownership:
    """Who writes through a journal: the worker and the epoch it joined the job with.

    One object is shared by a worker's connections (its claims and heartbeat, and the
    journal writer's own connection), so the writer's fence is the worker's as soon
    as it has joined. ``worker`` None: not a worker of a fleet (nothing is fenced).
    """

    worker: str | None = None
    epoch: int | None = None


class _Watchdog:
    """Ends database calls that outlive their limit, by shutting their socket down.

    Server-side timeouts cannot end a call whose query never reached the server, and
    a link that stops forwarding without closing (a proxy, a NAT, a firewall that
    drops) may even acknowledge what is written: keepalives and ``tcp_user_timeout``
    then see nothing wrong. Shutting the socket down makes libpq's blocked read
    fail at once; the connection is broken and the next call opens a new one.
    """

    def __init__(self) -> None:
        self._journals: weakref.WeakSet[PgJournal] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def watch(self, journal: PgJournal) -> None:
        with self._lock:
            self._journals.add(journal)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="journal-watchdog", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(0.1)
            with self._lock:
                journals = list(self._journals)
            now = time.monotonic()
            for journal in journals:
                journal._end_if_overdue(now)


_WATCHDOG = _Watchdog()


class PgJournal(JournalBase):
    """The PostgreSQL dialect of the journal (base.py): one job (run id) among many.

    One connection, used under a lock so the writer thread and the loop's reads
    can share it (psycopg connections are thread-safe, transactions are not). A
    connection that broke (a database restart) is opened again on the next call.
    """

    kind = "postgresql"

    def __init__(self, db: StateDb, run_id: str, conn: psycopg.Connection[Any],
                 owner: Ownership | None = None) -> None:  # fmt: skip
        self.db = db
        self.run_id = run_id
        self._location = f"{db.display} (run {run_id})"
        self._conn_ = conn
        self._lock = threading.RLock()
        self._s = sql.Identifier(db.schema)
        self._plan_holder: int | None = None  # the backend holding our planning lock, while planning
        self.owner = owner or Ownership()
        self._depth = 0  # transactions open on this connection (under the lock)
        # how long one call (or transaction) may take before the watchdog ends it; a
        # worker lowers it once planning is done (its calls are small: claims, renewals)
        self.call_limit = max(60.0, db.lease * 2) + db.lease
        self._calls = 0
        self._due: float | None = None
        _WATCHDOG.watch(self)

    # -- opening -------------------------------------------------------------------
    @classmethod
    def open(cls, db: StateDb, run_id: str, *, owner: Ownership | None = None,
             migrate: bool = True) -> PgJournal:  # fmt: skip
        """Open the job's journal. ``migrate``: make or upgrade the schema (a worker);
        without it (``status``, ``report``) nothing is created, so a read-only role works."""
        conn = _connect(db)
        journal = cls(db, run_id, conn, owner)
        try:
            journal._check_schema(migrate)
        except BaseException:
            conn.close()
            raise
        return journal

    def _version(self) -> int | None:
        row = self._x("SELECT to_regclass(%s)", [f"{self.db.schema}.schema_version"]).fetchone()
        if not row or row[0] is None:
            return None
        found = self._x("SELECT max(version) FROM {s}.schema_version").fetchone()
        return int(found[0]) if found and found[0] is not None else None

    def _check_schema(self, migrate: bool) -> None:
        found = self._version()
        if found is not None and found > SCHEMA_VERSION:
            raise ConfigError(f"journal {self.db.display} has schema version {found}; this "
                              f"batch-cancel knows {SCHEMA_VERSION}: upgrade batch-cancel")  # fmt: skip
        if found == SCHEMA_VERSION:
            return
        if not migrate:
            raise ConfigError(f"journal {self.db.display} has " +
                              ("no batch-cancel tables" if found is None else f"schema version {found}") +
                              f" (this batch-cancel needs {SCHEMA_VERSION}): a worker "
                              "(batch-cancel run) makes or upgrades it")  # fmt: skip
        self._migrate()

    def _migrate(self) -> None:
        """Apply the migrations this schema lacks, once: workers starting together wait for
        the first one's advisory lock, then find the work done."""
        with self.transaction():
            self._x("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"{self.db.schema}/migrate"])
            self._x("CREATE SCHEMA IF NOT EXISTS {s}")
            self._x("CREATE TABLE IF NOT EXISTS {s}.schema_version (version INTEGER NOT NULL)")
            row = self._x("SELECT max(version) FROM {s}.schema_version").fetchone()
            found = int(row[0]) if row and row[0] is not None else 0
            columns = ", ".join(f"{c} {_TYPES.get(c, 'TEXT')}" for c in RECORD_COLUMNS)
            for version in range(found + 1, SCHEMA_VERSION + 1):
                self._x(_MIGRATIONS[version].replace("{columns}", columns))
                self._x("INSERT INTO {s}.schema_version VALUES (%s)", [version])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn_.close()

    @property
    def _conn(self) -> psycopg.Connection[Any]:
        """The connection, opened again if it broke (a restart, a failover, a cut link)."""
        with self._lock:
            if self._conn_.broken or self._conn_.closed:
                if self._depth:
                    # never half a transaction on one connection and half autocommitted on another
                    raise JournalUnavailable(f"journal {self.db.display}: connection lost in a transaction")
                self._conn_ = _connect(self.db)
            return self._conn_

    @property
    def location(self) -> str:
        return self._location

    def _x(self, query: str | sql.Composed, params: Sequence[Any] | None = None) -> psycopg.Cursor[Any]:
        """Execute with ``{s}`` standing for the schema (an identifier, never text)."""
        q = sql.SQL(query).format(s=self._s) if isinstance(query, str) else query
        with self._lock:
            self._begin_call()
            try:
                return self._conn.execute(q, params)
            finally:
                self._end_call()

    # -- the watchdog's side (journal lock held, except in _end_if_overdue) -----------------
    def _begin_call(self) -> None:
        if self._calls == 0:
            self._due = time.monotonic() + self.call_limit
        self._calls += 1

    def _end_call(self) -> None:
        self._calls -= 1
        if self._calls == 0:
            self._due = None

    def _end_if_overdue(self, now: float) -> None:
        """Called by the watchdog's thread: shut the socket of a call past its limit."""
        due, conn = self._due, self._conn_
        if due is None or now < due or conn.closed:
            return
        self._due = None  # once per call
        with contextlib.suppress(Exception):
            fd = conn.pgconn.socket
            with socket.socket(fileno=os.dup(fd)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
            log.warning("journal %s: a call took more than %g s; its connection was ended",
                        self.db.display, self.call_limit)  # fmt: skip

    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        return _Locked(self)

    def reopen(self, busy_timeout: float = 0.0) -> Callable[[], PgJournal]:
        """How another thread opens its own connection to this job, with the same ownership
        and call limit (``busy_timeout``: SQLite's; here lock_timeout bounds a wait)."""
        db, run_id, owner, limit = self.db, self.run_id, self.owner, self.call_limit

        def open_() -> PgJournal:
            journal = PgJournal.open(db, run_id, owner=owner, migrate=False)
            journal.call_limit = limit
            return journal

        return open_

    @property
    def spill_dir(self) -> Path:
        """Where planning may spill temporary files (the journal is on another host)."""
        return Path(tempfile.gettempdir())

    # -- the dialect's primitives (base.py) ------------------------------------------
    def _compose(self, query: str) -> sql.Composed:
        return sql.SQL(query.replace("?", "%s")).format(
            t=sql.SQL("{}.").format(self._s), job=sql.SQL("run_id = {}").format(sql.Literal(self.run_id)))

    def _select(self, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return list(self._x(self._compose(query), params).fetchall())

    def _execute(self, query: str, params: Sequence[Any] = ()) -> int:
        return int(self._x(self._compose(query), params).rowcount)

    def _add_events(self, events: Sequence[tuple[Any, ...]]) -> None:
        with self._lock, self._conn.cursor() as cur:
            cur.executemany(sql.SQL("INSERT INTO {s}.events (run_id, row, at, event, attempt, http_status, "
                                    "status_code, detail, worker) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
                                    "%s)").format(s=self._s),
                            [(self.run_id, *e, self.owner.worker) for e in events])  # fmt: skip

    @contextlib.contextmanager
    def _round_guard(self) -> Iterator[tuple[bool, float]]:
        """Under the job's round lock (until the transaction ends): is another worker
        running (heartbeat within a lease), and the database's time."""
        self._x("SELECT pg_advisory_xact_lock(hashtext(%s))", [self._job_key("round")])
        row = self._x(
            "SELECT (SELECT count(*) FROM {s}.workers WHERE run_id=%s AND state='running' AND "
            "heartbeat_at >= clock_timestamp() - make_interval(secs => %s)), "
            "extract(epoch FROM clock_timestamp())", [self.run_id, self.db.lease]).fetchone()  # fmt: skip
        live, now = (int(row[0]), float(row[1])) if row else (0, 0.0)
        if live:
            log.info("job %s: a worker is running: this worker joins its retry round, if any", self.run_id)
        yield live > 0, now

    def reading(self) -> contextlib.AbstractContextManager[Any]:
        return _Locked(self, isolation="REPEATABLE READ, READ ONLY", watched=False)

    # -- identity --------------------------------------------------------------------
    def create(self, **values: Any) -> bool:
        """Make the job with its identity unless it exists; True if this call made it."""
        with self.transaction():
            made = self._x("INSERT INTO {s}.jobs(run_id) VALUES (%s) ON CONFLICT DO NOTHING "
                           "RETURNING run_id", [self.run_id]).fetchone()  # fmt: skip
            if made:
                self._put_meta(values)
        return made is not None

    def _put_meta(self, values: Mapping[str, Any]) -> None:
        self._x("INSERT INTO {s}.jobs(run_id) VALUES (%s) ON CONFLICT DO NOTHING", [self.run_id])
        with self._lock, self._conn.cursor() as cur:
            cur.executemany(
                sql.SQL("INSERT INTO {s}.meta(run_id, key, value) VALUES (%s, %s, %s) "
                        "ON CONFLICT (run_id, key) DO UPDATE SET value=EXCLUDED.value").format(s=self._s),
                [(self.run_id, k, json.dumps(v, sort_keys=True)) for k, v in values.items()],
            )

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
            self._plan_holder = conn.info.backend_pid
            yield True
        finally:
            self._plan_holder = None
            conn.close()  # releases the lock

    def _check_plan_lock(self) -> None:
        """Inside a planning transaction: the planning lock is still this worker's. Its
        connection may have dropped (then another worker may be planning already, and
        may reset this plan): planning stops, loudly, instead of writing on."""
        if self._plan_holder is None:
            return
        row = self._x("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                      "AND pid = %s)", [self._plan_holder]).fetchone()  # fmt: skip
        if not (row and row[0]):
            raise JournalUnavailable(f"job {self.run_id}: the planning lock was lost (its connection "
                                     "ended); another worker may plan the job: run again to join it")

    def finish_plan(self, **values: Any) -> None:
        """Mark the plan complete, only while this worker still holds the planning lock."""
        with self.transaction():
            self._check_plan_lock()
            self._put_meta(values)

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
        self._check_plan_lock()  # in the batch's transaction: never a row after the lock is gone
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

    # -- the plan snapshot (see store.py) ------------------------------------------------
    def add_snapshot(self, first_row: int, data: bytes) -> None:
        self._x("INSERT INTO {s}.plan_snapshot(run_id, first_row, data) VALUES (%s, %s, %s)",
                [self.run_id, first_row, data])

    def save_states(self, states: Sequence[RowState], events: Sequence[RowEvent]) -> list[int]:
        """One transaction: new record states (STATE_COLUMNS + row) and their events.

        Fenced: a worker's write reaches only the rows it still holds (its name and
        epoch on the row) and only while it is running; the rows refused are answered
        (their events are not written) and the writer drops them. A row that reaches a
        final status gives up its lease time with it, and keeps its owner, so a late
        acknowledgement of the same worker can still upgrade it.
        """
        worker, epoch = self.owner.worker, self.owner.epoch
        refused: set[int] = set()
        with self.transaction():
            self._drop_snapshot()
            if states:
                cols = [*STATE_COLUMNS, "row"]
                # a Status is text to PostgreSQL (psycopg would send an Enum by its name);
                # only the status column holds one
                arrays = [list(col) for col in zip(*states, strict=True)]
                arrays[_STATUS] = [str(v) for v in arrays[_STATUS]]
                types = [_array_type(c) for c in cols]
                unnest = ", ".join(f"%s::{t}[]" for t in types)
                sets = ", ".join(f"{c}=u.{c}" for c in STATE_COLUMNS)
                fence, fenced = "", []
                if worker is not None:
                    # in the WHERE clause, not read first: the row's lock decides between
                    # this write and a claim that takes the row over
                    fence = ("AND r.lease_owner = %s AND r.lease_epoch IS NOT DISTINCT FROM %s "
                             "AND EXISTS (SELECT 1 FROM {s}.workers w WHERE w.run_id = r.run_id "
                             "AND w.worker = %s AND w.state = 'running')")
                    fenced = [worker, epoch, worker]
                # rows locked in row order (ORDER BY in the locking subquery), as every
                # other statement here locks them: no deadlock with a heartbeat or a claim
                cur = self._x(
                    f"WITH u AS (SELECT * FROM unnest({unnest}) AS u({', '.join(cols)})), "
                    "l AS MATERIALIZED (SELECT r.row FROM {s}.records r JOIN u ON r.row = u.row "
                    f"WHERE r.run_id=%s {fence} ORDER BY r.row FOR UPDATE OF r) "
                    f"UPDATE {{s}}.records r SET {sets}, "
                    "lease_until = CASE WHEN u.status = ANY(%s) THEN NULL ELSE r.lease_until END "
                    "FROM u, l WHERE r.run_id=%s AND r.row=u.row AND l.row = u.row RETURNING r.row",
                    [*arrays, self.run_id, *fenced, [str(f) for f in FINAL], self.run_id],
                )
                written = {int(r[0]) for r in cur.fetchall()}
                refused = {int(st[-1]) for st in states} - written
            kept = [e for e in events if e[0] not in refused]
            if kept:
                copy = sql.SQL("COPY {s}.events (run_id, row, at, event, attempt, http_status, "
                               "status_code, detail, worker) FROM STDIN").format(s=self._s)
                with self._conn.cursor() as cur2, cur2.copy(copy) as cp:
                    run_id = self.run_id
                    for row, at, event, *rest in kept:  # an outcome's event is named by its Status
                        cp.write_row([run_id, row, at, str(event), *rest, worker])
        return sorted(refused)

    # -- a fleet: leases --------------------------------------------------------------------
    def _short_statements(self) -> None:
        """In this transaction no statement may take more than half a lease (a claim or a
        renewal that waits longer than that is worth less than one made again)."""
        limit = f"{max(200, int(self.db.lease * 500))}ms"
        self._x("SELECT set_config('statement_timeout', %s, true)", [limit])

    def _me_running(self, worker: str) -> bool:
        """This worker is running and renewed within a lease (its row locked against a
        claim that would mark it lost, until the transaction ends)."""
        row = self._x("SELECT state = 'running' AND heartbeat_at >= clock_timestamp() - "
                      "make_interval(secs => %s) FROM {s}.workers WHERE run_id=%s AND worker=%s "
                      "FOR SHARE", [self.db.lease, self.run_id, worker]).fetchone()  # fmt: skip
        return bool(row and row[0])

    def claim(self, worker: str, limit: int, *, retry_timed_out_before: float | None = None
              ) -> list[RowToSend]:
        """Lease up to ``limit`` rows with no outcome that nobody holds (or whose lease
        expired), in row order; rows locked by another claim right now are skipped.

        Only a worker that is running and renewed within its lease claims (else: []).
        Taking a row whose lease ran out marks its old owner lost in the same
        transaction: that worker's next renewal fails, and its writes are refused.
        """
        timed_out = "OR (status = 'timed_out' AND sent_at < %s)" if retry_timed_out_before else ""
        params: list[Any] = [self.run_id]
        if retry_timed_out_before:
            params.append(retry_timed_out_before)
        params += [limit]
        with self.transaction():
            self._short_statements()
            if not self._me_running(worker):
                return []
            # MATERIALIZED: the locking SELECT runs once; as a join's inner side it would
            # be rescanned per row, each rescan locking (and handing out) further rows
            taken = self._x(
                "WITH c AS MATERIALIZED (SELECT row, lease_owner, lease_until FROM {s}.records "
                f"WHERE run_id=%s AND (status IN ('planned', 'sent') {timed_out}) "
                "AND (lease_until IS NULL OR lease_until < clock_timestamp()) ORDER BY row LIMIT %s "
                "FOR UPDATE SKIP LOCKED), "
                "gone AS (UPDATE {s}.workers w SET state='lost', rate_share=0 FROM "
                "(SELECT DISTINCT lease_owner FROM c WHERE lease_until IS NOT NULL "
                "AND lease_owner IS NOT NULL AND lease_owner <> %s) o "
                "WHERE w.run_id=%s AND w.worker=o.lease_owner AND w.state='running' RETURNING w.worker) "
                "UPDATE {s}.records r SET lease_owner=%s, lease_epoch=%s, "
                "lease_until=clock_timestamp() + make_interval(secs => %s) "
                "FROM c WHERE r.run_id=%s AND r.row=c.row "
                f"RETURNING {', '.join('r.' + c for c in RowToSend._fields)}, "
                "(SELECT count(*) FROM gone)",
                [*params, worker, self.run_id, worker, self.owner.epoch, self.db.lease, self.run_id],
            ).fetchall()
        rows = [RowToSend._make(v[:-1]) for v in taken]
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
            return self._set_leases(worker, "lease_owner=NULL, lease_until=NULL", [], only_leased=True)

    # -- a fleet: workers ------------------------------------------------------------------
    def _job_key(self, what: str) -> str:
        return f"{self.db.schema}/{self.run_id}/{what}"

    def job_rate(self) -> float | None:
        """The job's rate (set by the first worker of those running), None if never set."""
        rate = self.get_meta("rate")
        if rate is None:  # a job made before the rate was the job's: its first worker's
            rate = (self.get_meta("config") or {}).get("rate")
        return None if rate is None else float(rate)

    def join(self, worker: str, job_rate: float, apply: Callable[[float], None]) -> float:
        """Register this worker with a new epoch (the job's counter of joins, its fencing
        token); answers (and applies) its first share of the job's rate.

        The rate is the job's: the first worker of those running sets it, and a worker
        given another while others run is refused (ConfigError, before it sends), under
        the lock that the shares are decided under, so two cannot both be first.
        """
        with self.transaction():
            self._x("SELECT pg_advisory_xact_lock(hashtext(%s))", [self._job_key("shares")])
            if self.running_workers() > 0:
                check_job_rate(self.run_id, self.job_rate(), job_rate)
            else:
                self._put_meta({"rate": job_rate})
            row = self._x("UPDATE {s}.jobs SET epochs = epochs + 1 WHERE run_id=%s RETURNING epochs",
                          [self.run_id]).fetchone()  # fmt: skip
            epoch = int(row[0]) if row else 0
            self._x("INSERT INTO {s}.workers(run_id, worker, host, pid, state, epoch, started_at, "
                    "heartbeat_at) VALUES (%s, %s, %s, %s, 'running', %s, clock_timestamp(), "
                    "clock_timestamp())",
                    [self.run_id, worker, socket.gethostname(), os.getpid(), epoch])  # fmt: skip
        self.owner.worker, self.owner.epoch = worker, epoch
        return self.heartbeat(worker, job_rate, apply)

    def heartbeat(self, worker: str, job_rate: float, apply: Callable[[float], None], *,
                  renew_rows: bool = True) -> float:  # fmt: skip
        """Renew this worker's leases and heartbeat and take its share of the job's rate:
        ``min(rate / live, rate - the others' shares)``. Raises LeaseLost when a claim
        marked this worker lost (it took a row whose lease this worker let run out).

        Never waits on another worker: the rows renewed are this worker's own, and the
        shares are recomputed only when their advisory lock is free at once (else the
        share stays as it is until the next beat). ``apply`` sets the pacer: before the
        commit when the share goes down, after it when it goes up, so the declared
        shares always bound the sending. ``renew_rows`` False: the worker stays alive but lets
        its rows' leases run out (it has been unable to send for a lease: others take them).
        """
        lease = self.db.lease
        share = mine = 0.0
        with self.transaction():
            self._short_statements()
            # the rows first, then the worker's row: a claim locks in the same order
            if renew_rows:
                self._set_leases(worker, "lease_until=clock_timestamp() + make_interval(secs => %s)",
                                 [lease], only_leased=True)  # fmt: skip
            me = self._x("UPDATE {s}.workers SET heartbeat_at=clock_timestamp() WHERE run_id=%s AND "
                         "worker=%s RETURNING state, rate_share",
                         [self.run_id, worker]).fetchone()  # fmt: skip
            if me is None or me[0] != "running":
                apply(0.0)
                raise LeaseLost(f"worker {worker} was silent for more than its lease "
                                f"({lease:g} s) and another worker took its rows: it stops")  # fmt: skip
            mine = share = float(me[1])
            if job_rate <= 0:
                return 0.0  # unlimited: nothing to share
            got = self._x("SELECT pg_try_advisory_xact_lock(hashtext(%s))",
                          [self._job_key("shares")]).fetchone()
            if got and got[0]:
                found = self._x(
                    "SELECT count(*), coalesce(sum(rate_share) FILTER (WHERE worker <> %s), 0) "
                    "FROM {s}.workers WHERE run_id=%s AND state='running' AND heartbeat_at >= "
                    "clock_timestamp() - make_interval(secs => %s)",
                    [worker, self.run_id, lease]).fetchone()  # fmt: skip
                live, others = found if found else (0, 0.0)
                share = max(0.0, min(job_rate / max(1, int(live)), job_rate - float(others)))
                self._x("UPDATE {s}.workers SET rate_share=%s WHERE run_id=%s AND worker=%s",
                        [share, self.run_id, worker])
            if share < mine:
                apply(share)
        if share >= mine:
            apply(share)
        return share

    def leave(self, worker: str, state: str, keep_sent_for: float = 0.0) -> bool:
        """This worker stops (``done`` or ``stopped``); answers True if no other worker of
        the job is still running (this one is the last to finish).

        Rows never sent go back at once; rows sent and awaiting an acknowledgement keep
        their lease for ``keep_sent_for`` seconds more (the ack timeout): until then an
        acknowledgement may still come, and another worker must not POST them again.
        """
        with self.transaction():
            self._x("SELECT pg_advisory_xact_lock(hashtext(%s))", [self._job_key("shares")])
            self._x("WITH held AS MATERIALIZED (SELECT row FROM {s}.records WHERE run_id=%s AND "
                    "lease_owner=%s AND lease_until IS NOT NULL ORDER BY row FOR UPDATE) "
                    "UPDATE {s}.records r SET "
                    "lease_owner = CASE WHEN r.status = 'sent' AND %s > 0 THEN r.lease_owner END, "
                    "lease_until = CASE WHEN r.status = 'sent' AND %s > 0 THEN "
                    "greatest(r.lease_until, clock_timestamp() + make_interval(secs => %s)) END "
                    "FROM held WHERE r.run_id=%s AND r.row=held.row",
                    [self.run_id, worker, *[keep_sent_for] * 3, self.run_id])  # fmt: skip
            self._x("UPDATE {s}.workers SET state=%s, rate_share=0, finished_at=clock_timestamp() "
                    "WHERE run_id=%s AND worker=%s AND state='running'",
                    [state, self.run_id, worker])  # fmt: skip
            row = self._x("SELECT count(*) FROM {s}.workers WHERE run_id=%s AND state='running' "
                          "AND heartbeat_at >= clock_timestamp() - make_interval(secs => %s)",
                          [self.run_id, self.db.lease]).fetchone()  # fmt: skip
        return not row or int(row[0]) == 0

    def _set_leases(self, worker: str, assignment: str, params: list[Any], *,
                    only_leased: bool = False) -> int:  # fmt: skip
        """Update the rows a worker holds (its name and epoch), locking them in row order first.

        The worker's writer thread updates the same rows (save_states, also in row
        order) over another connection: locks taken in one order cannot deadlock.
        """
        leased = "AND lease_until IS NOT NULL " if only_leased else ""
        cur = self._x(
            "WITH held AS MATERIALIZED (SELECT row FROM {s}.records WHERE run_id=%s AND lease_owner=%s "
            f"AND lease_epoch IS NOT DISTINCT FROM %s {leased}ORDER BY row FOR UPDATE) "
            f"UPDATE {{s}}.records r SET {assignment} FROM held WHERE r.run_id=%s AND r.row=held.row",
            [self.run_id, worker, self.owner.epoch, *params, self.run_id])  # fmt: skip
        return cur.rowcount

    def running_workers(self) -> int:
        """Workers of the job that are running and alive (heartbeat within a lease)."""
        row = self._x("SELECT count(*) FROM {s}.workers WHERE run_id=%s AND state='running' "
                      "AND heartbeat_at >= clock_timestamp() - make_interval(secs => %s)",
                      [self.run_id, self.db.lease]).fetchone()  # fmt: skip
        return int(row[0]) if row else 0

    def workers(self) -> list[dict[str, Any]]:
        """The job's workers; one still ``running`` whose heartbeat is older than a lease
        shows as ``lost`` (it is, unless it comes back before another takes its rows)."""
        cur = self._x(
            "SELECT w.worker, w.host, w.pid, CASE WHEN w.state = 'running' AND w.heartbeat_at < "
            "clock_timestamp() - make_interval(secs => %s) THEN 'lost' ELSE w.state END AS state, "
            "w.epoch, w.started_at, w.heartbeat_at, w.finished_at, "
            "w.rate_share, (SELECT count(*) FROM {s}.records r WHERE r.run_id=w.run_id AND "
            "r.lease_owner=w.worker AND r.lease_until >= clock_timestamp()) AS leased, "
            "(SELECT min(r.lease_until) FROM {s}.records r WHERE r.run_id=w.run_id AND "
            "r.lease_owner=w.worker) AS lease_until, "
            "extract(epoch FROM clock_timestamp() - w.heartbeat_at) AS heartbeat_age "
            "FROM {s}.workers w WHERE w.run_id=%s ORDER BY w.started_at", [self.db.lease, self.run_id])
        names = [d.name for d in cur.description or []]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

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

def _array_type(column: str) -> str:
    t = _TYPES.get(column, "TEXT").split()[0]
    return {"DOUBLE": "float8", "BIGINT": "int8", "INTEGER": "int4"}.get(t, "text")


class _Locked:
    """A transaction on the shared connection, held under its lock."""

    def __init__(self, journal: PgJournal, isolation: str | None = None, watched: bool = True) -> None:
        self._journal = journal
        self._lock = journal._lock
        self._tx: contextlib.AbstractContextManager[Any] | None = None
        # a long read (a report) is watched statement by statement, not as a whole
        self._watched = watched
        self._isolation = isolation

    def __enter__(self) -> None:
        self._lock.acquire()
        if self._watched:
            self._journal._begin_call()
        try:
            self._tx = self._journal._conn.transaction()
            self._tx.__enter__()
            self._journal._depth += 1
            if self._isolation:
                self._journal._x(f"SET TRANSACTION ISOLATION LEVEL {self._isolation}")
        except BaseException:
            if self._tx is not None and self._journal._depth:
                self._journal._depth -= 1
                with contextlib.suppress(Exception):
                    self._tx.__exit__(None, None, None)
            if self._watched:
                self._journal._end_call()
            self._lock.release()
            raise

    def __exit__(self, *exc: Any) -> None:
        try:
            assert self._tx is not None
            self._journal._depth -= 1
            self._tx.__exit__(*exc)
        finally:
            if self._watched:
                self._journal._end_call()
            self._lock.release()

