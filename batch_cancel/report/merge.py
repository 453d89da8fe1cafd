"""Merging the reports of a sharded run into the report one process would have written.

Shards of one job run with the same ``--run-id``, so every reference id in their
reports reads ``bc-<run id>-<row>``; rows keep their global numbers. Reports are
streamed (each is already ordered by row) through a k-way merge, so memory does
not grow with the number of rows. A merge is refused, and nothing is written,
when the reports cannot be one run's shards:

* two run ids among the reference ids (or not the run id asked for);
* a row number in two reports (the same shard twice, or another input);
* a gap in the row numbers (a shard's report is missing), unless allowed;
* a file that is not a batch-cancel report (other columns, unknown status).

Rejected and duplicate rows carry no reference id, so a report of only those
rows cannot be attributed; the row numbers still have to fit.
"""

from __future__ import annotations

import contextlib
import csv
import heapq
import io
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any, BinaryIO

from batch_cancel.exceptions import ConfigError, InputError
from batch_cancel.journal.rows import REPORTED
from batch_cancel.object_store import Location, ObjectUrl, object_info, open_object

# The writers are report.py's own, so a merged report is byte-for-byte the
# format (and the CSV escaping) of a single run's.
from batch_cancel.report.csv_text import unescape
from batch_cancel.report.writers import (
    REPORT_COLUMNS,
    check_report_path,
    write_aside,
    write_csv_rows,
    write_parquet_rows,
)
from batch_cancel.summary import Summary

__all__ = ["MergeResult", "merge_reports", "read_report_rows"]

STATUSES = frozenset(str(s) for s in REPORTED)
_INTS = frozenset({"row", "application_id", "attempts", "http_status", "status_code", "duplicate_of",
                   "record_handle"})  # fmt: skip
_FLOATS = frozenset({"latency_ms"})


@dataclass
class MergeResult:
    run_id: str | None
    out: Location
    sources: list[Location]
    counts: Counter[str] = field(default_factory=Counter)
    duplicates_of_unsuccessful: int = 0

    def summary(self) -> Summary:
        c = self.counts
        return Summary(
            run_id=self.run_id or "", total=sum(c.values()), cancelled=c["cancelled"],
            failed=c["failed"], timed_out=c["timed_out"], rejected=c["rejected"],
            duplicate=c["duplicate"], pending=c["pending"], report=str(self.out), state="",
            duplicates_of_unsuccessful=self.duplicates_of_unsuccessful,
        )  # fmt: skip

    @property
    def exit_code(self) -> int:
        # a pending row means a shard stopped before the end: resume it (3), as run says
        return 3 if self.counts["pending"] else self.summary().exit_code

    def as_json(self) -> dict[str, Any]:
        d = self.summary().as_json()
        for unused in ("state", "dry_run", "elapsed_s", "stats"):
            d.pop(unused)
        d["run_id"] = self.run_id
        d["merged"] = [str(p) for p in self.sources]
        d["exit_code"] = self.exit_code
        return d


# --- reading: three formats, one typed row shape ---


def read_report_rows(path: Location) -> Iterator[dict[str, Any]]:
    """The rows of one report (a file or an object), typed as the journal holds them, in file order."""
    suffix = path.suffix.lower()
    if not (object_info(path) is not None if isinstance(path, ObjectUrl) else path.is_file()):
        raise InputError(f"report {path} does not exist")
    if suffix == ".csv":
        return _read_csv(path)
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".parquet":
        return _read_parquet(path)
    raise InputError(f"report {path}: unknown format {path.suffix!r} (.csv, .parquet or .jsonl)")


def _check_columns(path: Location, columns: Iterable[str]) -> None:
    have = set(columns)
    missing = [c for c in REPORT_COLUMNS if c not in have]
    extra = sorted(have - set(REPORT_COLUMNS))
    if missing or extra:
        what = "; ".join(x for x in (missing and f"missing {', '.join(missing)}",
                                     extra and f"unexpected {', '.join(extra)}") if x)  # fmt: skip
        raise InputError(f"{path} is not a batch-cancel report ({what})")


def _unescape(value: str) -> str | None:
    # the CSV writer puts "'" before a cell that a spreadsheet would evaluate; take it off again
    return unescape(value) if value else None


def _typed(path: Location, where: str, row: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for c in REPORT_COLUMNS:
        v = row.get(c)
        if v is None or v == "":
            out[c] = None
            continue
        if isinstance(v, datetime):  # a typed Parquet report: back to the text the others hold
            out[c] = v.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
            continue
        try:
            out[c] = int(v) if c in _INTS else float(v) if c in _FLOATS else v
        except (TypeError, ValueError):
            raise InputError(f"{path} {where}: {c} {v!r} is not a number") from None
    return out


@contextlib.contextmanager
def _opened(path: Location, text: bool) -> Iterator[IO[Any]]:
    """A report's bytes (an object streamed by ranged reads), as text or binary."""
    if not isinstance(path, ObjectUrl):
        with path.open(newline="", encoding="utf-8") if text else path.open("rb") as f:
            yield f
        return
    with open_object(path) as raw:
        yield io.TextIOWrapper(raw, encoding="utf-8", newline="") if text else raw


def _read_csv(path: Location) -> Iterator[dict[str, Any]]:
    with _opened(path, text=True) as f:
        reader = csv.DictReader(f)
        _check_columns(path, reader.fieldnames or [])
        for raw in reader:
            cells = {k: _unescape(v) if isinstance(v, str) else v for k, v in raw.items()}
            yield _typed(path, f"line {reader.line_num}", cells)


def _read_jsonl(path: Location) -> Iterator[dict[str, Any]]:
    with _opened(path, text=True) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path} line {number}: not JSON ({exc.msg})") from None
            if not isinstance(raw, dict):
                raise InputError(f"{path} line {number}: not a JSON object")
            _check_columns(path, raw)
            yield _typed(path, f"line {number}", raw)


