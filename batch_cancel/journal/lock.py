"""One run per journal: an exclusive lock, kept in the journal file itself.

Two runs on one journal (an Airflow retry overlapping a slow attempt, two
people) would each send every record not yet final. So a run takes the lock
before it plans or sends anything, holds it to the end, and a second run exits
2 at once naming the holder (host, pid, since when), or waits ``--wait-lock``
seconds for it and then resumes. Readers (``status``) take no lock at all: the
journal is SQLite in WAL mode, and reading never blocks on the writer.

The lock is one row of the table ``run_lock``, written in a ``BEGIN IMMEDIATE``
transaction, so taking it is atomic wherever SQLite's own locking works (the
journal itself needs no more than that). The row names the holder and carries a
heartbeat, refreshed every few seconds by a thread of the holder. A holder that
died without releasing (kill -9, a machine lost) is recognised and its lock
taken over, saying so:

* in the same process space (the same host name, the same boot of its kernel and
  the same PID namespace), when its pid is gone (or is another process now: the
  start time of the pid differs from the one recorded);
* anywhere else (another host; another container on this host, whose pids are not
  ours to look up; a container restarted with a new PID namespace, whose pid 1 is
  not the old pid 1; a host rebooted since), when its heartbeat is older than
  ``stale_after`` seconds.
  This compares the other host's clock with ours, so the hosts' clocks must agree
  to well within that bound (NTP does).

A holder whose lock was taken over (it was judged dead, but was only frozen)
notices at its next heartbeat and is told through ``on_lost``; the run then stops
sending. Resuming after a kill -9 works as before: the stale row is replaced.

A PostgreSQL journal can keep the same row and rules (``SELECT … FOR UPDATE``).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from batch_cancel.exceptions import Interrupted, JournalLocked

__all__ = ["HEARTBEAT_S", "LOCK_TABLE", "STALE_AFTER_S", "Holder", "JournalLock", "lock_holder"]

log = logging.getLogger("batch_cancel")

LOCK_TABLE = "run_lock"
HEARTBEAT_S = 5.0
# a holder on another host whose heartbeat is this old is taken for dead: twelve
# missed heartbeats, far beyond a stalled disk or a busy machine
STALE_AFTER_S = 60.0
_POLL_S = 0.2  # how often a waiting run looks again
_RELEASE_WAIT_S = 2.0  # how long giving the lock up may wait for a busy journal
# the tokens of the locks this process holds now: a lock row with this process's pid
# and another token was left by an earlier run in this process that could not delete
# it (its journal was held by another process then), not taken by a live one
_HELD: set[str] = set()

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {LOCK_TABLE} (
    id INTEGER PRIMARY KEY CHECK (id = 1), token TEXT NOT NULL, host TEXT NOT NULL,
    pid INTEGER NOT NULL, pid_start TEXT, since REAL NOT NULL, heartbeat REAL NOT NULL,
    boot_id TEXT, pid_ns TEXT
)
"""
# columns a lock table made by an earlier batch-cancel lacks (NULL: judged as before, by host)
_ADDED = (("boot_id", "TEXT"), ("pid_ns", "TEXT"))
_COLUMNS = "token, host, pid, pid_start, since, heartbeat, boot_id, pid_ns"


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a journal's lock."""

    token: str
    host: str
    pid: int
    pid_start: str | None
    since: float
    heartbeat: float
    boot_id: str | None = None  # /proc/sys/kernel/random/boot_id: which boot of the kernel
    pid_ns: str | None = None  # readlink /proc/self/ns/pid: which PID namespace its pid is in

    def describe(self, now: float) -> str:
        since = datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return (f"host {self.host}, pid {self.pid}, since {since} "
                f"(last heartbeat {max(0.0, now - self.heartbeat):.0f} s ago)")  # fmt: skip


