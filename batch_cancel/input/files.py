"""Input files: validate them up front, then stream their rows in bounded memory.

Values come out as the text the file holds (trimmed): "0012125550134" keeps its
zeros; what a value means is phones.py's job.

CSV dialects: the delimiter is sniffed from the header line among ``,`` ``;`` TAB
and ``|`` unless one is given; a UTF-16 or UTF-32 byte-order mark sets the
encoding. Quoted values may hold line breaks (pyarrow's ``newlines_in_values``),
and a record longer than the read block is read again with a larger block. When
pyarrow fails without saying where, the file is re-scanned record by record with
:mod:`csv` on that error path to name the line. An unbalanced quote makes pyarrow
take the rest of a small file as one value, silently: an odd number of quote
characters (counted while hashing) has the file scanned for it before anything
is sent.

Where: a local path, or an object URL (``s3://``, ``gs://``, ``az://``; see
object_store.py), read the same way, in ranged reads: nothing is downloaded
first. An object's ETag and version are part of its identity, and a versioned
object is read at the version that was hashed. Workbooks (``.xlsx``, ``.xls``,
``.ods``): workbooks.py.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import dataclasses
import functools
import gzip
import hashlib
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO, NoReturn

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from batch_cancel.exceptions import ConfigError, InputError
from batch_cancel.input import workbooks
from batch_cancel.object_store import Location, ObjectUrl, location, object_info, open_object

__all__ = ["ALIASES", "CANONICAL", "DELIMITERS", "InputFile", "RowBatch", "inspect_inputs",
           "read_batches", "resolve_columns"]

log = logging.getLogger("batch_cancel")

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
_FORMATS = ((".csv.gz", "csv.gz"), (".csv", "csv"), (".parquet", "parquet"),
            *((suffix, "workbook") for suffix in workbooks.SUFFIXES))
_CSV = ("csv", "csv.gz")
# pyarrow's streaming CSV reader reads up to 32 blocks ahead of its consumer,
# so the block size is what bounds memory (measured: a 90 MB file grows RSS by
# 84 MiB with 2 MiB blocks, 17 MiB with 256 KiB; throughput is the same). A
# record longer than about one block is an error ("straddles two block
# boundaries"): the file is then read again with blocks 8x larger, up to _MAX_BLOCK.
_BLOCK_BYTES = 256 << 10
_MAX_BLOCK = 256 << 20
# sniffed from the header line, in this order of preference on a tie
DELIMITERS = (",", ";", "\t", "|")
_NAMES = {",": "','", ";": "';'", "\t": "tab", "|": "'|'"}
# BOM -> codec; UTF-32's little-endian BOM starts with UTF-16's, so it comes first
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


@dataclass(frozen=True)
class InputFile:
    path: Location  # a local path or an object URL
    size: int
    sha256: str
    format: str  # "csv" | "csv.gz" | "parquet" | "workbook"
    columns: tuple[str, ...] = ()  # header as found; empty: read it again
    rows: int | None = None  # Parquet only: from the footer
    encoding: str = ""  # CSV: the codec read with ("" until inspected: the caller's)
    delimiter: str = ","  # CSV
    etag: str = ""  # an object's, where the store has one
    version_id: str = ""  # an object's version, in a bucket that keeps versions
    sheet: str = ""  # a workbook's sheet, by name
    header_line: int = 1  # the line (CSV) or sheet row (workbook) of the header

    def identity(self) -> dict[str, object]:
        """What the journal keeps of this input, and what a resume compares."""
        out: dict[str, object] = {"path": str(self.path), "size": self.size, "sha256": self.sha256}
        out.update({k: v for k, v in (("etag", self.etag), ("version_id", self.version_id),
                                      ("sheet", self.sheet)) if v})  # fmt: skip
        return out


@dataclass(frozen=True)
class RowBatch:
    source: Location
    first_row: int  # 1-based across all inputs, in input order
    # CSV: record number + 1 (the header is line 1; the physical line unless the
    # file has blank lines or values spanning lines). Parquet: 1-based record number.
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


def _fail(path: Location, problem: str) -> NoReturn:
    raise InputError(f"{path}: {problem}")


def _fold(name: str) -> str:
    # "Phone Number", "phone_number" and "phoneNumber" are the same column to a user.
    return re.sub(r"[\s_\-]", "", name.replace("\ufeff", "")).casefold()


def resolve_columns(path: Location, names: Sequence[str], phone_column: str | None,
                    delimiter: str | None = None) -> dict[str, str]:
    """Canonical name -> column name in this file; InputError if no phone column."""
    by_fold: dict[str, list[str]] = {}
    for name in names:
        by_fold.setdefault(_fold(name), []).append(name)
    found = ", ".join(repr(n) for n in names) or "none"
    if delimiter is not None:  # CSV: a header read with the wrong separator is one long name
        found += f"; columns separated by {_NAMES.get(delimiter, repr(delimiter))}, --delimiter sets another"
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


def _codec(encoding: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise ConfigError(f"unknown --encoding {encoding!r}") from None


def _pyarrow_encoding(encoding: str) -> str:
    # pyarrow checks UTF-8 natively and strips a BOM; other encodings go through Python.
    name = _codec(encoding)
    return "utf8" if name in ("utf-8", "utf-8-sig") else name


def _open_bytes(f: InputFile) -> BinaryIO:
    if isinstance(f.path, ObjectUrl):
        return open_object(f.path, f.version_id)
    return open(f.path, "rb")


@contextlib.contextmanager
def _raw(f: InputFile) -> Iterator[BinaryIO]:
    with _open_bytes(f) as stream:
        if f.format == "csv.gz":
            with gzip.GzipFile(fileobj=stream) as gz:
                yield gz  # type: ignore[misc]
        else:
            yield stream


def _parquet(f: InputFile) -> pq.ParquetFile:
    return pq.ParquetFile(_open_bytes(f) if isinstance(f.path, ObjectUrl) else f.path)


def _sniff(f: InputFile, encoding: str, delimiter: str | None) -> tuple[str, str]:
    """The file's encoding (a UTF-16/32 BOM wins) and delimiter (the header line's most common)."""
    try:
        with _raw(f) as raw:
            head = raw.read(64 << 10)
    except (OSError, EOFError) as exc:  # a damaged gzip stream
        _fail(f.path, f"unreadable ({exc})")
    bom = next((codec for mark, codec in _BOMS if head.startswith(mark)), None)
    if bom is not None and _codec(encoding) != bom:
        log.info("%s: %s byte-order mark: read as %s", f.path, bom.upper(), bom)
        encoding = bom
    if delimiter is not None:
        return encoding, delimiter
    line = head.decode(_codec(encoding), errors="replace").lstrip("\ufeff").split("\n", 1)[0]
    unquoted = "".join(line.split('"')[::2])  # the text outside quoted names
    counts = {d: unquoted.count(d) for d in DELIMITERS}
    chosen = max(DELIMITERS, key=lambda d: counts[d])  # max keeps the first of a tie
    chosen = chosen if counts[chosen] else ","
    if chosen != "," or counts[","]:
        log.info("%s: columns separated by %s (from the header line; --delimiter sets it)",
                 f.path, _NAMES[chosen])
    return encoding, chosen


def _open_csv(f: InputFile, types: dict[str, pa.DataType] | None, include: list[str] | None,
              block: int = _BLOCK_BYTES) -> pacsv.CSVStreamingReader:
    where = open_object(f.path, f.version_id) if isinstance(f.path, ObjectUrl) else str(f.path)
    source = pa.input_stream(where, compression="gzip" if f.format == "csv.gz" else None)
    return pacsv.open_csv(
        source,
        read_options=pacsv.ReadOptions(encoding=_pyarrow_encoding(f.encoding), block_size=block),
        parse_options=pacsv.ParseOptions(delimiter=f.delimiter, newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=types, include_columns=include, null_values=[""],
            strings_can_be_null=True, quoted_strings_can_be_null=True),
    )


class _BadBytes(Exception):
    def __init__(self, line: int, byte: bytes) -> None:
        super().__init__(line, byte)
        self.line, self.byte = line, byte


def _lines(f: InputFile) -> Iterator[str]:
    """The file's text line by line (line ends kept), decoded in chunks: _BadBytes names the line."""
    codec = _codec(f.encoding)
    decoder = codecs.getincrementaldecoder("utf-8-sig" if codec == "utf-8" else codec)()
    line, carry = 1, ""  # carry: the start of a line whose end is not read yet
    with _raw(f) as raw:
        while True:
            chunk = raw.read(1 << 16)
            try:
                text = carry + decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                good = exc.object[:exc.start].decode(codec, errors="ignore")
                bad = exc.object[exc.start:exc.start + 1]
                raise _BadBytes(line + good.count("\n"), bad) from None
            parts = text.split("\n")
            carry = parts.pop()
            for part in parts:
                yield part + "\n"
            line += len(parts)
            if not chunk:
                break
    if carry:
        yield carry


