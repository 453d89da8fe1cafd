"""The journal: kill the job (SIGKILL, SIGTERM) at random points, resume, and check the ledger."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import ENV, PASSWORD, job_args, make_sim, numbers, read_report, run_cli, write_csv

from batch_cancel.simulator import ThreadedSimulator

FINAL = {"cancelled", "failed", "timed_out", "rejected", "duplicate"}
N = 400
CONCURRENCY = 8
RATE = 250


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    env = {**os.environ, **ENV}
    return subprocess.Popen([sys.executable, "-m", "batch_cancel", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _journal_states(path: Path) -> dict[str, str]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT reference_id, status FROM records WHERE reference_id IS NOT NULL")
        return {ref: status for ref, status in rows}
    finally:
        db.close()


def _wait_for_requests(sim: ThreadedSimulator, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while len(sim.ledger.entries) < count:
        assert time.monotonic() < deadline, "the job never got going"
        time.sleep(0.005)


def _check_resumed(sim: ThreadedSimulator, tmp: Path, at_kill: dict[str, str], killed_at: float) -> int:
    """The common verdict after a kill and a resume; answers the number of resends."""
    rows = read_report(tmp / "report.csv")
    assert len(rows) == N
    assert all(r["status"] == "cancelled" for r in rows), {r["status"] for r in rows}
    # a request cut off by the kill before its body arrived never reached GWS's logic
    entries = [e for e in sim.ledger.entries if e.reference_id is not None or e.processed]
    # nothing whose outcome was journaled before the kill went out again
    for ref, status in at_kill.items():
        if status in FINAL:
            assert all(e.t_start <= killed_at for e in entries if e.reference_id == ref), ref
    posted_before = {e.reference_id for e in entries if e.t_start <= killed_at}
    in_flight_at_kill = {ref for ref in posted_before if at_kill.get(ref) not in FINAL}
    sent: dict[str, int] = {}
    for e in entries:
        assert e.reference_id is not None
        sent[e.reference_id] = sent.get(e.reference_id, 0) + 1
    resent = {ref for ref, n in sent.items() if n > 1}
    # only records in flight at the kill were sent again, each with its own referenceId
    assert resent <= in_flight_at_kill
    # and the journal never lagged far behind what was on the wire
    assert len(in_flight_at_kill) <= CONCURRENCY + RATE * 0.2
    assert set(sent) == {r["reference_id"] for r in rows}
    return len(resent)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_at_a_random_point_then_resume(seed: int, tmp_path: Path) -> None:
    rng = random.Random(seed)
    sim = make_sim()
    try:
        src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(N)])
        args = job_args(sim.base_url, tmp_path, src, rate=RATE, concurrency=CONCURRENCY)
        proc = _spawn(args)
        _wait_for_requests(sim, rng.randint(10, N - 60))
        time.sleep(rng.uniform(0, 0.05))
        proc.kill()
        proc.wait(10)
        # requests already written to the socket may reach the server just after the kill
        time.sleep(0.3)
        killed_at = time.time()
        at_kill = _journal_states(tmp_path / "state.sqlite")
        assert len(at_kill) == N  # the plan was complete before the first request
        resumed = run_cli(args, ENV)
        assert resumed.exit_code == 0, resumed.stderr
        assert resumed.summary["cancelled"] == N and resumed.summary["pending"] == 0
        _check_resumed(sim, tmp_path, at_kill, killed_at)
    finally:
        sim.stop()


@pytest.mark.slow
def test_sigterm_exits_3_with_pending_rows_then_resumes(tmp_path: Path) -> None:
    sim = make_sim()
    try:
        src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(N)])
        args = job_args(sim.base_url, tmp_path, src, rate=RATE, concurrency=CONCURRENCY)
        proc = _spawn(args)
        _wait_for_requests(sim, N // 3)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
        time.sleep(0.3)
        killed_at = time.time()
        assert proc.returncode == 3, err
        summary = json.loads(out.strip().splitlines()[-1])
        assert summary["total"] == N
        assert summary["cancelled"] + summary["pending"] == N
        assert 0 < summary["cancelled"] < N
        assert "Traceback" not in err
        at_kill = _journal_states(tmp_path / "state.sqlite")
        # the report written at the interruption covers every row
        assert len(read_report(tmp_path / "report.csv")) == N
        assert PASSWORD not in err
        resumed = run_cli(args, ENV)
        assert resumed.exit_code == 0, resumed.stderr
        _check_resumed(sim, tmp_path, at_kill, killed_at)
    finally:
        sim.stop()


def test_resume_refuses_changed_input(sim: ThreadedSimulator, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(3)])
    args = job_args(sim.base_url, tmp_path, src)
    assert run_cli(args, ENV).exit_code == 0
    write_csv(src, ["phone_number"], [[n] for n in numbers(4)])
    result = run_cli(args, ENV)
    assert result.exit_code == 2
    assert "other input files" in result.stderr and "--force" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert len(sim.ledger.entries) == 3


def test_resume_refuses_changed_settings(sim: ThreadedSimulator, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(3)])
    args = job_args(sim.base_url, tmp_path, src, dry_run=True)
    run_cli(args, ENV)
    changed = [a if a != "Campaign1" else "Campaign2" for a in args]
    result = run_cli(changed, ENV)
    assert result.exit_code == 2 and "campaign" in result.stderr


def test_completed_run_resumed_sends_nothing_again(sim: ThreadedSimulator, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(5)])
    args = job_args(sim.base_url, tmp_path, src)
    first = run_cli(args, ENV)
    second = run_cli(args, ENV)
    assert first.exit_code == second.exit_code == 0
    assert len(sim.ledger.entries) == 5
    assert second.summary["run_id"] == first.summary["run_id"]


def test_retry_timed_out_sends_them_once_more_with_the_same_reference(tmp_path: Path) -> None:
    from batch_cancel.simulator import Faults

    sim = make_sim(faults=Faults(seed=3, ack_drop_rate=1.0))
    try:
        src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(4)])
        args = job_args(sim.base_url, tmp_path, src, ack_timeout=0.5)
        first = run_cli(args, ENV)
        assert first.exit_code == 1 and first.summary["timed_out"] == 4
        sim.set_faults(Faults())
        again = run_cli([*args, "--retry-timed-out"], ENV)
        assert again.exit_code == 0 and again.summary["cancelled"] == 4
        refs = {e.reference_id for e in sim.ledger.entries}
        assert len(refs) == 4 and len(sim.ledger.entries) == 8
    finally:
        sim.stop()


def test_status_shows_counts_and_what_a_resume_would_do(sim: ThreadedSimulator, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(4)] + [["1"]])
    run_cli(job_args(sim.base_url, tmp_path, src, dry_run=True), ENV)
    text = run_cli(["status", "--state", str(tmp_path / "state.sqlite")])
    assert text.exit_code == 0
    assert "pending    4" in text.stdout and "rejected   1" in text.stdout
    assert "would send 4 record(s)" in text.stdout
    as_json = json.loads(run_cli(["status", "--state", str(tmp_path / "state.sqlite"), "--json"]).stdout)
    assert as_json["counts"]["pending"] == 4 and as_json["resume"]["send"] == 4
    missing = run_cli(["status", "--state", str(tmp_path / "nope.sqlite")])
    assert missing.exit_code == 2 and "no journal" in missing.stderr


def test_journal_holds_transitions_and_no_password(sim: ThreadedSimulator, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(3)])
    assert run_cli(job_args(sim.base_url, tmp_path, src), ENV).exit_code == 0
    db = sqlite3.connect(tmp_path / "state.sqlite")
    events = [e for (e,) in db.execute("SELECT event FROM events WHERE row=1 ORDER BY id")]
    # the attempt and its outcome: the acceptance is implied by the outcome, and the ack's
    # /me/internal companion gives the row its OCS record handle, a column of the row
    assert events == ["sent", "cancelled"]
    assert db.execute("SELECT record_handle FROM records WHERE row=1").fetchone()[0] is not None
    inputs = json.loads(db.execute("SELECT value FROM meta WHERE key='inputs'").fetchone()[0])
    assert inputs[0]["sha256"] and inputs[0]["size"] == src.stat().st_size
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    dump = "\n".join(db.iterdump())
    assert PASSWORD not in dump
    db.close()


@pytest.mark.slow
def test_second_signal_exits_at_once_and_the_journal_stays_resumable(tmp_path: Path) -> None:
    from batch_cancel.simulator import Faults

    # acks that never come keep the grace period busy, so only the second signal can end it fast
    sim = make_sim(faults=Faults(seed=1, ack_delay=(5.0, 5.0)))
    try:
        src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(200)])
        args = job_args(sim.base_url, tmp_path, src, rate=100, concurrency=4, grace=30)
        proc = _spawn(args)
        _wait_for_requests(sim, 20)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
        assert proc.returncode == 3
        assert time.monotonic() - started < 2.0
        sim.set_faults(Faults())
        resumed = run_cli(args, ENV)
        assert resumed.exit_code == 0, resumed.stderr
        assert resumed.summary["cancelled"] == 200
    finally:
        sim.stop()
