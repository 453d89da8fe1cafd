"""Configuration errors a retry cannot fix exit 2 before anything is sent; a proxy's 5xx page at
login is waited out within --max-outage."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import ENV, PASSWORD, USER, job_args, make_sim, numbers, read_report, run_cli, write_csv

from batch_cancel.simulator import ThreadedSimulator


def _input(tmp: Path, n: int = 3) -> Path:
    return write_csv(tmp / "in.csv", ["phone_number"], [[x] for x in numbers(n)])


@pytest.mark.parametrize("status", [200, 401, 404])
def test_login_answered_by_an_html_page_exits_2(sim: ThreadedSimulator, tmp_path: Path, status: int) -> None:
    sim.serve_login_page(status)
    result = run_cli(job_args(sim.base_url, tmp_path, _input(tmp_path)), ENV)
    assert result.exit_code == 2, result.stderr
    expected = f"the server at {sim.base_url} answered text/html, not the GWS API (status {status})"
    assert expected in result.stderr and result.summary["error"].endswith(expected)
    assert result.summary["exit_code"] == 2 and result.summary["pending"] == 3
    assert sim.ledger.entries == [] and sim.ledger.login_count == 0 and sim.ledger.login_page_count == 1


def test_a_502_page_at_login_is_retried_within_max_outage(sim: ThreadedSimulator, tmp_path: Path) -> None:
    # the page stays until the run has met it twice (a window of fixed length could pass
    # while a loaded machine still starts the CLI)
    sim.serve_login_page(502)

    def gws_back_after_two_pages() -> None:
        deadline = time.monotonic() + 60
        while sim.ledger.login_page_count < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        sim.serve_login_page(502, seconds=0)

    watcher = threading.Thread(target=gws_back_after_two_pages)
    watcher.start()
    result = run_cli(job_args(sim.base_url, tmp_path, _input(tmp_path), max_outage=20), ENV)
    watcher.join()
    assert result.exit_code == 0, result.stderr
    assert "answered text/html, not the GWS API (status 502)" in result.stderr  # said while waiting
    assert sim.ledger.login_page_count >= 2 and result.summary["cancelled"] == 3


def test_a_502_page_past_max_outage_exits_3_saying_why(sim: ThreadedSimulator, tmp_path: Path) -> None:
    sim.serve_login_page(502)
    started = time.monotonic()
    result = run_cli(job_args(sim.base_url, tmp_path, _input(tmp_path), max_outage=1.5), ENV)
    assert result.exit_code == 3, result.stderr
    assert time.monotonic() - started < 10
    assert "status 502" in result.summary["error"] and result.summary["exit_code"] == 3
    assert sim.ledger.entries == [] and sim.ledger.login_count == 0


@pytest.mark.parametrize("flag", ["--base-url", "--cometd-url"])
def test_credentials_in_the_url_exit_2_without_repeating_them(sim: ThreadedSimulator, tmp_path: Path,
                                                              flag: str) -> None:  # fmt: skip
    with_creds = sim.base_url.replace("http://", f"http://{USER}:{PASSWORD}@")
    args = job_args(sim.base_url, tmp_path, _input(tmp_path))
    if flag == "--base-url":
        args[args.index("--base-url") + 1] = with_creds
    else:
        args += ["--cometd-url", with_creds + "/api/v2/notifications"]
    result = run_cli(args, ENV)
    assert result.exit_code == 2, result.stderr
    assert "GWS_USERNAME" in result.stderr and "GWS_PASSWORD" in result.stderr
    assert PASSWORD not in result.stderr + result.stdout
    assert sim.ledger.entries == [] and sim.ledger.login_count == 0
    assert not (tmp_path / "state.sqlite").exists()


def test_preflight_names_the_html_page_and_exits_2(sim: ThreadedSimulator, tmp_path: Path) -> None:
    sim.serve_login_page(200)
    base = ["--base-url", sim.base_url, "--username", USER]
    alone = run_cli(["preflight", *base], ENV)
    assert alone.exit_code == 2, alone.stderr
    assert "answered text/html, not the GWS API (status 200)" in alone.stderr
    within = run_cli([*job_args(sim.base_url, tmp_path, _input(tmp_path)), "--preflight"], ENV)
    assert within.exit_code == 2 and within.summary["exit_code"] == 2
    assert "preflight failed at login" in within.summary["error"]
    assert sim.ledger.entries == []


def _after_requests(sim: ThreadedSimulator, count: int, act: Callable[[], object]) -> threading.Thread:
    """A thread that does ``act`` once the simulator has seen ``count`` requests (or 20 s passed)."""

    def watch() -> None:
        deadline = time.monotonic() + 20
        while len(sim.ledger.entries) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        act()

    watcher = threading.Thread(target=watch)
    watcher.start()
    return watcher


def test_a_relogin_met_by_an_html_page_mid_run_stops_with_2_and_a_true_summary(tmp_path: Path) -> None:
    sim = make_sim()
    try:
        src = _input(tmp_path, 30)

        def proxy_takes_over() -> None:
            sim.serve_login_page(200)
            sim.expire_all_sessions()

        watcher = _after_requests(sim, 8, proxy_takes_over)
        result = run_cli(job_args(sim.base_url, tmp_path, src, rate=15, concurrency=2), ENV)
        watcher.join()
    finally:
        sim.stop()
    assert result.exit_code == 2, result.stderr
    assert "Traceback" not in result.stderr
    summary = result.summary
    assert summary["exit_code"] == 2
    assert "answered text/html, not the GWS API (status 200)" in summary["error"]
    assert summary["cancelled"] >= 1 and summary["pending"] >= 1 and summary["total"] == 30
    rows = read_report(tmp_path / "report.csv")
    assert len(rows) == 30 and sum(r["status"] == "cancelled" for r in rows) == summary["cancelled"]


def test_posts_answered_by_a_gateways_html_page_are_not_taken_as_accepted(tmp_path: Path) -> None:
    # an SSO gateway in front of GWS that no longer knows the client answers every request
    # with its login page, HTTP 200: GWS never saw those POSTs, so none may count as accepted
    sim = make_sim()
    try:
        src = _input(tmp_path, 30)

        watcher = _after_requests(sim, 8, lambda: sim.serve_login_page(200, everywhere=True))
        result = run_cli(job_args(sim.base_url, tmp_path, src, rate=15, concurrency=2, ack_timeout=3), ENV)
        watcher.join()
    finally:
        sim.stop()
    assert result.exit_code == 2, result.stderr
    summary = result.summary
    assert "answered text/html, not the GWS API (status 200)" in summary["error"], summary
    processed = {e.reference_id for e in sim.ledger.entries if e.processed}
    rows = read_report(tmp_path / "report.csv")
    assert len(rows) == 30
    # what GWS processed is cancelled; every other row is pending (a resume sends it), none
    # timed out or failed on the strength of a page that was not GWS speaking
    assert {r["reference_id"] for r in rows if r["status"] == "cancelled"} == processed
    assert summary["cancelled"] == len(processed) and summary["pending"] == 30 - len(processed)
    assert summary["timed_out"] == summary["failed"] == 0
