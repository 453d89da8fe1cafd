"""NaN, infinities and out-of-range numbers are refused (exit 2, nothing sent) wherever they come from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import ENV, job_args, numbers, run_cli, write_csv

from batch_cancel.config import Credentials, GwsConfig, RunConfig
from batch_cancel.exceptions import ConfigError
from batch_cancel.simulator import ThreadedSimulator

BAD = [("--rate", "nan"), ("--rate", "-1"), ("--rate", "inf"), ("--ack-timeout", "nan"),
       ("--ack-timeout", "0"), ("--ack-timeout", "1e400"), ("--max-outage", "nan"),
       ("--max-outage", "-inf"), ("--grace", "NaN"), ("--grace", "1e9")]  # fmt: skip


@pytest.mark.parametrize(("flag", "value"), BAD)
def test_flag_refused_before_anything_is_sent(sim: ThreadedSimulator, tmp_path: Path, flag: str,
                                              value: str) -> None:  # fmt: skip
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(2)])
    result = run_cli([*job_args(sim.base_url, tmp_path, src), flag, value], ENV)
    assert result.exit_code == 2, result.stderr
    assert flag in result.summary["error"] and result.summary["exit_code"] == 2
    assert sim.ledger.entries == [] and sim.ledger.login_count == 0
    assert not (tmp_path / "state.sqlite").exists()


@pytest.mark.parametrize("line", ["rate = nan", "ack_timeout = inf", "max_outage = -inf",
                                  "grace = nan", "rate = -3.0"])  # fmt: skip
def test_job_file_values_refused_by_run_and_validate_job(sim: ThreadedSimulator, tmp_path: Path,
                                                         line: str) -> None:  # fmt: skip
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(2)])
    job = tmp_path / "job.toml"
    job.write_text(f'{line}\ncampaign = "C"\ncalling_list = "L"\napplication_id = 1\n')
    result = run_cli(["run", "--job", str(job), str(src), "--base-url", sim.base_url,
                      "--username", "agent", "--state", str(tmp_path / "s.sqlite")], ENV)  # fmt: skip
    assert result.exit_code == 2, result.stderr
    assert line.split(" ")[0] in result.stderr and result.summary["exit_code"] == 2
    assert sim.ledger.entries == [] and not (tmp_path / "s.sqlite").exists()
    checked = run_cli(["validate-job", str(job), str(src)])
    assert checked.exit_code == 2 and line.split(" ")[0] in checked.stderr


def test_good_numbers_still_pass(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(2)])
    job = tmp_path / "job.toml"
    job.write_text('rate = 5\nack_timeout = 2.5\ncampaign = "C"\ncalling_list = "L"\n')
    assert json.loads(run_cli(["validate-job", str(job), str(src)]).stdout)["valid"] is True
    result = run_cli(["run", str(src), "--dry-run", "--rate", "0", "--grace", "0", "--campaign", "C",
                      "--calling-list", "L", "--application-id", "1",
                      "--max-outage", "0.5", "--state", str(tmp_path / "s.sqlite"),
                      "--report", str(tmp_path / "r.csv")])  # fmt: skip
    assert result.exit_code == 0, result.stderr


@pytest.mark.parametrize("kwargs", [{"rate": float("nan")}, {"ack_timeout": float("inf")},
                                    {"max_outage": float("nan")}, {"grace": -0.5},
                                    {"concurrency": 0}, {"max_attempts": 2.5},
                                    {"wait_lock": float("nan")}])  # fmt: skip
def test_library_callers_meet_the_same_bounds(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        RunConfig(inputs=(Path("x.csv"),), **kwargs)  # type: ignore[arg-type]


def test_gws_request_timeout_must_be_finite() -> None:
    with pytest.raises(ConfigError):
        GwsConfig("http://x", Credentials("u", "p"), request_timeout=float("nan"))


ENV_BAD = [("BATCH_CANCEL_RATE", "nan"), ("BATCH_CANCEL_ACK_TIMEOUT", "inf"),
           ("BATCH_CANCEL_MAX_OUTAGE", "-inf"), ("BATCH_CANCEL_GRACE", "NaN"),
           ("BATCH_CANCEL_WAIT_LOCK", "nan")]  # fmt: skip


@pytest.mark.parametrize(("name", "value"), ENV_BAD)
def test_environment_values_refused(sim: ThreadedSimulator, tmp_path: Path, name: str, value: str) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(2)])
    result = run_cli(job_args(sim.base_url, tmp_path, src), {**ENV, name: value})
    assert result.exit_code == 2, result.stderr
    assert "finite" in result.summary["error"] and result.summary["exit_code"] == 2
    assert sim.ledger.entries == [] and sim.ledger.login_count == 0