def _locate(f: InputFile, max_chars: int, used: Sequence[int] | None = None,
            records: int | None = None) -> str | None:
    """Error path only: the first record pyarrow would choke on, found with :mod:`csv`.

    ``used``: the columns whose values must fit ``max_chars`` (default all). With
    ``records``, a file without a problem answers where the record after that many
    data records starts ("line N or later"), for messages that have no line.
    """
    limit = csv.field_size_limit()
    csv.field_size_limit(max(max_chars + 1, 16 << 20))  # an unclosed quote stops at 16 MiB
    reader = csv.reader(_lines(f), delimiter=f.delimiter, strict=True)
    width: int | None = None
    seen, after = 0, None
    try:
        while True:
            start = reader.line_num + 1
            try:
                fields = next(reader)
            except StopIteration:
                return None if after is None else f"line {after} or later"
            except csv.Error as exc:
                if "end of data" in str(exc) or "field limit" in str(exc):
                    return f"line {start}: a quoted value starts here and its closing quote is missing"
                if reader.line_num > start:  # a quote that closed only at the next quoted value
                    return (f"line {start}: a quoted value starts here and its closing quote is "
                            f"missing (it runs on to line {reader.line_num})")
                continue  # '"a"b' on one line: pyarrow reads it as ab, so it is not the problem
            except _BadBytes as bad:
                return f"line {bad.line}: bytes not valid {f.encoding} (0x{bad.byte.hex()}); check --encoding"
            if not fields:
                continue  # pyarrow skips blank lines
            if width is None:
                width = len(fields)
                continue
            if len(fields) != width:
                return f"line {start}: {len(fields)} fields where the header has {width}"
            if any(len(fields[i]) > max_chars for i in (used if used is not None else range(width))):
                return f"line {start}: a field is longer than {max_chars} characters"
            seen += 1
            if records is not None and seen == records + 1:
                after = start
    except (OSError, EOFError) as exc:  # a damaged or truncated gzip stream
        return f"unreadable after line {reader.line_num} ({exc})"
    finally:
        csv.field_size_limit(limit)


