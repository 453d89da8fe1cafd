"""A fleet you can trust: what workers do when they pause, lose their database, or meet
a database that restarts; the job's rate; retry rounds; reading with a read-only role.

Every test here runs real CLI workers against a real PostgreSQL server
(conftest.pg_server) and the simulator. Workers log in as different users where
the test must tell their requests apart (the simulator's ledger names the user).
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path

import psycopg
import pytest
from fleet_helpers import figures, finish, fleet_args, spawn, with_option
from helpers import ENV, PASSWORD, USER, Faults, make_sim, numbers, read_report, run_cli, write_csv
from pg_server import PgServer
from tcp_blackhole import BlackholeProxy

from batch_cancel.simulator import ThreadedSimulator

USERS = {USER: PASSWORD, "agent2": PASSWORD, "agent3": PASSWORD}


@pytest.fixture
def sim3() -> ThreadedSimulator:
    s = make_sim(users=USERS)
    yield s  # type: ignore[misc]
    s.stop()


def _connect(server: PgServer) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(host=server.host, port=server.port, user=server.user, password=server.password,
                           dbname="postgres", autocommit=True)  # fmt: skip


def _journal(server: PgServer, schema: str, run_id: str) -> dict[str, tuple[int, str]]:
    """reference_id -> (row, status) of every row of the job, straight from the journal."""
    with _connect(server) as conn:
        rows = conn.execute(f"SELECT reference_id, row, status FROM {schema}.records WHERE run_id=%s "
                            "AND reference_id IS NOT NULL", [run_id]).fetchall()  # fmt: skip
    return {str(r[0]): (int(r[1]), str(r[2])) for r in rows}


def _wait_for(what: str, ok: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ok():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_worker_frozen_past_its_lease_then_thawed_overwrites_nothing_and_sends_nothing(
        sim3: ThreadedSimulator, tmp_path: Path, pg_server: PgServer) -> None:
    """Must show: a worker frozen (SIGSTOP) past its lease with outcomes buffered, then
    thawed: the journal's final statuses equal the simulator's truth row by row; the
    thawed worker POSTs none of the rows the others took."""
    n = 2400
    src = write_csv(tmp_path / "in.csv", ["phone"], [[x] for x in numbers(n)])
    url = pg_server.url("postgres", schema="frozen", lease="2")
    env = {**ENV, "PGPASSWORD": pg_server.password}
    # acks a little late: the frozen worker holds rows sent and awaiting their ack
    sim3.set_faults(Faults(ack_delay=(0.2, 0.4)))
    base = fleet_args(sim3, tmp_path, src, url, "frozen", rate=300, concurrency=16, ack_timeout=10)
    procs = [spawn(with_option(base, "--username", user), env) for user in USERS]
    victim = procs[0]
    _wait_for("the victim never got going",
              lambda: sum(e.user == USER for e in sim3.ledger.entries) > 150)  # fmt: skip
    victim.send_signal(signal.SIGSTOP)
    frozen_at = time.time()
    time.sleep(5)  # 2.5 leases: its rows expire and the others take them
    thawed_at = time.time()
    victim.send_signal(signal.SIGCONT)
    results = finish(procs)
    code, summary, stderr = results[0]
    assert code == 3 and "took its rows" in summary.get("error", ""), (code, summary, stderr[-1500:])
    for code, _, stderr in results[1:]:
        assert code == 0, stderr[-2000:]
    entries = sim3.ledger.entries
    by_victim = [e for e in entries if e.user == USER]
    # a request written just before the freeze may reach the server a moment later
    after = [e for e in by_victim if e.t_start > frozen_at + 0.5]
    assert after == [], [(e.reference_id, round(e.t_start - thawed_at, 3)) for e in after][:5]
    others = {e.reference_id for e in entries if e.user != USER}
    taken = {e.reference_id for e in by_victim} & others
    assert taken, "the others took none of the victim's rows: the test proves nothing"
    # the journal's final statuses are the simulator's truth, row by row
    journal = _journal(pg_server, "frozen", "frozen")
    processed = {e.reference_id for e in entries if e.processed}
    assert len(journal) == n
    wrong = {ref: status for ref, (_, status) in journal.items()
             if (status == "cancelled") != (ref in processed)}  # fmt: skip
    assert wrong == {}, list(wrong.items())[:5]
    report = read_report(tmp_path / "report.csv")
    assert {r["status"] for r in report} == {"cancelled"} and len(report) == n
    figures("frozen", rows=n, frozen_s=round(thawed_at - frozen_at, 1), victim_posts=len(by_victim),
            victim_posts_after_freeze=len(after), victim_rows_taken_by_others=len(taken),
            journal_vs_truth_mismatches=len(wrong), victim_exit=results[0][0],
            others_exit=[r[0] for r in results[1:]])  # fmt: skip


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.timeout(240)  # a hang shows as finish()'s message with the worker's stderr, not a dump
def test_a_worker_cut_off_from_postgresql_stops_sending_within_its_lease(
        sim3: ThreadedSimulator, tmp_path: Path, pg_server: PgServer) -> None:
    """Must show: one worker's link to PostgreSQL stops forwarding without closing; it
    stops sending within its lease, the others finish, and numbers POSTed twice are no
    more than the rows it had in flight."""
    n = 2400
    lease = 2.0
    src = write_csv(tmp_path / "in.csv", ["phone"], [[x] for x in numbers(n)])
    proxy = BlackholeProxy(pg_server.host, pg_server.port)
    try:
        direct = pg_server.url("postgres", schema="cutoff", lease=str(lease))
        via = direct.replace(f":{pg_server.port}/", f":{proxy.port}/")
        env = {**ENV, "PGPASSWORD": pg_server.password}
        opts = {"rate": 300, "concurrency": 16, "ack_timeout": 10, "max_outage": 8}
        victim = spawn(fleet_args(sim3, tmp_path, src, via, "cutoff", **opts), env)
        others = [spawn(with_option(fleet_args(sim3, tmp_path, src, direct, "cutoff", **opts),
                                    "--username", user), env) for user in ("agent2", "agent3")]  # fmt: skip
        _wait_for("the victim never got going",
                  lambda: sum(e.user == USER for e in sim3.ledger.entries) > 150)  # fmt: skip
        proxy.cut()
        cut_at = time.time()
        results = finish([victim, *others], timeout=180)
    finally:
        proxy.close()
    code, summary, stderr = results[0]
    assert code == 3 and "unreachable" in summary.get("error", ""), (code, summary, stderr[-1500:])
    assert "internal error" not in stderr
    for code, _, stderr in results[1:]:
        assert code == 0, stderr[-2000:]
    entries = sim3.ledger.entries
    by_victim = [e for e in entries if e.user == USER]
    last = max(e.t_start for e in by_victim)
    assert last <= cut_at + lease, f"the victim sent {last - cut_at:.2f} s after the cut"
    refs = Counter(e.reference_id for e in entries)
    twice = {r for r, k in refs.items() if k > 1}
    # what it had in flight: POSTed by it in its last lease before the cut, at most
    in_flight = {e.reference_id for e in by_victim if e.t_start > cut_at - lease}
    assert twice <= in_flight, sorted(twice - in_flight)[:5]
    assert max(refs.values()) <= 2
    report = read_report(tmp_path / "report.csv")
    assert {r["status"] for r in report} == {"cancelled"} and len(report) == n
    figures("cut-off", rows=n, lease_s=lease, last_post_after_cut_s=round(last - cut_at, 2),
            posted_twice=len(twice), victim_in_flight=len(in_flight), victim_exit=results[0][0],
            others_exit=[r[0] for r in results[1:]])  # fmt: skip


@pytest.mark.subprocess
@pytest.mark.slow
def test_postgresql_restarted_mid_run_three_workers_ride_through(
        sim: ThreadedSimulator, tmp_path: Path, pg_server: PgServer) -> None:
    """Must show: PostgreSQL restarted (down 5 s) mid-run under three workers: all exit 0,
    every row cancelled once in the report."""
    n = 3000
    src = write_csv(tmp_path / "in.csv", ["phone"], [[x] for x in numbers(n)])
    url = pg_server.url("postgres", schema="restart", lease="15")
    env = {**ENV, "PGPASSWORD": pg_server.password}
    args = fleet_args(sim, tmp_path, src, url, "restart", rate=300, concurrency=16, ack_timeout=10,
                      max_outage=60)  # fmt: skip
    procs = [spawn(args, env) for _ in range(3)]
    _wait_for("the job never got going", lambda: len(sim.ledger.entries) > n * 0.3)
    at = len(sim.ledger.entries)
    pg_server.restart(down=5.0)
    results = finish(procs, timeout=180)
    for code, summary, stderr in results:
        assert code == 0, (summary, stderr[-2000:])
        assert "internal error" not in stderr
    assert any("sending held" in stderr for _, _, stderr in results), "no worker noticed the restart"
    rows = read_report(tmp_path / "report.csv")
    assert len(rows) == n and {r["status"] for r in rows} == {"cancelled"}
    refs = Counter(e.reference_id for e in sim.ledger.entries)
    assert set(refs) == {r["reference_id"] for r in rows}
    assert max(refs.values()) == 1, [r for r, k in refs.items() if k > 1][:5]
    figures("restart", rows=n, posted_before_restart=at, down_s=5.0, exits=[r[0] for r in results],
            held_sending=sum("sending held" in r[2] for r in results), cancelled=len(rows),
            max_posts_per_ref=max(refs.values()))  # fmt: skip


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_worker_with_another_rate_is_refused_before_it_sends(
        sim3: ThreadedSimulator, tmp_path: Path, pg_server: PgServer) -> None:
    """Must show: workers started with different --rate: the joiner is refused before it
    sends (exit 2, naming both), and the ledger's 1 s windows never exceed the job's rate
    + 10 %; the job completes."""
    n = 400
    rate = 40
    src = write_csv(tmp_path / "in.csv", ["phone"], [[x] for x in numbers(n)])
    url = pg_server.url("postgres", schema="rates", lease="2")
    env = {**ENV, "PGPASSWORD": pg_server.password}
    first = spawn(fleet_args(sim3, tmp_path, src, url, "rates", rate=rate, concurrency=8), env)
    _wait_for("the first worker never got going", lambda: len(sim3.ledger.entries) > 20)
    for other, user in ((100, "agent2"), (0, "agent3")):
        # a process of its own, as the first worker: a CLI run inside this process would
        # hold the GIL from the simulator's thread, which then reads what was in flight at
        # once (seen: 48 in one second of the server's ledger from a worker that handed over 41)
        [(joined, _, joiner_err)] = finish([spawn(with_option(
            fleet_args(sim3, tmp_path, src, url, "rates", rate=other, concurrency=8),
            "--username", user), env)], timeout=60)  # fmt: skip
        assert joined == 2, joiner_err[-1500:]
        assert f"--rate {rate}/s" in joiner_err
        assert "--rate " + ("100/s" if other else "0 (unlimited)") in joiner_err
        assert not [e for e in sim3.ledger.entries if e.user == user]  # nothing sent
    [(code, summary, stderr)] = finish([first], timeout=120)
    assert code == 0 and summary["cancelled"] == n, stderr[-1500:]
    assert sim3.ledger.peak_rate(1.0) <= rate * 1.1, sim3.ledger.peak_rate(1.0)
    figures("rates", job_rate=rate, joiners="100/s and 0 refused exit 2", peak_1s=sim3.ledger.peak_rate(1.0),
            cancelled=summary["cancelled"], rows=n)  # fmt: skip


@pytest.mark.subprocess
@pytest.mark.slow
def test_two_workers_with_retry_failed_together_make_one_round(
        tmp_path: Path, pg_server: PgServer) -> None:
    """Must show: two workers started with --retry-failed together: one round, each
    failed row re-sent exactly once."""
    n = 200
    phones = numbers(n)
    failing = frozenset(phones[::10])  # 20 rows fail
    sim = make_sim(users=USERS, failing_numbers=failing)
    try:
        src = write_csv(tmp_path / "in.csv", ["phone"], [[x] for x in phones])
        url = pg_server.url("postgres", schema="rounds", lease="2")
        env = {**ENV, "PGPASSWORD": pg_server.password}
        args = fleet_args(sim, tmp_path, src, url, "rounds", rate=0, concurrency=8)
        first = run_cli(args, env=env)
        assert first.exit_code == 1 and first.summary["failed"] == len(failing), first.stderr[-1500:]
        failed_refs = {e.reference_id for e in sim.ledger.entries if e.phone_number in failing}
        assert len(failed_refs) == len(failing)
        before = len(sim.ledger.entries)
        procs = [spawn(with_option([*args, "--retry-failed"], "--username", user), env)
                 for user in ("agent2", "agent3")]  # fmt: skip
        results = finish(procs)
        for code, _summary, stderr in results:
            assert code == 1, stderr[-1500:]  # the same numbers fail again
        again = Counter(e.reference_id for e in sim.ledger.entries[before:])
        assert set(again) == {f"{r}-r1" for r in failed_refs}, sorted(again)[:5]
        assert set(again.values()) == {1}
        rows = read_report(tmp_path / "report.csv")
        assert sorted(r["reference_id"] for r in rows if r["status"] == "failed") == sorted(again)
        figures("retry-failed", failed_rows=len(failing), resent=sum(again.values()),
                distinct_resent=len(again), max_per_row=max(again.values()),
                rounds=len({r.rsplit("-", 1)[-1] for r in again}))  # fmt: skip
    finally:
        sim.stop()


@pytest.mark.subprocess
def test_status_and_report_with_a_read_only_role(sim: ThreadedSimulator, tmp_path: Path, pg_url: str,
                                                 pg_server: PgServer) -> None:
    """Must show: ``status`` and ``report`` work with a role that can only read."""
    src = write_csv(tmp_path / "in.csv", ["phone"], [[x] for x in numbers(10)])
    env = {**ENV, "PGPASSWORD": pg_server.password}
    done = run_cli(fleet_args(sim, tmp_path, src, pg_url, "ro", rate=0), env=env)
    assert done.exit_code == 0, done.stderr
    schema = pg_url.split("schema=")[1]
    with _connect(pg_server) as conn:
        conn.execute("DROP ROLE IF EXISTS reader")
        conn.execute("CREATE ROLE reader LOGIN PASSWORD 'reader-pw'")
        conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO reader")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO reader")
    ro_url = pg_url.replace(f"{pg_server.user}@", "reader@")
    ro = {"PGPASSWORD": "reader-pw"}
    status = run_cli(["status", "--state", ro_url, "--run-id", "ro", "--json"], env=ro)
    assert status.exit_code == 0, status.stderr
    assert json.loads(status.stdout)["counts"]["cancelled"] == 10
    out = tmp_path / "ro.csv"
    report = run_cli(["report", "--state", ro_url, "--run-id", "ro", "--out", str(out)], env=ro)
    assert report.exit_code == 0, report.stderr
    assert [r["status"] for r in read_report(out)] == ["cancelled"] * 10
    figures("read-only", status_exit=status.exit_code, report_exit=report.exit_code, rows=10)
    # the role really cannot write: a worker with it is refused, nothing created
    with _connect(pg_server) as conn:
        tables = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema=%s",
                              [schema]).fetchone()  # fmt: skip
    denied = run_cli(fleet_args(sim, tmp_path, src, ro_url, "ro2", rate=0), env={**ENV, **ro})
    assert denied.exit_code != 0
    with _connect(pg_server) as conn:
        assert conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_schema=%s",
                            [schema]).fetchone() == tables  # fmt: skip
