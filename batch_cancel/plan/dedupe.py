"""Finding repeated rows across a whole input, in memory that does not grow with it.

A row repeats an earlier one when both are sendable and share E.164 number,
application id, campaign and calling list; it is then a duplicate of the first
such row. A SQLite index answered this one row at a time, which cost more than
everything else in planning together, so this is an external hash partition:
while planning, the key and row number of every sendable row are appended to
one of ``partitions`` Arrow files chosen by the number's last four digits (equal
keys have equal numbers, so they meet in one file); at the end each file alone
is grouped in Arrow. ``partitions`` grows with the input so that a file holds
some 100,000 rows whatever the input size; only rows whose number repeats
are compared key by key (in Python, a few percent of a partition).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["Deduper", "partitions_for"]

KEY = ("e164", "application_id", "campaign", "calling_list")
_SCHEMA = pa.schema([("e164", pa.string()), ("application_id", pa.int64()),
                     ("campaign", pa.string()), ("calling_list", pa.string()),
                     ("row", pa.int64())])
_ROWS_PER_PARTITION = 100_000
_BUCKETS = 10_000  # four trailing digits


def partitions_for(estimated_rows: int) -> int:
    # Bounded above so the open files stay well under the usual 1024 limit.
    return max(1, min(512, math.ceil(estimated_rows / _ROWS_PER_PARTITION)))


class Deduper:
    """Collect keys with :meth:`add`; then :meth:`duplicates` answers (row, first row)."""

    def __init__(self, directory: Path, partitions: int) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix=".dedupe-", dir=directory)
        self._paths = [Path(self._tmp.name) / f"{p}.arrow" for p in range(partitions)]
        self._writers: list[pa.ipc.RecordBatchStreamWriter | None] = [None] * partitions

    def __enter__(self) -> Deduper:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for writer in self._writers:
            if writer is not None:
                writer.close()
        self._writers = [None] * len(self._paths)
        self._tmp.cleanup()

    def add(self, columns: Sequence[pa.Array]) -> None:
        """Sendable rows of one batch, in row order: arrays in KEY order, then row numbers."""
        batch = pa.RecordBatch.from_arrays(list(columns), schema=_SCHEMA)
        if batch.num_rows == 0:
            return
        count = len(self._paths)
        if count == 1:
            self._write(0, batch)
            return
        digits = pc.utf8_slice_codeunits(batch.column(0), 1)  # without the "+"
        tail = pc.cast(pc.utf8_slice_codeunits(digits, -4), pa.int64())
        part = pc.divide(pc.multiply(tail, count), _BUCKETS).to_numpy()
        order = np.argsort(part, kind="stable")  # stable: rows stay in order within a file
        sizes = np.bincount(part, minlength=count)
        ordered = batch.take(pa.array(order))
        start = 0
        for p, size in enumerate(sizes.tolist()):
            if size:
                self._write(p, ordered.slice(start, size))
            start += size

    def _write(self, part: int, batch: pa.RecordBatch) -> None:
        writer = self._writers[part]
        if writer is None:
            writer = self._writers[part] = pa.ipc.new_stream(str(self._paths[part]), _SCHEMA)
        writer.write_batch(batch)

    def duplicates(self) -> Iterator[list[tuple[int, int]]]:
        """Per partition: (row, first row with its key) for every repeated row."""
        for part, path in enumerate(self._paths):
            writer = self._writers[part]
            if writer is None:
                continue
            writer.close()
            self._writers[part] = None
            with pa.memory_map(str(path)) as source:
                # one chunk per planned batch: Arrow works far faster on one
                table = pa.ipc.open_stream(source).read_all().combine_chunks()
            found = _repeats(table)
            del table
            pa.default_memory_pool().release_unused()  # see plan.py
            path.unlink()
            if found:
                yield found


def _repeats(table: pa.Table) -> list[tuple[int, int]]:
    """(row, first row) for each repeated key of one partition, rows in file order."""
    # Most numbers occur once: count them in Arrow, and only rows whose number
    # repeats (a few percent) reach Python, where the whole key decides.
    counts = pc.value_counts(table.column("e164"))
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if len(repeated) == 0:
        return []
    candidates = table.filter(pc.is_in(table.column("e164"), repeated)).sort_by("row")
    first: dict[tuple[object, ...], int] = {}
    found = []
    columns = [candidates.column(name).to_pylist() for name in (*KEY, "row")]
    for *key, row in zip(*columns, strict=True):
        original = first.setdefault(tuple(key), row)
        if original != row:
            found.append((row, original))
    return found