def _message(exc: BaseException) -> str:
    # pyarrow's parse errors quote the offending row (phone numbers stay out of messages)
    # and suggest its own options, which our users cannot set
    message = str(exc).split("\n")[0]
    message = re.sub(r"(Expected \d+ columns, got \d+):.*", r"\1", message)
    message = re.sub(r"[.;]?\s*(?:please )?(?:consider|try)\b.*$", "", message, flags=re.IGNORECASE)
    return message.strip(" .(")


def _csv_failure(f: InputFile, exc: BaseException, max_chars: int, used: Sequence[int] | None = None,
                 records: int = 0) -> NoReturn:
    where = _locate(f, max_chars, used, records)
    if where is not None and not where.endswith("or later"):
        _fail(f.path, where)
    _fail(f.path, f"{where or f'after record {records}'}: unreadable ({_message(exc)})")


def _csv_header(f: InputFile, max_chars: int) -> tuple[list[str], bool]:
    """Column names and whether any data row follows them."""
    block = _BLOCK_BYTES
    while True:
        try:
            reader = _open_csv(f, None, None, block)
            return list(reader.schema.names), any(batch.num_rows for batch in reader)
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):
                _fail(f.path, "empty file (no header)")
            if "straddl" not in str(exc) or block >= _MAX_BLOCK:
                _csv_failure(f, exc, max_chars)
            block *= 8  # the first records are longer than a block: read them again
        except (UnicodeDecodeError, OSError, EOFError) as exc:
            _csv_failure(f, exc, max_chars)


def _digest(f: InputFile) -> tuple[str, int]:
    """SHA-256 of the file's bytes, and the number of quote characters in its text."""
    sha, quotes = hashlib.sha256(), 0
    with _open_bytes(f) as fh:
        while chunk := fh.read(1 << 20):
            sha.update(chunk)
            if f.format == "csv":
                quotes += chunk.count(b'"')  # a memchr: ~1 ms per MB
    if f.format == "csv.gz":
        try:
            with _raw(f) as gz:
                while chunk := gz.read(1 << 20):
                    quotes += chunk.count(b'"')
        except (OSError, EOFError) as exc:
            _fail(f.path, f"unreadable ({exc})")
    return sha.hexdigest(), quotes


