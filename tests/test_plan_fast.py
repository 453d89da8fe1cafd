"""The column-wise planner must answer exactly what the per-row rules answer.

plan_columns/phone_batch settle most rows without Python code of their own, the
Deduper finds repeats out of core, and the report is rebuilt from the plan
snapshot: each is compared here with the plain definition on generated data.
"""

from __future__ import annotations

import csv
import io
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batch_cancel.config import JobDefaults, RunConfig
from batch_cancel.input.files import RowBatch, inspect_inputs
from batch_cancel.journal.store import Journal
from batch_cancel.plan import planner as plan_module
from batch_cancel.plan.columns import Const, plan_batch
from batch_cancel.plan.phones import PhoneFormat
from batch_cancel.plan.planner import _settle_slow_rows, build_plan, classify_row
from batch_cancel.report.writers import REPORT_COLUMNS, _as_batches, _write, report_rows, write_report

SHAPES = ["{a}{b}{c}", "({a}) {b}-{c}", "{a}-{b}-{c}", "{a}.{b}.{c}", "1{a}{b}{c}", "+1 {a} {b} {c}",
          "+1{a}{b}{c}", "{a}{b}{c}.0", "{a}{b}{c}.00", "00 1 {a}{b}{c}", "001{a}{b}{c}",
          "{a}{b}{c} x12", "{b}{c}", "+{a}{b}{c}", "{a} {b} {c}\t", "1-{a}-{b}-{c}.0", "abc",
          "{a}/{b}/{c}", "((({a}))){b}{c}", "+44 20 7946 {c}", "2{a}{b}{c}", "{a}{b}{c}é"]


def _values(rng: random.Random, n: int) -> list[str | None]:
    out: list[str | None] = []
    for _ in range(n):
        if rng.random() < 0.03:
            out.append(None)
            continue
        # valid US area codes and exchanges mostly, but 0/1 leads and Canada (416) too
        a = rng.choice(["212", "415", "646", "212", "415", "646", "416", "604", "011", "123",
                        str(rng.randint(200, 999))])
        b = rng.choice(["555", "055", "155", *(str(rng.randint(200, 999)) for _ in range(5))])
        out.append(rng.choice(SHAPES).format(a=a, b=b, c=f"{rng.randint(0, 9999):04d}"))
    return out


def _batch(columns: dict[str, list[Any]]) -> RowBatch:
    n = len(columns["phone"])
    arrays = {k: pa.array(v, pa.string()) for k, v in columns.items()}
    return RowBatch(Path("in.csv"), 1, range(2, n + 2), arrays)


def _column(plan: Any, name: str, i: int) -> Any:
    values = plan.columns[name]
    return values.value if isinstance(values, Const) else values[i].as_py()


@pytest.mark.parametrize("fmt", list(PhoneFormat))
@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("with_columns", [False, True])
def test_column_wise_plan_equals_the_per_row_rules(fmt: PhoneFormat, strict: bool,
                                                   with_columns: bool) -> None:
    rng = random.Random(f"{fmt}{strict}{with_columns}")
    n = 3000
    columns: dict[str, list[Any]] = {"phone": _values(rng, n)}
    # with its own column, a blank calling list is missing (no default to fall back on)
    d = JobDefaults(application_id=7, campaign="C", calling_list=None if with_columns else "L0",
                    phone_format=fmt, strict_validation=strict, default_region="US")
    if with_columns:
        pick = rng.choices
        columns["region"] = pick([None, "us", "CA", "GB", "XX", "ca"], k=n)
        columns["application_id"] = pick([None, "134", "134.0", "x", "99999999999999999999"], k=n)
        columns["calling_list"] = pick([None, "L1", "L2"], weights=[1, 5, 5], k=n)
        columns["chain_attribute"] = pick([None, "AllChain", "Bogus"], weights=[5, 5, 1], k=n)
    plan = plan_batch(_batch(columns), d, fmt)
    fast = len(plan) - len(plan.slow)
    _settle_slow_rows(plan, d, fmt)
    assert n // 20 < fast < n - n // 20, "both paths must be exercised"
    for i in range(n):
        get = {k: v[i] for k, v in columns.items()}
        phone, error = classify_row(d, fmt, get["phone"], get.get("region"),
                                    get.get("application_id"), d.campaign,
                                    get.get("calling_list") or d.calling_list,
                                    get.get("chain_attribute") or d.chain_attribute)
        got = tuple(_column(plan, c, i) for c in ("phone_e164", "phone_sent", "error", "warnings"))
        assert got == (phone.e164, phone.sent, error, phone.warning), (i, get)


def _reference_duplicates(rows: list[dict[str, Any]]) -> dict[int, int]:
    first: dict[tuple[Any, ...], int] = {}
    out = {}
    for r in rows:
        if r["error"] is None:
            key = (r["phone_e164"], r["application_id"], r["campaign"], r["calling_list"])
            f = first.setdefault(key, r["row"])
            if f != r["row"]:
                out[r["row"]] = f
    return out


def _plan(tmp_path: Path, src: Path, monkeypatch: pytest.MonkeyPatch) -> Journal:
    monkeypatch.setattr(plan_module, "_BATCH_ROWS", 7)  # many batches ...
    monkeypatch.setattr(plan_module, "partitions_for", lambda rows: 5)  # ... and partitions
    journal = Journal.open(tmp_path / "state.sqlite")
    config = RunConfig(inputs=(src,), defaults=JobDefaults(application_id=1, campaign="C",
                                                           calling_list="L"))
    build_plan(journal, inspect_inputs([src]), config, "run")
    return journal


