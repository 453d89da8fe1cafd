"""``batch-cancel demo``: the real job on sample_data/ against the embedded simulator."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import click

from batch_cancel.cli._common import guarded, log_options, tell
from batch_cancel.cli.param_types import bounded

__all__ = ["demo"]

SAMPLES = Path(__file__).resolve().parents[2] / "sample_data"
# The simulator answers these with a failure notification, so the demo shows one.
DEMO_FAILING = frozenset({"9175550111", "3475550102"})


@click.command(epilog="""\b
Example:
  batch-cancel demo                       # sample_data/*.csv|parquet, report in reports/
  batch-cancel demo --rate 50 --report /tmp/demo.jsonl
""")  # fmt: skip
@click.option("--input", "inputs", multiple=True, type=click.Path(path_type=Path),
              help="Input files (default: every file in sample_data/).")
@click.option("--rate", type=bounded("rate"), default=20.0, show_default=True)
@click.option("--concurrency", type=bounded("concurrency"), default=8, show_default=True)
@click.option("--report", type=click.Path(path_type=Path, dir_okay=False),
              help="Report path (default reports/<run id>.csv).")
@log_options
@guarded
def demo(inputs: tuple[Path, ...], rate: float, concurrency: int, report: Path | None) -> None:
    """Run the real job on sample_data/ against the embedded GWS simulator.

    The simulator starts in-process on a free loopback port (REST + CometD), holds
    every sample number except two that it answers with a failure notification,
    and the job runs exactly as `batch-cancel run` would against a real GWS.
    """
    from batch_cancel.cli.run import print_summary

    files = inputs or tuple(
        sorted(p for p in SAMPLES.iterdir() if p.suffix in (".csv", ".parquet") or p.name.endswith(".csv.gz"))
    )
    summary = asyncio.run(_demo(files, rate, concurrency, report))
    print_summary(summary)
    tell(f"report: {summary.report}", "demo_outputs", logging.INFO, report=summary.report)
    tell(f"evidence: {Path(summary.report).with_suffix('.html')}", "demo_outputs", logging.INFO,
         html=str(Path(summary.report).with_suffix(".html")))  # fmt: skip
    # rejected and failed rows are part of the sample on purpose: the demo worked
    raise SystemExit(0 if summary.exit_code in (0, 1) else summary.exit_code)


async def _demo(files: tuple[Path, ...], rate: float, concurrency: int, report: Path | None) -> Any:
    import secrets

    from batch_cancel.config import Credentials, GwsConfig, JobDefaults, RunConfig
    from batch_cancel.job import new_run_id, run_job
    from batch_cancel.simulator import GwsSimulator, SimulatorConfig

    password = secrets.token_urlsafe(12)  # lives only in this process
    sim_cfg = SimulatorConfig(users={"demo": password}, failing_numbers=DEMO_FAILING)
    async with GwsSimulator(sim_cfg) as sim:
        tell(f"simulator: {sim.base_url}", "demo_simulator", logging.INFO, base_url=sim.base_url)
        gws = GwsConfig(base_url=sim.base_url, credentials=Credentials("demo", password))
        # the run id is fixed here so the evidence page can sit next to the default report
        run_id = new_run_id()
        report = report or Path("reports") / f"{run_id}.csv"
        cfg = RunConfig(
            inputs=files,
            defaults=JobDefaults(application_id=134, campaign="Campaign1", calling_list="CallingList1"),
            rate=rate, concurrency=concurrency, ack_timeout=10.0, report=report, run_id=run_id,
            html=report.with_suffix(".html"),
        )  # fmt: skip
        return await run_job(cfg, gws)
