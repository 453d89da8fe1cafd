"""Input files: validate them up front, then stream their rows in bounded memory.

Values come out as the text the file holds (trimmed): "0012125550134" keeps its
zeros; what a value means is phones.py's job. When pyarrow fails without saying
where, the file is re-scanned line by line on that error path to name the line.
"""

from __future__ import annotations

import codecs
import csv
import functools
import gzip
import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batch_cancel.exceptions import ConfigError, InputError

__all__ = ["ALIASES", "CANONICAL", "InputFile", "RowBatch", "inspect_inputs", "read_batches",
           "resolve_columns"]

CANONICAL = ("phone", "application_id", "campaign", "calling_list", "chain_attribute",
             "device_path", "region")
ALIASES: dict[str, tuple[str, ...]] = {
    "phone": ("phone_number", "phoneNumber", "phone"),
    "application_id": ("application_id", "applicationId"),
    "campaign": ("campaign_name", "campaignName", "campaign"),
    "calling_list": ("calling_list", "callingList"),
    "chain_attribute": ("chain_attribute", "chainAttribute"),
    "device_path": ("device_path", "devicePath"),
    "region": ("country", "region"),
}
_FORMATS = ((".csv.gz", "csv.gz"), (".csv", "csv"), (".parquet", "parquet"))
# pyarrow's streaming CSV reader reads up to 32 blocks ahead of its consumer,
# so the block size is what bounds memory (measured: a 90 MB file grows RSS by
# 84 MiB with 2 MiB blocks, 17 MiB with 256 KiB; throughput is the same). A
# record longer than one block is an error ("straddles two block boundaries").
_BLOCK_BYTES = 256 << 10


@dataclass(frozen=True)
class InputFile:
    path: Path
    size: int
    sha256: str
    format: str  # "csv" | "csv.gz" | "parquet"
    columns: tuple[str, ...] = ()  # header as found; empty: read it again
    rows: int | None = None  # Parquet only: from the footer


@dataclass(frozen=True)
class RowBatch:
    source: Path
    first_row: int  # 1-based across all inputs, in input order
    # CSV: physical line (header is line 1; exact unless the file has blank
    # lines, which pyarrow skips). Parquet: 1-based record number in the file.
    line_numbers: range
    # canonical name -> trimmed text, null for blank; kept in Arrow so the
    # planner can work on whole columns without a Python object per value
    arrays: dict[str, pa.Array]

    def __len__(self) -> int:
        return len(self.line_numbers)

    @functools.cached_property
    def columns(self) -> dict[str, list[str | None]]:
        """The same values as Python lists."""
        return {name: arr.to_pylist() for name, arr in self.arrays.items()}


def _fail(path: Path, problem: str) -> NoReturn:
    raise InputError(f"{path}: {problem}")


def _fold(name: str) -> str:
    # "Phone Number", "phone_number" and "phoneNumber" are the same column to a user.
    return re.sub(r"[\s_\-]", "", name.replace("\ufeff", "")).casefold()


def resolve_columns(path: Path, names: Sequence[str], phone_column: str | None) -> dict[str, str]:
    """Canonical name -> column name in this file; InputError if no phone column."""
    by_fold: dict[str, list[str]] = {}
    for name in names:
        by_fold.setdefault(_fold(name), []).append(name)
    found = ", ".join(repr(n) for n in names) or "none"
    chosen: dict[str, str] = {}
    for canon in CANONICAL:
        if canon == "phone" and phone_column is not None:
            exact = [n for n in names if n == phone_column]
            candidates = [exact] if exact else [by_fold.get(_fold(phone_column), [])]
            if not candidates[0]:
                _fail(path, f"no column {phone_column!r} (columns found: {found})")
        else:
            candidates = [by_fold[_fold(a)] for a in ALIASES[canon] if _fold(a) in by_fold]
        if candidates:
            if len(candidates[0]) > 1:
                _fail(path, f"{canon} column is ambiguous: {', '.join(map(repr, candidates[0]))}")
            chosen[canon] = candidates[0][0]
    if "phone" not in chosen:
        _fail(path, f"no phone column (looked for {', '.join(ALIASES['phone'])}; "
                    f"columns found: {found}); name one with --phone-column")
    return chosen


def _pyarrow_encoding(encoding: str) -> str:
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        raise ConfigError(f"unknown --encoding {encoding!r}") from None
    # pyarrow checks UTF-8 natively and strips a BOM; other encodings go through Python.
    return "utf8" if name in ("utf-8", "utf-8-sig") else name