def _stat(path: Location) -> tuple[int, str, str]:
    """Size, ETag and version of an input; InputError when there is none."""
    if isinstance(path, ObjectUrl):
        info = object_info(path)
        if info is None:
            _fail(path, "no such object")
        return info.size, info.etag, info.version_id
    if str(path) == "-" and not path.exists():
        # a run reads its input twice (a digest, then the plan) and a resume checks it
        # again: a pipe cannot be read back
        _fail(path, "standard input is not read: save the list to a file and give its path")
    if not path.exists():
        _fail(path, "no such file")
    if path.is_dir():
        _fail(path, "is a directory, not a file")
    return path.stat().st_size, "", ""


def inspect_inputs(paths: Sequence[Location | str], *, phone_column: str | None = None,
                   encoding: str = "utf-8", delimiter: str | None = None,
                   max_field_chars: int = 1024, sheet: str | None = None) -> list[InputFile]:
    """Check every file cheaply before anything is sent; hash each one for the journal.

    ``delimiter`` forces the CSV column separator (else sniffed per file); ``sheet``
    names a workbook's sheet, by name or 0-based index (else its first).
    """
    _codec(encoding)  # an unknown encoding is a configuration error, whatever the files
    out: list[InputFile] = []
    for path in map(location, paths):
        fmt = next((f for suffix, f in _FORMATS if path.name.lower().endswith(suffix)), None)
        size, etag, version = _stat(path)
        if fmt is None:
            _fail(path, "unknown file type (expected .csv, .csv.gz, .parquet, "
                        f"{', '.join(workbooks.SUFFIXES)})")  # fmt: skip
        if size == 0:
            _fail(path, "empty file (0 bytes)")
        rows: int | None = None
        f = InputFile(path, size, "", fmt, etag=etag, version_id=version)
        if fmt == "parquet":
            try:
                meta = _parquet(f)
            except (pa.ArrowException, OSError) as exc:
                _fail(path, f"not a readable Parquet file ({str(exc).splitlines()[0]})")
            names, rows = list(meta.schema_arrow.names), meta.metadata.num_rows
            has_rows = bool(rows)
        elif fmt == "workbook":
            with _open_bytes(f) as stream:
                book = workbooks.Sheet.open(path, stream, sheet)
                f = dataclasses.replace(f, sheet=book.name, header_line=book.header_line)
                names, has_rows = book.names, book.has_rows()
        else:
            file_encoding, file_delimiter = _sniff(f, encoding, delimiter)
            f = dataclasses.replace(f, encoding=file_encoding, delimiter=file_delimiter)
            names, has_rows = _csv_header(f, max_field_chars)
        resolve_columns(path, names, phone_column, f.delimiter if fmt in _CSV else None)
        if not has_rows:
            _fail(path, "has a header but no rows")
        digest, quotes = _digest(f)
        if quotes % 2:  # an unclosed quote would swallow the rest of the file without an error
            where = _locate(f, max_field_chars, [])
            if where is not None:
                _fail(path, where)
        out.append(dataclasses.replace(f, sha256=digest, columns=tuple(names), rows=rows))
    return out


def _as_text(arr: pa.Array) -> pa.Array:
    """Trimmed text, None for blank; integral floats lose their ".0" (2125550134.0 -> "2125550134")."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if pa.types.is_floating(arr.type):
        # NaN is how pandas writes a missing value into a float column: empty, not "nan"
        arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, arr.type), arr)
        whole = pc.and_(pc.equal(pc.floor(arr), arr), pc.less(pc.abs(arr), 1e18))
        ints = pc.cast(pc.if_else(whole, arr, 0), pa.int64()).cast(pa.string())
        arr = pc.if_else(whole, ints, arr.cast(pa.string()))
    elif pa.types.is_decimal(arr.type):
        arr = pc.replace_substring_regex(arr.cast(pa.string()), r"\.0*$", "")
    elif not pa.types.is_string(arr.type):
        arr = arr.cast(pa.string())  # integers, large/view strings, binary (checks UTF-8), dates
    arr = pc.utf8_trim_whitespace(arr)
    return pc.if_else(pc.equal(arr, ""), pa.scalar(None, pa.string()), arr)


def _csv_batches(f: InputFile, names: list[str], sources: list[str], max_chars: int,
                 used: list[int]) -> Iterator[pa.RecordBatch]:
    """The CSV's batches; a record longer than a block has the file read again, larger blocks."""
    # Every column as text: "0012125550134" keeps its zeros, "2125550134.0" its ".0".
    types = {n: pa.string() for n in names}
    block, done = _BLOCK_BYTES, 0
    while True:
        skip = done  # records already given out, when reading again
        try:
            for batch in _open_csv(f, types, sources, block):
                if skip >= batch.num_rows:
                    skip -= batch.num_rows
                    continue
                batch, skip = batch.slice(skip), 0
                done += batch.num_rows
                yield batch
            return
        except (pa.ArrowInvalid, UnicodeDecodeError, OSError, EOFError) as exc:
            if "straddl" not in str(exc) or block >= _MAX_BLOCK:
                _csv_failure(f, exc, max_chars, used, done)
            block *= 8
            log.info("%s: a record longer than %d KiB after record %d: reading on with %d KiB blocks",
                     f.path, block >> 13, done, block >> 10)


