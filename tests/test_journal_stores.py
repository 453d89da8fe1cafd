"""The journal's behaviour, the same for both stores: SQLite (a path) and PostgreSQL (a fleet).

Each test here runs once per store (``store`` is parametrised); the PostgreSQL
runs use the real server of conftest.pg_server and skip loudly without one.
Then the PostgreSQL store's own duties: leases, rate shares, planning once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import numbers, write_csv
from pg_server import PgServer

from batch_cancel.config import JobDefaults, RunConfig
from batch_cancel.exceptions import JournalUnavailable, LeaseLost
from batch_cancel.input.files import inspect_inputs
from batch_cancel.job import prepare
from batch_cancel.journal.postgres import PgJournal, parse_state_url
from batch_cancel.journal.rows import RowEvent, RowState, Status
from batch_cancel.journal.store import Journal
from batch_cancel.plan.planner import build_plan
from batch_cancel.report.writers import write_report

AnyJournal = Journal | PgJournal
JOB = JobDefaults(application_id=134, campaign="Campaign1", calling_list="CallingList1")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.subprocess)])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], AnyJournal]]:
    """Opens the journal of a run id in the store under test (a new one per test)."""
    opened: list[AnyJournal] = []
    if request.param == "sqlite":
        def open_(run_id: str) -> AnyJournal:
            opened.append(Journal.open(tmp_path / f"{run_id}.sqlite"))
            return opened[-1]
    else:
        url: str = request.getfixturevalue("pg_url")
        server: PgServer = request.getfixturevalue("pg_server")
        db = parse_state_url(url, server.password)

        def open_(run_id: str) -> AnyJournal:
            opened.append(PgJournal.open(db, run_id))
            return opened[-1]
    yield open_
    for j in opened:
        j.close()


def _input(tmp: Path) -> Path:
    good = numbers(30)
    rows = [[n] for n in good] + [["not a number"], [good[3]], ["123"], [good[7]]]
    return write_csv(tmp / "in.csv", ["phone"], rows)


def _plan(journal: AnyJournal, src: Path, run_id: str) -> dict[str, int]:
    cfg = RunConfig(inputs=(src,), defaults=JOB)
    files = inspect_inputs(cfg.inputs, phone_column=None, encoding="utf-8")
    return dict(build_plan(journal, files, cfg, run_id))


def test_plan_counts_and_report_before_anything_is_sent(opener: Callable[[str], AnyJournal],
                                                        tmp_path: Path) -> None:
    j = opener("r1")
    j.set_meta(run_id="r1", inputs=[])
    counts = _plan(j, _input(tmp_path), "r1")
    assert counts == {"planned": 30, "rejected": 2, "duplicate": 2}
    assert j.counts() == {"planned": 30, "rejected": 2, "duplicate": 2}
    assert j.duplicates_between(1, 100) == [(32, 4), (34, 8)]
    assert [r for r, _, _ in j.first_rejected()] == [31, 33]
    out = write_report(j, tmp_path / "r.csv").read_text()
    assert out.count("\n") == 35 and out.count(",pending,") == 30


def test_counts_before_sending_are_the_planners_own_and_agree_with_a_scan(
        opener: Callable[[str], AnyJournal], tmp_path: Path) -> None:  # fmt: skip
    j = opener("r8")
    j.set_meta(run_id="r8")
    counts = _plan(j, _input(tmp_path), "r8")
    info = j.get_meta("plan_snapshot")
    assert info["counts"] == counts  # sealed with the snapshot, so they go with it
    scan = dict(j._select("SELECT status, COUNT(*) FROM {t}records WHERE {job} GROUP BY status"))
    assert j.counts() == scan == counts
    reader = j.reopen(5.0)()  # another connection (status) reads the same
    try:
        assert reader.counts() == scan and reader.duplicate_of_unsuccessful() == 2
    finally:
        reader.close()
    j.set_meta(plan_snapshot={"ref_prefix": info["ref_prefix"]})  # sealed by an older version
    assert j.counts() == scan and j.duplicate_of_unsuccessful() == 2


def test_state_changes_and_events_then_the_report(opener: Callable[[str], AnyJournal],
                                                   tmp_path: Path) -> None:
    j = opener("r2")
    j.set_meta(run_id="r2")
    _plan(j, _input(tmp_path), "r2")
    to_send = j.to_send(after_row=0, limit=100, retry_timed_out=False)
    assert [r.row for r in to_send] == list(range(1, 31))
    assert to_send[0].reference_id.endswith("-1") and to_send[0].status == "planned"
    assert [r.row for r in j.to_send(after_row=10, limit=5, retry_timed_out=False)] == [11, 12, 13, 14, 15]
    t = 1_790_000_000.0
    states = [("cancelled", 1, 200, 0, "CancelRecordAcknowledge", None, t, t + 0.1, 100.0, None, 1),
              ("failed", 2, 200, 0, None, "no such record", t, t + 0.2, 200.0, None, 4),
              ("sent", 1, None, None, None, None, t, None, None, None, 5),
              ("timed_out", 3, 200, 0, None, None, t, None, None, None, 8)]  # fmt: skip
    events = [(1, t, "sent", 1, None, None, None), (1, t + 0.1, "cancelled", 1, 200, 0, None),
              (4, t + 0.2, "failed", 2, 200, 0, "no such record")]  # fmt: skip
    # the typed shapes the recorder hands the writer, statuses as the StrEnum
    j.save_states([RowState(Status(s[0]), *s[1:]) for s in states], [RowEvent(*e) for e in events])
    assert j.counts() == {"planned": 26, "sent": 1, "cancelled": 1, "failed": 1, "timed_out": 1,
                          "rejected": 2, "duplicate": 2}  # fmt: skip
    assert [e[1] for e in j.events_for(1)] == ["sent", "cancelled"]
    # row 34 repeats row 8, which timed out: a duplicate of an unsuccessful row
    assert j.duplicate_of_unsuccessful() == 2  # 32 -> 4 (failed), 34 -> 8 (timed out)
    left = [r.row for r in j.to_send(after_row=0, limit=100, retry_timed_out=False)]
    assert 1 not in left and 4 not in left and 5 in left and 8 not in left
    assert 8 in [r.row for r in j.to_send(after_row=0, limit=100, retry_timed_out=True)]
    rows = {r["row"]: r for r in j.iter_rows()}
    assert rows[1]["status"] == "cancelled" and rows[1]["latency_ms"] == 100.0
    assert rows[4]["error"] == "no such record"
    # every column of each state as written (SQLite writes a record in flight by a narrower
    # statement): row 5 in flight again, row 4 (failed: its error, ack time, latency go) sent
    # again, and row 6 settled
    later = [RowState(Status.SENT, 2, 200, 0, None, None, t + 1, None, None, 77, 5),
             RowState(Status.SENT, 3, None, None, None, None, t + 2, None, None, None, 4),
             RowState(Status.CANCELLED, 1, 200, 0, "RecordCancelAcknowledge", None, t, t + 0.3, 300.0,
                      88, 6)]  # fmt: skip
    j.save_states(later, [])
    latest = {s.row: s for s in [RowState(Status(s[0]), *s[1:]) for s in states] + later}
    # and an outcome over a state in flight
    j.save_states([later[1]._replace(row=5)], [])
    latest[5] = later[1]._replace(row=5)
    rows = {r["row"]: r for r in j.iter_rows()}
    for state in latest.values():
        assert {k: rows[state.row][k] for k in RowState._fields} == state._asdict(), state


def test_a_retry_round_plans_failed_rows_again_with_a_new_reference(
        opener: Callable[[str], AnyJournal], tmp_path: Path) -> None:  # fmt: skip
    j = opener("r3")
    j.set_meta(run_id="r3")
    _plan(j, _input(tmp_path), "r3")
    t = 1_790_000_000.0
    failed = [RowState(Status.FAILED, 1, 200, 0, None, "no such record", t, t, 1.0, None, row)
              for row in (2, 5)]  # fmt: skip
    j.save_states(failed, [])
    refs = {r["row"]: r["reference_id"] for r in j.iter_rows()}
    again, before = j.start_round(retry_failed=True, retry_timed_out=True, at=t + 10)
    assert again == 2 and before == t + 10
    rows = {r["row"]: r for r in j.iter_rows()}
    assert [rows[n]["reference_id"] for n in (2, 5)] == [refs[2] + "-r1", refs[5] + "-r1"]
    assert {rows[n]["status"] for n in (2, 5)} == {"planned"} and rows[2]["error"] is None
    assert j.events_for(2)[-1][1] == "retry_failed" and refs[2] in j.events_for(2)[-1][5]
    assert j.counts()["planned"] == 30 and "failed" not in j.counts()


def test_meta_and_a_plan_reset(opener: Callable[[str], AnyJournal], tmp_path: Path) -> None:
    j = opener("r4")
    assert j.is_new() and j.get_meta("run_id") is None
    j.set_meta(run_id="r4", inputs=[{"name": "in.csv"}])
    assert not j.is_new() and j.get_meta("inputs") == [{"name": "in.csv"}]
    _plan(j, _input(tmp_path), "r4")
    assert j.snapshot() is not None and sum(j.counts().values()) == 34
    j.reset_plan()
    assert j.counts() == {} and j.snapshot() is None and j.get_meta("run_id") == "r4"


def test_a_report_reads_one_moment_while_another_connection_writes(
        opener: Callable[[str], AnyJournal], tmp_path: Path) -> None:  # fmt: skip
    j = opener("r5")
    j.set_meta(run_id="r5")
    _plan(j, _input(tmp_path), "r5")
    other = j.reopen(5.0)()
    try:
        t = 1_790_000_000.0
        with j.reading():
            assert j.counts().get("cancelled") is None
            first = [r["status"] for r in j.iter_rows()]
            other.save_states([RowState(Status.CANCELLED, 1, 200, 0, "ack", None, t, t, 1.0, None, 1)], [])
            assert j.counts().get("cancelled") is None  # still the moment the read began
            assert [r["status"] for r in j.iter_rows()] == first
        assert j.counts()["cancelled"] == 1
    finally:
        other.close()


@pytest.mark.subprocess  # a PostgreSQL server
def test_both_stores_write_byte_identical_reports(tmp_path: Path, pg_url: str, pg_server: PgServer) -> None:
    """The same plan and the same state changes: the same report, whatever the store."""
    src = _input(tmp_path)
    lite = Journal.open(tmp_path / "j.sqlite")
    pg = PgJournal.open(parse_state_url(pg_url, pg_server.password), "same")
    try:
        for j in (lite, pg):
            j.set_meta(run_id="same")
            _plan(j, src, "same")
        for name in ("a.csv", "a.jsonl"):
            assert (write_report(lite, tmp_path / f"lite-{name}").read_bytes()
                    == write_report(pg, tmp_path / f"pg-{name}").read_bytes())  # fmt: skip
        t = 1_790_000_000.5
        for j in (lite, pg):
            j.save_states([("cancelled", 2, 200, 0, "ack", None, t, t + 1, 1000.0, None, 3)],
                          [(3, t, "cancelled", 2, 200, 0, "é ' \" , x")])  # fmt: skip
        assert (write_report(lite, tmp_path / "lite.csv").read_bytes()
                == write_report(pg, tmp_path / "pg.csv").read_bytes())  # fmt: skip
        assert lite.events_for(3) == pg.events_for(3)
    finally:
        lite.close()
        pg.close()


# -- the PostgreSQL store's own duties --------------------------------------------------------
@pytest.fixture
def pg_job(pg_url: str, pg_server: PgServer, tmp_path: Path) -> Iterator[Callable[[], PgJournal]]:
    """Connections to one planned 30-row job (each call: a connection of its own)."""
    db = parse_state_url(pg_url.replace("?", "?lease=0.5&"), pg_server.password)
    opened: list[PgJournal] = []

    def connect() -> PgJournal:
        opened.append(PgJournal.open(db, "job"))
        return opened[-1]

    first = connect()
    first.set_meta(run_id="job")
    _plan(first, _input(tmp_path), "job")
    yield connect
    for j in opened:
        j.close()


@pytest.mark.subprocess  # a PostgreSQL server
def test_claims_skip_rows_another_worker_holds_and_take_them_when_its_lease_expires(
        pg_job: Callable[[], PgJournal]) -> None:
    a, b = pg_job(), pg_job()
    a.join("A", 0, lambda r: None)
    b.join("B", 0, lambda r: None)
    got_a = [r.row for r in a.claim("A", 10)]
    got_b = [r.row for r in b.claim("B", 10)]
    assert got_a == list(range(1, 11)) and got_b == list(range(11, 21))
    a.heartbeat("A", 0, lambda r: None)  # A renews; B does not
    time.sleep(0.6)  # past B's lease (0.5 s)
    a.heartbeat("A", 0, lambda r: None)
    again = [r.row for r in a.claim("A", 30)]
    assert again == list(range(11, 31))  # B's rows (expired) and the rest; never A's own twice
    # a final outcome gives the lease up; open rows count every row with no outcome
    assert a.save_states([("cancelled", 1, 200, 0, None, None, 1.0, 2.0, 1.0, None, 1)], []) == []
    assert a.open_rows() == 29
    # B, whose rows A took, was marked lost by that claim: it claims nothing more
    assert b.claim("B", 1) == []
    c = pg_job()
    c.join("C", 0, lambda r: None)
    assert a.release("A") == 29 and c.claim("C", 1)[0].row == 1 + 1


@pytest.mark.subprocess  # a PostgreSQL server
def test_concurrent_claims_never_hand_one_row_to_two_workers(pg_job: Callable[[], PgJournal]) -> None:
    workers = [pg_job() for _ in range(4)]
    got: dict[str, list[int]] = {}

    def take(j: PgJournal, name: str) -> None:
        rows: list[int] = []
        while batch := j.claim(name, 2):
            rows += [r.row for r in batch]
        got[name] = rows

    for i, j in enumerate(workers):
        j.join(f"w{i}", 0, lambda r: None)
    threads = [threading.Thread(target=take, args=(j, f"w{i}")) for i, j in enumerate(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = sorted(r for rows in got.values() for r in rows)
    assert everything == list(range(1, 31))  # each planned row once, by exactly one worker


@pytest.mark.subprocess  # a PostgreSQL server
def test_rate_shares_never_add_up_to_more_than_the_jobs_rate(pg_job: Callable[[], PgJournal]) -> None:
    conns = {name: pg_job() for name in "ABC"}
    applied: dict[str, list[float]] = {n: [] for n in conns}

    def beat(name: str) -> float:
        return conns[name].heartbeat(name, 90.0, applied[name].append)

    def declared() -> float:
        return sum(float(w["rate_share"]) for w in conns["A"].workers() if w["state"] == "running")

    assert conns["A"].join("A", 90.0, applied["A"].append) == 90.0
    assert conns["B"].join("B", 90.0, applied["B"].append) == 0.0  # A still holds it all
    assert declared() <= 90.0
    assert beat("A") == 45.0 and beat("B") == 45.0
    assert conns["C"].join("C", 90.0, applied["C"].append) == 0.0
    for name in "ABCABC":
        beat(name)
        assert declared() <= 90.0 + 1e-9
    assert [beat(n) for n in "ABC"] == [30.0, 30.0, 30.0]
    # C goes silent past the lease: A and B, still beating, take its share back
    until = time.monotonic() + 0.7
    while time.monotonic() < until:
        beat("A"), beat("B")
        time.sleep(0.05)
    assert [w["state"] for w in conns["A"].workers() if w["worker"] == "C"] == ["lost"]
    assert beat("A") == 45.0 and beat("B") == 45.0
    # C comes back: it was counted out, so the others' shares leave it nothing at first
    # (it held no rows, so none were taken from it: it may go on)
    assert beat("C") == 0.0 and applied["C"][-1] == 0.0
    assert declared() <= 90.0 + 1e-9
    # the last to leave learns that it is the last
    assert conns["A"].leave("A", "done") is False
    assert conns["C"].leave("C", "done") is False
    assert conns["B"].leave("B", "done") is True


@pytest.mark.subprocess  # a PostgreSQL server
def test_workers_starting_together_plan_the_job_once(pg_url: str, pg_server: PgServer,
                                                     tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone"], [[n] for n in numbers(2000)])
    db = parse_state_url(pg_url, pg_server.password)
    cfg = RunConfig(inputs=(src,), defaults=JOB, state_db=db, run_id="together")
    results: list[Any] = []

    def worker() -> None:
        journal, run_id, _ = prepare(cfg)
        results.append((run_id, journal.counts()))
        journal.close()

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [("together", {"planned": 2000})] * 3
    check = PgJournal.open(db, "together")
    try:
        assert check.get_meta("plan_counts") == {"planned": 2000}
        assert sum(1 for _ in check.iter_rows()) == 2000  # planned once: no row twice
    finally:
        check.close()


@pytest.mark.subprocess  # a PostgreSQL server
def test_a_planner_that_lost_its_lock_stops_and_never_marks_the_plan_done(
        pg_url: str, pg_server: PgServer, tmp_path: Path) -> None:  # fmt: skip
    db = parse_state_url(pg_url, pg_server.password)
    a, b = PgJournal.open(db, "lost"), PgJournal.open(db, "lost")
    try:
        a.set_meta(run_id="lost")
        with a.plan_lock(wait=1.0) as got:
            assert got
            # the lock's connection ends (a proxy, a restart, an administrator)
            b._x("SELECT pg_terminate_backend(%s)", [a._plan_holder])
            with pytest.raises(JournalUnavailable, match="planning lock was lost"):
                _plan(a, _input(tmp_path), "lost")
            with pytest.raises(JournalUnavailable, match="planning lock was lost"):
                a.finish_plan(planned=True)
        assert b.get_meta("planned") is None and b.counts() == {}
        with b.plan_lock(wait=1.0) as got:  # the next worker plans it, from the start
            assert got
            _plan(b, _input(tmp_path), "lost")
            b.finish_plan(planned=True)
        assert b.get_meta("planned") is True and sum(b.counts().values()) == 34
    finally:
        a.close()
        b.close()


def _a_holds(pg_job: Callable[[], PgJournal], n: int) -> tuple[PgJournal, PgJournal, list[int]]:
    """Workers A and B of the job; A has claimed ``n`` rows (answered)."""
    a, b = pg_job(), pg_job()
    a.join("A", 0, lambda r: None)
    b.join("B", 0, lambda r: None)
    return a, b, [r.row for r in a.claim("A", n)]


@pytest.mark.subprocess  # a PostgreSQL server
def test_a_leaving_worker_keeps_rows_awaiting_acks_and_its_events_name_it(
        pg_job: Callable[[], PgJournal]) -> None:  # fmt: skip
    a, b, held = _a_holds(pg_job, 4)
    t = 1_790_000_000.0
    sent = [RowState(Status.SENT, 1, None, None, None, None, t, None, None, None, row) for row in held[:2]]
    assert a.save_states(sent, [RowEvent(row, t, "sent", 1, None, None, None) for row in held[:2]]) == []
    a.leave("A", "done", keep_sent_for=30.0)
    time.sleep(0.6)  # past the lease (0.5 s): only the ack timeout keeps the sent rows
    b.heartbeat("B", 0, lambda r: None)
    taken = [r.row for r in b.claim("B", 30)]
    assert not set(held[:2]) & set(taken)  # awaiting their acks: not POSTed again
    assert set(held[2:]) <= set(taken)  # never sent: back at once
    worker = b._x("SELECT DISTINCT worker FROM {s}.events WHERE run_id='job' AND event='sent'").fetchall()
    assert worker == [("A",)]


@pytest.mark.subprocess  # a PostgreSQL server
def test_a_worker_that_cannot_send_lets_its_rows_leases_run_out_while_it_stays_alive(
        pg_job: Callable[[], PgJournal]) -> None:  # fmt: skip
    a, b, held = _a_holds(pg_job, 5)
    time.sleep(0.3)
    a.heartbeat("A", 0, lambda r: None, renew_rows=False)  # alive, but its rows are not renewed
    b.heartbeat("B", 0, lambda r: None)
    time.sleep(0.3)  # 0.6 s since the claim: past the lease (0.5 s)
    b.heartbeat("B", 0, lambda r: None)
    assert set(held) <= {r.row for r in b.claim("B", 30)}
    with pytest.raises(LeaseLost):  # taking them marked A lost: it stops at its next renewal
        a.heartbeat("A", 0, lambda r: None)