def _open_csv(f: InputFile, encoding: str, types: dict[str, pa.DataType] | None,
              include: list[str] | None) -> pacsv.CSVStreamingReader:
    source = pa.input_stream(str(f.path), compression="gzip" if f.format == "csv.gz" else None)
    return pacsv.open_csv(
        source,
        read_options=pacsv.ReadOptions(encoding=_pyarrow_encoding(encoding),
                                       block_size=_BLOCK_BYTES),
        convert_options=pacsv.ConvertOptions(
            column_types=types, include_columns=include, null_values=[""],
            strings_can_be_null=True, quoted_strings_can_be_null=True),
    )


def _locate(f: InputFile, encoding: str, max_field_chars: int) -> str | None:
    """Error path only: find the first line pyarrow would choke on, in plain Python."""
    number = 0
    try:
        with gzip.open(f.path) if f.format == "csv.gz" else open(f.path, "rb") as raw:
            width = None
            for number, line in enumerate(raw, start=1):
                problem, width = _line_problem(line, encoding, width, max_field_chars)
                if problem:
                    return f"line {number}: {problem}"
    except (OSError, EOFError) as exc:  # a damaged or truncated gzip stream
        return f"unreadable after line {number} ({exc})"
    return None


def _line_problem(line: bytes, encoding: str, width: int | None,
                  max_chars: int) -> tuple[str | None, int | None]:
    try:
        text = line.decode(encoding).rstrip("\r\n")
    except UnicodeDecodeError as exc:
        bad = line[exc.start:exc.start + 1].hex()
        return f"bytes not valid {encoding} (0x{bad}); check --encoding", width
    if not text:
        return None, width  # pyarrow skips blank lines
    try:
        fields = next(csv.reader([text]), [])
    except csv.Error:  # its own field-size limit (128 KiB) or broken quoting
        fields = [text]
    if width is not None and len(fields) != width:
        return f"{len(fields)} fields where the header has {width}", width
    if any(len(v) > max_chars for v in fields):
        return f"a field is longer than {max_chars} characters", width
    return None, len(fields) if width is None else width


def _csv_failure(f: InputFile, encoding: str, exc: BaseException, max_chars: int) -> NoReturn:
    where = _locate(f, encoding, max_chars)
    if where is not None:
        _fail(f.path, where)
    # pyarrow's parse errors quote the offending row; keep phone numbers out of messages.
    message = str(exc).split("\n")[0]
    if "straddl" in message:
        message = f"a record is longer than {_BLOCK_BYTES >> 10} KiB"
    _fail(f.path, "unreadable: " + re.sub(r"(Expected \d+ columns, got \d+):.*", r"\1", message))


def _csv_header(f: InputFile, encoding: str, max_chars: int) -> tuple[list[str], bool]:
    """Column names and whether any data row follows them."""
    try:
        reader = _open_csv(f, encoding, None, None)
        return list(reader.schema.names), any(batch.num_rows for batch in reader)
    except (pa.ArrowInvalid, UnicodeDecodeError, OSError, EOFError) as exc:
        if "Empty CSV file" in str(exc):
            _fail(f.path, "empty file (no header)")
        _csv_failure(f, encoding, exc, max_chars)


