"""The core job end to end: CLI → real HTTP + real Bayeux → simulator, report vs ledger."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ENV, PASSWORD, Faults, job_args, make_sim, numbers, read_report, run_cli, write_csv

from batch_cancel.simulator import ThreadedSimulator


def test_all_success_report_matches_ledger_row_for_row(sim: ThreadedSimulator, tmp_path: Path) -> None:
    nums = numbers(30)
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in nums])
    result = run_cli(job_args(sim.base_url, tmp_path, src, rate=0, concurrency=8), ENV)
    assert result.exit_code == 0, result.stderr
    summary = result.summary
    assert summary["total"] == 30 and summary["cancelled"] == 30
    assert summary["failed"] == summary["timed_out"] == summary["pending"] == 0
    rows = read_report(tmp_path / "report.csv")
    assert [int(r["row"]) for r in rows] == list(range(1, 31))
    ledger = sim.ledger
    acked = ledger.acknowledged_refs()
    for row, number in zip(rows, nums, strict=True):
        assert row["status"] == "cancelled"
        assert row["phone_number"] == number
        assert row["phone_e164"] == "+1" + number  # a number is written as it is
        ref = row["reference_id"]
        assert ref in acked and ledger.outcome(ref) == "cancelled"
        sent = ledger.requests_for(ref)
        assert len(sent) == 1 and sent[0].phone_number == number
        assert sent[0].campaign_name == "Campaign1" and sent[0].calling_list == "CallingList1"
        assert row["notification_type"] == "RecordCancelAcknowledge"
        assert float(row["latency_ms"]) >= 0 and row["acked_at"]
    assert len(ledger.entries) == 30


def test_mixed_run_each_status_equals_what_the_ledger_says(tmp_path: Path) -> None:
    nums = numbers(60)
    failing = set(nums[:5])
    s = make_sim(failing_numbers=frozenset(failing),
                 faults=Faults(seed=11, ack_drop_rate=0.1, ack_duplicate_rate=0.3))  # fmt: skip
    try:
        rows_in: list[list[str]] = [[n, ""] for n in nums]
        rows_in[10][1] = "/devices/no-such-device"  # GWS answers 404: failed at once, not retried
        rows_in.append([nums[20], ""])  # a duplicate row: never sent
        rows_in.append(["12345", ""])  # unparseable: rejected
        src = write_csv(tmp_path / "in.csv", ["phone_number", "device_path"], rows_in)
        result = run_cli(job_args(s.base_url, tmp_path, src, rate=0, ack_timeout=2), ENV)
        assert result.exit_code == 1, result.stderr
        ledger = s.ledger
        rows = read_report(tmp_path / "report.csv")
        assert len(rows) == 62
        dropped = {e.reference_id for e in ledger.events if e.kind != "device_event" and e.dropped}
        assert dropped, "seed 11 should drop some acks"
        seen: set[str] = set()
        for row in rows:
            status, ref = row["status"], row["reference_id"]
            seen.add(status)
            if status == "duplicate":
                assert row["duplicate_of"] == "21" and not ref
                continue
            if status == "rejected":
                assert row["phone_number"] == "12345" and row["error"]
                continue
            entries = ledger.requests_for(ref)
            if int(row["row"]) == 11:
                assert status == "failed" and row["http_status"] == "404" and len(entries) == 1
                continue
            if ref in dropped:
                assert status == "timed_out", row
            elif ledger.outcome(ref) == "failed":
                assert status == "failed" and "Record not found" in row["error"], row
                assert ref in ledger.failed_refs()
            else:
                assert status == "cancelled" and ref in ledger.acknowledged_refs(), row
        assert seen == {"cancelled", "failed", "timed_out", "duplicate", "rejected"}
        summary = result.summary
        assert summary["duplicate"] == 1 and summary["rejected"] == 1
        assert summary["cancelled"] + summary["failed"] + summary["timed_out"] == 60
        # duplicated acks collapse into one outcome: one request per record
        assert all(len(ledger.requests_for(r["reference_id"])) == 1
                   for r in rows if r["reference_id"])  # fmt: skip
    finally:
        s.stop()


def test_parquet_in_and_out(sim: ThreadedSimulator, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    nums = [int(n) for n in numbers(12)]
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"phoneNumber": nums, "campaignName": ["C9"] * 12}), src)
    args = job_args(sim.base_url, tmp_path, src, rate=0)
    args[args.index("--report") + 1] = str(tmp_path / "out.parquet")
    result = run_cli(args, ENV)
    assert result.exit_code == 0, result.stderr
    rows = read_report(tmp_path / "out.parquet")
    assert [r["status"] for r in rows] == ["cancelled"] * 12
    assert [r["phone_e164"] for r in rows] == [f"+1{n}" for n in nums]  # no CSV escaping here
    assert {e.campaign_name for e in sim.ledger.entries} == {"C9"}
    assert result.summary["report"] == str(tmp_path / "out.parquet")


def test_stdout_last_line_is_the_json_summary(sim: ThreadedSimulator, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone"], [[n] for n in numbers(3)])
    result = run_cli(job_args(sim.base_url, tmp_path, src), ENV)
    summary = result.summary
    for key in ("run_id", "total", "cancelled", "failed", "timed_out", "rejected", "duplicate",
                "pending", "report"):  # fmt: skip
        assert key in summary
    assert summary["total"] == 3 and summary["cancelled"] == 3
    assert "progress" not in result.stdout  # progress and logs go to stderr


def test_dry_run_sends_nothing(sim: ThreadedSimulator, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(5)] + [["x"]])
    result = run_cli(job_args(sim.base_url, tmp_path, src, dry_run=True), ENV)
    assert result.exit_code == 1  # one row would be rejected
    assert sim.ledger.entries == [] and sim.ledger.login_count == 0
    rows = read_report(tmp_path / "report.csv")
    assert [r["status"] for r in rows] == ["pending"] * 5 + ["rejected"]
    assert result.summary["pending"] == 5


@pytest.mark.slow
def test_rate_and_concurrency_limits_hold_at_the_server(sim: ThreadedSimulator, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(90)])
    result = run_cli(job_args(sim.base_url, tmp_path, src, rate=40, concurrency=4), ENV)
    assert result.exit_code == 0, result.stderr
    assert sim.ledger.peak_rate(1.0) <= 40 + 4
    assert sim.ledger.peak_in_flight <= 4
    assert result.summary["stats"]["achieved_rate"] <= 40 * 1.05


def test_password_never_written_anywhere(sim: ThreadedSimulator, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(4)])
    result = run_cli(job_args(sim.base_url, tmp_path, src, verbose=True), ENV)
    assert result.exit_code == 0
    assert PASSWORD not in result.stdout + result.stderr
    for path in tmp_path.iterdir():
        assert PASSWORD.encode() not in path.read_bytes(), path


def test_phone_numbers_are_masked_in_logs(sim: ThreadedSimulator, tmp_path: Path) -> None:
    nums = numbers(4)
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in nums] + [["2"]])
    result = run_cli(job_args(sim.base_url, tmp_path, src, verbose=True), ENV)
    assert all(n not in result.stderr for n in nums)


def test_bad_password_aborts_with_exit_3(sim: ThreadedSimulator, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(2)])
    result = run_cli(job_args(sim.base_url, tmp_path, src), {"GWS_PASSWORD": "wrong"})
    assert result.exit_code == 3
    assert "refused the credentials" in result.stderr
    assert "Traceback" not in result.stderr
    assert sim.ledger.entries == []


def test_missing_password_is_a_usage_error(sim: ThreadedSimulator, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(2)])
    result = run_cli(job_args(sim.base_url, tmp_path, src), {"GWS_PASSWORD": ""})
    assert result.exit_code == 2
    assert "GWS_PASSWORD" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_no_password_flag_exists(tmp_path: Path) -> None:
    result = run_cli(["run", "x.csv", "--password", "hunter2"])
    assert result.exit_code == 2


def test_run_help_has_a_worked_example() -> None:
    result = run_cli(["run", "--help"])
    assert result.exit_code == 0
    assert "batch-cancel run dnc_2026-11-26.csv" in result.stdout
    assert "Exit codes" in result.stdout


def test_device_path_taken_from_the_users_first_device(sim: ThreadedSimulator, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(2)])
    result = run_cli(job_args(sim.base_url, tmp_path, src), ENV)
    assert result.exit_code == 0
    assert "using the user's first device" in result.stderr


def test_usage_error_still_ends_stdout_with_a_json_line(tmp_path: Path) -> None:
    result = run_cli(["run", str(tmp_path / "missing.csv"), "--dry-run"])
    assert result.exit_code == 2
    assert result.summary["exit_code"] == 2 and "no such file" in result.summary["error"]
    assert len(result.stderr.strip().splitlines()) == 1