def _read_parquet(path: Location) -> Iterator[dict[str, Any]]:
    import pyarrow.parquet as pq

    with _opened(path, text=False) as f:
        try:
            source = pq.ParquetFile(f)
        except InputError:
            raise
        except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
            raise InputError(f"{path}: not a Parquet file ({exc})") from None
        yield from _parquet_rows(path, source)


def _parquet_rows(path: Location, source: Any) -> Iterator[dict[str, Any]]:
    with source:
        _check_columns(path, source.schema_arrow.names)
        number = 0
        for batch in source.iter_batches(batch_size=50_000):
            for raw in batch.to_pylist():
                number += 1
                yield _typed(path, f"record {number}", raw)


# --- checking while merging ---


def _run_id_of(path: Location, row: dict[str, Any]) -> str | None:
    ref = row["reference_id"]
    if ref is None:
        return None
    tail = f"-{row['row']}"
    well_formed = isinstance(ref, str) and ref.startswith("bc-") and ref.endswith(tail)
    if not well_formed or len(ref) <= 3 + len(tail):
        raise InputError(f"{path} row {row['row']}: reference id {ref!r} is not bc-<run id>-{row['row']}")
    return str(ref)[3 : -len(tail)]


def _checked(path: Location) -> Iterator[tuple[int, dict[str, Any], Location]]:
    previous = 0
    for row in read_report_rows(path):
        number = row["row"]
        if number is None or number < 1:
            raise InputError(f"{path}: a row without a row number (or below 1)")
        if number <= previous:
            raise InputError(f"{path} is not ordered by row (row {number} after row {previous})")
        if row["status"] not in STATUSES:
            raise InputError(f"{path} row {number}: unknown status {row['status']!r}")
        previous = number
        yield number, row, path


class _Merger:
    """Walks the merged rows once: run id, overlaps, gaps and the counts."""

    def __init__(self, expect_run_id: str | None, allow_gaps: bool) -> None:
        self.run_id = expect_run_id
        self.run_id_from: Location | str | None = "--run-id" if expect_run_id else None
        self.allow_gaps = allow_gaps
        self.counts: Counter[str] = Counter()
        self.not_cancelled: set[int] = set()
        self.duplicates_of_unsuccessful = 0

    def rows(self, paths: Sequence[Location]) -> Iterator[dict[str, Any]]:
        previous, previous_path = 0, None
        for number, row, path in heapq.merge(*(_checked(p) for p in paths), key=lambda t: t[0]):
            if number == previous:
                raise ConfigError(f"row {number} is in both {previous_path} and {path}: "
                                  "the same shard twice, or reports of other inputs")  # fmt: skip
            if number != previous + 1 and not self.allow_gaps:
                gap = f"row {number - 1}" if number == previous + 2 else f"rows {previous + 1}-{number - 1}"
                raise ConfigError(f"{gap} in none of the reports: is a shard's report missing? "
                                  "(--allow-gaps merges anyway)")  # fmt: skip
            self._check_run(path, row)
            self._count(number, row)
            previous, previous_path = number, path
            yield row

    def _check_run(self, path: Location, row: dict[str, Any]) -> None:
        run_id = _run_id_of(path, row)
        if run_id is None:
            return
        if self.run_id is None:
            self.run_id, self.run_id_from = run_id, path
        elif run_id != self.run_id:
            other = ("not the run asked for with --run-id" if self.run_id_from == "--run-id"
                     else f"{self.run_id_from} from run {self.run_id!r}")  # fmt: skip
            raise ConfigError(f"{path} is from run {run_id!r}, {other} ({self.run_id!r}): "
                              "reports of different runs are not merged")  # fmt: skip

    def _count(self, number: int, row: dict[str, Any]) -> None:
        status = row["status"]
        self.counts[status] += 1
        if status != "cancelled":
            self.not_cancelled.add(number)
        # a duplicate was never sent: it is done only if the row it repeats is
        original = row["duplicate_of"]
        if status == "duplicate" and (original is None or original in self.not_cancelled):
            self.duplicates_of_unsuccessful += 1


def _write_rows(rows: Iterable[dict[str, Any]], f: BinaryIO, suffix: str) -> None:
    if suffix == ".csv":
        write_csv_rows(rows, f)
    elif suffix == ".parquet":
        write_parquet_rows(rows, f)
    else:
        for row in rows:
            f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))


def merge_reports(
    paths: Sequence[Location], out: Location, *, run_id: str | None = None, allow_gaps: bool = False
) -> MergeResult:
    """Merge ``paths`` into ``out`` (format by extension); raise on reports that do not fit."""
    check_report_path(out)
    if not paths:
        raise ConfigError("no reports to merge")
    merger = _Merger(run_id, allow_gaps)
    write_aside(out, lambda f: _write_rows(merger.rows(paths), f, out.suffix.lower()))
    result = MergeResult(run_id=merger.run_id, out=out, sources=list(paths), counts=merger.counts,
                         duplicates_of_unsuccessful=merger.duplicates_of_unsuccessful)  # fmt: skip
    return result
