"""The late-ack upgrade end to end: a record timed out, its ack came before the run ended."""

from __future__ import annotations

from pathlib import Path

from helpers import ENV, Faults, job_args, make_sim, numbers, read_report, run_cli, write_csv


def test_ack_after_the_timeout_but_before_the_end_reports_cancelled(tmp_path: Path) -> None:
    # every ack 0.8 s after the request, the timeout 0.3 s; 16 records at 8/s take 2 s, so the
    # first ones' acks come while the run still sends, the last ones' after it has ended
    sim = make_sim(faults=Faults(ack_delay=(0.8, 0.8)))
    try:
        src = write_csv(tmp_path / "in.csv", ["phone_number"], [[x] for x in numbers(16)])
        result = run_cli(job_args(sim.base_url, tmp_path, src, rate=8, concurrency=2,
                                  ack_timeout=0.3, grace=0), ENV)  # fmt: skip
        rows = read_report(tmp_path / "report.csv")
    finally:
        sim.stop()
    assert result.exit_code == 1, result.stderr  # the last ones stay timed out
    status = [r["status"] for r in rows]
    assert status[:8] == ["cancelled"] * 8  # timed out first, then upgraded by their late ack
    assert status[-1] == "timed_out"
    assert set(status) == {"cancelled", "timed_out"}
    # a cancelled row is one GWS acknowledged
    assert {r["reference_id"] for r in rows if r["status"] == "cancelled"} <= sim.ledger.acknowledged_refs()
    summary = result.summary
    assert summary["cancelled"] == status.count("cancelled")
    assert summary["timed_out"] == status.count("timed_out")
