"""One exit-code truth: the JSON line's ``exit_code`` is the process's, on every path.

Each abort path is driven through the real CLI against the simulator; the
assertion is always the same: the last stdout line is JSON, its ``exit_code``
equals what the process returned, and ``error`` is set whenever that is not 0 or 1.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import ENV, job_args, make_sim, numbers, run_cli, write_csv

from batch_cancel.simulator import Faults, ThreadedSimulator


def _spawn(args: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "batch_cancel", *args],
                            env={**os.environ, **ENV, **(env or {})}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _agrees(code: int, stdout: str) -> dict[str, Any]:
    """The JSON line says what the process did; answers it."""
    line = json.loads(stdout.strip().splitlines()[-1])
    assert line["exit_code"] == code, (code, line)
    if code not in (0, 1):
        assert line.get("error"), line
    else:
        assert "error" not in line, line
    return dict(line)


def _wait_for_requests(sim: ThreadedSimulator, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while len(sim.ledger.entries) < count:
        assert time.monotonic() < deadline, "the job never got going"
        time.sleep(0.01)


@pytest.mark.subprocess
def test_sigterm_json_says_3_with_the_error(tmp_path: Path) -> None:
    sim = make_sim()
    try:
        src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(60)])
        proc = _spawn(job_args(sim.base_url, tmp_path, src, rate=40, concurrency=2))
        _wait_for_requests(sim, 5)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 3, err
        line = _agrees(3, out)
        assert "signal" in line["error"] and line["pending"] > 0 and line["total"] == 60
        assert "Traceback" not in err
    finally:
        sim.stop()


@pytest.mark.subprocess
def test_sigterm_gives_hung_requests_the_grace_not_the_request_timeout(tmp_path: Path) -> None:
    # every POST hangs unanswered: the stop used to wait for them a whole --request-timeout,
    # long enough for a scheduler to follow its SIGTERM with a SIGKILL
    sim = make_sim(faults=Faults(hang_before_rate=1.0))
    try:
        src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(20)])
        args = job_args(sim.base_url, tmp_path, src, rate=0, concurrency=4, request_timeout=60, grace=0.5)
        proc = _spawn(args)
        _wait_for_requests(sim, 4)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=90)
        took = time.monotonic() - signalled
        assert proc.returncode == 3, err
        line = _agrees(3, out)
        assert line["pending"] == 20 and "signal" in line["error"]
        assert took < 15, f"the stop took {took:.1f} s"
        assert "4 request(s) still unanswered after the 0.5 s grace were abandoned" in err, err
        hung = [e.reference_id for e in sim.ledger.entries]
        assert len(hung) == 4
        # the abandoned requests stayed in flight: a resume sends them again, same referenceId
        sim.set_faults(Faults())
        resumed = run_cli(args, ENV)
        assert resumed.exit_code == 0, resumed.stderr
        refs = [e.reference_id for e in sim.ledger.entries]
        assert len(refs) == 24 and len(set(refs)) == 20
        assert all(refs.count(ref) == 2 for ref in hung)
    finally:
        sim.stop()


@pytest.mark.subprocess
def test_second_signal_still_prints_the_json_line(tmp_path: Path) -> None:
    # acks that take long keep the grace busy, so only the second signal ends the run
    sim = make_sim(faults=Faults(seed=1, ack_delay=(5.0, 5.0)))
    try:
        src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(40)])
        proc = _spawn(job_args(sim.base_url, tmp_path, src, rate=50, concurrency=4, grace=30))
        _wait_for_requests(sim, 4)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=10)
        assert proc.returncode == 3, err
        assert "second signal" in _agrees(3, out)["error"]
    finally:
        sim.stop()


@pytest.mark.slow
def test_gws_gone_past_max_outage(tmp_path: Path) -> None:
    sim = make_sim()
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(30)])
    timer = threading.Timer(0.8, sim.stop)
    timer.start()
    try:
        result = run_cli(job_args(sim.base_url, tmp_path, src, rate=10, concurrency=2, max_outage=1), ENV)
    finally:
        timer.cancel()
        sim.stop()
    assert result.exit_code == 3, result.stderr
    line = _agrees(3, result.stdout)
    assert line["pending"] > 0 and line["total"] == 30


@pytest.mark.slow
def test_cometd_outage_past_max_outage(tmp_path: Path) -> None:
    sim = make_sim(long_poll_timeout=0.5)
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(30)])
    done = threading.Event()

    def pause_once_sending() -> None:
        # the outage must begin after the subscription (a POST proves it), not at a fixed
        # time that a loaded machine may reach before the run has even subscribed
        while not done.is_set() and not sim.ledger.entries:
            time.sleep(0.02)
        if not done.is_set():
            sim.pause_cometd(30.0)

    pauser = threading.Thread(target=pause_once_sending, daemon=True)
    pauser.start()
    try:
        result = run_cli(job_args(sim.base_url, tmp_path, src, rate=10, concurrency=2, max_outage=1), ENV)
    finally:
        done.set()
        pauser.join(5)
        sim.stop()
    assert result.exit_code == 3, result.stderr
    assert "CometD" in _agrees(3, result.stdout)["error"]


def test_authentication_refused(sim: ThreadedSimulator, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(2)])
    result = run_cli(job_args(sim.base_url, tmp_path, src), {"GWS_PASSWORD": "wrong"})
    assert result.exit_code == 3
    assert "refused the credentials" in _agrees(3, result.stdout)["error"]
    assert sim.ledger.entries == []


def test_finished_runs_agree_without_an_error(sim: ThreadedSimulator, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(2)] + [["12"]])
    result = run_cli(job_args(sim.base_url, tmp_path, src), ENV)
    assert result.exit_code == 1
    _agrees(1, result.stdout)


@pytest.mark.subprocess
def test_click_usage_errors_end_with_the_json_line(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(2)])
    for args in (["run", str(src), "--concurrency", "0"], ["run", str(src), "--no-such-flag"],
                 ["run"], ["run", str(src), "--job", str(tmp_path / "missing.toml")]):  # fmt: skip
        proc = subprocess.run([sys.executable, "-m", "batch_cancel", *args], capture_output=True,
                              text=True, timeout=30)  # fmt: skip
        assert proc.returncode == 2, (args, proc.stderr)
        assert _agrees(2, proc.stdout)["error"], args
        assert "Traceback" not in proc.stderr


@pytest.mark.subprocess
def test_verbose_normal_run_prints_no_traceback(sim: ThreadedSimulator, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(3)])
    proc = subprocess.run([sys.executable, "-m", "batch_cancel",
                           *job_args(sim.base_url, tmp_path, src, rate=0), "-v", "-v"],
                          env={**os.environ, **ENV}, capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # -v lets the CometD channel's debug log through: the run really was verbose
    assert "DEBUG batch_cancel.cometd: CometD handshake" in proc.stderr
    assert "Traceback" not in proc.stderr and "CancelledError" not in proc.stderr
    assert "Exception in callback" not in proc.stderr
    _agrees(0, proc.stdout)


def test_the_exit_code_table_is_in_run_help_and_the_readme() -> None:
    text = run_cli(["run", "--help"]).stdout
    for line in ("0  every row cancelled", "1  finished;", "2  no retry can fix it",
                 "3  aborted, resumable with the same --state", "--wait-lock"):  # fmt: skip
        assert line in text, line
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    for row in ("| `0` |", "| `1` |", "| `2` |", "| `3` |"):
        assert row in readme, row


@pytest.mark.subprocess
@pytest.mark.parametrize("limit", [16_384, 65_536])  # full when taking the lock; when planning
def test_a_journal_on_a_full_disk_exits_3_and_a_run_again_finishes(tmp_path: Path, limit: int) -> None:
    import resource

    def small_files_only() -> None:  # the disk "fills up" at this size (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    sim = make_sim()
    try:
        src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(200)])
        args = job_args(sim.base_url, tmp_path, src, rate=0)
        full = subprocess.run([sys.executable, "-m", "batch_cancel", *args],
                              env={**os.environ, **ENV}, capture_output=True, text=True, timeout=60,
                              preexec_fn=small_files_only)  # fmt: skip
        assert full.returncode == 3, full.stderr
        line = _agrees(3, full.stdout)
        assert "cannot be written" in line["error"] and "nothing was sent" in line["error"]
        assert "internal error" not in full.stderr and "Traceback" not in full.stderr
        assert sim.ledger.entries == []
        # room again: the same --state is a journal of ours, and the run goes to the end
        again = run_cli(args, ENV)
        assert again.exit_code == 0, again.stderr
        assert again.summary["cancelled"] == 200 and len(sim.ledger.entries) == 200
    finally:
        sim.stop()
