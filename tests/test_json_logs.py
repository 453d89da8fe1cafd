"""--log-format json: every stderr line of a run is one JSON object a log shipper can read."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from helpers import ENV, PASSWORD, Faults, job_args, make_sim, numbers, run_cli, write_csv

from batch_cancel.simulator import ThreadedSimulator


def test_a_json_log_run_parses_line_by_line(tmp_path: Path) -> None:
    nums = numbers(12)
    sim = make_sim(faults=Faults(seed=3, http_429_rate=0.3, retry_after=0.05))
    try:
        src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in nums] + [["12345"]])
        result = run_cli([*job_args(sim.base_url, tmp_path, src, rate=0), "--log-format", "json"], ENV)
    finally:
        sim.stop()
    assert result.exit_code == 1, result.stderr  # the unparseable row is rejected
    summary = result.summary
    lines = result.stderr.splitlines()
    assert lines, "a run logs something"
    records = [json.loads(line) for line in lines]  # every line, or this raises
    for r in records:
        assert {"time", "level", "event", "run_id", "message"} <= r.keys(), r
        assert r["time"].endswith("+00:00") and r["level"] in ("debug", "info", "warning", "error")
    # the lines of the sending phase and the summary carry the run id
    assert {r["run_id"] for r in records if r["logger"] != "batch_cancel.plan.planner"} == {
        summary["run_id"]}  # fmt: skip
    final = next(r for r in records if r["event"] == "summary")
    for key in ("total", "cancelled", "failed", "timed_out", "rejected", "duplicate", "pending"):
        assert final[key] == summary[key], key
    progress = [r for r in records if r["event"] == "progress"]
    assert progress and progress[-1]["done"] == 12 and progress[-1]["total"] == 12
    throttled = [r for r in records if r["event"].startswith("throttled-429")]
    assert throttled and throttled[0]["count"] >= 1  # the figures of that event
    rejected = [r for r in records if r["event"] == "rejected_rows"]
    assert rejected and "12345" not in rejected[0]["message"]
    # phone numbers masked as in text, the password nowhere
    for number in nums:
        assert number not in result.stderr
    assert PASSWORD not in result.stderr


def test_an_error_is_a_json_line_too(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[numbers(1)[0]]])
    result = run_cli([*job_args("http://127.0.0.1:9", tmp_path, src, max_outage=1), "--log-format", "json"],
                     ENV)  # fmt: skip
    assert result.exit_code == 3
    records = [json.loads(line) for line in result.stderr.splitlines()]
    error = records[-1]
    assert error["event"] == "error" and error["level"] == "error" and error["exit_code"] == 3
    assert error["message"].startswith("batch-cancel: error: cannot reach GWS")


def test_preflight_and_validate_job_speak_json_too(sim: ThreadedSimulator, tmp_path: Path) -> None:
    from helpers import USER

    result = run_cli(["preflight", "--base-url", sim.base_url, "--username", USER, "--log-format", "json"],
                     ENV)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    steps = [r for r in records if r["event"] == "preflight_step"]
    assert [s["name"] for s in steps] == ["network", "login", "csrf", "devices", "cometd"]
    assert all(s["ok"] is True for s in steps)
    job = tmp_path / "job.toml"
    job.write_text('rate = 3\npassword_env = "NOT_SET_ANYWHERE"\n')
    checked = run_cli(["validate-job", str(job), "--log-format", "json"])
    for line in checked.stderr.splitlines():
        assert json.loads(line)["event"] == "job_note", line


def test_a_progress_line_before_any_request_says_its_eta_is_unknown(caplog: pytest.LogCaptureFixture) -> None:
    from batch_cancel.cli.progress import ProgressView
    from batch_cancel.log_records import JsonFormatter

    view = ProgressView(100, tty=False, every=0.0)
    with caplog.at_level(logging.INFO, logger="batch_cancel.progress"):
        view({})
        view({"requests": 50, "cancelled": 40})
    first, later = caplog.records
    assert first.getMessage().endswith("eta=?"), first.getMessage()  # not "eta=nans"
    assert json.loads(JsonFormatter().format(first))["eta_s"] is None
    assert later.getMessage().split("eta=")[1].rstrip("s").isdigit(), later.getMessage()
    assert isinstance(json.loads(JsonFormatter().format(later))["eta_s"], float)
