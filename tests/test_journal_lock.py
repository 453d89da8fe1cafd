"""One run per journal: a second run exits 2 (or waits with --wait-lock), a dead holder's lock is
taken over, and the ledger shows no referenceId POSTed twice where it should not be."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from helpers import ENV, job_args, make_sim, numbers, run_cli, write_csv

from batch_cancel.exceptions import Interrupted, JournalLocked
from batch_cancel.journal.lock import Holder, JournalLock, _why_stale, lock_holder
from batch_cancel.journal.rows import RowEvent, RowState, Status
from batch_cancel.journal.store import RECORD_COLUMNS, Journal
from batch_cancel.simulator import ThreadedSimulator

FINAL = {"cancelled", "failed", "timed_out", "rejected", "duplicate"}


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "batch_cancel", *args], env={**os.environ, **ENV},
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _posts(sim: ThreadedSimulator) -> Counter[str]:
    return Counter(e.reference_id for e in sim.ledger.entries if e.reference_id is not None)


def _wait_for_requests(sim: ThreadedSimulator, count: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while len(sim.ledger.entries) < count:
        assert time.monotonic() < deadline, "the job never got going"
        time.sleep(0.01)


def _last_json(stdout: str) -> dict[str, object]:
    return dict(json.loads(stdout.strip().splitlines()[-1]))


def _start_first(args: list[str], state: Path) -> subprocess.Popen[str]:
    """The first run, 1.5 s ahead of the second: started, and holding the journal by then.

    On a loaded machine the interpreter alone may take a second to start; waiting for
    the lock keeps the roles fixed (first holds, second arrives) instead of racing.
    """
    started = time.monotonic()
    first = _spawn(args)
    while lock_holder(state) is None:
        assert first.poll() is None, first.communicate()
        assert time.monotonic() - started < 30, "the first run never took the lock"
        time.sleep(0.02)
    time.sleep(max(0.0, 1.5 - (time.monotonic() - started)))
    return first


def _set_holder(state: Path, host: str, pid: int, heartbeat: float) -> None:
    db = sqlite3.connect(state)
    db.execute("INSERT OR REPLACE INTO run_lock(id, token, host, pid, pid_start, since, heartbeat) "
               "VALUES(1, 'x', ?, ?, NULL, ?, ?)", (host, pid, heartbeat - 5, heartbeat))  # fmt: skip
    db.commit()
    db.close()


@pytest.fixture
def slow_run(tmp_path: Path) -> tuple[ThreadedSimulator, list[str]]:
    sim = make_sim()
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(40)])
    yield sim, job_args(sim.base_url, tmp_path, src, rate=15, concurrency=2)  # about 2.7 s of sending
    sim.stop()


def test_second_run_exits_2_at_once_naming_the_holder(slow_run: tuple[ThreadedSimulator, list[str]],
                                                       tmp_path: Path) -> None:  # fmt: skip
    sim, args = slow_run
    first = _start_first(args, tmp_path / "state.sqlite")
    started = time.monotonic()
    second = run_cli(args, ENV)
    took = time.monotonic() - started
    # status reads the journal while the first run holds it, and names the holder
    status = run_cli(["status", "--state", str(tmp_path / "state.sqlite"), "--json"])
    out, err = first.communicate(timeout=30)
    assert first.returncode == 0, err
    assert second.exit_code == 2, second.stderr
    assert took < 5.0  # at once: it did not wait for the first run
    assert f"pid {first.pid}" in second.stderr and socket.gethostname() in second.stderr
    assert "since" in second.stderr and "--wait-lock" in second.stderr
    assert second.summary["exit_code"] == 2 and "in use by another run" in second.summary["error"]
    assert status.exit_code == 0 and f"pid {first.pid}" in json.loads(status.stdout)["locked_by"]
    posts = _posts(sim)
    assert len(posts) == 40 and max(posts.values()) == 1  # no referenceId POSTed twice
    assert _last_json(out)["cancelled"] == 40
    assert lock_holder(tmp_path / "state.sqlite") is None  # released at the end


def test_second_run_with_wait_lock_waits_then_resumes(slow_run: tuple[ThreadedSimulator, list[str]],
                                                      tmp_path: Path) -> None:  # fmt: skip
    sim, args = slow_run
    first = _start_first(args, tmp_path / "state.sqlite")
    second = run_cli([*args, "--wait-lock", "30"], ENV)
    out, err = first.communicate(timeout=30)
    assert first.returncode == 0, err
    assert second.exit_code == 0, second.stderr
    assert "waiting up to 30 s" in second.stderr
    # the second run resumed a finished journal: it sent nothing already final
    assert second.summary["cancelled"] == 40 and second.summary["stats"] == {}
    posts = _posts(sim)
    assert len(posts) == 40 and max(posts.values()) == 1
    assert second.summary["run_id"] == _last_json(out)["run_id"]


def test_kill_9_then_resume_takes_the_lock_over_and_sends_only_what_was_in_flight(tmp_path: Path) -> None:
    sim = make_sim()
    try:
        src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(60)])
        args = job_args(sim.base_url, tmp_path, src, rate=60, concurrency=4)
        proc = _spawn(args)
        _wait_for_requests(sim, 15)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        time.sleep(0.3)  # requests already on the wire may still land
        db = sqlite3.connect(f"file:{tmp_path / 'state.sqlite'}?mode=ro", uri=True)
        at_kill = dict(db.execute("SELECT reference_id, status FROM records"))
        db.close()
        before = _posts(sim)
        resumed = run_cli(args, ENV)
        assert resumed.exit_code == 0, resumed.stderr
        assert f"pid {proc.pid} is gone" in resumed.stderr and "taking it over" in resumed.stderr
        assert resumed.summary["cancelled"] == 60
        after = _posts(sim)
        sent_again = {ref for ref in before if after[ref] > before[ref]}
        # only records whose outcome the journal did not have were sent again
        assert all(at_kill[ref] not in FINAL for ref in sent_again)
        assert set(after) == {ref for ref in at_kill if ref}
    finally:
        sim.stop()


def test_a_live_holder_on_another_host_blocks_a_dead_one_is_taken_over(sim: ThreadedSimulator,
                                                                        tmp_path: Path) -> None:  # fmt: skip
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(3)])
    args = job_args(sim.base_url, tmp_path, src)
    assert run_cli([*args, "--dry-run"], ENV).exit_code == 0
    state = tmp_path / "state.sqlite"
    _set_holder(state, "worker-7.example", 4242, time.time())
    blocked = run_cli(args, ENV)
    assert blocked.exit_code == 2 and "worker-7.example" in blocked.stderr and "pid 4242" in blocked.stderr
    assert sim.ledger.entries == [] and sim.ledger.login_count == 0
    _set_holder(state, "worker-7.example", 4242, time.time() - 3600)
    taken = run_cli(args, ENV)
    assert taken.exit_code == 0, taken.stderr
    assert "no heartbeat from worker-7.example" in taken.stderr and "taking it over" in taken.stderr
    assert len(_posts(sim)) == 3


def test_same_host_dead_pid_is_taken_over(sim: ThreadedSimulator, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(2)])
    args = job_args(sim.base_url, tmp_path, src, dry_run=True)
    assert run_cli(args, ENV).exit_code == 0
    gone = subprocess.Popen(["true"])
    gone.wait()
    _set_holder(tmp_path / "state.sqlite", socket.gethostname(), gone.pid, time.time())
    again = run_cli(args, ENV)
    assert again.exit_code == 0 and f"pid {gone.pid} is gone" in again.stderr


# -- the lock itself, on a fake clock -----------------------------------------------------


def test_waiting_gives_up_after_wait_seconds(tmp_path: Path) -> None:
    state = tmp_path / "j.sqlite"
    JournalLock.acquire(state).release()
    _set_holder(state, "elsewhere", 1, 1000.0)
    now = [1000.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    with pytest.raises(JournalLocked, match="elsewhere"):
        JournalLock.acquire(state, wait=2.0, clock=lambda: now[0], sleep=sleep, stale_after=60)
    assert sum(slept) == pytest.approx(2.0)
    stop = iter([False, True])
    with pytest.raises(Interrupted):
        JournalLock.acquire(state, wait=30, clock=lambda: now[0], sleep=sleep, should_stop=lambda: next(stop))


def test_a_holder_whose_lock_was_taken_over_is_told(tmp_path: Path) -> None:
    state = tmp_path / "j.sqlite"
    lock = JournalLock.acquire(state, heartbeat=0.02)
    told: list[bool] = []
    lock.on_lost(lambda: told.append(True))
    _set_holder(state, "elsewhere", 1, time.time())  # what a run that judged us dead does
    assert lock.lost.wait(5.0) and told == [True]
    lock.release()
    assert lock_holder(state) is not None  # the other run's lock is left alone


def test_a_run_whose_lock_was_taken_over_writes_no_state_and_no_event(tmp_path: Path) -> None:
    state = tmp_path / "j.sqlite"
    lock = JournalLock.acquire(state, heartbeat=60.0)
    journal = Journal.open(state, fence=lock.holder.token)
    blank = dict.fromkeys(RECORD_COLUMNS)
    journal.add_records(tuple({**blank, "row": r, "reference_id": f"ref-{r}", "status": "planned",
                               "attempts": 0}.values()) for r in (1, 2))  # fmt: skip
    t = time.time()
    in_flight = RowState(Status.SENT, 1, None, None, None, None, t, None, None, None, 1)
    settled = RowState(Status.CANCELLED, 1, 200, 0, "RecordCancelAcknowledge", None, t, t, 1.0, 5, 2)
    sent = [RowEvent(1, t, Status.SENT, 1, None, None, None)]
    assert journal.save_states([in_flight], sent) == []  # ours: written
    _set_holder(state, "elsewhere", 1, time.time())  # another run took the lock over
    # a record in flight and one settled (SQLite writes them by two statements): both refused
    assert journal.save_states([in_flight._replace(attempts=2), settled],
                               [*sent, RowEvent(2, t, Status.CANCELLED, 1, 200, 0, None)]) == [1, 2]
    assert journal.save_states([in_flight._replace(attempts=2)], sent) == [1]
    db = sqlite3.connect(state)
    try:
        assert list(db.execute("SELECT row, status, attempts FROM records")) == [(1, "sent", 1),
                                                                                 (2, "planned", 0)]
        assert db.execute("SELECT count(*) FROM events").fetchone() == (1,)
    finally:
        db.close()
    journal.close()
    lock.release()


# -- who is alive: the pid counts only in the same process space --------------------------
def _holder(host: str, pid: int, heartbeat: float, boot: str | None, ns: str | None) -> Holder:
    return Holder("t", host, pid, None, heartbeat - 5, heartbeat, boot, ns)


def test_a_live_run_in_another_pid_namespace_on_this_host_is_judged_by_its_heartbeat() -> None:
    me = _holder("box", os.getpid(), 1000.0, "boot-1", "pid:[4026531836]")
    # pid 999999 does not exist in our namespace; in its own it is running and beating
    other = _holder("box", 999_999, 995.0, "boot-1", "pid:[4026532999]")
    assert _why_stale(other, me, 60.0, 1000.0) is None
    assert "no heartbeat from box (another PID namespace or boot)" in str(
        _why_stale(other, me, 60.0, 1100.0))


def test_a_restarted_container_is_not_alive_because_its_pid_matches() -> None:
    me = _holder("box", 1, 1000.0, "boot-1", "pid:[4026532100]")  # pid 1 of the new container
    before = _holder("box", 1, 900.0, "boot-1", "pid:[4026532007]")  # pid 1 of the old one
    assert "no heartbeat" in str(_why_stale(before, me, 60.0, 1000.0))
    # the same pid in the same namespace is this very process: alive while one of its
    # runs holds that lock, left behind by an earlier one otherwise (which could not
    # delete it: another process held the journal as it ended)
    here = _holder("box", 1, 900.0, "boot-1", "pid:[4026532100]")
    assert _why_stale(here, me, 60.0, 1000.0, held={"t"}) is None
    assert "left by an earlier run of this process" in str(_why_stale(here, me, 60.0, 1000.0, held=set()))


def test_a_host_rebooted_since_judges_the_old_holder_by_its_heartbeat() -> None:
    me = _holder("box", os.getpid(), 1000.0, "boot-2", "pid:[4026531836]")
    old = _holder("box", os.getpid(), 100.0, "boot-1", "pid:[4026531836]")  # same ns inode after a reboot
    assert "no heartbeat" in str(_why_stale(old, me, 60.0, 1000.0))


def test_the_lock_records_boot_id_and_pid_namespace(tmp_path: Path) -> None:
    state = tmp_path / "j.sqlite"
    lock = JournalLock.acquire(state)
    try:
        held = lock_holder(state)
        assert held is not None and held.pid == os.getpid()
        assert held.boot_id == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        assert held.pid_ns == os.readlink("/proc/self/ns/pid")
    finally:
        lock.release()
