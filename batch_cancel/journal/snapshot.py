"""The plan as Arrow: what the planner inserted, kept so the report need not read it back.

For each batch the planner stores the columns it inserted (compressed Arrow IPC
bytes, in the journal's ``plan_snapshot`` table). Until a record changes state,
those rows plus the duplicates found at the end of planning *are* the journal's
records, so :func:`report_batches` rebuilds the report from them column-wise.
Nulls are where the journal has NULL: the journal insert turns "" into NULL
and the planner's Arrow columns never hold "" (the reader makes blanks null).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batch_cancel.journal.base import JournalBase
from batch_cancel.report.schema import REPORT_SCHEMA

__all__ = ["encode", "report_batches"]

# The report columns a plan decides; the rest are derived or empty until sending.
_STORED = ("row", "phone_number", "phone_e164", "application_id", "campaign", "calling_list",
           "error", "phone_sent", "warnings", "source")
_SCHEMA = pa.schema([REPORT_SCHEMA.field(name) for name in _STORED])
_OPTIONS = pa.ipc.IpcWriteOptions(compression="zstd" if pa.Codec.is_available("zstd") else None)


def encode(columns: Mapping[str, pa.Array | Any], source: str) -> bytes:
    """One batch of the plan: Arrow arrays by journal column name; anything else is
    a ``plan_columns.Const`` (one value for every row)."""
    rows = len(columns["row"])
    arrays = []
    for field in _SCHEMA:
        values = source if field.name == "source" else columns[field.name]
        if isinstance(values, pa.Array):
            arr = values.cast(field.type)
        else:
            value = getattr(values, "value", values)
            arr = pa.repeat(pa.scalar(value, field.type), rows)
        arrays.append(arr)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, _SCHEMA, options=_OPTIONS) as writer:
        writer.write_batch(pa.RecordBatch.from_arrays(arrays, schema=_SCHEMA))
    data: bytes = sink.getvalue().to_pybytes()
    return data


def report_batches(journal: JournalBase) -> Iterator[pa.RecordBatch] | None:
    """The report's rows (REPORT_SCHEMA) from the snapshot; None when there is none."""
    found = journal.snapshot()
    if found is None:
        return None
    info, blobs = found
    prefix = str(info["ref_prefix"])

    def batches() -> Iterator[pa.RecordBatch]:
        for blob in blobs:
            for stored in pa.ipc.open_stream(blob):
                if stored.num_rows:
                    yield _report_batch(journal, stored, prefix)

    return batches()


def _report_batch(journal: JournalBase, stored: pa.RecordBatch, prefix: str) -> pa.RecordBatch:
    n = stored.num_rows
    rows = stored.column("row")
    planned = pc.is_null(stored.column("error"))
    duplicates = journal.duplicates_between(rows[0].as_py(), rows[n - 1].as_py())
    if duplicates:
        where = pc.index_in(rows, pa.array([r for r, _ in duplicates], pa.int64()))
        duplicate_of = pc.take(pa.array([d for _, d in duplicates], pa.int64()), where)
        is_duplicate = pc.is_valid(where)
    else:
        duplicate_of = pa.nulls(n, pa.int64())
        is_duplicate = pa.repeat(pa.scalar(False), n)
    text_null = pa.scalar(None, pa.string())
    status = pc.if_else(is_duplicate, "duplicate", pc.if_else(planned, "pending", "rejected"))
    sendable = pc.and_(planned, pc.invert(is_duplicate))
    reference = pc.if_else(sendable, pc.binary_join_element_wise(prefix, rows.cast(pa.string()), ""),
                           text_null)
    derived = {
        "reference_id": reference, "status": status, "attempts": pa.repeat(pa.scalar(0), n),
        "duplicate_of": duplicate_of,
    }  # fmt: skip
    arrays = []
    for field in REPORT_SCHEMA:
        if field.name in derived:
            arrays.append(derived[field.name].cast(field.type))
        elif field.name in _STORED:
            arrays.append(stored.column(field.name))
        else:
            arrays.append(pa.nulls(n, field.type))  # nothing sent yet
    return pa.RecordBatch.from_arrays(arrays, schema=REPORT_SCHEMA)
