"""CSV as spreadsheets write it: other delimiters, UTF-16/32, values spanning lines, at any size.

Through the real CLI (dry runs, no network): every row of each file must be planned,
with and without --delimiter; a file that cannot be read must stop the run with one
line naming the file and the line, suggesting only options that exist.
"""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path
from typing import Any

import pytest
from helpers import job_args, numbers, read_report, run_cli

NOTES = "opted out\nby phone, agent 7\nconfirmed"


def dry_run(tmp_path: Path, *inputs: Path, expect: int = 0, **opts: Any) -> tuple[str, list[dict[str, Any]]]:
    work = tmp_path / f"run{len(list(tmp_path.glob('run*')))}"
    work.mkdir()
    result = run_cli(job_args("http://127.0.0.1:9", work, *inputs, dry_run=True, **opts))
    assert result.exit_code == expect, result.stderr
    return result.stderr, (read_report(work / "report.csv") if expect in (0, 1) else [])


def csv_text(rows: list[list[str]], delimiter: str = ",") -> str:
    out = io.StringIO(newline="")
    csv.writer(out, delimiter=delimiter, lineterminator="\r\n").writerows(rows)
    return out.getvalue()


def planned(rows: list[dict[str, Any]], n: int) -> None:
    assert [int(r["row"]) for r in rows] == list(range(1, n + 1))
    assert {r["status"] for r in rows} == {"pending"}, {r["error"] for r in rows}


def test_30000_rows_with_multi_line_notes_all_plan(tmp_path: Path) -> None:
    nums = numbers(30_000)
    src = tmp_path / "notes.csv"
    src.write_text(csv_text([["phone_number", "notes"], *([n, NOTES] for n in nums)]), encoding="utf-8")
    assert src.stat().st_size > 1 << 20  # many 256 KiB blocks, records across their boundaries
    _, rows = dry_run(tmp_path, src)
    planned(rows, 30_000)
    assert [r["phone_number"] for r in rows] == nums


def test_a_record_longer_than_any_block_is_read(tmp_path: Path) -> None:
    nums = numbers(2_000)
    huge = "line\n" * 400_000  # 2 MB in one quoted cell: eight 256 KiB blocks
    rows = [[n, huge if i == 1200 else NOTES] for i, n in enumerate(nums)]
    src = tmp_path / "huge.csv"
    src.write_text(csv_text([["phone_number", "notes"], *rows]), encoding="utf-8")
    stderr, report = dry_run(tmp_path, src, verbose=True)
    planned(report, 2_000)
    assert [r["phone_number"] for r in report] == nums
    assert "reading on with" in stderr


def _encoded(text: str, encoding: str) -> bytes:
    bom = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE,
           "utf-32-le": codecs.BOM_UTF32_LE, "utf-8-sig": b""}.get(encoding, b"")
    return bom + text.encode(encoding)


@pytest.mark.parametrize(("delimiter", "name", "encoding"), [
    (";", "';'", "utf-8"), ("\t", "tab", "utf-8"), ("|", "'|'", "utf-8"),
    ("\t", "tab", "utf-16-le"),  # Excel's "Unicode text"
    (";", "';'", "utf-16-be"), (",", "','", "utf-32-le"), (";", "';'", "utf-8-sig"),
])
def test_delimiters_and_encodings_plan_every_row_with_and_without_the_option(
    tmp_path: Path, delimiter: str, name: str, encoding: str
) -> None:
    nums = numbers(500)
    rows = [["phone_number", "campaign_name", "notes"],
            *([n, f"Grüße, {i % 3}", NOTES if i % 7 == 0 else "a; b | c, d"] for i, n in enumerate(nums))]
    src = tmp_path / "in.csv"
    src.write_bytes(_encoded(csv_text(rows, delimiter), encoding))
    stderr, report = dry_run(tmp_path, src, verbose=True)
    planned(report, 500)
    assert [r["phone_number"] for r in report] == nums
    assert report[1]["campaign"] == "Grüße, 1"
    assert f"columns separated by {name}" in stderr
    given = "tab" if delimiter == "\t" else delimiter
    _, again = dry_run(tmp_path, src, delimiter=given)
    assert [{**r, "reference_id": None} for r in again] == [{**r, "reference_id": None} for r in report]


