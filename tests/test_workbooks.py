"""Workbooks in: every row of the chosen sheet planned or rejected with its reason."""

from __future__ import annotations

from pathlib import Path

import openpyxl
import pytest
from helpers import read_report, run_cli

from batch_cancel.input.files import inspect_inputs, read_batches
from batch_cancel.input.workbooks import cell_text

SCIENTIFIC = "written in scientific notation (a spreadsheet dropped digits)"
DRY = ["--dry-run", "--application-id", "134", "--campaign", "C1", "--calling-list", "L1"]


def _workbook(path: Path) -> Path:
    """A legal team's request: a text-formatted number column with the usual accidents,
    numbers typed as numbers, a scientific-notation cell, and a second sheet."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "Request"
    ws.append(["Phone Number", "Campaign"])
    for row in (("2122000100", "C1"),        # text: kept as written
                ("0012122000101", "C1"),     # text: its zeros stay in the report
                ("2.12556E+09", "C1"),       # text a CSV round trip left: digits lost
                (2122000103, "C1"),          # a number in the text column
                (2122000104.5, "C1"),        # a number that is no phone number
                ("(212) 200-0105", None)):   # punctuation, campaign from the option
        ws.append(list(row))
    for (cell,) in ws.iter_rows(min_row=2, max_col=1):
        if isinstance(cell.value, str):
            cell.number_format = "@"  # "Text" in the spreadsheet's format menu
    ws.append([])  # a blank row is skipped, as the CSV reader skips blank lines
    ws.append([2125560000, "C1"])
    ws.cell(ws.max_row, 1).number_format = "0.00E+00"  # shown as 2.13E+09, the value whole
    second = wb.create_sheet("Second")
    second.append([])
    second.append(["phone"])  # the header is the first row that is not empty
    second.append([2122000200])
    second.append(["2122000201"])
    wb.save(path)
    return path


def _run(tmp: Path, *args: str) -> tuple[int, str, list[dict[str, str]]]:
    result = run_cli(["run", *args, *DRY, "--state", str(tmp / "s.sqlite"), "--report", str(tmp / "r.csv")])
    rows = read_report(tmp / "r.csv") if (tmp / "r.csv").exists() else []
    return result.exit_code, result.stderr, rows


def test_every_row_of_the_first_sheet_planned_or_rejected_with_its_reason(tmp_path: Path) -> None:
    book = _workbook(tmp_path / "request.xlsx")
    code, stderr, rows = _run(tmp_path, str(book))
    assert code == 1, stderr  # some rows rejected
    seen = [(r["phone_number"], r["status"], r["phone_sent"], r["error"], r["campaign"]) for r in rows]
    assert seen == [
        ("2122000100", "pending", "2122000100", "", "C1"),
        ("0012122000101", "pending", "2122000101", "", "C1"),
        ("2.12556E+09", "rejected", "", SCIENTIFIC, "C1"),
        ("2122000103", "pending", "2122000103", "", "C1"),
        ("2122000104.5", "rejected", "", "text after the number", "C1"),
        ("(212) 200-0105", "pending", "2122000105", "", "C1"),
        ("2125560000", "pending", "2125560000", "", "C1"),
    ]
    assert "reading its first sheet 'Request' of 2" in stderr


@pytest.mark.parametrize("sheet", ["Second", "1"])
def test_sheet_by_name_or_index(tmp_path: Path, sheet: str) -> None:
    book = _workbook(tmp_path / "request.xlsx")
    code, stderr, rows = _run(tmp_path, str(book), "--sheet", sheet)
    assert code == 0, stderr
    assert [(r["phone_number"], r["status"]) for r in rows] == [("2122000200", "pending"),
                                                                ("2122000201", "pending")]  # fmt: skip


def test_a_sheet_that_is_not_there_is_named_with_the_sheets_there(tmp_path: Path) -> None:
    book = _workbook(tmp_path / "request.xlsx")
    code, stderr, rows = _run(tmp_path, str(book), "--sheet", "Numbers")
    assert code == 2 and rows == []
    assert ("no sheet 'Numbers' (sheets: 'Request', 'Second'; --sheet takes a name or a 0-based "
            "index)") in stderr


def test_the_sheet_is_part_of_what_a_resume_must_share(tmp_path: Path) -> None:
    book = _workbook(tmp_path / "request.xlsx")
    assert _run(tmp_path, str(book), "--sheet", "Second")[0] == 0
    code, stderr, _ = _run(tmp_path, str(book), "--sheet", "Request")
    assert code == 2 and "other settings (sheet)" in stderr


def test_rows_carry_the_sheet_row_number(tmp_path: Path) -> None:
    files = inspect_inputs([_workbook(tmp_path / "request.xlsx")], sheet="Second")
    assert (files[0].sheet, files[0].header_line) == ("Second", 2)
    (batch,) = read_batches(files)
    assert list(batch.line_numbers) == [3, 4]


def test_a_damaged_workbook_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.xlsx"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    code, stderr, _ = _run(tmp_path, str(bad))
    assert code == 2
    assert f"{bad}: not a readable workbook" in stderr and "Traceback" not in stderr


def test_cell_text() -> None:
    import datetime as dt

    assert cell_text(2125550134.0) == "2125550134"
    assert cell_text(2.5) == "2.5"
    assert cell_text("0012125550134") == "0012125550134"
    assert cell_text(True) == "TRUE"
    assert cell_text(dt.date(2026, 12, 6)) == "2026-12-06"
    assert cell_text("") == ""
