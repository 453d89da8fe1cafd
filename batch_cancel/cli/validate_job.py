"""``batch-cancel validate-job``: check a job file the way ``run --job`` reads it, sending nothing."""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import click

from batch_cancel.cli._common import guarded, log_options, tell
from batch_cancel.cli.param_types import LOCATION

__all__ = ["validate_job"]


@click.command(epilog="""\b
Examples:
  batch-cancel validate-job jobs/adhoc_compliance.toml
  # a job whose input arrives each night: check it with a sample input
  batch-cancel validate-job jobs/nightly_dnc_scrub.toml sample_data/numbers.csv
  # in a deployment check: the variables the file names must be set too
  batch-cancel validate-job jobs/nightly_dnc_scrub.toml sample_data/numbers.csv --require-env
\b
Exit codes: 0 the job file is valid (rows its inputs would reject are counted,
not errors); 2 it is not, with the reason on one line. The last stdout line is
a JSON summary.
""")  # fmt: skip
@click.argument("job_file", type=click.Path(path_type=Path, dir_okay=False))
@click.argument("inputs", nargs=-1, type=LOCATION)
@click.option("--require-env", is_flag=True,
              help="Also fail when an environment variable the job file names is not set.")
@log_options
@guarded
def validate_job(job_file: Path, inputs: tuple[Any, ...], require_env: bool) -> None:
    """Check JOB_FILE: keys, value types, and that its inputs exist and parse.

    The inputs (the file's `inputs`, or INPUT files given here instead) are
    planned exactly as `batch-cancel run --job JOB_FILE --dry-run` would, with
    a temporary journal and report: nothing is sent and nothing is kept.
    """
    from batch_cancel.cli.jobfile import load_job
    from batch_cancel.cli.run import run
    from batch_cancel.exceptions import ConfigError
    from batch_cancel.object_store import location
    from batch_cancel.output_paths import check_outputs
    from batch_cancel.report.writers import check_report_path

    job = load_job(job_file, run)
    if job.values.get("report"):  # the dry run below writes its own report, so check the file's here
        check_report_path(location(job.values["report"]))
    # the file's outputs as `run` would check them (its inputs, or those given here), creating nothing
    named = {f"{key} (in the job file)": location(job.values[key]) if job.values.get(key) else None
             for key in ("report", "html", "state")}  # fmt: skip
    sources = inputs or tuple(location(p) for p in job.values.get("inputs") or ())
    check_outputs(sources, named, journal="state (in the job file)", create_folders=False)
    unset = job.unset_env()
    if unset and require_env:
        raise ConfigError(f"job file {job_file}: environment variable(s) not set: {', '.join(unset)}")
    result: dict[str, Any] = {"job": str(job_file), "valid": True, "keys": sorted(job.values),
                              "env": dict(sorted(job.env_names.items())), "env_unset": unset}  # fmt: skip
    if inputs or job.values.get("inputs"):
        result.update(_dry_run(job_file, inputs, "html" in job.values))
    else:
        tell(f"{job_file}: no inputs in the file: the caller gives them (not checked)", "job_note")
    for name in unset:
        tell(f"{job_file}: note: {name} is not set here; `run` needs it", "job_note", variable=name)
    click.echo(json.dumps(result))


def _dry_run(job_file: Path, inputs: tuple[Any, ...], html: bool) -> dict[str, Any]:
    """Run the real `run` command in dry-run mode, its journal and report in a temporary folder."""
    from batch_cancel.cli.run import run
    from batch_cancel.exceptions import ConfigError

    with tempfile.TemporaryDirectory(prefix="batch-cancel-validate-") as tmp:
        # flags beat the file, so the file's own state/report/html stay untouched
        args = ["--job", str(job_file), *map(str, inputs), "--dry-run", "-q",
                "--state", str(Path(tmp, "plan.sqlite")), "--report", str(Path(tmp, "plan.csv"))]  # fmt: skip
        if html:
            args += ["--html", str(Path(tmp, "plan.html"))]
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            try:
                run.main(args, prog_name="batch-cancel run", standalone_mode=False)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
            except click.ClickException as exc:  # shown as ours, not with `run`'s usage block
                raise ConfigError(f"job file {job_file}: {exc.format_message()}") from None
    if code not in (0, 1):  # run already said why, on one stderr line
        raise SystemExit(code)
    summary = json.loads(out.getvalue().strip().splitlines()[-1])
    would_send = summary["total"] - summary["rejected"] - summary["duplicate"]
    click.echo(f"{job_file}: valid: {summary['total']} rows, {would_send} would be sent, "
               f"{summary['rejected']} rejected, {summary['duplicate']} duplicate", err=True)  # fmt: skip
    return {"rows": summary["total"], "would_send": would_send, "rejected": summary["rejected"],
            "duplicate": summary["duplicate"]}  # fmt: skip
