"""``batch-cancel status``: what a journal says, and what a resume would do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from batch_cancel.cli._common import guarded, log_options
from batch_cancel.journal.rows import FINAL, REPORTED

__all__ = ["describe", "status"]

FINAL_ORDER = tuple(str(s) for s in REPORTED if s in FINAL)


def describe(state: Path) -> dict[str, Any]:
    from batch_cancel.exceptions import ConfigError
    from batch_cancel.journal.store import Journal
    from batch_cancel.output_paths import journal_run_id

    if not state.is_file():
        raise ConfigError(f"no journal at {state}")
    # a CSV or another program's database is named (exit 2) and never opened for writing
    if not journal_run_id(state):
        raise ConfigError(f"{state} is not a batch-cancel journal (or holds no run yet)")
    journal = Journal.open(state)
    try:
        if journal.is_new():
            raise ConfigError(f"{state} is not a batch-cancel journal")
        counts = journal.counts()
        planned = bool(journal.get_meta("planned"))
        to_send = counts.get("planned", 0)
        resend = counts.get("sent", 0)
        return {
            "run_id": journal.get_meta("run_id"),
            "state": str(state),
            "inputs": journal.get_meta("inputs"),
            "planned": planned,
            "total": sum(counts.values()),
            "counts": {
                **{k: counts.get(k, 0) for k in FINAL_ORDER},
                "pending": to_send + resend,
            },
            "resume": {
                "plan_again": not planned,
                "send": to_send,
                "send_again_same_reference_id": resend,
                "timed_out_sent_again_with_--retry-timed-out": counts.get("timed_out", 0),
            },
            "finished_at": journal.get_meta("finished_at"),
            # a run holding the journal now (read without taking the lock)
            "locked_by": _holder(state),
            "last_stats": journal.get_meta("last_stats"),
        }
    finally:
        journal.close()


def _holder(state: Path) -> str | None:
    import time

    from batch_cancel.journal.lock import lock_holder

    holder = lock_holder(state)
    return holder.describe(time.time()) if holder is not None else None


@click.command(epilog="""\b
Example:
  batch-cancel status --state state/dnc.sqlite
  batch-cancel status --state state/dnc.sqlite --json | jq .resume
""")  # fmt: skip
@click.option("--state", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="The run's journal.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@log_options
@guarded
def status(state: Path, as_json: bool) -> None:
    """Show a run's counts by status and what a resume would do."""
    info = describe(state)
    if as_json:
        click.echo(json.dumps(info, default=str))
        return
    click.echo(f"run {info['run_id']}  ({info['total']} rows)  journal {info['state']}")
    if info["locked_by"]:
        click.echo(f"in use by a run: {info['locked_by']}")
    for name, n in info["counts"].items():
        click.echo(f"  {name:<10} {n}")
    r = info["resume"]
    if not info["planned"]:
        click.echo("resume: the plan was interrupted; it is rebuilt, nothing was sent")
    elif r["send"] or r["send_again_same_reference_id"]:
        again = r["send_again_same_reference_id"]
        click.echo(f"resume: would send {r['send']} record(s) and send again {again} "
                   "in flight at the interruption (same referenceId)")  # fmt: skip
    else:
        click.echo("resume: nothing left to send"
                   + (f" ({r['timed_out_sent_again_with_--retry-timed-out']} timed out: "
                      "--retry-timed-out sends them again)"
                      if r["timed_out_sent_again_with_--retry-timed-out"] else ""))  # fmt: skip
