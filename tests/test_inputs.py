"""Input reader: real files in tmp_path, every quirk and every way a file can be bad."""

from __future__ import annotations

import gzip
import hashlib
import tracemalloc
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from batch_cancel.exceptions import ConfigError, InputError
from batch_cancel.input.files import RowBatch, inspect_inputs, read_batches


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def read_all(paths: list[Path], *, phone_column: str | None = None, encoding: str = "utf-8",
             batch_rows: int = 50_000, max_field_chars: int = 1024) -> list[RowBatch]:
    files = inspect_inputs(paths, phone_column=phone_column, encoding=encoding,
                           max_field_chars=max_field_chars)
    return list(read_batches(files, phone_column=phone_column, encoding=encoding,
                             batch_rows=batch_rows, max_field_chars=max_field_chars))


def column(batches: list[RowBatch], name: str) -> list[str | None]:
    return [v for b in batches for v in b.columns[name]]


def error_of(paths: list[Path], **kw: Any) -> str:
    with pytest.raises(InputError) as info:
        read_all(paths, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bom_crlf_quotes_and_text_kept_verbatim(tmp_path: Path) -> None:
    f = write(tmp_path / "in.csv",
              b'\xef\xbb\xbfphoneNumber,campaignName,notes\r\n'
              b'0012125550134,"Spring, East",x\r\n'
              b'2125550134.0,,"a ""quoted"" note"\r\n'
              b'  +1 (212) 555-0134 ,   ,y\r\n')
    [batch] = read_all([f])
    assert batch.columns == {
        "phone": ["0012125550134", "2125550134.0", "+1 (212) 555-0134"],
        "campaign": ["Spring, East", None, None],
    }
    assert (batch.source, batch.first_row, list(batch.line_numbers)) == (f, 1, [2, 3, 4])


def test_every_alias_and_the_phone_column_option(tmp_path: Path) -> None:
    f = write(tmp_path / "in.csv",
              b"Phone Number,applicationId,campaign,callingList,chain_attribute,devicePath,"
              b"Country,other\n2125550134,7,C,L,chain,dev,us,z\n")
    [batch] = read_all([f])
    assert batch.columns == {
        "phone": ["2125550134"], "application_id": ["7"], "campaign": ["C"],
        "calling_list": ["L"], "chain_attribute": ["chain"], "device_path": ["dev"],
        "region": ["us"]}
    [batch] = read_all([f], phone_column="other")
    assert batch.columns["phone"] == ["z"]
    assert "no column 'missing'" in error_of([f], phone_column="missing")


def test_gzip_csv(tmp_path: Path) -> None:
    f = write(tmp_path / "in.CSV.GZ", gzip.compress(b"phone\n2125550134\n2125550135\n"))
    [info] = inspect_inputs([f])
    assert info.format == "csv.gz"
    assert info.sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
    assert column(read_all([f]), "phone") == ["2125550134", "2125550135"]


def test_parquet_numbers_become_text(tmp_path: Path) -> None:
    f = tmp_path / "in.parquet"
    pq.write_table(pa.table({
        "phone_number": pa.array([2125550134, None, 12125550135], pa.int64()),
        "application_id": pa.array([2125550134.0, 2.5, None], pa.float64()),
        "campaign_name": pa.array(["A", "A", "B"]).dictionary_encode(),
        "region": pa.array([" US ", "", None]),
    }), f)
    [info] = inspect_inputs([f])
    assert (info.format, info.rows) == ("parquet", 3)
    [batch] = read_all([f])
    assert batch.columns == {
        "phone": ["2125550134", None, "12125550135"],
        "application_id": ["2125550134", "2.5", None],
        "campaign": ["A", "A", "B"],
        "region": ["US", None, None],
    }
    assert list(batch.line_numbers) == [1, 2, 3]


def test_latin1_file_with_and_without_the_right_encoding(tmp_path: Path) -> None:
    f = write(tmp_path / "in.csv", b"phone,campaign\n2125550134,ok\n2125550135,Caf\xe9\n")
    assert column(read_all([f], encoding="latin-1"), "campaign") == ["ok", "Café"]
    message = error_of([f])
    assert message.startswith(f"{f}: line 3:") and "utf-8" in message and "--encoding" in message


def test_undecodable_bytes_mid_file_name_their_line(tmp_path: Path) -> None:
    rows = b"".join(b"%d\n" % (2125550000 + i) for i in range(100_000))
    f = write(tmp_path / "in.csv", b"phone\n" + rows + b"21255\xff\xfe0134\n" + rows)
    assert error_of([f], batch_rows=1000) == (
        f"{f}: line 100002: bytes not valid utf-8 (0xff); check --encoding")


def test_unknown_encoding_is_a_config_error(tmp_path: Path) -> None:
    f = write(tmp_path / "in.csv", b"phone\n1\n")
    with pytest.raises(ConfigError, match="klingon"):
        inspect_inputs([f], encoding="klingon")


@pytest.mark.parametrize(
    ("name", "data", "problem"),
    [
        ("in.csv", b"", "empty file (0 bytes)"),
        ("in.csv.gz", gzip.compress(b"", mtime=0), "empty file (no header)"),
        ("in.csv", b"phone,campaign\r\n", "has a header but no rows"),
        ("in.txt", b"phone\n1\n",
         "unknown file type (expected .csv, .csv.gz, .parquet, .xlsx, .xlsm, .xls, .ods)"),
        ("in.parquet", b"PAR1 this is not parquet at all PAR1", "not a readable Parquet file"),
        ("in.csv.gz", b"phone\n2125550134\n", "unreadable"),
    ],
)
def test_bad_files(tmp_path: Path, name: str, data: bytes, problem: str) -> None:
    f = write(tmp_path / name, data)
    assert error_of([f]).startswith(f"{f}: {problem}")


def test_missing_file_and_directory(tmp_path: Path) -> None:
    assert error_of([tmp_path / "nope.csv"]) == f"{tmp_path / 'nope.csv'}: no such file"
    assert error_of([tmp_path]) == f"{tmp_path}: is a directory, not a file"
    assert error_of([Path("-")]) == "-: standard input is not read: save the list to a file and give its path"


def test_no_phone_column_lists_the_columns(tmp_path: Path) -> None:
    f = write(tmp_path / "in.csv", b"name,mobile\nann,2125550134\n")
    message = error_of([f])
    assert message.startswith(f"{f}: no phone column")
    assert "columns found: 'name', 'mobile'" in message and "--phone-column" in message
    g = write(tmp_path / "two.csv", b"phone,Phone\n1,2\n")
    assert "ambiguous" in error_of([g])


def test_parquet_without_rows(tmp_path: Path) -> None:
    f = tmp_path / "in.parquet"
    pq.write_table(pa.table({"phone": pa.array([], pa.string())}), f)
    assert error_of([f]) == f"{f}: has a header but no rows"


def test_truncated_parquet_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "in.parquet"
    pq.write_table(pa.table({"phone": [str(i) for i in range(1000)]}), f)
    f.write_bytes(f.read_bytes()[:200] + b"\0" * 300 + f.read_bytes()[-300:])
    assert error_of([f]).startswith(f"{f}: ")


def test_oversized_field_names_its_line(tmp_path: Path) -> None:
    f = write(tmp_path / "in.csv", b"phone,campaign\n1,a\n2," + b"b" * 2000 + b"\n3,c\n")
    assert error_of([f]) == f"{f}: line 3: a field is longer than 1024 characters"
    assert len(column(read_all([f], max_field_chars=4096), "campaign")) == 3
    huge = write(tmp_path / "huge.csv", b"phone\n" + b"9" * (5 << 20) + b"\n")
    assert error_of([huge]) == f"{huge}: line 2: a field is longer than 1024 characters"


def test_ragged_row_names_its_line_but_not_its_number(tmp_path: Path) -> None:
    f = write(tmp_path / "in.csv", b"phone,campaign\n2125550134,a\n2125550135,b,extra\n")
    message = error_of([f])
    assert message == f"{f}: line 3: 3 fields where the header has 2"
    assert "2125550135" not in message


def test_row_numbers_continue_across_files_and_batches(tmp_path: Path) -> None:
    a = write(tmp_path / "a.csv", b"phone\n" + b"".join(b"a%d\n" % i for i in range(23)))
    b = tmp_path / "b.parquet"
    pq.write_table(pa.table({"phone": [f"b{i}" for i in range(10)]}), b)
    c = write(tmp_path / "c.csv.gz", gzip.compress(b"phone\nc0\nc1\n"))
    batches = read_all([a, b, c], batch_rows=7)
    assert [(x.source.name, x.first_row, len(x)) for x in batches] == [
        ("a.csv", 1, 7), ("a.csv", 8, 7), ("a.csv", 15, 7), ("a.csv", 22, 2),
        ("b.parquet", 24, 7), ("b.parquet", 31, 3), ("c.csv.gz", 34, 2)]
    assert column(batches, "phone") == (
        [f"a{i}" for i in range(23)] + [f"b{i}" for i in range(10)] + ["c0", "c1"])
    lines = [n for x in batches for n in x.line_numbers]
    assert lines == list(range(2, 25)) + list(range(1, 11)) + [2, 3]


def test_memory_stays_bounded(tmp_path: Path) -> None:
    rows = 1_000_000  # ~75 MB: far more than any bounded read-ahead can hold
    f = tmp_path / "big.csv"
    pacsv.write_csv(pa.table({
        "phone_number": pa.array([f"+1 (212) 555-{i % 10_000:04d}" for i in range(rows)]),
        "campaign_name": pa.array([f"campaign {i % 97}" for i in range(rows)]),
        "notes": pa.array(["x" * 40] * rows),
    }), f)
    files = inspect_inputs([f])
    arrow_peak = seen = 0
    tracemalloc.start()
    try:
        for batch in read_batches(files, batch_rows=10_000):
            seen += len(batch)
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes())
        _, python_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seen == rows
    # Holding every row's strings would take > 100 MiB of Python objects and the
    # whole ~75 MB file in Arrow. A batch plus pyarrow's read-ahead is bounded by the
    # block count, not the file: up to 32 blocks of 256 KiB, parsed into arrays about
    # twice their size, when a slow (loaded) consumer lets the read-ahead fill up.
    assert python_peak < 8 << 20, python_peak
    assert arrow_peak < 32 << 20, arrow_peak
