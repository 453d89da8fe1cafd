"""merge: shard reports of one run become the report one process would have written."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from helpers import ENV, job_args, make_sim, numbers, read_report, run_cli, write_csv

from batch_cancel.report.writers import REPORT_COLUMNS

# Compared per row between the merged shards and the single run; timings and
# reference ids (which carry the run id) differ by nature.
SAME = ("row", "phone_number", "phone_e164", "application_id", "campaign", "calling_list", "status",
        "error", "duplicate_of", "phone_sent", "warnings", "source", "notification_type")  # fmt: skip


def _input(tmp: Path) -> tuple[Path, frozenset[str]]:
    nums = numbers(45)
    rows: list[list[str]] = [[n, ""] for n in nums]
    rows[7][1] = "BadList"  # this list fails in the simulator
    rows += [[nums[3], ""], [nums[30], ""], ["12345", ""], ["not a number", ""], ["=1+1", ""]]
    rows += [[n, ""] for n in numbers(15, start=400)]
    return write_csv(tmp / "in.csv", ["phone_number", "calling_list"], rows), frozenset(nums[10:14])


def _sharded_and_single(tmp: Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any],
                                               list[dict[str, Any]], list[Path]]:  # fmt: skip
    src, failing = _input(tmp)
    sims = [make_sim(failing_numbers=failing, failing_lists=frozenset({"BadList"})) for _ in range(2)]
    try:
        reports = []
        for i, ext in enumerate(("csv", "jsonl", "parquet")):  # any mix of formats merges
            d = tmp / f"shard{i}"
            d.mkdir()
            args = job_args(sims[0].base_url, d, src, rate=0, shard=f"{i}/3", run_id="nightly-42", quiet=True)
            args[args.index("--report") + 1] = str(d / f"report.{ext}")
            result = run_cli(args, ENV)
            assert result.exit_code in (0, 1), result.stderr
            reports.append(d / f"report.{ext}")
        (tmp / "single").mkdir()
        single = run_cli(job_args(sims[1].base_url, tmp / "single", src, rate=0, quiet=True), ENV)
        assert single.exit_code == 1, single.stderr
    finally:
        for s in sims:
            s.stop()
    merged = run_cli(["merge", *map(str, reports), "--out", str(tmp / "merged.csv")])
    assert merged.exit_code != 2, merged.stderr
    return (merged.summary | {"_exit": merged.exit_code}, read_report(tmp / "merged.csv"),
            single.summary | {"_exit": single.exit_code}, read_report(tmp / "single" / "report.csv"),
            reports)  # fmt: skip


def test_merged_shards_equal_a_single_run(tmp_path: Path) -> None:
    merged, merged_rows, single, single_rows, reports = _sharded_and_single(tmp_path)
    shard_rows = [{int(r["row"]) for r in read_report(p)} for p in reports]
    assert all(shard_rows), "every shard should get some of the 65 rows"
    assert sum(map(len, shard_rows)) == len(set().union(*shard_rows)) == 65  # disjoint, complete
    assert len(merged_rows) == len(single_rows) == 65
    for m, s in zip(merged_rows, single_rows, strict=True):
        assert {k: m[k] for k in SAME} == {k: s[k] for k in SAME}
        assert m["reference_id"] == (f"bc-nightly-42-{m['row']}" if s["reference_id"] else "")
    statuses = {r["status"] for r in merged_rows}
    assert statuses == {"cancelled", "failed", "rejected", "duplicate"}
    for key in ("total", "cancelled", "failed", "timed_out", "rejected", "duplicate", "pending",
                "duplicates_of_unsuccessful", "exit_code", "_exit"):  # fmt: skip
        assert merged[key] == single[key], key
    assert merged["run_id"] == "nightly-42" and merged["report"] == str(tmp_path / "merged.csv")
    assert merged["merged"] == [str(p) for p in reports]
    # the spreadsheet escaping was read back and written again, not doubled
    formula = next(r for r in merged_rows if r["error"] and "=1+1" in r["phone_number"])
    assert formula["phone_number"] == "'=1+1"


# --- refusals and exit codes, on reports written here ---


def _row(row: int, status: str = "cancelled", run_id: str = "r1", **extra: Any) -> dict[str, Any]:
    sent = status not in ("rejected", "duplicate")
    base: dict[str, Any] = {c: None for c in REPORT_COLUMNS}
    base |= {"row": row, "phone_number": f"212200{row:04d}", "phone_e164": f"+1212200{row:04d}",
             "status": status, "attempts": 1 if sent else 0, "source": "in.csv",
             "reference_id": f"bc-{run_id}-{row}" if sent else None}  # fmt: skip
    return base | extra


def _write(path: Path, rows: list[dict[str, Any]]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    else:
        with path.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=REPORT_COLUMNS)
            w.writeheader()
            w.writerows(rows)
    return path


def _merge(tmp: Path, *reports: Path, extra: tuple[str, ...] = ()) -> Any:
    return run_cli(["merge", *map(str, reports), "--out", str(tmp / "out.csv"), *extra])


def _refused(tmp: Path, result: Any, expected: str) -> None:
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert not (tmp / "out.csv").exists() and not list(tmp.glob(".out.csv*"))


def test_refuses_reports_of_different_runs(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", [_row(1), _row(3)])
    b = _write(tmp_path / "b.csv", [_row(2, run_id="r2")])
    _refused(tmp_path, _merge(tmp_path, a, b), "from run 'r2'")


def test_refuses_another_run_id_than_asked(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", [_row(1), _row(2)])
    _refused(tmp_path, _merge(tmp_path, a, extra=("--run-id", "r9")), "--run-id")
    assert _merge(tmp_path, a, extra=("--run-id", "r1")).exit_code == 0


def test_refuses_overlapping_rows(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", [_row(1), _row(2)])
    b = _write(tmp_path / "b.jsonl", [_row(2), _row(3)])
    _refused(tmp_path, _merge(tmp_path, a, b), "row 2 is in both")
    _refused(tmp_path, _merge(tmp_path, a, a), "row 1 is in both")


def test_refuses_a_missing_shard_unless_allowed(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.csv", [_row(1), _row(4)])
    _refused(tmp_path, _merge(tmp_path, a), "rows 2-3 in none of the reports")
    b = _write(tmp_path / "b.csv", [_row(2), _row(3)])
    _refused(tmp_path, _merge(tmp_path, b), "row 1 in none")
    result = _merge(tmp_path, a, extra=("--allow-gaps",))
    assert result.exit_code == 0 and result.summary["total"] == 2


@pytest.mark.parametrize(("rows", "expected"), [
    ([{"row": 1, "phone": "x"}], "is not a batch-cancel report"),
    ([_row(1), _row(2), _row(2)], "not ordered by row"),
    ([_row(1, status="done")], "unknown status 'done'"),
    ([_row(1, reference_id="xyz")], "is not bc-<run id>-1"),
    ([_row(1, attempts="many")], "attempts 'many' is not a number"),
])  # fmt: skip
def test_refuses_what_is_not_a_report(tmp_path: Path, rows: list[dict[str, Any]], expected: str) -> None:
    path = tmp_path / "x.csv"
    if "phone" in rows[0]:
        path.write_text("row,phone\n1,x\n", encoding="utf-8")
    else:
        _write(path, rows)
    _refused(tmp_path, _merge(tmp_path, path), expected)


def test_refuses_missing_report_and_merging_onto_an_input(tmp_path: Path) -> None:
    _refused(tmp_path, _merge(tmp_path, tmp_path / "nope.csv"), "does not exist")
    a = _write(tmp_path / "a.csv", [_row(1)])
    result = run_cli(["merge", str(a), "--out", str(a)])
    assert result.exit_code == 2 and "is the input file" in result.stderr


@pytest.mark.parametrize(("rows", "code"), [
    ([_row(1), _row(2, "duplicate", duplicate_of=1)], 0),
    ([_row(1), _row(2, "failed")], 1),
    ([_row(1), _row(2, "timed_out")], 1),
    ([_row(1), _row(2, "rejected")], 1),
    ([_row(1, "failed"), _row(2, "duplicate", duplicate_of=1)], 1),
    ([_row(1), _row(2, "pending")], 3),
    ([], 0),
])  # fmt: skip
def test_exit_code_follows_the_run_rules(tmp_path: Path, rows: list[dict[str, Any]], code: int) -> None:
    result = _merge(tmp_path, _write(tmp_path / "a.jsonl", rows))
    assert result.exit_code == code, result.stderr
    summary = result.summary
    assert summary["exit_code"] == code and summary["total"] == len(rows)
    for status in ("cancelled", "failed", "timed_out", "rejected", "duplicate", "pending"):
        assert summary[status] == sum(r["status"] == status for r in rows)


def test_escaping_is_read_back_and_each_format_keeps_its_own(tmp_path: Path) -> None:
    rows = [_row(1, phone_number="+1 212 200 0001", error="=HYPERLINK(1)"),
            _row(2, phone_number="'quoted", error="@cell"), _row(3, phone_number="-5")]  # fmt: skip
    old = tmp_path / "old.csv"
    with old.open("w", newline="", encoding="utf-8") as f:  # as reports were escaped before
        w = csv.writer(f)
        w.writerow(REPORT_COLUMNS)
        for r in rows:
            w.writerow(["'" + v if isinstance(v, str) and v.startswith(("=", "+", "-", "@")) else v
                        for v in r.values()])
    assert "'+12122000001" in old.read_text()  # the old form of an E.164 column
    assert run_cli(["merge", str(old), "--out", str(tmp_path / "m.jsonl")]).exit_code == 0
    back = read_report(tmp_path / "m.jsonl")
    assert [r["phone_number"] for r in back] == ["+1 212 200 0001", "'quoted", "-5"]
    assert [r["phone_e164"] for r in back] == ["+12122000001", "+12122000002", "+12122000003"]
    assert [r["error"] for r in back] == ["=HYPERLINK(1)", "@cell", None]
    assert [r["row"] for r in back] == [1, 2, 3] and back[0]["attempts"] == 1  # typed again
    assert run_cli(["merge", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "m.csv")]).exit_code == 0
    new = (tmp_path / "m.csv").read_text(encoding="utf-8")
    # numbers as they are now; what a spreadsheet would run still escaped
    assert "\n1,+1 212 200 0001,+12122000001," in new and ",'=HYPERLINK(1)," in new
    assert ",'@cell," in new and "\n3,-5,+12122000003," in new
    assert run_cli(["merge", str(tmp_path / "m.csv"), "--out", str(tmp_path / "again.jsonl")]).exit_code == 0
    assert read_report(tmp_path / "again.jsonl") == back
    assert run_cli(["merge", str(old), "--out", str(tmp_path / "m.parquet")]).exit_code == 0
    assert read_report(tmp_path / "m.parquet")[0]["error"] == "=HYPERLINK(1)"


@pytest.mark.parametrize("value", ["+cmd|' /C calc'!A0", "-2+3", "+1+1", "'+1 212", "''=x", "'quoted",
                                   "+12125550134", "+1 (212) 555-0134", "-", "@", "\tx", "=1",
                                   "-1 (2) 3./4", "'", "''"])
def test_every_value_survives_the_csv_report_and_merge(tmp_path: Path, value: str) -> None:
    src = _write(tmp_path / "a.jsonl", [_row(1, phone_number=value, campaign=value, error=value)])
    assert run_cli(["merge", str(src), "--out", str(tmp_path / "m.csv")]).exit_code == 0
    cells = next(r for r in csv.reader((tmp_path / "m.csv").open(newline="")) if r[0] == "1")
    written = cells[REPORT_COLUMNS.index("phone_number")]
    executes = value[:1] in ("=", "@", "\t") or (value[:1] in ("+", "-") and any(
        c not in "0123456789 ()./-" for c in value[1:]))
    quoted = value.startswith("'") and value.lstrip("'")[:1] in ("=", "+", "-", "@")
    assert written == ("'" + value if executes or quoted else value)
    assert run_cli(["merge", str(tmp_path / "m.csv"), "--out", str(tmp_path / "back.jsonl")]).exit_code == 0
    back = read_report(tmp_path / "back.jsonl")[0]
    assert (back["phone_number"], back["campaign"], back["error"]) == (value, value, value)


def test_help_has_an_example() -> None:
    out = run_cli(["merge", "--help"]).stdout
    assert "batch-cancel merge reports/n/shard-*.csv --out" in out and "Exit codes" in out


def test_old_parquet_reports_with_text_times_merge_into_typed_ones(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from batch_cancel.report.schema import REPORT_SCHEMA

    rows = [_row(1, sent_at="2026-11-26T01:02:03.456Z", acked_at="2026-11-26T01:02:04.000Z"),
            _row(2, "rejected")]
    old = tmp_path / "old.parquet"  # as written before: the times as text
    pq.write_table(pa.Table.from_pylist(rows, schema=REPORT_SCHEMA), old)
    assert run_cli(["merge", str(old), "--out", str(tmp_path / "m.parquet")]).exit_code == 1  # a rejected row
    merged = pq.read_table(tmp_path / "m.parquet")
    assert merged.schema.field("sent_at").type == pa.timestamp("ms", tz="UTC")
    assert run_cli(["merge", str(tmp_path / "m.parquet"), "--out", str(tmp_path / "m.jsonl")]).exit_code == 1
    back = read_report(tmp_path / "m.jsonl")
    assert [(r["sent_at"], r["acked_at"]) for r in back] == [
        ("2026-11-26T01:02:03.456Z", "2026-11-26T01:02:04.000Z"), (None, None)]