def inspect_inputs(paths: Sequence[Path], *, phone_column: str | None = None,
                   encoding: str = "utf-8", max_field_chars: int = 1024) -> list[InputFile]:
    """Check every file cheaply before anything is sent; hash each one for the journal."""
    out: list[InputFile] = []
    for path in map(Path, paths):
        if not path.exists():
            _fail(path, "no such file")
        if path.is_dir():
            _fail(path, "is a directory, not a file")
        fmt = next((f for suffix, f in _FORMATS if path.name.lower().endswith(suffix)), None)
        if fmt is None:
            _fail(path, "unknown file type (expected .csv, .csv.gz or .parquet)")
        size = path.stat().st_size
        if size == 0:
            _fail(path, "empty file (0 bytes)")
        rows: int | None = None
        if fmt == "parquet":
            try:
                meta = pq.ParquetFile(path)
            except (pa.ArrowException, OSError) as exc:
                _fail(path, f"not a readable Parquet file ({str(exc).splitlines()[0]})")
            names, rows = list(meta.schema_arrow.names), meta.metadata.num_rows
            has_rows = bool(rows)
        else:
            names, has_rows = _csv_header(InputFile(path, size, "", fmt), encoding, max_field_chars)
        resolve_columns(path, names, phone_column)
        if not has_rows:
            _fail(path, "has a header but no rows")
        with open(path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
        out.append(InputFile(path, size, digest, fmt, tuple(names), rows))
    return out


def _as_text(arr: pa.Array) -> pa.Array:
    """Trimmed text, None for blank; integral floats lose their ".0" (2125550134.0 -> "2125550134")."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_floating(arr.type):
        whole = pc.and_(pc.equal(pc.floor(arr), arr), pc.less(pc.abs(arr), 1e18))
        ints = pc.cast(pc.if_else(whole, arr, 0), pa.int64()).cast(pa.string())
        arr = pc.if_else(whole, ints, arr.cast(pa.string()))
    elif pa.types.is_decimal(arr.type):
        arr = pc.replace_substring_regex(arr.cast(pa.string()), r"\.0*$", "")
    elif not pa.types.is_string(arr.type):
        arr = arr.cast(pa.string())  # integers, large/view strings, binary (checks UTF-8), dates
    arr = pc.utf8_trim_whitespace(arr)
    return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)


def _arrow_batches(f: InputFile, names: list[str], sources: list[str], encoding: str,
                   batch_rows: int) -> Iterator[pa.RecordBatch]:
    if f.format == "parquet":
        reader = pq.ParquetFile(f.path)
        # One iterator per row group: one over the whole file keeps what it has read
        # allocated until it ends (apache/arrow#39808; measured: +100 MB per 4M rows).
        for group in range(reader.num_row_groups):
            yield from reader.iter_batches(batch_size=batch_rows, row_groups=[group],
                                           columns=sources)
        return
    # Every column as text: "0012125550134" keeps its zeros, "2125550134.0" its ".0".
    yield from _open_csv(f, encoding, {n: pa.string() for n in names}, sources)


def _file_batches(f: InputFile, phone_column: str | None, encoding: str, batch_rows: int,
                  max_chars: int, first_row: int) -> Iterator[RowBatch]:
    names = list(f.columns) or (list(pq.ParquetFile(f.path).schema_arrow.names)
                                if f.format == "parquet" else _csv_header(f, encoding, max_chars)[0])
    mapping = resolve_columns(f.path, names, phone_column)
    sources = sorted(set(mapping.values()))
    line_offset = 0 if f.format == "parquet" else 1  # the CSV header is line 1
    pending: list[pa.RecordBatch] = []
    pending_rows = done = 0  # rows waiting to be emitted; rows read from the file

    def emit(table: pa.Table) -> RowBatch:
        start = done - pending_rows + 1  # 1-based record number in this file
        return RowBatch(
            source=f.path, first_row=first_row + start - 1,
            line_numbers=range(start + line_offset, start + line_offset + table.num_rows),
            arrays={c: table.column(c).combine_chunks() for c in mapping},
        )

    stream = _arrow_batches(f, names, sources, encoding, batch_rows)
    while True:
        try:
            raw = next(stream, None)
            if raw is None:
                break
            arrays = [_as_text(raw.column(mapping[c])) for c in mapping]
        except (pa.ArrowException, UnicodeDecodeError, OSError, EOFError) as exc:
            if f.format != "parquet":
                _csv_failure(f, encoding, exc, max_chars)
            _fail(f.path, f"unreadable after record {done}: {str(exc).splitlines()[0]}")
        for canon, arr in zip(mapping, arrays, strict=True):
            too_long = pc.greater(pc.utf8_length(arr), max_chars)
            if pc.any(too_long).as_py():
                record = done + pc.index(too_long, True).as_py() + 1
                where = _locate(f, encoding, max_chars) if f.format != "parquet" else None
                _fail(f.path, where or f"record {record}: {canon} value longer than "
                                       f"{max_chars} characters")
        pending.append(pa.RecordBatch.from_arrays(arrays, names=list(mapping)))
        pending_rows += raw.num_rows
        done += raw.num_rows
        while pending_rows >= batch_rows:
            table = pa.Table.from_batches(pending)
            batch = emit(table.slice(0, batch_rows))
            pending, pending_rows = table.slice(batch_rows).to_batches(), pending_rows - batch_rows
            yield batch
    if pending_rows:
        yield emit(pa.Table.from_batches(pending))


def read_batches(files: Sequence[InputFile], *, phone_column: str | None = None,
                 encoding: str = "utf-8", batch_rows: int = 50_000,
                 max_field_chars: int = 1024) -> Iterator[RowBatch]:
    """Stream every row of every file, in order, ``batch_rows`` at a time."""
    next_row = 1
    for f in files:
        for batch in _file_batches(f, phone_column, encoding, batch_rows, max_field_chars,
                                   next_row):
            next_row += len(batch)
            yield batch