def _arrow_batches(f: InputFile, names: list[str], sources: list[str], batch_rows: int,
                   max_chars: int) -> Iterator[pa.RecordBatch]:
    if f.format == "workbook":
        with _open_bytes(f) as stream:
            book = workbooks.Sheet.open(f.path, stream, f.sheet)
        yield from book.batches(sources, batch_rows)
        return
    if f.format == "parquet":
        reader = _parquet(f)
        # One iterator per row group: one over the whole file keeps what it has read
        # allocated until it ends (apache/arrow#39808; measured: +100 MB per 4M rows).
        for group in range(reader.num_row_groups):
            yield from reader.iter_batches(batch_size=batch_rows, row_groups=[group],
                                           columns=sources)
        return
    yield from _csv_batches(f, names, sources, max_chars, [names.index(n) for n in sources])


def _names(f: InputFile, max_chars: int) -> list[str]:
    """The column names of a file described by hand (not inspected)."""
    if f.format == "parquet":
        return list(_parquet(f).schema_arrow.names)
    if f.format == "workbook":
        with _open_bytes(f) as stream:
            return workbooks.Sheet.open(f.path, stream, f.sheet or None).names
    return _csv_header(f, max_chars)[0]


def _file_batches(f: InputFile, phone_column: str | None, batch_rows: int,
                  max_chars: int, first_row: int) -> Iterator[RowBatch]:
    names = list(f.columns) or _names(f, max_chars)
    mapping = resolve_columns(f.path, names, phone_column)
    sources = sorted(set(mapping.values()))
    used = [names.index(n) for n in sources]
    # Parquet: the record number; CSV: the header is line 1; a workbook: its sheet's row
    line_offset = 0 if f.format == "parquet" else f.header_line
    pending: list[pa.RecordBatch] = []
    pending_rows = done = 0  # rows waiting to be emitted; rows read from the file

    def emit(table: pa.Table) -> RowBatch:
        start = done - pending_rows + 1  # 1-based record number in this file
        return RowBatch(
            source=f.path, first_row=first_row + start - 1,
            line_numbers=range(start + line_offset, start + line_offset + table.num_rows),
            arrays={c: table.column(c).combine_chunks() for c in mapping},
        )

    stream = _arrow_batches(f, names, sources, batch_rows, max_chars)
    while True:
        try:
            raw = next(stream, None)
            if raw is None:
                break
            arrays = [_as_text(raw.column(mapping[c])) for c in mapping]
        except (pa.ArrowException, UnicodeDecodeError, OSError, EOFError) as exc:
            if f.format in _CSV:
                _csv_failure(f, exc, max_chars, used, done)
            _fail(f.path, f"unreadable after record {done}: {str(exc).splitlines()[0]}")
        for canon, arr in zip(mapping, arrays, strict=True):
            too_long = pc.greater(pc.utf8_length(arr), max_chars)
            if pc.any(too_long).as_py():
                record = done + pc.index(too_long, True).as_py() + 1
                where = _locate(f, max_chars, used) if f.format in _CSV else None
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
    """Stream every row of every file, in order, ``batch_rows`` at a time.

    CSV files are read with the encoding and delimiter :func:`inspect_inputs` found;
    ``encoding`` is for files described by hand without one.
    """
    next_row = 1
    for f in files:
        if f.format in _CSV and not f.encoding:
            f = dataclasses.replace(f, encoding=encoding)
        for batch in _file_batches(f, phone_column, batch_rows, max_field_chars, next_row):
            next_row += len(batch)
            yield batch
