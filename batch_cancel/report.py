"""The reconciliation report: one row per input row, rebuilt from the journal.

Formats by extension: ``.csv`` (safe to open in a spreadsheet), ``.parquet``,
``.jsonl``. The report is written to a temporary file and renamed, so a reader
never sees half a report.

Spreadsheet safety: a CSV cell that starts with ``=``, ``+``, ``-``, ``@``, tab
or carriage return is written with a leading apostrophe (``'+12125550134``), the
OWASP recommendation: spreadsheets show the text and do not evaluate it. The
Parquet and JSONL reports carry the values untouched.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from batch_cancel.exceptions import ConfigError
from batch_cancel.journal import Journal

__all__ = ["REPORT_COLUMNS", "report_rows", "write_report"]

REPORT_COLUMNS = (
    "row", "phone_number", "phone_e164", "application_id", "campaign", "calling_list",
    "reference_id", "status", "attempts", "http_status", "status_code", "notification_type",
    "error", "sent_at", "acked_at", "latency_ms",
    # beyond the contract's columns, appended so positional readers keep working
    "phone_sent", "warnings", "duplicate_of", "source",
)  # fmt: skip
FORMATS = (".csv", ".parquet", ".jsonl")
_UNSAFE_START = ("=", "+", "-", "@", "\t", "\r")
_STATUS = {"planned": "pending", "sent": "pending"}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def report_rows(journal: Journal) -> Iterator[dict[str, Any]]:
    for r in journal.iter_rows():
        out = {c: r.get(c) for c in REPORT_COLUMNS}
        out["status"] = _STATUS.get(r["status"], r["status"])
        out["sent_at"] = _iso(r["sent_at"])
        out["acked_at"] = _iso(r["acked_at"])
        yield out


def check_report_path(path: Path) -> None:
    if path.suffix.lower() not in FORMATS:
        raise ConfigError(f"report {path}: unknown format {path.suffix!r} (use .csv, .parquet or .jsonl)")


def write_report(journal: Journal, path: Path) -> Path:
    check_report_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    suffix = path.suffix.lower()
    rows = report_rows(journal)
    if suffix == ".csv":
        _write_csv(rows, tmp)
    elif suffix == ".jsonl":
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        _write_parquet(rows, tmp)
    os.replace(tmp, path)
    return path


def _safe(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_UNSAFE_START):
        return "'" + value
    return value


def _write_csv(rows: Iterable[dict[str, Any]], path: Path) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(REPORT_COLUMNS)
        for row in rows:
            writer.writerow([_safe(row[c]) for c in REPORT_COLUMNS])


def _write_parquet(rows: Iterable[dict[str, Any]], path: Path, batch: int = 50_000) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    ints = {"row", "application_id", "attempts", "http_status", "status_code", "duplicate_of"}
    schema = pa.schema(
        [
            (c, pa.int64() if c in ints else pa.float64() if c == "latency_ms" else pa.string())
            for c in REPORT_COLUMNS
        ]
    )
    with pq.ParquetWriter(path, schema) as writer:
        chunk: list[dict[str, Any]] = []
        for row in rows:
            chunk.append(row)
            if len(chunk) >= batch:
                writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
                chunk = []
        writer.write_table(pa.Table.from_pylist(chunk, schema=schema))
