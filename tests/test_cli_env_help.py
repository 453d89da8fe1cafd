"""Operators' conventions: an environment variable for every `run` option, precedence
flag > environment > job file, `run --help` in sections, shell completion."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from helpers import ENV, job_args, numbers, run_cli, write_csv

from batch_cancel.cli.help_sections import OTHER
from batch_cancel.cli.run import RunCommand, run
from batch_cancel.journal.store import Journal
from batch_cancel.simulator import ThreadedSimulator


def env_name(param: click.Option, ctx: click.Context) -> str | None:
    if param.envvar:
        return param.envvar if isinstance(param.envvar, str) else param.envvar[0]
    if param.allow_from_autoenv and ctx.auto_envvar_prefix and param.name:
        return f"{ctx.auto_envvar_prefix}_{param.name.upper()}"
    return None


def test_every_run_option_has_an_env_var_gws_ones_keep_theirs() -> None:
    ctx = run.make_context("run", ["x.csv"])
    names = {p.name: env_name(p, ctx) for p in run.params if isinstance(p, click.Option)}
    assert names["rate"] == "BATCH_CANCEL_RATE"
    assert names["concurrency"] == "BATCH_CANCEL_CONCURRENCY"
    assert names["dry_run"] == "BATCH_CANCEL_DRY_RUN"
    assert names["base_url"] == "GWS_BASE_URL" and names["username"] == "GWS_USERNAME"
    assert names["ca_bundle"] == "GWS_CA_BUNDLE" and names["proxy"] == "GWS_PROXY"
    # named after the flag an operator types (--preflight, whose parameter is check_first, too)
    for param in run.params:
        if isinstance(param, click.Option) and not names[param.name].startswith("GWS_"):
            flag = max(param.opts, key=len).lstrip("-").replace("-", "_").upper()
            assert names[param.name] == f"BATCH_CANCEL_{flag}", param.opts
    missing = sorted(n for n, env in names.items() if env is None)
    assert missing == [], f"options without an environment variable: {missing}"
    assert len(set(names.values())) == len(names)  # no two options share one


def test_every_option_sits_in_a_section_and_shows_once() -> None:
    ctx = run.make_context("run", ["x.csv"])
    params = run.get_params(ctx)
    unmapped = sorted(str(p.name) for p in params if run.section_of(p) == OTHER)
    assert unmapped == [], f"add these to RunCommand.SECTIONS: {unmapped}"
    assert isinstance(run, RunCommand)
    text = run_cli(["run", "--help"]).stdout
    titles = [line[:-1] for line in text.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert titles == ["Input", "GWS connection", "Record defaults", "Speed", "Outputs", "Resume"]
    rows = [line.strip() for line in text.splitlines() if line.startswith("  -")]
    for param in params:
        if isinstance(param, click.Option):
            shown = [r for r in rows if any(r.split(" ")[0].rstrip(",") == o or r.startswith(o + " ")
                                            or f", {o}" in r.split("  ")[0] for o in param.opts)]  # fmt: skip
            assert len(shown) == 1, (param.opts, shown)
    assert text.count("Precedence: a flag beats the environment, which beats the job file") == 1
    assert "[env var: BATCH_CANCEL_RATE;" in " ".join(text.split())


def configured_rate(tmp_path: Path, args: list[str], env: dict[str, str]) -> float:
    state = tmp_path / "state.sqlite"
    if state.exists():
        state.unlink()
    result = run_cli(["run", *args, "--dry-run", "--state", str(state),
                      "--report", str(tmp_path / "r.csv")], env)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    journal = Journal.open(state)
    try:
        return float(journal.get_meta("config")["rate"])
    finally:
        journal.close()


def test_precedence_flag_beats_environment_beats_job_file(tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(3)])
    job = tmp_path / "job.toml"
    job.write_text('rate = 3\napplication_id = 134\ncampaign = "C1"\ncalling_list = "L1"\n')
    base = [str(src), "--job", str(job)]
    assert configured_rate(tmp_path, base, {}) == 3  # the job file alone
    assert configured_rate(tmp_path, base, {"BATCH_CANCEL_RATE": "5"}) == 5  # env beats the file
    assert configured_rate(tmp_path, [*base, "--rate", "7"], {"BATCH_CANCEL_RATE": "5"}) == 7  # flag wins
    assert configured_rate(tmp_path, [str(src), "--application-id", "1", "--campaign", "C",
                                      "--calling-list", "L"], {"BATCH_CANCEL_RATE": "5"}) == 5  # fmt: skip


def test_batch_cancel_rate_changes_the_rate_of_a_real_run(sim: ThreadedSimulator, tmp_path: Path) -> None:
    src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(6)])
    args = job_args(sim.base_url, tmp_path, src)  # no --rate: the environment decides
    result = run_cli(args, {**ENV, "BATCH_CANCEL_RATE": "5"})
    assert result.exit_code == 0, result.stderr
    stats = result.summary["stats"]
    # 6 POSTs at 5/s are at least 5 intervals of 0.2 s apart: a lower bound, so load cannot fail it
    span = stats["requests"] / stats["achieved_rate"]
    assert stats["requests"] == 6 and span >= 0.9, stats
    assert len(sim.ledger.entries) == 6


@pytest.mark.subprocess
def test_shell_completion_is_clicks_own() -> None:
    exe = Path(sys.executable).with_name("batch-cancel")
    out = subprocess.run([str(exe)], env={**os.environ, "_BATCH_CANCEL_COMPLETE": "bash_source"},
                         capture_output=True, text=True, timeout=30)  # fmt: skip
    assert out.returncode == 0 and "_BATCH_CANCEL_COMPLETE=bash_complete" in out.stdout
    words = subprocess.run([str(exe)], capture_output=True, text=True, timeout=30,
                           env={**os.environ, "_BATCH_CANCEL_COMPLETE": "bash_complete",
                                "COMP_WORDS": "batch-cancel run --ca", "COMP_CWORD": "2"})  # fmt: skip
    assert "--ca-bundle" in words.stdout


@pytest.mark.parametrize("command", ["run", "preflight", "status", "merge", "validate-job", "demo",
                                     "simulate"])  # fmt: skip
def test_log_options_on_every_command(command: str) -> None:
    text = run_cli([command, "--help"]).stdout
    assert "--log-format [text|json]" in text and "-v, --verbose" in text and "-q, --quiet" in text
