"""batch-cancel preflight against the simulator: healthy, bad password, CometD away, canary."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import ENV, USER, make_sim, numbers, run_cli, write_csv

from batch_cancel.simulator import ThreadedSimulator


def _args(base_url: str, *extra: str) -> list[str]:
    return ["preflight", "--base-url", base_url, "--username", USER, *extra]


def test_healthy_with_eta(sim: ThreadedSimulator, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(120)])
    result = run_cli(_args(sim.base_url, str(src), "--rate", "2"), ENV)
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["ready"] is True
    assert [s["name"] for s in out["steps"]] == ["input", "network", "login", "csrf", "devices", "cometd"]
    assert "120 row(s)" in result.stderr and "1m00s at 2/s" in result.stderr
    assert sim.ledger.entries == []  # nothing cancelled without a canary
    assert sim.ledger.subscribe_count >= 1


def test_bad_password_fails_at_login(sim: ThreadedSimulator) -> None:
    result = run_cli(_args(sim.base_url), {"GWS_PASSWORD": "nope"})
    assert result.exit_code == 3
    assert json.loads(result.stdout.strip().splitlines()[-1])["failed_step"] == "login"
    assert "FAIL login" in result.stderr


def test_cometd_unavailable_fails_at_cometd(sim: ThreadedSimulator) -> None:
    sim.pause_cometd(60)
    result = run_cli(_args(sim.base_url, "--ack-timeout", "3"), ENV)
    assert result.exit_code == 3
    assert json.loads(result.stdout.strip().splitlines()[-1])["failed_step"] == "cometd"


def test_canary_is_acknowledged_or_reported(tmp_path: Path) -> None:
    good, bad = numbers(2)
    sim = make_sim(failing_numbers=frozenset({bad}))
    try:
        base = ["--application-id", "134", "--campaign", "Campaign1", "--calling-list", "CallingList1"]
        ok = run_cli(_args(sim.base_url, "--canary-number", good, *base), ENV)
        assert ok.exit_code == 0, ok.stderr
        assert "ok   canary" in ok.stderr
        failed = run_cli(_args(sim.base_url, "--canary-number", bad, *base, "--ack-timeout", "3"), ENV)
        assert failed.exit_code == 3
        assert "Record not found" in failed.stderr
        assert [e.phone_number for e in sim.ledger.entries] == [good, bad]
    finally:
        sim.stop()


def test_canary_needs_its_defaults(sim: ThreadedSimulator) -> None:
    result = run_cli(_args(sim.base_url, "--canary-number", "2125550100"), ENV)
    assert result.exit_code == 3 and "--campaign" in result.stderr


def test_bad_input_is_a_usage_error(sim: ThreadedSimulator, tmp_path: Path) -> None:
    result = run_cli(_args(sim.base_url, str(tmp_path / "missing.csv")), ENV)
    assert result.exit_code == 2


def test_help_has_an_example() -> None:
    result = run_cli(["preflight", "--help"])
    assert result.exit_code == 0 and "--canary-number 4100180988" in result.stdout


def test_run_with_preflight_checks_first(sim: ThreadedSimulator, tmp_path: Path) -> None:
    from helpers import job_args

    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(3)])
    ok = run_cli(job_args(sim.base_url, tmp_path, src, preflight=True), ENV)
    assert ok.exit_code == 0, ok.stderr
    assert "preflight cometd: ok" in ok.stderr and ok.summary["cancelled"] == 3
    sim.pause_cometd(60)
    other = tmp_path / "second"
    other.mkdir()
    failed = run_cli(job_args(sim.base_url, other, src, preflight=True, ack_timeout=3), ENV)
    assert failed.exit_code == 3
    assert "preflight failed at cometd" in failed.stderr
    assert failed.summary["exit_code"] == 3
    assert len(sim.ledger.entries) == 3  # nothing more was sent
