"""Opening an existing journal of either store for reading (``report``, ``status``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from batch_cancel.config import StateDb
from batch_cancel.exceptions import ConfigError
from batch_cancel.journal.base import JournalBase
from batch_cancel.journal.store import Journal

if TYPE_CHECKING:
    pass

__all__ = ["open_existing"]


def open_existing(path: Path | None, db: StateDb | None, run_id: str | None) -> JournalBase:
    """The journal of one job: a SQLite file, or a run id in a PostgreSQL journal.

    Raises ConfigError (exit 2) when there is no such journal or job; nothing is created.
    """
    journal: JournalBase
    if db is not None:
        from batch_cancel.journal.postgres import PgJournal

        if not run_id:
            raise ConfigError("--run-id is required with --state postgresql://…")
        journal = PgJournal.open(db, run_id, migrate=False)
        where = f"{db.display} has no job {run_id!r}"
    else:
        if path is None or not path.is_file():
            raise ConfigError(f"no journal at {path}")
        journal = Journal.open(path)
        where = f"{path} is not a batch-cancel journal"
    if journal.is_new():
        journal.close()
        raise ConfigError(where)
    return journal
