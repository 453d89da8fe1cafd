"""Issue 21's "Must show", end to end against the simulator over real HTTP and Bayeux: what
the run reports when it cannot know what happened, and what it does not send.

The simulator's ledger is the ground truth: ``cancelled_by()`` names the numbers GWS really
cancelled, ``refs_by_number()`` every referenceId POSTed for a number."""

from __future__ import annotations

import json
import os
import resource
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import ENV, Faults, job_args, make_sim, numbers, read_report, run_cli, write_csv


def _second_ids(sim: Any) -> dict[str, list[str]]:
    return {n: refs for n, refs in sim.ledger.refs_by_number().items() if len(refs) > 1}


def test_lost_acks_resets_and_refused_repeats_never_report_a_cancelled_number_failed(tmp_path: Path) -> None:
    # 3 % of acks lost, 3 % of POSTs processed and then reset, and a repeat for a number
    # already cancelled answered "Record not found": the run, --retry-timed-out, --retry-failed
    rows = 600
    sim = make_sim(faults=Faults(seed=21, ack_drop_rate=0.03, reset_after_rate=0.03,
                                 repeat_answer="failure"))  # fmt: skip
    try:
        src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(rows)])
        common = dict(rate=0, concurrency=16, ack_timeout=1.0, request_timeout=2.0, grace=0)
        runs = [run_cli(job_args(sim.base_url, tmp_path, src, **common), ENV),
                run_cli(job_args(sim.base_url, tmp_path, src, retry_timed_out=True, **common), ENV),
                run_cli(job_args(sim.base_url, tmp_path, src, retry_failed=True, **common), ENV)]
        report = read_report(tmp_path / "report.csv")
        cancelled = sim.ledger.cancelled_by()
        second = _second_ids(sim)
    finally:
        sim.stop()
    for run in runs:
        assert run.exit_code in (0, 1), run.stderr
    assert len(cancelled) == rows  # GWS cancelled every number
    failed = [r for r in report if r["status"] == "failed" and r["phone_sent"] in cancelled]
    assert failed == [], failed[:3]
    assert second == {}, list(second.items())[:3]  # no number POSTed under a second referenceId
    # the faults did happen, and the unknowns are reported as such, not as failures
    assert runs[0].summary["timed_out"] > 0
    unconfirmed = [r for r in report if r["status"] == "timed_out"]
    assert all(r["error"] for r in unconfirmed)


def test_a_row_is_never_given_a_second_id_when_an_attempt_may_have_been_processed(tmp_path: Path) -> None:
    # every POST answered by a gateway's 502 after GWS processed it, every ack lost: nothing
    # is known, so --retry-failed has nothing to send under a new referenceId
    sim = make_sim(faults=Faults(seed=3, gateway_after_rate=1.0, gateway_statuses=(502,),
                                 ack_drop_rate=1.0, repeat_answer="http_error"))  # fmt: skip
    try:
        src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(6)])
        common = dict(rate=0, concurrency=3, ack_timeout=0.5, max_attempts=2, grace=0)
        first = run_cli(job_args(sim.base_url, tmp_path, src, **common), ENV)
        again = run_cli(job_args(sim.base_url, tmp_path, src, retry_failed=True, **common), ENV)
        report = read_report(tmp_path / "report.csv")
        second = _second_ids(sim)
    finally:
        sim.stop()
    assert first.exit_code == 1, first.stderr
    assert first.summary["failed"] == 0 and first.summary["timed_out"] == 6
    assert again.summary["failed"] == 0
    assert all("may already be cancelled" in r["error"] for r in report), [r["error"] for r in report]
    assert second == {}


@pytest.mark.subprocess
def test_a_full_journal_disk_stops_the_posts_at_once_and_the_resume_completes(tmp_path: Path) -> None:
    limit = 1_500_000  # bytes: the plan of 3,000 rows fits (WAL 0.6 MB); the send fills it at ~30 %

    def small_files_only() -> None:  # the disk "fills up" at this size (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    sim = make_sim()
    try:
        src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(3000)])
        args = job_args(sim.base_url, tmp_path, src, rate=300, concurrency=8, max_outage=2,
                        log_format="json")  # fmt: skip
        full = subprocess.run([sys.executable, "-m", "batch_cancel", *args], env={**os.environ, **ENV},
                              capture_output=True, text=True, timeout=120,
                              preexec_fn=small_files_only)  # fmt: skip
        posted_before = len(sim.ledger.entries)
        failing = [json.loads(line) for line in full.stderr.splitlines()
                   if line.startswith("{") and "commit failed" in line]  # fmt: skip
        db = sqlite3.connect(tmp_path / "state.sqlite")
        try:
            rows_acked = db.execute("SELECT reference_id FROM records WHERE status='cancelled'")
            acked = {ref for (ref,) in rows_acked}
        finally:
            db.close()
        again = run_cli(job_args(sim.base_url, tmp_path, src, rate=0, concurrency=8), ENV)
        entries = sim.ledger.entries
    finally:
        sim.stop()
    assert full.returncode == 3, full.stderr[-2000:]
    line = json.loads(full.stdout.strip().splitlines()[-1])
    assert "journal" in line["error"] and "state.sqlite" in line["error"], line["error"]
    assert failing, (line["error"], posted_before, full.stderr[-3000:])
    assert 0 < posted_before < 3000  # it did fill mid-send
    from datetime import datetime

    failed_at = datetime.fromisoformat(failing[0]["time"].replace("Z", "+00:00")).timestamp()
    after = [e for e in entries[:posted_before] if e.t_start > failed_at]
    assert len(after) <= 8, len(after)  # at most one per sender after the failing commit
    assert again.exit_code == 0, again.stderr
    assert again.summary["cancelled"] == 3000
    assert acked, "nothing was committed before the fill"
    resent = [e.reference_id for e in entries[posted_before:] if e.reference_id in acked]
    assert resent == []  # rows acked (and journaled) before the fill are not sent again
