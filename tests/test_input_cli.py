"""Every input quirk and every bad input, through the real CLI with real files.

Quirks must end in the report as the number they mean (E.164 and the form sent);
bad input must stop the run with exit 2 and one line naming the file and the
problem, before anything reaches GWS (the simulator saw no login and no request).
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ENV, job_args, numbers, read_report, run_cli, write_csv

from batch_cancel.simulator import ThreadedSimulator

US = "+12125550134"


def dry_run(tmp_path: Path, *inputs: Path, **opts: Any) -> tuple[int, str, list[dict[str, Any]]]:
    """Dry run with no GWS at all; (exit code, stderr, report rows by row number)."""
    report = tmp_path / opts.pop("report", "report.csv")
    args = job_args("http://127.0.0.1:9", tmp_path, *inputs, dry_run=True, **opts)
    args[args.index("--report") + 1] = str(report)
    args[args.index("--state") + 1] = str(report.with_name(report.name + ".sqlite"))  # fresh
    result = run_cli(args)
    assert result.exit_code in (0, 1), result.stderr
    return result.exit_code, result.stderr, read_report(report)


def by_row(rows: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    return {int(r["row"]): r for r in rows}


def test_bom_crlf_quotes_and_spreadsheet_spellings(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(
        b"\xef\xbb\xbfphone_number,campaign_name,notes\r\n"
        b'"(212) 555-0134","Spring, East","a ""quoted"" note"\r\n'  # quoted, comma inside
        b"2125550135.0,,x\r\n"                                      # a spreadsheet float
        b"+1 212 555 0136,,y\r\n"                                    # leading +
        b"0012125550137,,z\r\n"                                      # leading 00
        b"212.555.0138,,\r\n"                                        # dots
        b"[212] 555-0139,,\r\n"                                      # brackets
        b"212-555-0140 ext. 12,,\r\n"                                # an extension
    )  # fmt: skip
    code, _, rows = dry_run(tmp_path, src)
    assert code == 0
    got = {int(r["row"]): (r["phone_e164"], r["phone_sent"], r["status"]) for r in rows}
    assert got == {i + 1: (f"+121255501{34 + i}", f"21255501{34 + i}", "pending") for i in range(7)}
    r = by_row(rows)
    assert r[1]["campaign"] == "Spring, East" and r[2]["campaign"] == "Campaign1"
    assert r[1]["phone_number"] == "(212) 555-0134"  # the raw text is kept as written
    assert r[2]["phone_number"] == "2125550135.0"
    assert r[7]["warnings"] == "extension 12 dropped"
    assert all(not row["warnings"] for n, row in r.items() if n != 7)


def test_quirky_numbers_are_sent_in_the_chosen_form(sim: ThreadedSimulator, tmp_path: Path) -> None:
    raw = ["(212) 555-0134", "2125550135.0", "+1 212 555 0136", "212.555.0137"]
    src = write_csv(tmp_path / "in.csv", ["phone"], [[v] for v in raw])
    result = run_cli(job_args(sim.base_url, tmp_path, src, rate=0), ENV)
    assert result.exit_code == 0, result.stderr
    sent = {e.reference_id: e.phone_number for e in sim.ledger.entries}
    rows = read_report(tmp_path / "report.csv")
    assert [sent[r["reference_id"]] for r in rows] == [f"21255501{34 + i}" for i in range(4)]
    assert [r["phone_sent"] for r in rows] == [sent[r["reference_id"]] for r in rows]
    assert [r["phone_e164"] for r in rows] == [f"+121255501{34 + i}" for i in range(4)]


@pytest.mark.parametrize(
    ("fmt", "expected"),
    [("national", "2125550134"), ("e164", "+12125550134"), ("digits", "12125550134"),
     ("as-is", "(212) 555-0134")],
)
def test_phone_format(sim: ThreadedSimulator, tmp_path: Path, fmt: str, expected: str) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone"], [["(212) 555-0134"]])
    result = run_cli(job_args(sim.base_url, tmp_path, src, rate=0, phone_format=fmt), ENV)
    assert result.exit_code == 0, result.stderr
    [row] = read_report(tmp_path / "report.csv")
    assert (row["phone_sent"], row["phone_e164"]) == (expected, US)  # both forms kept
    [entry] = sim.ledger.entries
    assert entry.phone_number == expected.lstrip("'")  # what GWS got is the sent form


def test_parquet_integer_and_float_numbers(tmp_path: Path) -> None:
    ints, floats = tmp_path / "ints.parquet", tmp_path / "floats.parquet"
    pq.write_table(pa.table({"phone_number": pa.array([2125550134, 12125550135], pa.int64())}), ints)
    # pandas writes a missing value of a float column as NaN, pyarrow as null: both are empty
    pq.write_table(pa.table({"phoneNumber": pa.array([2125550136.0, None, float("nan")], pa.float64())}),
                   floats)  # fmt: skip
    code, _, rows = dry_run(tmp_path, ints, floats)
    assert code == 1  # the null number is rejected
    assert [(r["phone_number"], r["phone_e164"], r["status"]) for r in rows] == [
        ("2125550134", "+12125550134", "pending"), ("12125550135", "+12125550135", "pending"),
        ("2125550136", "+12125550136", "pending"), ("", "", "rejected"), ("", "", "rejected")]
    assert rows[3]["error"] == rows[4]["error"] == "empty" and rows[3]["source"] == str(floats)


def test_per_row_country_column(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone", "country"],
                    [["020 7946 0000", "gb"], ["2125550134", ""], ["2125550135", "XX"],
                     ["+44 20 7946 0001", "US"]])  # fmt: skip
    code, _, rows = dry_run(tmp_path, src)
    assert code == 1
    r = by_row(rows)
    assert (r[1]["phone_e164"], r[1]["phone_sent"], r[1]["status"]) == ("+442079460000", "2079460000",
                                                                        "pending")
    assert (r[2]["phone_e164"], r[2]["status"]) == (US, "pending")  # blank: --default-region
    assert (r[3]["status"], r[3]["error"]) == ("rejected", "unknown region 'XX'")
    # never sent without its country code: 2079460001 from a US row is another number
    assert (r[4]["status"], r[4]["phone_sent"], r[4]["phone_e164"]) == ("rejected", "", "+442079460001")
    assert r[4]["error"].startswith("country code +44 is not US's")


def test_latin1_needs_its_encoding(sim: ThreadedSimulator, tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_bytes(b"phone,campaign\n2125550134,Caf\xe9\n")
    _, _, rows = dry_run(tmp_path, src, encoding="latin-1")
    assert rows[0]["campaign"] == "Café"
    bad = run_cli(job_args(sim.base_url, tmp_path, src), ENV)
    assert bad.exit_code == 2
    assert f"{src}: line 2: bytes not valid utf-8 (0xe9); check --encoding" in bad.stderr
    assert sim.ledger.entries == [] and sim.ledger.login_count == 0


def test_strict_validation_rejects_what_is_otherwise_sent_with_a_warning(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone"], [["212 055 0134"], ["2125550134"]])
    code, _, rows = dry_run(tmp_path, src)
    assert code == 0
    assert (rows[0]["status"], rows[0]["phone_sent"]) == ("pending", "2120550134")
    assert rows[0]["warnings"] == "not a valid number for US; sent anyway"
    code, _, rows = dry_run(tmp_path, src, strict_validation=True, report="strict.csv")
    assert code == 1
    assert (rows[0]["status"], rows[0]["error"], rows[0]["phone_sent"]) == (
        "rejected", "not a valid number for US", "")
    assert rows[1]["status"] == "pending"


def _parquet_junk(p: Path) -> None:
    p.write_bytes(b"PAR1 definitely not parquet PAR1")


def _field_too_long(p: Path) -> None:
    p.write_bytes(b"phone,campaign\n2125550134,a\n2125550135," + b"b" * 5000 + b"\n")


def _undecodable(p: Path) -> None:
    p.write_bytes(b"phone\n2125550134\n21255\xff0135\n")


BAD: list[tuple[str, Callable[[Path], Any], str]] = [
    ("missing.csv", lambda p: None, "no such file"),
    ("adir.csv", lambda p: p.mkdir(), "is a directory, not a file"),
    ("in.txt", lambda p: p.write_bytes(b"phone\n1\n"), "unknown file type"),
    ("in.xlsx", lambda p: p.write_bytes(b"phone\n1\n"), "not a readable workbook"),
    ("empty.csv", lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    ("empty.csv.gz", lambda p: p.write_bytes(gzip.compress(b"")), "empty file (no header)"),
    ("header.csv", lambda p: p.write_bytes(b"phone_number,campaign\r\n"), "has a header but no rows"),
    ("cols.csv", lambda p: p.write_bytes(b"name,mobile\nann,2125550134\n"),
     "no phone column (looked for phone_number, phoneNumber, phone; columns found: 'name', 'mobile'; "
     "columns separated by ',', --delimiter sets another)"),
    ("bad.parquet", _parquet_junk, "not a readable Parquet file"),
    ("bytes.csv", _undecodable, "line 3: bytes not valid utf-8 (0xff); check --encoding"),
    ("long.csv", _field_too_long, "line 3: a field is longer than 1024 characters"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "make", "problem"), BAD, ids=[b[0] for b in BAD])
def test_bad_input_exits_2_naming_file_and_problem_before_any_request(
    sim: ThreadedSimulator, tmp_path: Path, name: str, make: Callable[[Path], Any], problem: str
) -> None:
    path = tmp_path / name
    make(path)
    good = write_csv(tmp_path / "good.csv", ["phone"], [[n] for n in numbers(3)])
    result = run_cli(job_args(sim.base_url, tmp_path, good, path), ENV)  # the bad one second
    assert result.exit_code == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("batch-cancel:")]
    assert errors == [f"batch-cancel: error: {path}: {problem}"] or (
        len(errors) == 1 and errors[0].startswith(f"batch-cancel: error: {path}: {problem}")), errors
    assert "2125550135" not in result.stderr  # no phone numbers in error messages
    assert sim.ledger.entries == [] and sim.ledger.login_count == 0
    assert not (tmp_path / "report.csv").exists()


def test_csv_report_is_spreadsheet_safe_and_other_formats_are_not_escaped(tmp_path: Path) -> None:
    evil = '=HYPERLINK("http://evil.example","x")'
    src = write_csv(tmp_path / "in.csv", ["phone", "campaign", "calling_list"],
                    [["=2125550134", evil, "@list"], ["+1 212 555 0135", "-C", "+L"],
                     ["@2125550136", "C", "L"], ["-12345", "C", "L"]])  # fmt: skip
    dry_run(tmp_path, src)
    with (tmp_path / "report.csv").open(newline="", encoding="utf-8") as f:
        cells = list(csv.reader(f))
    header, rows = cells[0], cells[1:]
    col = {name: i for i, name in enumerate(header)}
    # a number is written as it is (any CSV reader gets E.164); what would execute is escaped
    assert [r[col["phone_number"]] for r in rows] == [
        "'=2125550134", "+1 212 555 0135", "'@2125550136", "-12345"]
    assert rows[0][col["campaign"]] == "'" + evil and rows[0][col["calling_list"]] == "'@list"
    assert rows[1][col["campaign"]] == "'-C" and rows[1][col["calling_list"]] == "'+L"
    assert rows[0][col["phone_e164"]] == US and rows[1][col["phone_e164"]] == "+12125550135"
    unsafe = ("=", "@", "\t", "\r")
    assert not any(cell.startswith(unsafe) for row in rows for cell in row)
    assert all(set(cell[1:]) <= set("0123456789 ()./-") for row in rows for cell in row
               if cell.startswith(("+", "-")))
    assert rows[3][col["error"]] == "too short" and rows[3][col["row"]] == "4"
    _, _, plain = dry_run(tmp_path, src, report="report.jsonl")
    assert plain[0]["phone_number"] == "=2125550134" and plain[0]["campaign"] == evil
    assert plain[1]["calling_list"] == "+L" and plain[0]["row"] == 1


def test_dry_run_prints_counts_and_first_rejections_masked(sim: ThreadedSimulator,
                                                          tmp_path: Path) -> None:
    rows = [[n] for n in numbers(4)] + [["12345"], [numbers(1)[0]], ["n/a"], ["2125550199999"]]
    src = write_csv(tmp_path / "in.csv", ["phone"], rows)
    result = run_cli(job_args(sim.base_url, tmp_path, src, dry_run=True), ENV)
    assert result.exit_code == 1
    assert "dry run: 4 would be sent, 3 rejected, 1 duplicate" in result.stderr
    assert "  rejected row 5: *****: too short\n" in result.stderr
    assert "  rejected row 7: : not a phone number\n" in result.stderr
    assert "  rejected row 8: ***********99: too long\n" in result.stderr
    assert "2125550199999" not in result.stderr and numbers(1)[0] not in result.stderr
    assert result.summary["rejected"] == 3 and result.summary["duplicate"] == 1
    assert sim.ledger.entries == [] and sim.ledger.login_count == 0
