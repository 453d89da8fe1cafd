"""``batch-cancel status``: what a journal says, and what a resume would do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from batch_cancel.cli._common import guarded, log_options, split_state
from batch_cancel.journal.rows import FINAL, REPORTED

__all__ = ["describe", "describe_shared", "status"]

FINAL_ORDER = tuple(str(s) for s in REPORTED if s in FINAL)


def describe(state: Path) -> dict[str, Any]:
    from batch_cancel.exceptions import ConfigError
    from batch_cancel.journal.store import Journal
    from batch_cancel.output_paths import journal_run_id

    if not state.is_file():
        raise ConfigError(f"no journal at {state}")
    # a CSV or another program's database is named (exit 2) and never opened for writing
    run_id = journal_run_id(state)
    if run_id is None:
        raise ConfigError(f"{state} is not a batch-cancel journal (it is empty)")
    if not run_id:  # ours, but the run that holds it has not written its identity yet
        holder = _holder(state)
        if holder is None:
            raise ConfigError(f"{state} is a batch-cancel journal with no run in it")
        return {"run_id": None, "state": str(state), "inputs": None, "planned": False, "total": 0,
                "counts": {**dict.fromkeys(FINAL_ORDER, 0), "pending": 0},
                "resume": {"plan_again": True, "send": 0, "send_again_same_reference_id": 0,
                           "timed_out_sent_again_with_--retry-timed-out": 0},
                "finished_at": None, "locked_by": holder, "last_stats": None}  # fmt: skip
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
                "failed_sent_again_with_--retry-failed": counts.get("failed", 0),
            },
            "unmatched_notifications": journal.unmatched_count(),
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
def describe_shared(db: Any, run_id: str | None) -> dict[str, Any]:
    """A job in a PostgreSQL journal: its counts, and its workers with their leases."""
    from batch_cancel.exceptions import ConfigError
    from batch_cancel.journal.postgres import PgJournal

    journal = PgJournal.open(db, run_id or "", migrate=False)
    try:
        if run_id is None:
            jobs = journal.jobs()
            if len(jobs) != 1:
                raise ConfigError(f"{db.display} holds {len(jobs)} jobs; name one with --run-id "
                                  f"({', '.join(jobs[-10:]) or 'none'})")  # fmt: skip
            journal.close()
            journal = PgJournal.open(db, jobs[0], migrate=False)
        if journal.is_new():
            raise ConfigError(f"{db.display} has no job {journal.run_id!r}")
        counts = journal.counts()
        workers = journal.workers()
        return {
            "run_id": journal.run_id,
            "state": journal.location,
            "inputs": journal.get_meta("inputs"),
            "planned": bool(journal.get_meta("planned")),
            "total": sum(counts.values()),
            "counts": {**{k: counts.get(k, 0) for k in FINAL_ORDER},
                       "pending": counts.get("planned", 0) + counts.get("sent", 0)},
            "workers": [{**w, "rate_share": round(float(w["rate_share"]), 3),
                         "heartbeat_age_s": round(float(w.pop("heartbeat_age")), 1)} for w in workers],
            "finished_at": journal.get_meta("finished_at"),
            "last_stats": journal.get_meta("last_stats"),
        }  # fmt: skip
    finally:
        journal.close()


@click.command(epilog="""\b
Examples:
  batch-cancel status --state state/dnc.sqlite
  batch-cancel status --state state/dnc.sqlite --json | jq .resume
  PGPASSWORD=... batch-cancel status --state postgresql://batch@db:5432/ops --run-id dnc-2026-11-26
""")  # fmt: skip
@click.option("--state", required=True, metavar="PATH|URL",
              help="The run's journal: a SQLite path or a postgresql:// URL.")
@click.option("--state-password-file", type=click.Path(path_type=Path, dir_okay=False),
              help="File holding the PostgreSQL journal's password (else PGPASSWORD or ~/.pgpass).")
@click.option("--run-id", metavar="ID", help="The job, in a PostgreSQL journal that holds several.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@log_options
@guarded
def status(state: str, state_password_file: Path | None, run_id: str | None, as_json: bool) -> None:
    """Show a run's counts by status and what a resume would do; for a PostgreSQL
    journal, also its workers, their leases and rate shares."""
    path, db = split_state(state, state_password_file)
    if db is not None:
        shared = describe_shared(db, run_id)
        if as_json:
            click.echo(json.dumps(shared, default=str))
            return
        click.echo(f"job {shared['run_id']}  ({shared['total']} rows)  journal {shared['state']}")
        for name, n in shared["counts"].items():
            click.echo(f"  {name:<10} {n}")
        click.echo(f"workers ({len(shared['workers'])}):")
        for w in shared["workers"]:
            click.echo(f"  {w['worker']:<28} {w['state']:<8} heartbeat {w['heartbeat_age_s']:>6} s ago  "
                       f"{w['leased']:>5} row(s) leased  rate share {w['rate_share']:g}/s")  # fmt: skip
        return
    assert path is not None
    info = describe(path)
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
    if r["failed_sent_again_with_--retry-failed"]:
        click.echo(f"  {r['failed_sent_again_with_--retry-failed']} failed: --retry-failed sends "
                   "them again, each with a new referenceId")  # fmt: skip