def test_the_wrong_delimiter_says_which_was_used_and_how_to_set_another(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text(csv_text([["phone_number", "name"], ["2125550134", "a"]], ";"))
    stderr, _ = dry_run(tmp_path, src, expect=2, delimiter="|")
    [line] = [x for x in stderr.splitlines() if x.startswith("batch-cancel:")]
    assert f"{src}: no phone column" in line and "columns found: 'phone_number;name'" in line
    assert "columns separated by '|', --delimiter sets another" in line


def test_delimiter_in_a_job_file(tmp_path: Path) -> None:
    src = tmp_path / "in.csv"
    src.write_text(csv_text([["phone_number", "notes"], *([n, "x,y"] for n in numbers(5))], ";"))
    job = tmp_path / "job.toml"
    job.write_text('delimiter = ";"\napplication_id = 1\ncampaign = "C"\ncalling_list = "L"\n')
    result = run_cli(["run", "--job", str(job), str(src), "--dry-run", "--state",
                      str(tmp_path / "s.sqlite"), "--report", str(tmp_path / "r.csv")])
    assert result.exit_code == 0, result.stderr
    assert result.summary["total"] == 5
    bad = tmp_path / "bad.toml"
    bad.write_text('delimiter = "::"\n')
    refused = run_cli(["validate-job", str(bad)])
    assert refused.exit_code == 2 and "delimiter" in refused.stderr


def _broken(tmp_path: Path, rows: int, at: int) -> Path:
    """A CSV whose notes cell on data row ``at`` opens a quote that never closes."""
    lines = ["phone_number,notes"]
    lines += [f'{n},"{NOTES}"' if i != at else f'{n},"broken note' for i, n in enumerate(numbers(rows))]
    src = tmp_path / f"broken{rows}.csv"
    src.write_text("\n".join(lines) + "\n")
    return src


@pytest.mark.parametrize("rows", [50, 30_000])  # within one block (silent in pyarrow), and across many
def test_an_unclosed_quote_names_its_line_and_nothing_is_planned(tmp_path: Path, rows: int) -> None:
    at = rows // 2
    src = _broken(tmp_path, rows, at)
    stderr, _ = dry_run(tmp_path, src, expect=2)
    [line] = [x for x in stderr.splitlines() if x.startswith("batch-cancel:")]
    # the header is line 1 and every earlier note spans 3 lines
    assert line.startswith(f"batch-cancel: error: {src}: line {2 + 3 * at}: a quoted value starts "
                           "here and its closing quote is missing")


def test_parse_errors_name_the_physical_line_after_multi_line_values(tmp_path: Path) -> None:
    nums = numbers(20_000)
    rows = [[n, NOTES] for n in nums]
    text = csv_text([["phone_number", "notes"], *rows[:15_000]]) + f"{nums[0]},a,extra\r\n"
    src = tmp_path / "ragged.csv"
    src.write_text(text + csv_text(rows[15_000:]))
    stderr, _ = dry_run(tmp_path, src, expect=2)
    [line] = [x for x in stderr.splitlines() if x.startswith("batch-cancel:")]
    assert line == f"batch-cancel: error: {src}: line {2 + 3 * 15_000}: 3 fields where the header has 2"
    bad = tmp_path / "bytes16.csv"
    bad.write_bytes(_encoded("phone_number\tnotes\r\n2125550134\tx\r\n", "utf-16-le") + b"\x00\xd8")
    stderr, _ = dry_run(tmp_path, bad, expect=2)
    assert "line 3: bytes not valid utf-16" in stderr and "check --encoding" in stderr
    for text in (stderr, line):
        assert "newlines_in_values" not in text and "block size" not in text


def test_a_stray_quote_inside_a_value_is_text_not_an_error(tmp_path: Path) -> None:
    # an odd number of quote characters has the file checked, and this one is fine
    src = tmp_path / "height.csv"
    src.write_text("phone_number,notes\n" + "".join(f"{n},5'10\" tall\n" for n in numbers(3)))
    _, rows = dry_run(tmp_path, src)
    planned(rows, 3)
    last = tmp_path / "last.csv"
    last.write_text("phone_number,notes\n2125550134,ok\n2125550135,\"never closed\n")
    stderr, _ = dry_run(tmp_path, last, expect=2)
    assert f"{last}: line 3: a quoted value starts here and its closing quote is missing" in stderr


def test_a_first_record_longer_than_a_block_is_read(tmp_path: Path) -> None:
    src = tmp_path / "first.csv"
    src.write_text(csv_text([["phone_number", "notes"], ["2125550134", "x\n" * 600_000],
                             ["2125550135", "y"]]))
    _, rows = dry_run(tmp_path, src)
    planned(rows, 2)
