"""--shard I/N: stable, complete, disjoint, and repeats of a number stay together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from helpers import job_args, numbers, read_report, run_cli, write_csv

from batch_cancel.plan.planner import shard_of


def test_assignment_is_a_fixed_function_of_the_key() -> None:
    # blake2b-64 of the UTF-8 key, big-endian, modulo N: the same on every machine
    # and Python; this vector must never change, or resumed shards would move rows.
    keys = ["+12125550134", "+12125550135", "+442079460000", "n/a", "", "café"]
    assert [shard_of(k, 4) for k in keys] == [1, 3, 2, 0, 0, 3]
    assert [shard_of(k, 7) for k in keys] == [2, 5, 6, 2, 0, 0]
    assert shard_of(keys[0], 4) == 14103322243276061049 % 4
    assert all(shard_of(k, 1) == 0 for k in keys)


def _rows() -> list[list[str]]:
    rows = [[n, "C"] for n in numbers(40)]
    rows += [[f"({n[:3]}) {n[3:6]}-{n[6:]}", "C"] for n in numbers(5)]  # repeats, other spelling
    rows += [[numbers(1)[0], "Other"]]  # same number, other campaign: not a duplicate
    rows += [["n/a", "C"], ["12345", "C"], ["", "C"], ["n/a", "C"]]  # rejected: keyed by text
    rows += [["+44 20 7946 0000", "C"], ["020 7946 0000", "C"]]
    return rows


def _dry_run(tmp_path: Path, src: Path, name: str, shard: str | None) -> list[dict[str, Any]]:
    args = job_args("http://127.0.0.1:9", tmp_path, src, dry_run=True, shard=shard,
                    run_id="shard-test")  # one job: reference ids agree across shards
    args[args.index("--report") + 1] = str(tmp_path / f"{name}.csv")
    args[args.index("--state") + 1] = str(tmp_path / f"{name}.sqlite")
    result = run_cli(args)
    assert result.exit_code in (0, 1), result.stderr
    return read_report(tmp_path / f"{name}.csv")


@pytest.mark.parametrize("count", [1, 3, 4])
def test_shards_are_complete_disjoint_and_match_the_unsharded_run(tmp_path: Path, count: int) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone", "campaign"], _rows())
    whole = {int(r["row"]): r for r in _dry_run(tmp_path, src, "whole", None)}
    seen: dict[int, int] = {}
    for index in range(count):
        for r in _dry_run(tmp_path, src, f"s{index}", f"{index}/{count}"):
            row = int(r["row"])
            assert row not in seen, f"row {row} in shards {seen[row]} and {index}"
            seen[row] = index
            # global row numbers, and the same fate as in one unsharded run
            assert {k: v for k, v in r.items() if k != "source"} == {
                k: v for k, v in whole[row].items() if k != "source"}
            key = r["phone_e164"].lstrip("'") or r["phone_number"]
            assert shard_of(key, count) == index
    assert sorted(seen) == list(range(1, len(_rows()) + 1))
    if count > 1:
        assert len(set(seen.values())) > 1  # the rows really were spread


def test_repeats_land_in_the_shard_of_their_first_row(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone", "campaign"], _rows())
    duplicates = 0
    for index in range(4):
        report = {int(r["row"]): r for r in _dry_run(tmp_path, src, f"s{index}", f"{index}/4")}
        for r in report.values():
            if r["status"] == "duplicate":
                duplicates += 1
                assert int(r["duplicate_of"]) in report  # the first row is in this shard too
                assert report[int(r["duplicate_of"])]["phone_e164"] == r["phone_e164"]
    assert duplicates == 5


def test_a_shard_refuses_a_journal_of_another_shard(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone"], [[n] for n in numbers(5)])
    args = job_args("http://127.0.0.1:9", tmp_path, src, dry_run=True, shard="0/2")
    assert run_cli(args).exit_code in (0, 1)
    other = job_args("http://127.0.0.1:9", tmp_path, src, dry_run=True, shard="1/2")
    result = run_cli(other)
    assert result.exit_code == 2 and "shard" in result.stderr
