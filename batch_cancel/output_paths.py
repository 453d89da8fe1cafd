"""Every path a command writes, checked before anything is sent or written.

A typo must never destroy a file: ``--report`` equal to the input list, or to
``--state``, once overwrote it (even with ``--dry-run``), and an output folder
that could not be made failed only after every record had been POSTed. So
before login, each output is resolved (symlinks followed) and must be

* none of the input files and none of the other outputs (nor the journal's
  ``-wal``/``-shm`` companions);
* in a folder that exists or can be created, under no regular file;
* writable, proven by creating (and removing) a temporary file beside it;
* for the journal: an existing file must be a journal of ours, else it is named
  and left untouched (an empty file counts as new: it holds nothing to lose);
* for the others: an existing file must be one this tool writes (a report of
  any run, an evidence page, a metrics file), so ``--report notes.csv`` typed
  for ``--report notes-out.csv`` refuses instead of replacing the notes.

An output in object storage (``s3://``…) gets the same checks where they mean
something: no input and no other output (by URL), writable (a small object is
written beside it and removed: the credentials decide, not the URL), and an
existing object is replaced only if its content says batch-cancel wrote it, the
same test as for a file (objects are also tagged ``generator: batch-cancel`` when
written, for people; a report copied there by hand is still recognised).

No click here: ``run``, ``merge`` and ``validate-job`` and library callers share it.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import BinaryIO

from batch_cancel.exceptions import ConfigError, JournalUnusable
from batch_cancel.journal.lock import LOCK_TABLE
from batch_cancel.object_store import (
    Location,
    ObjectUrl,
    canonical,
    object_info,
    open_object,
    prove_writable,
)

__all__ = ["check_outputs", "journal_run_id"]

_SQLITE_HEADER = b"SQLite format 3\x00"
# tables every journal of ours has had since the first version, and all it may have
_JOURNAL_TABLES = frozenset({"meta", "records"})
_OUR_TABLES = frozenset({LOCK_TABLE, "meta", "records", "plan_snapshot", "events", "unmatched"})
_JOURNAL_COMPANIONS = ("-wal", "-shm", "-journal")


def check_outputs(
    inputs: Iterable[Location],
    outputs: Mapping[str, Location | None],
    *,
    journal: str | None = None,
    create_folders: bool = True,
) -> None:
    """Raise ConfigError (or JournalUnusable) unless every output may be written.

    ``outputs`` maps how the user named each one (``"--report"``) to its path
    (None: not asked for); ``journal`` is the key of the journal among them.
    With ``create_folders`` missing folders are made (a run is about to write
    there); without, it is enough that they could be.
    """
    given = {name: path for name, path in outputs.items() if path is not None}
    sources = [(p, _resolved(p)) for p in inputs if str(p) != "-"]
    seen: list[tuple[str, Location, Location]] = []
    for name, path in given.items():
        real = _resolved(path)
        if isinstance(real, Path) and real.is_dir():
            raise ConfigError(f"{name} {path} is a folder; give a file path")
        for source, source_real in sources:
            if _same(real, source_real):
                raise ConfigError(f"{name} {path} is the input file {source}: it would be "
                                  "overwritten; write elsewhere")  # fmt: skip
        for other, other_path, other_real in seen:
            if _same(real, other_real):
                raise ConfigError(f"{name} {path} and {other} {other_path} are the same file; "
                                  "give each its own path")  # fmt: skip
        seen.append((name, path, real))
    if journal is not None and journal in given:
        if isinstance(given[journal], ObjectUrl):
            raise ConfigError(f"{journal} {given[journal]}: the journal is a local SQLite file or "
                              "PostgreSQL, not an object: it is locked and updated in place")  # fmt: skip
        state_real = _resolved(given[journal])
        for name, path, real in seen:
            if name != journal and any(real == Path(f"{state_real}{s}") for s in _JOURNAL_COMPANIONS):
                raise ConfigError(f"{name} {path} is a file of the journal {given[journal]}; "
                                  "write elsewhere")  # fmt: skip
        for source, source_real in sources:
            if any(source_real == Path(f"{state_real}{s}") for s in _JOURNAL_COMPANIONS):
                raise ConfigError(f"input {source} is a file of the journal {given[journal]}")
    for name, path, real in seen:
        if isinstance(path, ObjectUrl):
            prove_writable(name, path)
        else:
            assert isinstance(real, Path)
            _check_folder(name, path, real, create_folders)
        if name != journal:
            _check_not_foreign(name, path)
    if journal is not None and journal in given:
        state = given[journal]
        assert isinstance(state, Path)
        journal_run_id(state, name=journal)
        _check_existing_writable(journal, state)


def journal_run_id(path: Path, *, name: str = "--state") -> str | None:
    """The run id of the journal at ``path``: None when there is none yet (no file, or empty),
    "" for a journal of ours whose run has not written its identity yet.

    Anything else (a CSV, another program's database, a truncated journal) raises
    :class:`JournalUnusable` naming the file, which is only read, never changed.
    """
    if not path.exists():
        return None
    if path.is_dir():
        raise ConfigError(f"{name} {path} is a folder; give a file path")
    try:
        with path.open("rb") as f:
            header = f.read(len(_SQLITE_HEADER))
    except OSError as exc:
        raise JournalUnusable(f"{name} {path} cannot be read: {exc.strerror}") from None
    has_wal = Path(f"{path}-wal").exists()
    if not header and not has_wal:
        return None
    if header and header != _SQLITE_HEADER:
        raise JournalUnusable(f"{name} {path} is not a batch-cancel journal (not an SQLite file); "
                              "it was left untouched: give another --state")  # fmt: skip
    try:
        # a journal being made, or one whose run was killed (or met a full disk) before a
        # checkpoint, may have its pages (even the first) only in the WAL file: the main
        # file alone then reads as malformed, so with a WAL the WAL is read too
        found = _read_identity(path, immutable=not has_wal) if header else None
        if found is None and has_wal:
            found = _read_identity(path, immutable=False)
    except sqlite3.DatabaseError as exc:
        raise JournalUnusable(f"{name} {path} is not a readable journal ({exc}); it was left "
                              "untouched: restore it or give another --state") from None  # fmt: skip
    if found is None and not header:
        return None  # an empty file beside a WAL file that holds nothing of ours yet
    if found is None:
        raise JournalUnusable(f"{name} {path} is an SQLite file but not a batch-cancel journal; "
                              "it was left untouched: give another --state")  # fmt: skip
    return found


def _read_identity(path: Path, *, immutable: bool) -> str | None:
    """"" for a journal of ours without a run id yet, None for a database that is not ours."""
    import json

    mode = "immutable=1" if immutable else "mode=ro"
    uri = f"{path.resolve().as_uri()}?{mode}"
    db = sqlite3.connect(uri, uri=True)
    try:
        tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if not tables or (LOCK_TABLE in tables and tables <= _OUR_TABLES and not tables >= _JOURNAL_TABLES):
            # no tables: a run is creating this journal this very moment (or an empty database,
            # which holds nothing to lose); the lock table and some of ours: a run took it and
            # stopped before its tables were all made (a full disk, with older versions)
            return ""
        if not tables >= _JOURNAL_TABLES:
            return None
        row = db.execute("SELECT value FROM meta WHERE key='run_id'").fetchone()
        return str(json.loads(row[0])) if row else ""
    finally:
        db.close()


# What marks a file as one of ours, by what the output is: every report (of any
# version, any run, CSV, JSONL or Parquet) has these columns; the evidence page
# names its generator; every metric of ours starts with the prefix.
_REPORT_COLUMNS = frozenset({"row", "phone_number", "status"})
_HTML_MARK = b'<meta name="generator" content="batch-cancel'
_METRICS_MARK = b"batch_cancel_"
_HEAD_BYTES = 16_384


def _open_existing(name: str, path: Location) -> BinaryIO | None:
    """An existing, non-empty output opened for reading; None when there is nothing to lose."""
    if isinstance(path, ObjectUrl):
        try:
            info = object_info(path)
        except Exception as exc:  # InputError: the same words, for an output
            raise ConfigError(f"{name} {exc}") from None
        return None if info is None or info.size == 0 else open_object(path, info.version_id)
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return None
        return path.open("rb")
    except OSError as exc:
        raise ConfigError(f"{name} {path} cannot be read: {exc.strerror}") from None


def _check_not_foreign(name: str, path: Location) -> None:
    """An existing, non-empty output that this tool did not write is never replaced."""
    stream = _open_existing(name, path)
    if stream is None:
        return
    try:
        with stream:
            head = stream.read(_HEAD_BYTES)
            is_report = "html" not in name and "metrics" not in name and _is_report(path, head, stream)
    except OSError as exc:
        raise ConfigError(f"{name} {path} cannot be read: {exc.strerror or exc}") from None
    except Exception as exc:  # an object that could not be read (InputError)
        raise ConfigError(f"{name} {exc}") from None
    if "html" in name:
        ours, what = _HTML_MARK in head, "a batch-cancel evidence page"
    elif "metrics" in name:
        ours, what = _METRICS_MARK in head, "a batch-cancel metrics file"
    else:
        ours, what = is_report, "a batch-cancel report"
    if not ours:
        raise ConfigError(f"{name} {path} exists and is not {what}; it was left untouched: "
                          "give another path, or remove the file first")  # fmt: skip


def _is_report(path: Location, head: bytes, stream: BinaryIO) -> bool:
    import csv
    import json

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as pq

            return set(pq.read_schema(stream).names) >= _REPORT_COLUMNS
        except Exception:  # not Parquet at all: not ours either
            return False
    first = head.split(b"\n", 1)[0].decode("utf-8", errors="replace").removeprefix("\ufeff")
    if suffix == ".jsonl":
        try:
            row = json.loads(first)
        except ValueError:
            return False
        return isinstance(row, dict) and row.keys() >= _REPORT_COLUMNS
    return set(next(csv.reader([first]), [])) >= _REPORT_COLUMNS


def _resolved(path: Location) -> Location:
    if isinstance(path, ObjectUrl):  # s3a:// and s3:// (gs/gcs, az/abfs) name the same object
        return canonical(path)
    return Path(os.path.realpath(path.expanduser()))


def _same(a: Location, b: Location) -> bool:
    if a == b:
        return True
    if not (isinstance(a, Path) and isinstance(b, Path)):
        return False
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)  # hard links
    except OSError:
        return False


def _check_folder(name: str, path: Path, real: Path, create: bool) -> None:
    folder = real.parent
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{name} {path}: {existing} is a file, not a folder")
    if existing != folder:
        if not create:
            _prove_writable(name, path, existing)
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"{name} {path}: cannot create the folder {folder}: "
                              f"{exc.strerror}") from None  # fmt: skip
    _prove_writable(name, path, folder)


def _prove_writable(name: str, path: Path, folder: Path) -> None:
    """Permission bits do not tell (root, ACLs, read-only mounts): create a file and remove it."""
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".batch-cancel-check-")
    except OSError as exc:
        raise ConfigError(f"{name} {path}: cannot write in {folder}: {exc.strerror}") from None
    os.close(fd)
    os.unlink(tmp)


def _check_existing_writable(name: str, path: Path) -> None:
    if not path.exists():
        return
    try:
        with path.open("r+b"):  # opened for writing, not written: the bytes stay as they are
            pass
    except OSError as exc:
        raise ConfigError(f"{name} {path} cannot be written: {exc.strerror}") from None
