"""Task lifetimes over real HTTP: a failing journal or background task ends the run with exit 3,
naming it, the journal stays resumable; a cancelled run is cancelled, not swallowed."""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import ENV, PASSWORD, USER, job_args, numbers, read_report, run_cli, write_csv

from batch_cancel.config import Credentials, GwsConfig, JobDefaults, RunConfig
from batch_cancel.exceptions import BackgroundTaskFailed
from batch_cancel.job import run_job
from batch_cancel.simulator import ThreadedSimulator


def _journal_statuses(path: Path) -> dict[str, str]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT reference_id, status FROM records"))
    finally:
        db.close()


def _sends_per_ref(sim: ThreadedSimulator) -> dict[str, int]:
    sent: dict[str, int] = {}
    for e in sim.ledger.entries:
        if e.reference_id is not None:
            sent[e.reference_id] = sent.get(e.reference_id, 0) + 1
    return sent


def _check_resumed(sim: ThreadedSimulator, tmp: Path, n: int, before: dict[str, str],
                   sent_before: dict[str, int]) -> None:
    rows = read_report(tmp / "report.csv")
    assert len(rows) == n and {r["status"] for r in rows} == {"cancelled"}
    # what the journal held as final before the resume was not sent again
    sent_after = _sends_per_ref(sim)
    for ref, status in before.items():
        if status == "cancelled":
            assert sent_after.get(ref) == sent_before.get(ref), ref


@pytest.mark.slow
def test_journal_unwritable_mid_run_exits_3_naming_it_then_resume_completes(
    sim: ThreadedSimulator, tmp_path: Path
) -> None:
    n = 300
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[x] for x in numbers(n)])
    state = tmp_path / "state.sqlite"
    args = job_args(sim.base_url, tmp_path, src, rate=100, concurrency=4, max_outage=1)
    locked, release = threading.Event(), threading.Event()

    def hold_the_journal() -> None:
        # another process's write lock: every commit of the run waits, then fails
        deadline = time.monotonic() + 30
        while len(sim.ledger.entries) < 40 and time.monotonic() < deadline:
            time.sleep(0.005)
        db = sqlite3.connect(state, timeout=30, check_same_thread=False)
        db.execute("BEGIN IMMEDIATE")
        locked.set()
        release.wait(60)
        db.rollback()
        db.close()

    holder = threading.Thread(target=hold_the_journal, daemon=True)
    holder.start()
    try:
        result = run_cli(args, ENV)
    finally:
        release.set()
        holder.join(10)
    assert locked.is_set()
    assert result.exit_code == 3, result.stderr
    # one line names the journal; no traceback, no password
    lines = [line for line in result.stderr.splitlines() if "could not be written for" in line]
    assert len(lines) == 1 and str(state) in lines[0], result.stderr
    assert "Traceback" not in result.stderr and PASSWORD not in result.stderr
    summary = result.summary
    assert summary["pending"] > 0 and summary["total"] == n
    # the run stopped sending: it did not get through the list while the journal was stuck
    assert len(_sends_per_ref(sim)) < n
    before, sent_before = _journal_statuses(state), _sends_per_ref(sim)
    resumed = run_cli(args, ENV)
    assert resumed.exit_code == 0, resumed.stderr
    _check_resumed(sim, tmp_path, n, before, sent_before)


def _config(tmp: Path, n: int, **kw: Any) -> RunConfig:
    src = write_csv(tmp / "in.csv", ["phone_number"], [[x] for x in numbers(n)])
    defaults = JobDefaults(application_id=134, campaign="Campaign1", calling_list="CallingList1")
    return RunConfig(inputs=(src,), defaults=defaults, state=tmp / "state.sqlite",
                     report=tmp / "report.csv", **kw)  # fmt: skip


def _gws(sim: ThreadedSimulator) -> GwsConfig:
    return GwsConfig(base_url=sim.base_url, credentials=Credentials(USER, PASSWORD))


async def _resume(sim: ThreadedSimulator, tmp: Path, n: int, config: RunConfig,
                  before: dict[str, str]) -> None:
    sent_before = _sends_per_ref(sim)
    summary = await run_job(dataclasses.replace(config, rate=0), _gws(sim))
    assert summary.exit_code == 0
    _check_resumed(sim, tmp, n, before, sent_before)


async def test_a_failing_background_task_ends_the_run_at_once_naming_it(
    sim: ThreadedSimulator, tmp_path: Path
) -> None:
    """The progress display is a background task like the watchdog; the caller's callback breaks."""
    n = 400
    config = _config(tmp_path, n, rate=100, concurrency=4)
    calls = 0

    def progress(total: int) -> Any:
        def show(counts: dict[str, int]) -> None:
            nonlocal calls
            calls += 1
            if calls == 3:  # the first call comes at the start, then one every 0.5 s
                raise OSError("terminal went away")

        return show

    started = time.monotonic()
    with pytest.raises(BackgroundTaskFailed) as caught:
        await run_job(config, _gws(sim), progress=progress)
    assert "progress display failed: OSError: terminal went away" in str(caught.value)
    assert time.monotonic() - started < 3.5  # at once, not at the end of a 4 s run
    summary = caught.value.summary  # type: ignore[attr-defined]
    assert summary.pending > 0
    await _resume(sim, tmp_path, n, config, _journal_statuses(tmp_path / "state.sqlite"))


async def test_cancelling_the_run_is_not_swallowed_and_the_journal_resumes(
    sim: ThreadedSimulator, tmp_path: Path
) -> None:
    n = 300
    config = _config(tmp_path, n, rate=100, concurrency=4)
    task = asyncio.create_task(run_job(config, _gws(sim)))
    while len(sim.ledger.entries) < 50:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(_sends_per_ref(sim)) < n
    statuses = _journal_statuses(tmp_path / "state.sqlite")
    # the buffered changes were committed on the way out: what was acked is journaled
    assert sum(s == "cancelled" for s in statuses.values()) >= 40
    await _resume(sim, tmp_path, n, config, statuses)
