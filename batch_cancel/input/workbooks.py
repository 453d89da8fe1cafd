"""Spreadsheet workbooks in: ``.xlsx``/``.xlsm``, ``.xls`` and ``.ods``, read with calamine.

python-calamine (Rust) reads a 100,000-row sheet several times faster than openpyxl
(benchmarks/workbooks.py; README). What it costs: calamine reads a whole sheet
into memory before the first row comes out (a workbook is a zip archive, read
from its end; an object is read whole into memory for the same reason), so a
workbook's memory grows with its sheet, unlike CSV and Parquet. Spreadsheets cap
a sheet at 1,048,576 rows, which bounds it.

Cells become the text a CSV would have held:

* a text cell is kept as written ("0012125550134" keeps its zeros; "2.12556E+09"
  typed or pasted as text reaches phones.py, which rejects it as today);
* a numeric cell holding a whole number is its digits (2125550134.0 -> "2125550134");
  any other number is its shortest decimal text (``2125550134.5``), which
  phones.py rejects. A whole number displayed in scientific notation whose digits
  the spreadsheet already rounded away (2125560000 shown as 2.12556E+09) cannot be
  told from a number typed so: calamine gives values, not display formats;
* dates and times are ISO 8601, booleans TRUE/FALSE, an empty cell is empty.

The header is the sheet's first row that is not empty (as CSV's first record);
blank rows are skipped, as the CSV reader skips blank lines.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn

import pyarrow as pa

from batch_cancel.exceptions import InputError

if TYPE_CHECKING:
    from batch_cancel.object_store import Location

__all__ = ["SUFFIXES", "Sheet", "cell_text"]

log = logging.getLogger("batch_cancel")

SUFFIXES = (".xlsx", ".xlsm", ".xls", ".ods")


def _fail(path: Location, problem: str) -> NoReturn:
    raise InputError(f"{path}: {problem}")


def cell_text(value: Any) -> str:
    """One cell as the text a CSV export would hold ("" for an empty cell)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e18:
            return str(int(value))
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(value)
    return "" if value is None else str(value)


def _empty(row: Sequence[Any]) -> bool:
    return all(cell is None or (isinstance(cell, str) and not cell.strip()) for cell in row)


@dataclass
class Sheet:
    """One sheet of a workbook, its header found."""

    path: Location
    name: str
    header_line: int  # 1-based row of the sheet
    names: list[str]
    _sheet: Any
    _header_index: int  # index of the header among the sheet's rows

    @classmethod
    def open(cls, path: Location, stream: BinaryIO, sheet: str | None) -> Sheet:
        """The sheet named (by name, or 0-based index), else the first; InputError if none."""
        try:
            from python_calamine import CalamineError, CalamineWorkbook
        except ImportError:  # a dependency: only a broken install lacks it
            _fail(path, "reading workbooks needs python-calamine (pip install python-calamine)")
        try:
            book = CalamineWorkbook.from_filelike(stream)
        except CalamineError as exc:
            _fail(path, f"not a readable workbook ({str(exc).splitlines()[0]})")
        except InputError:
            raise
        except Exception as exc:  # calamine raises plain errors for damaged archives
            _fail(path, f"not a readable workbook ({type(exc).__name__}: {str(exc).splitlines()[0]})")
        names = list(book.sheet_names)
        if not names:
            _fail(path, "the workbook has no sheets")
        chosen = cls._choose(path, names, sheet)
        try:
            data = book.get_sheet_by_name(chosen)
        except Exception as exc:
            _fail(path, f"sheet {chosen!r} cannot be read ({str(exc).splitlines()[0]})")
        # iter_rows begins with the sheet's first row (rows above the used range come
        # empty), so a row's index is its row number - 1 (tests/test_workbooks.py holds
        # calamine to that; pinned in pyproject.toml)
        for index, row in enumerate(data.iter_rows()):
            if not _empty(row):
                header = [cell_text(c).strip() for c in row]
                return cls(path, chosen, index + 1, header, data, index)
        _fail(path, f"sheet {chosen!r} is empty (no header)")

    @staticmethod
    def _choose(path: Location, names: list[str], sheet: str | None) -> str:
        if sheet is None or sheet == "":
            if len(names) > 1:
                log.info("%s: reading its first sheet %r of %d (--sheet picks another)",
                         path, names[0], len(names))  # fmt: skip
            return names[0]
        if sheet in names:
            return sheet
        if sheet.lstrip("-").isdigit():
            index = int(sheet)
            if 0 <= index < len(names):
                return names[index]
        _fail(path, f"no sheet {sheet!r} (sheets: {', '.join(map(repr, names))}; "
                    "--sheet takes a name or a 0-based index)")  # fmt: skip

    def _data_rows(self) -> Iterator[list[Any]]:
        rows = self._sheet.iter_rows()
        for _ in range(self._header_index + 1):
            next(rows)
        for row in rows:
            if not _empty(row):
                yield row

    def has_rows(self) -> bool:
        return next(self._data_rows(), None) is not None

    def batches(self, sources: Sequence[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        """The named columns as text, ``batch_rows`` rows at a time (empty cells null)."""
        where = [self.names.index(s) for s in sources]
        columns: list[list[str | None]] = [[] for _ in sources]

        def flush() -> pa.RecordBatch:
            arrays = [pa.array(c, pa.string()) for c in columns]
            for c in columns:
                c.clear()
            return pa.RecordBatch.from_arrays(arrays, names=list(sources))

        for row in self._data_rows():
            for column, i in zip(columns, where, strict=True):
                text = cell_text(row[i]) if i < len(row) else ""
                column.append(text or None)
            if len(columns[0]) >= batch_rows:
                yield flush()
        if columns and columns[0]:
            yield flush()