def _input(tmp_path: Path) -> Path:
    rng = random.Random(5)
    rows = [[v or "", rng.choice(["", "A", "B", "+A", "-1 (2)", "'=x", "''+1", "+1+1"]),
             rng.choice(["", "=L", 'q"x,y', "@L", "-L\nx", "\tL"])]
            for v in _values(rng, 400)]
    rows += [[f"212 555 01{i % 20:02d}", "", ""] for i in range(60)]  # many repeats
    src = tmp_path / "in.csv"
    with src.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["phone", "campaign", "calling_list"])
        w.writerows(rows)
    return src


def test_duplicates_across_batches_and_partitions(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    journal = _plan(tmp_path, _input(tmp_path), monkeypatch)
    rows = list(journal.iter_rows())
    expected = _reference_duplicates(rows)
    assert len(expected) >= 40
    got = {r["row"]: r["duplicate_of"] for r in rows if r["status"] == "duplicate"}
    assert got == expected
    assert all(r["reference_id"] is None for r in rows if r["status"] != "planned")
    assert all(r["reference_id"] == f"bc-run-{r['row']}" for r in rows if r["status"] == "planned")


def _safe(v: str) -> str:
    """Spreadsheet safety, written out plainly: escape what a spreadsheet would execute."""
    first, rest = v[:1], v[1:]
    executes = first in ("=", "@", "\t", "\r") or (
        first in ("+", "-") and any(c not in "0123456789 ()./-" for c in rest))
    # a value that already starts with apostrophes before such a character gets one more
    quoted = first == "'" and v.lstrip("'")[:1] in ("=", "+", "-", "@", "\t", "\r")
    return "'" + v if executes or quoted else v


def _old_csv(journal: Journal) -> bytes:
    """The report as csv.writer writes it (the column-wise writer must match it byte for byte)."""
    out = io.StringIO(newline="")
    w = csv.writer(out)
    w.writerow(REPORT_COLUMNS)
    for row in report_rows(journal):
        w.writerow([_safe(v) if isinstance(v, str) else v for v in (row[c] for c in REPORT_COLUMNS)])
    return out.getvalue().encode("utf-8")


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_report_from_the_snapshot_equals_the_report_from_sql(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    journal = _plan(tmp_path, _input(tmp_path), monkeypatch)
    assert journal.snapshot() is not None
    fast = write_report(journal, tmp_path / f"fast{suffix}")
    slow = tmp_path / f"slow{suffix}"
    with slow.open("wb") as f:  # the writers write to a stream (a file or an object upload)
        _write(_as_batches(report_rows(journal)), f, suffix)
    if suffix == ".parquet":  # the bytes depend on batch sizes, the values must not
        assert pq.read_table(fast).equals(pq.read_table(slow))
        assert pq.read_table(fast).num_rows == 460
    else:
        assert fast.read_bytes() == slow.read_bytes()
    if suffix == ".csv":
        assert fast.read_bytes() == _old_csv(journal)


def test_duplicates_kept_with_the_snapshot_or_read_from_the_records_give_one_report(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    journal = _plan(tmp_path, _input(tmp_path), monkeypatch)
    info = journal.get_meta("plan_snapshot")
    assert "duplicates" in info and info["counts"]["duplicate"] >= 40
    kept = write_report(journal, tmp_path / "kept.csv").read_bytes()
    # a snapshot sealed before the duplicates were kept with it
    journal.set_meta(plan_snapshot={k: v for k, v in info.items() if k != "duplicates"})
    assert write_report(journal, tmp_path / "queried.csv").read_bytes() == kept == _old_csv(journal)


def test_a_state_change_retires_the_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = _plan(tmp_path, _input(tmp_path), monkeypatch)
    first = next(r for r in journal.iter_rows() if r["status"] == "planned")
    journal.save_states([("cancelled", 1, 200, 0, "RecordCancelAcknowledge", None, 1.5e9,
                          1.5e9 + 0.25, 250.0, 11, first["row"])], [])
    assert journal.snapshot() is None
    report = write_report(journal, tmp_path / "after.csv")
    assert report.read_bytes() == _old_csv(journal)
    assert b"cancelled,1,200,0,RecordCancelAcknowledge" in report.read_bytes()


def test_an_insert_that_fails_on_the_writer_thread_stops_planning_with_its_error(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    import sqlite3
    import threading

    calls = []

    class FillsUp(Journal):
        def add_plan(self, *args: Any, **kwargs: Any) -> None:
            calls.append(threading.current_thread().name)
            if len(calls) == 3:
                raise sqlite3.OperationalError("database or disk is full")
            super().add_plan(*args, **kwargs)

    monkeypatch.setattr(plan_module, "_BATCH_ROWS", 7)
    src = _input(tmp_path)
    journal = FillsUp.open(tmp_path / "state.sqlite")
    config = RunConfig(inputs=(src,), defaults=JobDefaults(application_id=1, campaign="C",
                                                           calling_list="L"))
    with pytest.raises(sqlite3.OperationalError, match="disk is full"):
        build_plan(journal, inspect_inputs([src]), config, "run")
    assert len(calls) == 3  # no batch is handed over after a failed one
    assert all(name.startswith("plan-writer") for name in calls)
    assert not any(t.name.startswith("plan-writer") for t in threading.enumerate())
    assert journal.get_meta("plan_snapshot") is None  # never sealed: the next run plans anew
    journal.close()
