"""CSV text for Arrow batches, byte for byte what :mod:`csv` writes, without a Python loop.

``csv.writer`` (default dialect) writes ``str()`` of a value, nothing for None,
and quotes a field that holds a comma, a double quote, CR or LF, doubling its
quotes; rows end in CRLF. The same rules are applied here column-wise, so a
million-row report takes a second, not a minute; tests/test_plan_fast.py checks
the bytes against ``csv.writer``. Spreadsheet safety is applied first, as it was
before quoting.

Spreadsheet safety: a cell a spreadsheet would execute gets a leading apostrophe
(shown as text, not evaluated): one starting with ``=``, ``@``, TAB or CR, or with
``+`` / ``-`` followed by anything but digits, spaces and ``( ) . / -``. A number
(``+12125550134``, ``+1 (212) 555-0134``, ``-5``) is written as it is, so any CSV
reader gets E.164 back; ``+cmd|' /C calc'!A0`` and ``-2+3`` are escaped. A value
that itself starts with apostrophes before such a character gets one more, so
:func:`unescape` (``merge``) takes exactly one off whatever the value was. Reports
written before this rule escaped every leading ``+`` and ``-``; :func:`unescape`
reads those the same way.
"""

from __future__ import annotations

import re
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["csv_lines", "escape", "unescape", "write_lines"]

# RE2 (Arrow) and Python read this alike; RE2 has no look-ahead, hence ".*[^…]".
_UNSAFE = r"(?s)^(?:[=@\t\r]|[+\-].*[^0-9 ()./\-]|'+[=+\-@\t\r])"
_UNSAFE_RE = re.compile(_UNSAFE)
# what the apostrophe was put before, in this and every earlier version
_ESCAPED_RE = re.compile(r"'+[=+\-@\t\r]")
_NEEDS_QUOTES = r"[,\"\r\n]"
# The first byte of every value says whether any may start unsafely; these
# characters are ASCII, so such a byte is that character, never part of another.
_UNSAFE_BYTES = np.zeros(256, dtype=bool)
_UNSAFE_BYTES[[ord(c) for c in "=+-@\t\r'"]] = True
_EMPTY = pa.scalar("")


def escape(value: str) -> str:
    """The cell as the CSV report writes it (before CSV quoting)."""
    return "'" + value if _UNSAFE_RE.match(value) else value


def unescape(value: str) -> str:
    """The value behind a report cell, for reports of every version (one apostrophe off)."""
    return value[1:] if _ESCAPED_RE.match(value) else value


def _scan(arr: pa.Array) -> tuple[bool, bool]:
    """Whether any value may start unsafely, and whether any may need quotes (no false "no")."""
    offsets_type = np.int64 if pa.types.is_large_string(arr.type) else np.int32
    _, offsets_buf, data_buf = arr.buffers()
    if data_buf is None:
        return False, False
    offsets = np.frombuffer(offsets_buf, dtype=offsets_type)[arr.offset:arr.offset + len(arr) + 1]
    offsets = offsets.astype(np.int64, copy=False)
    data = np.frombuffer(data_buf, dtype=np.uint8)
    starts = offsets[:-1][np.greater(offsets[1:], offsets[:-1])]
    unsafe = bool(_UNSAFE_BYTES[data[starts]].any()) if len(starts) else False
    text = data[offsets[0]:offsets[-1]].tobytes()  # bytes.find is a memchr: fast
    return unsafe, any(c in text for c in (b",", b'"', b"\r", b"\n"))


def _text(arr: pa.Array, safe: bool) -> pa.Array | pa.Scalar:
    if arr.null_count == len(arr):
        return _EMPTY
    if pa.types.is_floating(arr.type):
        # str(float) is Python's shortest repr ("2.0", "1e-05"), which Arrow's cast is not
        return pa.array(["" if v is None else str(v) for v in arr.to_pylist()], pa.string())
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        return pc.fill_null(arr.cast(pa.string()), "")  # integers
    unsafe, quotes = _scan(arr)
    if safe and unsafe:
        flagged = pc.match_substring_regex(arr, _UNSAFE)
        arr = pc.if_else(flagged, pc.binary_join_element_wise("'", arr, ""), arr)
    if quotes:
        quoted = pc.binary_join_element_wise('"', pc.replace_substring(arr, '"', '""'), '"', "")
        arr = pc.if_else(pc.match_substring_regex(arr, _NEEDS_QUOTES), quoted, arr)
    return pc.fill_null(arr, "")


def csv_lines(batch: pa.RecordBatch, *, safe: bool = True) -> pa.Array | None:
    """The batch's rows as CSV lines (CRLF at each end); None for no rows. Arrow's
    kernels do all of it, without the interpreter lock: batches can be made on threads."""
    if batch.num_rows == 0:
        return None
    cells = [_text(batch.column(i), safe) for i in range(batch.num_columns)]
    lines = pc.binary_join_element_wise(*cells, ",")
    lines = pc.binary_join_element_wise(lines, "", "\r\n")  # the separator is the line end
    if lines.type != pa.large_string():
        lines = lines.cast(pa.large_string())  # 64-bit offsets: no 2 GiB limit per batch
    return lines


def write_lines(out: BinaryIO, lines: pa.Array | None) -> None:
    """Append what :func:`csv_lines` made to ``out`` (UTF-8, CRLF)."""
    if lines is None:
        return
    # The rows' text lies back to back in the data buffer, so it is written at once.
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int64)
    start, end = offsets[lines.offset], offsets[lines.offset + len(lines)]
    out.write(memoryview(lines.buffers()[2])[start:end])
