"""The plan as Arrow: what the planner inserted, kept so the report need not read it back.

For each batch the planner stores the columns it inserted (compressed Arrow IPC
bytes, in the journal's ``plan_snapshot`` table). Until a record changes state,
those rows plus the duplicates found at the end of planning (kept there too, as
one more blob) *are* the journal's records, so :func:`report_batches` rebuilds the
report from them column-wise, without reading a record.
Nulls are where the journal has NULL: the journal insert turns "" into NULL
and the planner's Arrow columns never hold "" (the reader makes blanks null).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch_cancel.journal.base import JournalBase
from batch_cancel.report.schema import REPORT_SCHEMA

__all__ = ["DUPLICATES_KEY", "Duplicates", "encode", "report_batches"]

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


# The duplicates found at the end of planning are kept beside the batches, under a key
# no batch has (rows count from 1): the report need not look for them among the records.
DUPLICATES_KEY = -1
_PAIRS = pa.schema([("row", pa.int64()), ("duplicate_of", pa.int64())])
DuplicatesBetween: TypeAlias = Callable[[int, int], "tuple[np.ndarray, np.ndarray]"]


class Duplicates:
    """Collects the (row, first row) pairs of the duplicates, to keep as one blob."""

    def __init__(self) -> None:
        self._rows: list[np.ndarray] = []
        self._firsts: list[np.ndarray] = []
        self.count = 0

    def add(self, pairs: Sequence[tuple[int, int]]) -> None:
        if pairs:
            both = np.array(pairs, dtype=np.int64).reshape(-1, 2)
            self._rows.append(both[:, 0])
            self._firsts.append(both[:, 1])
            self.count += len(both)

    def encode(self) -> bytes:
        """All pairs in row order (a 20,000-row list of numbers that each repeat: 0.3 MB)."""
        rows = np.concatenate(self._rows) if self._rows else np.zeros(0, np.int64)
        firsts = np.concatenate(self._firsts) if self._firsts else np.zeros(0, np.int64)
        order = np.argsort(rows, kind="stable")
        batch = pa.RecordBatch.from_arrays([pa.array(rows[order]), pa.array(firsts[order])],
                                           schema=_PAIRS)
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, _PAIRS, options=_OPTIONS) as writer:
            writer.write_batch(batch)
        data: bytes = sink.getvalue().to_pybytes()
        return data


def _kept_duplicates(blob: bytes) -> DuplicatesBetween:
    table = pa.ipc.open_stream(blob).read_all().combine_chunks()
    rows = table.column("row").to_numpy()
    firsts = table.column("duplicate_of").to_numpy()

    def between(first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.searchsorted(rows, [first, last + 1])
        return rows[lo:hi], firsts[lo:hi]

    return between


def _queried_duplicates(journal: JournalBase) -> DuplicatesBetween:
    def between(first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
        pairs = np.array(journal.duplicates_between(first, last), dtype=np.int64).reshape(-1, 2)
        return pairs[:, 0], pairs[:, 1]

    return between


def report_batches(journal: JournalBase) -> Iterator[pa.RecordBatch] | None:
    """The report's rows (REPORT_SCHEMA) from the snapshot; None when there is none."""
    found = journal.snapshot()
    if found is None:
        return None
    info, blobs = found
    prefix = str(info["ref_prefix"])
    kept = journal.snapshot_blob(int(info["duplicates"])) if "duplicates" in info else None
    # a snapshot sealed before the duplicates were kept with it: they are in the records
    duplicates = _queried_duplicates(journal) if kept is None else _kept_duplicates(kept)

    def batches() -> Iterator[pa.RecordBatch]:
        for blob in blobs:
            for stored in pa.ipc.open_stream(blob):
                if stored.num_rows:
                    yield _report_batch(duplicates, stored, prefix)

    return batches()


def _report_batch(duplicates_between: DuplicatesBetween, stored: pa.RecordBatch,
                  prefix: str) -> pa.RecordBatch:
    n = stored.num_rows
    rows = stored.column("row")
    planned = pc.is_null(stored.column("error"))
    repeated, firsts = duplicates_between(rows[0].as_py(), rows[n - 1].as_py())
    if len(repeated):
        where = pc.index_in(rows, pa.array(repeated))
        duplicate_of = pc.take(pa.array(firsts), where)
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
