"""Job files: precedence (file < env < flag), refusals, relative paths, validate-job."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from helpers import PASSWORD, USER, numbers, read_report, run_cli, write_csv

from batch_cancel.cli.run import run
from batch_cancel.simulator import ThreadedSimulator

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "jobs"
SAMPLE = ROOT / "sample_data" / "numbers.csv"
GWS_ENV = ("GWS_BASE_URL", "GWS_USERNAME", "GWS_PASSWORD", "JOB_USER", "JOB_URL", "JOB_PW")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # a developer's own GWS_* variables must not decide these tests
    for name in GWS_ENV:
        monkeypatch.delenv(name, raising=False)
    yield


def job(tmp: Path, text: str, name: str = "job.toml") -> Path:
    path = tmp / name
    path.write_text(text, encoding="utf-8")
    return path


def params(*args: str) -> dict[str, Any]:
    """What `run` would receive for these arguments (parsing only, nothing runs)."""
    with run.make_context("run", list(args)) as ctx:
        return dict(ctx.params)


def one_line_error(result: Any) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return str(lines[0])


# --- precedence ---


def test_file_value_then_env_then_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = job(tmp_path, 'base_url = "http://file.example"\nrate = 3\ninputs = ["in.csv"]\n')
    assert params("--job", str(f))["base_url"] == "http://file.example"
    monkeypatch.setenv("GWS_BASE_URL", "http://env.example")
    assert params("--job", str(f))["base_url"] == "http://env.example"
    got = params("--job", str(f), "--base-url", "http://flag.example")
    assert got["base_url"] == "http://flag.example"
    # rate has no variable: the flag beats the file, the file beats the default
    assert params("--job", str(f))["rate"] == 3.0
    assert params("--job", str(f), "--rate", "7")["rate"] == 7.0
    assert params("in.csv")["rate"] != 3.0


def test_option_order_does_not_matter(tmp_path: Path) -> None:
    f = job(tmp_path, "rate = 3\n")
    assert params("x.csv", "--rate", "9", "--job", str(f))["rate"] == 9.0
    assert params("--rate", "9", "x.csv", "--job", str(f))["rate"] == 9.0


def test_username_env_is_file_level(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = job(tmp_path, 'username_env = "JOB_USER"\n')
    monkeypatch.setenv("JOB_USER", "from_job_var")
    assert params("--job", str(f), "x.csv")["username"] == "from_job_var"
    monkeypatch.setenv("GWS_USERNAME", "from_gws_env")
    assert params("--job", str(f), "x.csv")["username"] == "from_gws_env"
    assert params("--job", str(f), "x.csv", "--username", "flag")["username"] == "flag"


def test_paths_are_relative_to_the_job_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sub = tmp_path / "jobs"
    sub.mkdir()
    job(sub, 'inputs = ["../data/a.csv", "/abs/b.csv"]\nreport = "out/r.jsonl"\nstate = "s.sqlite"\n')
    monkeypatch.chdir(tmp_path / "jobs")
    got = params("--job", "job.toml")
    assert got["inputs"] == (sub.resolve() / "../data/a.csv", Path("/abs/b.csv"))
    assert got["report"] == sub.resolve() / "out/r.jsonl"
    assert Path(got["state"]) == sub.resolve() / "s.sqlite"  # a path or a URL: a string
    # INPUT on the command line replaces the file's list (flags win), relative to the cwd
    assert params("--job", "job.toml", "today.csv")["inputs"] == (Path("today.csv"),)


def test_a_postgresql_state_url_in_a_job_file_is_kept_as_it_is(tmp_path: Path) -> None:
    url = "postgresql://batch@db.example.com:5432/ops?schema=s1"
    f = job(tmp_path, f'state = "{url}"\n')
    assert params("--job", str(f), "x.csv")["state"] == url


def test_keys_may_use_dashes_and_flags_take_booleans(tmp_path: Path) -> None:
    f = job(tmp_path, "ack-timeout = 5\ndry_run = true\nshard = \"1/4\"\nverbose = 2\n")
    got = params("--job", str(f), "x.csv")
    assert got["ack_timeout"] == 5.0 and got["dry_run"] is True
    assert got["shard"] == (1, 4) and got["verbose"] == 2


# --- refusals: one line, exit 2 ---


@pytest.mark.parametrize("key", ["password", "GWS_PASSWORD", "api_token", "token", "client_secret",
                                 "secret", "passwd"])  # fmt: skip
def test_secrets_are_refused(tmp_path: Path, key: str) -> None:
    f = job(tmp_path, f'{key} = "hunter2-{key}"\ncampaign = "C"\n')
    result = run_cli(["run", "--job", str(f), "--dry-run", str(SAMPLE)])
    assert result.exit_code == 2
    line = one_line_error(result)
    assert "secret" in line and "password_env" in line and repr(key) in line
    assert "hunter2" not in result.stderr + result.stdout  # the secret itself is never echoed


def test_credentials_in_the_url_are_refused(tmp_path: Path) -> None:
    f = job(tmp_path, 'base_url = "https://svc:hunter2@gws.example.com"\n')
    result = run_cli(["run", "--job", str(f), str(SAMPLE), "--dry-run"])
    assert result.exit_code == 2
    assert "credentials" in one_line_error(result) and "hunter2" not in result.stderr


@pytest.mark.parametrize(("text", "expected"), [
    ("rat = 5\n", "unknown key 'rat' (did you mean 'rate'?)"),
    ("[gws]\nbase_url = 'x'\n", "[gws] is a table"),
    ("rate = 'fast'\n", "rate must be a number, not a string"),
    ("rate = true\n", "rate must be a number, not true/false"),
    ("dry_run = 'yes'\n", "dry_run must be true or false"),
    ("concurrency = 2.5\n", "concurrency must be a whole number"),
    ("operation = 'Delete'\n", "operation = 'Delete'"),
    ("shard = '3/2'\n", "need 0 <= I < N"),
    ("inputs = [1, 2]\n", "inputs must be a list of strings"),
    ("rate = \n", "not valid TOML"),
    ("username = 'a'\nusername_env = 'B'\n", "both username and username_env"),
    ("password_env = 'not a name'\n", "must name an environment variable"),
    ("rate = 1\nrate-x = 2\n", "unknown key 'rate-x'"),
    ("ack_timeout = 1\nack-timeout = 2\n", "are the same key"),
    ("job = 'other.toml'\n", "unknown key 'job'"),
])  # fmt: skip
def test_bad_job_files_exit_2_with_one_line(tmp_path: Path, text: str, expected: str) -> None:
    f = job(tmp_path, text)
    result = run_cli(["run", "--job", str(f), str(SAMPLE), "--dry-run"])
    assert result.exit_code == 2, result.stderr
    line = one_line_error(result)
    assert line.startswith("batch-cancel: error: job file ") and expected in line, line


def test_missing_job_file(tmp_path: Path) -> None:
    result = run_cli(["run", "--job", str(tmp_path / "nope.toml"), str(SAMPLE)])
    assert result.exit_code == 2 and "does not exist" in one_line_error(result)


def test_run_id_is_validated(tmp_path: Path) -> None:
    result = run_cli(["run", str(SAMPLE), "--dry-run", "--run-id", "no/slashes"])
    assert result.exit_code == 2 and "--run-id" in result.stderr
    f = job(tmp_path, 'run_id = "has space"\n')
    result = run_cli(["run", "--job", str(f), str(SAMPLE), "--dry-run"])
    assert result.exit_code == 2 and "run_id" in one_line_error(result)


# --- the job file drives a real run ---


def test_run_from_a_job_file_against_the_simulator(sim: ThreadedSimulator, tmp_path: Path) -> None:
    write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(6)])
    f = job(tmp_path, f"""