def _pid_start(pid: int) -> str | None:
    """The start time of ``pid`` (clock ticks since boot, Linux); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ")"
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def _pid_ns() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class JournalLock:
    """The journal's lock, held by this process until :meth:`release`."""

    def __init__(self, path: Path, db: sqlite3.Connection, holder: Holder, *,
                 heartbeat: float, clock: Callable[[], float]) -> None:  # fmt: skip
        self.path = path
        self.holder = holder
        self._db = db
        self._clock = clock
        self._interval = heartbeat
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._on_lost: Callable[[], None] | None = None
        _HELD.add(holder.token)
        # a beat that cannot be written now is tried again at the next one (the lock is
        # stale only after STALE_AFTER_S): waiting longer for a busy journal would only
        # keep this process from exiting when its run ends (the 30 s of taking the lock)
        db.execute(f"PRAGMA busy_timeout = {int(heartbeat * 1000)}")
        self._thread = threading.Thread(target=self._beat, name="journal-lock-heartbeat", daemon=True)
        self._thread.start()

    # -- taking it ------------------------------------------------------------------
    @classmethod
    def acquire(
        cls,
        path: Path,
        *,
        wait: float = 0.0,
        should_stop: Callable[[], bool] = lambda: False,
        stale_after: float = STALE_AFTER_S,
        heartbeat: float = HEARTBEAT_S,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
    ) -> JournalLock:
        """Take the lock of the journal at ``path`` (made if missing), waiting up to ``wait`` s.

        Raises :class:`JournalLocked` naming the holder when it is still held after
        ``wait``, and :class:`Interrupted` when ``should_stop`` turns true meanwhile.
        """
        path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            # as the journal's own connection: a commit survives a process crash, and only a
            # power cut could lose the last heartbeat (which errs toward "holder gone")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            have = {r[1] for r in db.execute(f"PRAGMA table_info({LOCK_TABLE})")}
            for column, kind in _ADDED:
                if column not in have:
                    db.execute(f"ALTER TABLE {LOCK_TABLE} ADD COLUMN {column} {kind}")
            me = socket.gethostname()
            boot, ns = _boot_id(), _pid_ns()
            pid = os.getpid()
            deadline = clock() + wait
            told = False
            while True:
                now = clock()
                ours = Holder(secrets.token_hex(8), me, pid, _pid_start(pid), now, now, boot, ns)
                other = cls._try_take(db, ours, stale_after, now)
                if other is None:
                    return cls(path, db, ours, heartbeat=heartbeat, clock=clock)
                if now >= deadline:
                    hint = ("still held after waiting" if wait > 0 else
                            "wait for it to finish, or give --wait-lock SECONDS to wait and then resume")
                    raise JournalLocked(f"journal {path} is in use by another run: "
                                        f"{other.describe(now)}; {hint}")  # fmt: skip
                if not told:
                    log.warning("journal %s is in use by another run (%s): waiting up to %.0f s",
                                path, other.describe(now), wait)  # fmt: skip
                    told = True
                if should_stop():
                    raise Interrupted("interrupted while waiting for the journal's lock")
                sleep(min(_POLL_S, max(0.0, deadline - now)))
        except BaseException:
            db.close()
            raise

    @staticmethod
    def _try_take(db: sqlite3.Connection, ours: Holder, stale_after: float, now: float) -> Holder | None:
        """Take the lock in one transaction; None when taken, else the live holder."""
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(f"SELECT {_COLUMNS} FROM {LOCK_TABLE} WHERE id = 1").fetchone()
            if row is not None:
                other = Holder(*row)
                why = _why_stale(other, ours, stale_after, now)
                if why is None:
                    db.execute("ROLLBACK")
                    return other
                log.warning("journal lock left by %s: %s; taking it over", other.describe(now), why)
            db.execute(
                f"INSERT OR REPLACE INTO {LOCK_TABLE}(id, {_COLUMNS}) VALUES(1, ?, ?, ?, ?, ?, ?, ?, ?)",
                (ours.token, ours.host, ours.pid, ours.pid_start, ours.since, ours.heartbeat,
                 ours.boot_id, ours.pid_ns),
            )
            db.execute("COMMIT")
            return None
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # -- holding it -------------------------------------------------------------------
    def on_lost(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the heartbeat thread) if another run takes the lock over."""
        self._on_lost = callback
        if self.lost.is_set():
            callback()

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                cur = self._db.execute(f"UPDATE {LOCK_TABLE} SET heartbeat=? WHERE id=1 AND token=?",
                                       (self._clock(), self.holder.token))  # fmt: skip
            except sqlite3.Error as exc:  # a busy or slow disk: the next beat tries again
                log.debug("journal lock heartbeat not written: %s", exc)
                continue
            if cur.rowcount == 0:
                log.error("journal %s: another run took this run's lock over (it judged this run "
                          "dead); stopping", self.path)  # fmt: skip
                self.lost.set()
                if self._on_lost is not None:
                    self._on_lost()
                return

    def release(self) -> None:
        """Give the lock up (only if it is still ours) and stop the heartbeat."""
        self._stop.set()
        # a beat waits for a journal another process holds (which may be why this run
        # ends: exit 3) no longer than a beat's interval, and the delete a few seconds: a
        # lock left behind is taken over by the next run, which finds this process gone
        self._thread.join()
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(_RELEASE_WAIT_S * 1000)}")
            self._db.execute(f"DELETE FROM {LOCK_TABLE} WHERE id=1 AND token=?", (self.holder.token,))
        except sqlite3.Error as exc:  # the next run sees a dead holder and takes over
            log.warning("journal %s: lock not released (%s)", self.path, exc)
        finally:
            _HELD.discard(self.holder.token)
            self._db.close()


def _why_stale(other: Holder, ours: Holder, stale_after: float, now: float,
               held: Collection[str] = _HELD) -> str | None:  # fmt: skip
    """Why ``other`` is certainly gone, or None while it may be alive."""
    # its pid means something here only in the same process space: the same host, the
    # same boot and the same PID namespace (unknown, from an earlier batch-cancel: as before)
    local = other.host == ours.host and all(
        theirs is None or theirs == mine
        for theirs, mine in ((other.boot_id, ours.boot_id), (other.pid_ns, ours.pid_ns)))
    if local:
        if other.pid == ours.pid:
            if other.token in held:
                return None  # this very process holds it (another run in the same process)
            return f"left by an earlier run of this process (pid {other.pid})"
        if not _pid_alive(other.pid):
            return f"pid {other.pid} is gone"
        if other.pid_start is not None and _pid_start(other.pid) not in (None, other.pid_start):
            return f"pid {other.pid} is another process now"
        return None
    age = now - other.heartbeat
    if age > stale_after:
        where = other.host if other.host != ours.host else f"{other.host} (another PID namespace or boot)"
        return f"no heartbeat from {where} for {age:.0f} s (more than {stale_after:.0f} s)"
    return None


def lock_holder(path: Path) -> Holder | None:
    """Who holds the journal's lock now, read without taking it (for ``status``)."""
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        try:
            row = db.execute(f"SELECT {_COLUMNS} FROM {LOCK_TABLE} WHERE id = 1").fetchone()
        except sqlite3.OperationalError:  # a lock table of an earlier batch-cancel
            row = db.execute(f"SELECT token, host, pid, pid_start, since, heartbeat FROM {LOCK_TABLE}"
                             " WHERE id = 1").fetchone()  # fmt: skip
    except sqlite3.Error:  # a journal made before the lock existed has no such table
        return None
    finally:
        db.close()
    return Holder(*row) if row else None
