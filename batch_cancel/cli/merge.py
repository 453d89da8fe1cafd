"""``batch-cancel merge``: one report, one summary and one exit code for a sharded run."""

from __future__ import annotations

import json

import click

from batch_cancel.cli._common import guarded, log_options
from batch_cancel.cli.param_types import LOCATION
from batch_cancel.cli.run import parse_run_id
from batch_cancel.object_store import Location

__all__ = ["merge"]


@click.command(epilog="""\b
Example: a job run as three shards with one run id, then merged
  for i in 0 1 2; do
    batch-cancel run --job jobs/nightly_dnc_scrub.toml dnc.csv --shard $i/3 \\
        --run-id nightly-2026-11-26 --state state/n/shard-$i.sqlite --report reports/n/shard-$i.csv
  done
  batch-cancel merge reports/n/shard-*.csv --out reports/n/merged.csv --run-id nightly-2026-11-26
\b
Exit codes (as for run, on the merged rows): 0 every row cancelled (or a
duplicate of a cancelled row); 1 some rows failed, timed out or were rejected;
2 the reports do not fit together (other runs, a row twice, a missing shard) or
cannot be read, nothing written; 3 some rows are still pending: resume their
shard, then merge again. The last stdout line is the JSON summary.
""")  # fmt: skip
@click.argument("reports", nargs=-1, required=True, type=LOCATION, metavar="REPORT...")
@click.option("--out", required=True, type=LOCATION, metavar="PATH|URL",
              help="Merged report, a path or an object URL (s3://, gs://, az://): .csv, .parquet "
                   "or .jsonl (any mix of formats may go in).")
@click.option("--run-id", metavar="ID", callback=lambda c, p, v: parse_run_id(v),
              help="Refuse reports whose reference ids carry another run id.")
@click.option("--allow-gaps", is_flag=True,
              help="Merge even when some row numbers are in no report (a partial merge).")
@log_options
@guarded
def merge(reports: tuple[Location, ...], out: Location, run_id: str | None, allow_gaps: bool) -> None:
    """Merge the reports of the shards of one run (REPORT...: paths or object URLs) into one, ordered by row.

    The merged report has the same columns as each shard's, and the JSON summary
    counts are those of the merged rows. Reports of different runs, or whose
    rows overlap, are refused.
    """
    from batch_cancel.output_paths import check_outputs
    from batch_cancel.report.merge import merge_reports

    check_outputs(reports, {"--out": out})  # not a report read here, folder writable
    result = merge_reports(reports, out, run_id=run_id, allow_gaps=allow_gaps)
    c = result.counts
    click.echo(f"merged {len(reports)} report(s) of run {result.run_id or '(none)'}: "
               f"{sum(c.values())} rows, {c['cancelled']} cancelled, {c['failed']} failed, "
               f"{c['timed_out']} timed out, {c['rejected']} rejected, {c['duplicate']} duplicate, "
               f"{c['pending']} pending; report {out}", err=True)  # fmt: skip
    click.echo(json.dumps(result.as_json()))
    raise SystemExit(result.exit_code)
