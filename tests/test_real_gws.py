"""A real GWS, through the CLI against the simulator: what it says on /me/internal, systematic
failure and the breaker, hung requests, the contact-center session's end, DoNotCallRecord
without a calling list."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

from helpers import ENV, Faults, job_args, make_sim, numbers, read_report, run_cli, write_csv


def _csv(tmp: Path, phones: list[str]) -> Path:
    return write_csv(tmp / "in.csv", ["phone_number"], [[p] for p in phones])


def test_errors_told_only_on_me_internal_fail_with_the_servers_text(tmp_path: Path) -> None:
    phones = numbers(12)
    failing = {phones[2], phones[7]}
    sim = make_sim(failure_style="user_event", failing_numbers=frozenset(failing))
    try:
        result = run_cli(job_args(sim.base_url, tmp_path, _csv(tmp_path, phones), rate=0,
                                  ack_timeout=5, html=tmp_path / "evidence.html"), ENV)  # fmt: skip
        assert result.exit_code == 1, result.stderr
        rows = {r["phone_number"]: r for r in read_report(tmp_path / "report.csv")}
        for phone in failing:
            row = rows[phone]
            # not "timed_out: no acknowledgement": the server's own words and number
            assert row["status"] == "failed", row
            assert row["error"] == "GSW_ERROR_NUMBER 103: Record not found", row
            assert sim.ledger.outcome(row["reference_id"]) == "failed"
        assert all(rows[p]["status"] == "cancelled" for p in phones if p not in failing)
        assert result.summary["stats"]["error_events"] == 2
        assert result.summary["stats"]["unmatched_notifications"] == 0
    finally:
        sim.stop()


def test_acks_carry_their_record_handle_into_the_report(tmp_path: Path) -> None:
    phones = numbers(20)
    sim = make_sim()
    try:
        result = run_cli(job_args(sim.base_url, tmp_path, _csv(tmp_path, phones), rate=0,
                                  html=tmp_path / "evidence.html"), ENV)  # fmt: skip
        assert result.exit_code == 0, result.stderr
        rows = read_report(tmp_path / "report.csv")
        handles = {r["phone_number"]: r["record_handle"] for r in rows}
        assert all(h for h in handles.values()), handles
        # the simulator's own handles, one per (list, number): the report holds exactly those
        ledger_handles = sim.simulator._state.record_handles
        assert handles == {p: str(ledger_handles[("CallingList1", p)]) for p in phones}
        page = (tmp_path / "evidence.html").read_text()
        assert 'id="record-handles" data-total="20"' in page
        assert f'<td class="num record-handle">{ledger_handles[("CallingList1", phones[0])]}</td>' in page
        assert result.summary["stats"]["record_handles"] == 20
    finally:
        sim.stop()


def test_unmatched_messages_are_journaled_and_counted(tmp_path: Path) -> None:
    sim = make_sim(faults=Faults(seed=3, foreign_every=5))
    try:
        result = run_cli(job_args(sim.base_url, tmp_path, _csv(tmp_path, numbers(20)), rate=0,
                                  concurrency=1, html=tmp_path / "evidence.html"), ENV)  # fmt: skip
        assert result.exit_code == 0, result.stderr
        published = sum(1 for e in sim.ledger.events if e.kind == "foreign")
        assert published == 8  # two messages after every 5th of 20 requests
        db = sqlite3.connect(tmp_path / "state.sqlite")
        kept = db.execute("SELECT at, channel, note, data FROM unmatched ORDER BY id").fetchall()
        assert len(kept) == published
        assert {c for _, c, _, _ in kept} == {"/me/internal", "/v2/me/outbound"}
        assert all(at > 0 for at, _, _, _ in kept)
        assert any(json.loads(d).get("referenceId") == "foreign-1" for _, _, _, d in kept)
        assert result.summary["stats"]["unmatched_notifications"] == published
        page = (tmp_path / "evidence.html").read_text()
        assert f'id="unmatched" data-total="{published}"' in page
        assert "CampaignStatusChanged" in page
    finally:
        sim.stop()


def test_error_events_for_one_number_under_two_application_ids_are_told_apart(tmp_path: Path) -> None:
    # The same number, campaign and list in flight twice under two application ids: OCS's
    # error event names its GSW_APPLICATION_ID, so each is pinned on its own row (issue 21:
    # before, the event was ambiguous and both rows timed out)
    phone = numbers(1)[0]
    src = write_csv(tmp_path / "in.csv", ["phone_number", "application_id"], [[phone, 134], [phone, 135]])
    sim = make_sim(failure_style="user_event", failing_numbers=frozenset({phone}),
                   faults=Faults(ack_delay=(0.3, 0.3)))  # fmt: skip
    try:
        result = run_cli(job_args(sim.base_url, tmp_path, src, rate=0, ack_timeout=2,
                                  concurrency=2), ENV)  # fmt: skip
        rows = read_report(tmp_path / "report.csv")
        assert [r["status"] for r in rows] == ["failed", "failed"], rows
        db = sqlite3.connect(tmp_path / "state.sqlite")
        notes = [n for (n,) in db.execute("SELECT note FROM unmatched")]
        assert notes == []
        assert result.summary["stats"]["unmatched_notifications"] == 0
    finally:
        sim.stop()


def test_breaker_stops_a_systematic_failure_and_retry_failed_completes_it(tmp_path: Path) -> None:
    phones = numbers(2000)
    src = _csv(tmp_path, phones)
    # statusCode 2 "invalid for current state": the contact-center session is missing
    sim = make_sim(require_cc_session=True)
    try:
        first = run_cli(job_args(sim.base_url, tmp_path, src, rate=200, concurrency=4,
                                 html=tmp_path / "evidence.html"), ENV)  # fmt: skip
        assert first.exit_code == 3, first.stderr
        sent = len(sim.ledger.entries)
        assert 25 <= sent <= 25 + 4, sent  # about 25: those in flight when it tripped, no more
        error = first.summary["error"]
        # keyed on GWS's code (issue 21), not on the wording
        assert "the same error, 'statusCode 2'" in error
        assert f"({first.summary['failed']} rows hit)" in error
        assert first.summary["failed"] == sent
        assert first.summary["pending"] == 2000 - sent
        refs_before = {r["row"]: r["reference_id"] for r in read_report(tmp_path / "report.csv")}

        second = run_cli(job_args(sim.base_url, tmp_path, src, rate=0, concurrency=8,
                                  start_cc_session=True, retry_failed=True), ENV)  # fmt: skip
        assert second.exit_code == 0, second.stderr
        assert second.summary["cancelled"] == 2000
        rows = read_report(tmp_path / "report.csv")
        retried = [r for r in rows if refs_before[r["row"]] != r["reference_id"]]
        # the failed rows went again under a new referenceId; the others kept theirs
        assert len(retried) == sent
        assert all(r["reference_id"] == refs_before[r["row"]] + "-r1" for r in retried)
        assert sim.ledger.refs_with_outcome("cancelled") == {r["reference_id"] for r in rows}
        # every row was sent exactly once while GWS could act on it
        processed = [e.reference_id for e in sim.ledger.entries if e.processed]
        assert len(processed) == len(set(processed)) == 2000
    finally:
        sim.stop()


def test_breaker_off_sends_everything(tmp_path: Path) -> None:
    sim = make_sim(require_cc_session=True)
    try:
        result = run_cli(job_args(sim.base_url, tmp_path, _csv(tmp_path, numbers(40)), rate=0,
                                  breaker=0), ENV)  # fmt: skip
        assert result.exit_code == 1, result.stderr
        assert result.summary["failed"] == 40 == len(sim.ledger.entries)
    finally:
        sim.stop()


def test_hung_requests_every_acked_row_cancelled_in_bounded_time(tmp_path: Path) -> None:
    # 5 % processed and never answered, 2 % never answered (nor processed); the issue asks
    # for --request-timeout 5: 1 s here, the logic is the same and the test 5x shorter.
    phones = numbers(300)
    sim = make_sim(faults=Faults(seed=11, hang_after_rate=0.05, hang_before_rate=0.02))
    try:
        started = time.monotonic()
        result = run_cli(job_args(sim.base_url, tmp_path, _csv(tmp_path, phones), rate=0,
                                  concurrency=8, request_timeout=1, ack_timeout=3,
                                  max_attempts=3), ENV)  # fmt: skip
        elapsed = time.monotonic() - started
        rows = read_report(tmp_path / "report.csv")
        by_ref = {r["reference_id"]: r for r in rows}
        acked = sim.ledger.acknowledged_refs()
        assert acked, "nothing acknowledged"
        assert all(by_ref[ref]["status"] == "cancelled" for ref in acked)
        faults = sim.ledger.faults_seen()
        assert faults.get("hang_after", 0) > 5 and faults.get("hang_before", 0) > 1, faults
        # a hang after processing is settled by its ack: never retried into a second request
        for entry in sim.ledger.entries:
            if entry.fault == "hang_after":
                assert by_ref[entry.reference_id]["status"] == "cancelled"
        not_cancelled = [r for r in rows if r["status"] != "cancelled"]
        for r in not_cancelled:  # only rows whose every attempt hung before processing
            assert r["status"] == "timed_out" and "no HTTP answer" in r["error"], r
            assert {e.fault for e in sim.ledger.requests_for(r["reference_id"])} == {"hang_before"}
        assert result.exit_code == (1 if not_cancelled else 0), result.stderr
        # bounded: 300 rows, 8 senders, a hang costs at most 1 s (+ a short back-off)
        assert elapsed < 60, elapsed
        assert result.summary["stats"]["unanswered"] >= faults["hang_before"]
    finally:
        sim.stop()


def test_unanswered_requests_count_towards_max_outage(tmp_path: Path) -> None:
    sim = make_sim(faults=Faults(hang_before_rate=1.0))
    try:
        started = time.monotonic()
        result = run_cli(job_args(sim.base_url, tmp_path, _csv(tmp_path, numbers(30)), rate=0,
                                  concurrency=2, request_timeout=0.5, max_outage=2,
                                  max_attempts=20), ENV)  # fmt: skip
        assert result.exit_code == 3, result.stderr
        assert "not answering for more than 2 s" in result.summary["error"]
        assert time.monotonic() - started < 20
    finally:
        sim.stop()


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "batch_cancel", *args],
                            env={**os.environ, **ENV}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def test_contact_center_session_ended_on_success_failure_and_sigterm(tmp_path: Path) -> None:
    phones = numbers(30)
    sim = make_sim(require_cc_session=True, failing_numbers=frozenset({phones[0]}))
    try:
        ok = tmp_path / "ok"
        ok.mkdir()
        assert run_cli(job_args(sim.base_url, ok, _csv(ok, phones[1:]), rate=0,
                                start_cc_session=True), ENV).exit_code == 0  # fmt: skip
        assert (sim.ledger.cc_session_starts, sim.ledger.cc_session_ends) == (1, 1)

        bad = tmp_path / "bad"
        bad.mkdir()
        assert run_cli(job_args(sim.base_url, bad, _csv(bad, phones[:5]), rate=0,
                                start_cc_session=True), ENV).exit_code == 1  # fmt: skip
        assert (sim.ledger.cc_session_starts, sim.ledger.cc_session_ends) == (2, 2)

        term = tmp_path / "term"
        term.mkdir()
        proc = _spawn(job_args(sim.base_url, term, _csv(term, numbers(200, start=500)), rate=20,
                               start_cc_session=True))  # fmt: skip
        deadline = time.monotonic() + 30
        while sim.ledger.cc_session_starts < 3 or len(sim.ledger.entries) < 40:
            assert time.monotonic() < deadline, "the job never got going"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 3, err
        assert (sim.ledger.cc_session_starts, sim.ledger.cc_session_ends) == (3, 3)
        # without --start-cc-session nothing is ended (there is nothing to end)
        plain = tmp_path / "plain"
        plain.mkdir()
        sim.set_faults(Faults())
        run_cli(job_args(sim.base_url, plain, _csv(plain, phones[1:3]), rate=0), ENV)
        assert sim.ledger.cc_session_ends == 3
    finally:
        sim.stop()


def test_do_not_call_rows_without_a_calling_list(tmp_path: Path) -> None:
    sim = make_sim()
    try:
        args = job_args(sim.base_url, tmp_path, _csv(tmp_path, numbers(5)), rate=0,
                        operation="DoNotCallRecord")
        i = args.index("--calling-list")
        del args[i:i + 2]
        result = run_cli(args, ENV)
        assert result.exit_code == 0, result.stderr
        assert result.summary["cancelled"] == 5
        assert {e.calling_list for e in sim.ledger.entries} == {None}
        assert {e.operation for e in sim.ledger.entries} == {"DoNotCallRecord"}
    finally:
        sim.stop()


def test_cancel_record_rows_still_need_a_calling_list(tmp_path: Path) -> None:
    args = job_args("http://127.0.0.1:9", tmp_path, _csv(tmp_path, numbers(2)), dry_run=True)
    i = args.index("--calling-list")
    del args[i:i + 2]
    result = run_cli(args, ENV)
    assert result.summary["rejected"] == 2
    assert "missing calling list" in {r["error"] for r in read_report(tmp_path / "report.csv")}.pop()


def test_preflight_canary_reports_the_failure_in_the_runs_words(tmp_path: Path) -> None:
    phone = numbers(1)[0]
    sim = make_sim(require_cc_session=True)
    try:
        pre = run_cli(["preflight", "--base-url", sim.base_url, "--username", "agent",
                       "--application-id", "134", "--campaign", "Campaign1",
                       "--calling-list", "CallingList1", "--canary-number", phone], ENV)  # fmt: skip
        run = run_cli(job_args(sim.base_url, tmp_path, _csv(tmp_path, [phone]), rate=0), ENV)
        [row] = read_report(tmp_path / "report.csv")
        assert row["error"] == "HTTP 400 statusCode 2: Contact center session is not started"
        assert row["error"] in pre.stdout + pre.stderr
        assert run.exit_code == 1
    finally:
        sim.stop()


def test_preflight_canary_hears_an_error_told_only_on_me_internal(tmp_path: Path) -> None:
    phone = numbers(1)[0]
    sim = make_sim(failure_style="user_event", failing_numbers=frozenset({phone}))
    try:
        pre = run_cli(["preflight", "--base-url", sim.base_url, "--username", "agent",
                       "--application-id", "134", "--campaign", "Campaign1",
                       "--calling-list", "CallingList1", "--canary-number", phone,
                       "--ack-timeout", "5"], ENV)  # fmt: skip
        assert pre.exit_code != 0
        assert "GSW_ERROR_NUMBER 103: Record not found" in pre.stdout + pre.stderr
    finally:
        sim.stop()


def test_503_on_every_request_for_5_s_is_one_shared_pause_not_a_storm(tmp_path: Path) -> None:
    sim = make_sim()
    window: dict[str, float] = {}

    def storm() -> None:
        while len(sim.ledger.entries) < 300:
            time.sleep(0.005)
        sim.set_faults(Faults(http_503_rate=1.0))
        window["start"] = time.time()
        time.sleep(5.0)
        sim.set_faults(Faults())
        window["end"] = time.time()

    switcher = threading.Thread(target=storm)
    switcher.start()
    try:
        result = run_cli(job_args(sim.base_url, tmp_path, _csv(tmp_path, numbers(1400)), rate=200,
                                  concurrency=8, max_attempts=10), ENV)  # fmt: skip
        switcher.join()
        assert result.exit_code == 0, result.stderr
        inside = [e for e in sim.ledger.entries if window["start"] <= e.t_start <= window["end"]]
        refused = [e for e in inside if e.http_status == 503]
        # at 200/s the window would have held 1,000 requests; it holds a handful
        starts = [round(e.t_start - window["start"], 3) for e in inside]
        print(f"requests in the 5 s of 503s: {len(inside)} ({len(refused)} refused): {starts}")
        # Five failures reveal the cluster and everyone pauses; then one probe at a time. A
        # probe's 503 that comes when the earlier failures have aged out of the cluster's
        # 2 s window is a lone one, so the 8 senders go once more and cluster again: with
        # pauses from 0.5 s doubling, at most three such rounds fit in 5 s (a loaded box
        # stretches the pauses into more of them: 18 requests were seen under CI's load,
        # 10-13 on a quiet box). A storm would be 1,000 requests.
        assert len(inside) <= 5 + 3 * 8, starts
        # and never more than the senders at once: no request waits out a pause to rush
        assert max(sum(1 for t in starts if s <= t < s + 0.05) for s in starts) <= 8, starts
        stats = result.summary["stats"]
        assert stats["throttle_pauses"] >= 1 and stats["probes"] >= 1
        assert result.summary["cancelled"] == 1400
    finally:
        switcher.join()
        sim.stop()
