"""``batch-cancel report``: the report of a job, from its journal, at any time."""

from __future__ import annotations

import json
from pathlib import Path

import click

from batch_cancel.cli._common import guarded, split_state
from batch_cancel.cli.param_types import LOCATION
from batch_cancel.object_store import Location

__all__ = ["report"]


@click.command(epilog="""\b
Examples:
  # the whole job of a fleet, while it runs (rows in flight are pending) or after
  PGPASSWORD=... batch-cancel report --state postgresql://batch@db:5432/ops \\
      --run-id dnc-2026-11-26 --out reports/dnc.csv --html reports/dnc.html
  batch-cancel report --state state/dnc.sqlite --out reports/dnc.parquet
  batch-cancel report --state state/dnc.sqlite --out s3://dnc-reports/dnc.csv \\
      --html s3://dnc-reports/dnc.html
\b
Exit codes: 0 every row cancelled (or a duplicate of a cancelled row); 1 the job
is complete and some rows failed, timed out or were rejected; 2 no such journal or
job, nothing written; 3 rows are still pending (the job runs, or was stopped: run
it again to finish), or a file could not be written (a full disk: run this again).
The last stdout line is the JSON summary.
""")  # fmt: skip
@click.option("--state", required=True, metavar="PATH|URL",
              help="The journal: a SQLite path or a postgresql:// URL.")
@click.option("--state-password-file", type=click.Path(path_type=Path, dir_okay=False),
              help="File holding the PostgreSQL journal's password (else PGPASSWORD or ~/.pgpass).")
@click.option("--run-id", metavar="ID", help="The job, in a PostgreSQL journal (required there).")
@click.option("--out", required=True, type=LOCATION, metavar="PATH|URL",
              help="Report path or object URL (s3://, gs://, az://): .csv, .parquet or .jsonl.")
@click.option("--html", type=LOCATION, metavar="PATH|URL",
              help="Also write the self-contained HTML evidence page here (a path or an object URL).")
@guarded
def report(state: str, state_password_file: Path | None, run_id: str | None, out: Location,
           html: Location | None) -> None:  # fmt: skip
    """Write a job's reconciliation report (and evidence page) from its journal.

    Any worker of a fleet, or anyone who can read the journal, can run it at any
    time; nothing is sent.
    """
    from batch_cancel.config import RunConfig
    from batch_cancel.journal.opening import open_existing
    from batch_cancel.output_paths import check_outputs
    from batch_cancel.report.writers import check_report_path, write_report
    from batch_cancel.summary import summarise

    check_report_path(out)
    path, db = split_state(state, state_password_file)
    # the journal is read here: neither output may be it, each other, or a file not ours
    check_outputs([path] if path is not None else [], {"--out": out, "--html": html})
    journal = open_existing(path, db, run_id)
    try:
        job_id = str(journal.get_meta("run_id"))
        write_report(journal, out)
        summary = summarise(journal, job_id, out, RunConfig(inputs=()), {}, 0.0)
        if html is not None:
            from batch_cancel.report.evidence import write_html

            write_html(journal, summary, html)
    finally:
        journal.close()
    data = summary.as_json()
    code = 3 if summary.pending else summary.exit_code
    data["exit_code"] = code
    click.echo(f"report of {job_id}: {summary.total} rows, {summary.cancelled} cancelled, "
               f"{summary.pending} pending; written to {out}", err=True)  # fmt: skip
    click.echo(json.dumps(data, default=str))
    raise SystemExit(code)