base_url_env = "JOB_URL"
username = "{USER}"
password_env = "JOB_PW"
inputs = ["in.csv"]
application_id = 134
campaign = "Campaign1"
calling_list = "CallingList1"
rate = 0
run_id = "jobfile-e2e"
state = "state/run.sqlite"
report = "reports/run.jsonl"
""")
    env = {"JOB_URL": sim.base_url, "JOB_PW": PASSWORD}
    result = run_cli(["run", "--job", str(f), "-q"], env)
    assert result.exit_code == 0, result.stderr
    assert result.summary["cancelled"] == 6 and result.summary["run_id"] == "jobfile-e2e"
    rows = read_report(tmp_path / "reports" / "run.jsonl")
    assert [r["reference_id"] for r in rows] == [f"bc-jobfile-e2e-{i}" for i in range(1, 7)]
    assert len(sim.ledger.entries) == 6
    assert PASSWORD not in result.stderr + result.stdout


def test_unset_variable_named_by_the_job_is_a_clear_error(sim: ThreadedSimulator, tmp_path: Path) -> None:
    f = job(tmp_path, f'base_url = "{sim.base_url}"\nusername = "{USER}"\npassword_env = "JOB_PW"\n'
                      'application_id = 1\ncampaign = "C"\ncalling_list = "L"\n')  # fmt: skip
    result = run_cli(["run", "--job", str(f), str(SAMPLE), "--state", str(tmp_path / "s.sqlite")])
    assert result.exit_code == 2
    assert "password_env names JOB_PW, which is not set" in one_line_error(result)
    # GWS_PASSWORD outranks the file's variable, as the environment outranks the file
    result = run_cli(["run", "--job", str(f), str(SAMPLE), "--state", str(tmp_path / "s.sqlite"),
                      "--report", str(tmp_path / "r.csv"), "-q"], {"GWS_PASSWORD": PASSWORD})  # fmt: skip
    assert result.exit_code == 1, result.stderr  # the sample has rejected rows on purpose
    assert result.summary["cancelled"] == 15  # the UK number is refused in a US list


def test_wrong_password_from_the_named_variable_is_refused(sim: ThreadedSimulator, tmp_path: Path) -> None:
    f = job(tmp_path, f'base_url = "{sim.base_url}"\nusername = "{USER}"\npassword_env = "JOB_PW"\n'
                      'application_id = 1\ncampaign = "C"\ncalling_list = "L"\n')  # fmt: skip
    args = ["run", "--job", str(f), str(SAMPLE), "--state", str(tmp_path / "s.sqlite"),
            "--report", str(tmp_path / "r.csv")]  # fmt: skip
    result = run_cli(args, {"JOB_PW": "wrong"})
    assert result.exit_code == 3 and sim.ledger.entries == []  # log-in refused: nothing sent


# --- validate-job ---


@pytest.mark.parametrize("name", ["adhoc_compliance.toml", "nightly_dnc_scrub.toml"])
def test_shipped_job_files_validate(name: str, tmp_path: Path) -> None:
    # a copy, so the relative paths in it resolve inside tmp_path, not in the repository
    (tmp_path / "jobs").mkdir()
    shutil.copy(JOBS / name, tmp_path / "jobs" / name)
    shutil.copytree(ROOT / "sample_data", tmp_path / "sample_data")
    f = tmp_path / "jobs" / name
    result = run_cli(["validate-job", str(f), str(SAMPLE)])
    assert result.exit_code == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["valid"] is True and out["rows"] == 20 and out["would_send"] == 15
    assert out["env"]["password"]  # each names its password variable
    result = run_cli(["validate-job", str(f)])
    assert result.exit_code == 0, result.stderr
    # the file's own journal and report were not touched
    assert not (tmp_path / "state").exists() and not (tmp_path / "reports").exists()


def test_validate_job_fails_on_a_missing_input_and_sends_nothing(sim: ThreadedSimulator,
                                                                  tmp_path: Path) -> None:  # fmt: skip
    f = job(tmp_path, f'base_url = "{sim.base_url}"\nusername = "{USER}"\ninputs = ["gone.csv"]\n'
                      'application_id = 1\ncampaign = "C"\ncalling_list = "L"\n')  # fmt: skip
    result = run_cli(["validate-job", str(f)], {"GWS_PASSWORD": PASSWORD})
    assert result.exit_code == 2
    assert "gone.csv" in result.stderr and "Traceback" not in result.stderr
    write_csv(tmp_path / "gone.csv", ["phone_number"], [[n] for n in numbers(3)])
    result = run_cli(["validate-job", str(f)], {"GWS_PASSWORD": PASSWORD})
    assert result.exit_code == 0, result.stderr
    assert sim.ledger.entries == []


def test_validate_job_reports_bad_keys_and_unparseable_input(tmp_path: Path) -> None:
    result = run_cli(["validate-job", str(job(tmp_path, "colour = 'blue'\n"))])
    assert result.exit_code == 2 and "unknown key 'colour'" in one_line_error(result)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    f = job(tmp_path, 'inputs = ["bad.parquet"]\ncampaign = "C"\n', "j2.toml")
    result = run_cli(["validate-job", str(f)])
    assert result.exit_code == 2 and "bad.parquet" in result.stderr
    f = job(tmp_path, f'inputs = ["{SAMPLE}"]\nreport = "out.xlsx"\n', "j3.toml")
    result = run_cli(["validate-job", str(f)])
    assert result.exit_code == 2 and "unknown format '.xlsx'" in one_line_error(result)


def test_validate_job_require_env(tmp_path: Path) -> None:
    f = job(tmp_path, 'password_env = "JOB_PW"\nusername_env = "JOB_USER"\n')
    result = run_cli(["validate-job", str(f), "--require-env"])
    assert result.exit_code == 2 and "JOB_PW, JOB_USER" in one_line_error(result)
    result = run_cli(["validate-job", str(f), "--require-env"], {"JOB_PW": "x", "JOB_USER": "y"})
    assert result.exit_code == 0, result.stderr


def test_help_shows_the_options_and_examples() -> None:
    result = run_cli(["run", "--help"])
    assert "--job FILE" in result.stdout and "--run-id ID" in result.stdout
    result = run_cli(["validate-job", "--help"])
    assert "batch-cancel validate-job jobs/" in result.stdout and "Exit codes" in result.stdout
    assert isinstance(run, click.Command)
