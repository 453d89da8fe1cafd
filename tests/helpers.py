"""Shared helpers: a real simulator on a loopback port and the CLI run against it."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from batch_cancel.cli import cli
from batch_cancel.simulator import Faults, SimulatorConfig, ThreadedSimulator

PASSWORD = "s3cret-Pa55word!"
USER = "agent"


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str

    @property
    def summary(self) -> dict[str, Any]:
        last = self.stdout.strip().splitlines()[-1]
        data: dict[str, Any] = json.loads(last)
        return data


def run_cli(args: Sequence[str], env: dict[str, str] | None = None) -> CliResult:
    runner = CliRunner()
    result = runner.invoke(cli, list(args), env=env or {}, catch_exceptions=False)
    return CliResult(result.exit_code, result.stdout, result.stderr)


def make_sim(**kwargs: Any) -> ThreadedSimulator:
    kwargs.setdefault("users", {USER: PASSWORD})
    kwargs.setdefault("long_poll_timeout", 5.0)
    return ThreadedSimulator(SimulatorConfig(**kwargs)).start()


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def read_report(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return list(pq.read_table(path).to_pylist())
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def numbers(n: int, start: int = 100) -> list[str]:
    """Distinct valid US numbers (212-555-01xx is reserved for fiction; use real-shaped ones)."""
    return [f"212{2000000 + start + i:07d}" for i in range(n)]


def job_args(base_url: str, tmp: Path, *inputs: Path, **opts: Any) -> list[str]:
    args = ["run", *map(str, inputs), "--base-url", base_url, "--username", USER,
            "--application-id", "134", "--campaign", "Campaign1", "--calling-list", "CallingList1",
            "--state", str(tmp / "state.sqlite"), "--report", str(tmp / "report.csv")]  # fmt: skip
    for key, value in opts.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        elif value is not False and value is not None:
            args += [flag, str(value)]
    return args


ENV = {"GWS_PASSWORD": PASSWORD}

__all__ = ["ENV", "PASSWORD", "USER", "Faults", "job_args", "make_sim", "numbers", "read_report",
           "run_cli", "write_csv"]  # fmt: skip
