"""The reconciliation report: one row per input row, rebuilt from the journal.

Formats by extension: ``.csv`` (safe to open in a spreadsheet), ``.parquet``,
``.jsonl``. The report is written to a temporary file and renamed, so a reader
never sees half a report; to object storage (``s3://``…) as one upload completed
only at the end (object_store.py), so there too it is whole or absent.

Spreadsheet safety: a CSV cell a spreadsheet would execute (``=…``, ``@…``, tab,
carriage return, ``+`` or ``-`` followed by more than digits, spaces and phone
punctuation) is written with a leading apostrophe, the OWASP recommendation:
spreadsheets show the text and do not evaluate it (rules in csv_text.py). That
covers every text column: the raw ``phone_number`` as the input had it,
campaign, calling list, ``error`` and ``warnings`` text and the rest; a phone
number (``+12125550134``) is written as it is, so programs read E.164. The
Parquet report is typed (timestamps ``timestamp[ms, tz=UTC]``, integers, nulls);
Parquet and JSONL carry the values untouched.

Speed: the rows come as Arrow batches, from the journal's plan snapshot while no
record has changed state (a dry run: see snapshot.py), else from SQL; the CSV
text is made column-wise (csv_text.py) in exactly ``csv.writer``'s format, on
threads while the next batches are read.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from batch_cancel.exceptions import ConfigError, ReportUnwritable
from batch_cancel.journal.base import JournalBase
from batch_cancel.journal.rows import REPORTED_PENDING, Status
from batch_cancel.journal.snapshot import report_batches as snapshot_batches
from batch_cancel.object_store import Location, ObjectUrl, write_object
from batch_cancel.report.csv_text import csv_lines, write_lines
from batch_cancel.report.schema import PARQUET_SCHEMA, REPORT_COLUMNS, REPORT_SCHEMA, TIMESTAMPS

__all__ = [
    "REPORT_COLUMNS",
    "report_rows",
    "write_aside",
    "write_csv_rows",
    "write_parquet_rows",
    "write_report",
]

FORMATS = (".csv", ".parquet", ".jsonl")
_STATUS = {str(s): str(Status.PENDING) for s in REPORTED_PENDING}
# Rows per Arrow batch. A batch is first a list of dicts (about 2.5 kB a row), so
# this bounds the report's memory: 50,000 cost 125 MB, the peak of a whole run.
_BATCH = 8_192
# Threads making CSV text: two cores are the common case (and the reader takes a third share).
_CSV_THREADS = 2


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def report_rows(journal: JournalBase) -> Iterator[dict[str, Any]]:
    """The report's rows as dicts, read from the journal's records."""
    for r in journal.iter_rows():
        out = {c: r.get(c) for c in REPORT_COLUMNS}
        out["status"] = _STATUS.get(r["status"], r["status"])
        out["sent_at"] = _iso(r["sent_at"])
        out["acked_at"] = _iso(r["acked_at"])
        yield out


def _as_batches(rows: Iterable[dict[str, Any]], size: int = _BATCH) -> Iterator[pa.RecordBatch]:
    chunk: list[dict[str, Any]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= size:
            yield pa.RecordBatch.from_pylist(chunk, schema=REPORT_SCHEMA)
            chunk = []
    if chunk:
        yield pa.RecordBatch.from_pylist(chunk, schema=REPORT_SCHEMA)


def report_batches(journal: JournalBase) -> Iterator[pa.RecordBatch]:
    """The report's rows as Arrow batches (REPORT_COLUMNS), in row order."""
    fast = snapshot_batches(journal)
    return fast if fast is not None else _as_batches(report_rows(journal))


def check_report_path(path: Location) -> None:
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"report {path}: unknown format {path.suffix!r} (use .csv, .parquet or .jsonl)")


def write_report(journal: JournalBase, path: Location) -> Location:
    """The report file, every row as of one moment (a report taken while workers write)."""
    check_report_path(path)
    with journal.reading():
        return write_aside(path, lambda f: _write(report_batches(journal), f, path.suffix.lower()))


def write_aside(path: Location, write: Callable[[BinaryIO], object]) -> Location:
    """Write ``path`` through a temporary file beside it, renamed into place: a reader
    never sees half a file, and a failure (a full disk) leaves no half file, no
    temporary one, and the previous version as it was. An object is uploaded and
    completed only at the end (the same promise). Raises ReportUnwritable."""
    if isinstance(path, ObjectUrl):
        write_object(path, write, ReportUnwritable)
        return path
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException as exc:
        # a failed write (a full disk) or rows refused half way (merge): no temporary file left
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise ReportUnwritable(f"could not write {path}: {exc.strerror or exc}") from exc
        raise
    return path


def _write(batches: Iterable[pa.RecordBatch], f: BinaryIO, suffix: str) -> None:
    if suffix == ".csv":
        header = io.StringIO()
        csv.writer(header).writerow(REPORT_COLUMNS)
        f.write(header.getvalue().encode("utf-8"))
        _write_csv(batches, f)
    elif suffix == ".jsonl":
        for batch in batches:
            f.write("".join(json.dumps(row, ensure_ascii=False) + "\n"
                            for row in batch.to_pylist()).encode("utf-8"))
    else:
        with pq.ParquetWriter(f, PARQUET_SCHEMA) as writer:
            wrote = False
            for batch in batches:
                writer.write_batch(_typed(batch))
                wrote = True
            if not wrote:  # a file with the schema and no rows, as before
                writer.write_table(PARQUET_SCHEMA.empty_table())


def _write_csv(batches: Iterable[pa.RecordBatch], f: BinaryIO) -> None:
    """The batches' CSV text, in order. Making it is Arrow's work, which runs without the
    interpreter lock: on _CSV_THREADS threads it overlaps reading the next batches (the
    snapshot's decoding, or rows from SQL) and the writes, with a few batches in hand."""
    with ThreadPoolExecutor(max_workers=_CSV_THREADS, thread_name_prefix="report-csv") as pool:
        pending: deque[Future[pa.Array | None]] = deque()
        for batch in batches:
            pending.append(pool.submit(_csv_lines, batch))
            if len(pending) > _CSV_THREADS:
                write_lines(f, pending.popleft().result())
        while pending:
            write_lines(f, pending.popleft().result())


def _csv_lines(batch: pa.RecordBatch) -> pa.Array | None:
    lines = csv_lines(batch)
    # mimalloc (pyarrow's default) keeps freed pages per thread: this thread hands its
    # own back, as the planner does per batch (see plan.py)
    pa.default_memory_pool().release_unused()
    return lines


def _typed(batch: pa.RecordBatch) -> pa.RecordBatch:
    """A report batch as Parquet stores it: the ISO 8601 times as timestamp[ms, tz=UTC]."""
    arrays = [batch.column(f.name).cast(f.type) if f.name in TIMESTAMPS else batch.column(f.name)
              for f in PARQUET_SCHEMA]
    return pa.RecordBatch.from_arrays(arrays, schema=PARQUET_SCHEMA)


# merge.py writes merged reports with these, so its output is a single run's format.
def write_csv_rows(rows: Iterable[dict[str, Any]], f: BinaryIO) -> None:
    _write(_as_batches(rows), f, ".csv")


def write_parquet_rows(rows: Iterable[dict[str, Any]], f: BinaryIO, batch: int = _BATCH) -> None:
    _write(_as_batches(rows, batch), f, ".parquet")
