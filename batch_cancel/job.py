"""The job as a library call: input → plan → send → match → journal → report.

``run_job`` needs no click. It raises our exceptions (see ``exceptions.py``);
an :class:`AbortedError` carries the :class:`Summary` of what was done, and the
journal and report are written before it is raised.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import getpass
import logging
import secrets
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, cast

from batch_cancel import __version__
from batch_cancel.config import GwsConfig, RunConfig
from batch_cancel.exceptions import (
    AbortedError,
    BatchCancelError,
    ConfigError,
    Interrupted,
    JournalLocked,
    JournalMismatch,
    JournalUnusable,
    JournalUnwritable,
    ReportUnwritable,
    RequestError,
)
from batch_cancel.input.files import InputFile, inspect_inputs
from batch_cancel.journal.base import JournalBase
from batch_cancel.journal.lock import JournalLock
from batch_cancel.journal.rows import Status
from batch_cancel.journal.store import Journal
from batch_cancel.log_records import RUN_ID
from batch_cancel.object_store import Location
from batch_cancel.output_paths import check_outputs, journal_run_id
from batch_cancel.phase_cpu import PhaseClock
from batch_cancel.plan.planner import build_plan
from batch_cancel.report.writers import check_report_path, write_report
from batch_cancel.summary import Summary, summarise

if TYPE_CHECKING:
    from batch_cancel.journal.postgres import PgJournal
    from batch_cancel.metrics import RunMetrics
    from batch_cancel.send.fleet import FleetWorker

__all__ = ["decide_outputs", "new_run_id", "prepare", "run_job"]

log = logging.getLogger("batch_cancel")

ProgressFn = Callable[[dict[str, int]], None]
ProgressFactory = Callable[[int], ProgressFn]


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def _identity(files: list[InputFile]) -> list[dict[str, object]]:
    return [f.identity() for f in files]


def decide_outputs(config: RunConfig) -> RunConfig:
    """``config`` with its journal and report paths decided and checked, before anything is written.

    The default journal is named after a new run id; the default report after the
    journal's run id (its folder is checked here, under the name it will most likely
    have). Every output is checked (see
    ``output_paths``): no input, no two outputs the same, folders made,
    writable, an existing journal ours.
    """
    if config.report is not None:
        check_report_path(config.report)
    if config.state_db is not None:  # a fleet's journal is a job in PostgreSQL, not a file
        if not config.run_id:
            raise ConfigError("--state postgresql://… needs --run-id: the job's name, the same for "
                              "every worker")  # fmt: skip
        report = config.report or Path("reports") / f"{config.run_id}.csv"
        check_outputs(config.inputs, {"--report": report, "--html": config.html,
                                      "--metrics-file": config.metrics_file})  # fmt: skip
        return dataclasses.replace(config, report=report)
    if config.state is not None:  # "--state is the input file" says more than "not a journal"
        check_outputs(config.inputs, {"--report": config.report, "--html": config.html,
                                      "--metrics-file": config.metrics_file, "--state": config.state},
                      journal="--state")  # fmt: skip
    existing = journal_run_id(config.state) if config.state is not None else None
    run_id = existing or config.run_id or new_run_id()
    state = config.state or Path("state") / f"{run_id}.sqlite"
    report = config.report or Path("reports") / f"{run_id}.csv"
    if config.state is None or config.report is None:  # the defaults, now that they have names
        check_outputs(config.inputs, {"--report": report, "--html": config.html,
                                      "--metrics-file": config.metrics_file, "--state": state},
                      journal="--state")  # fmt: skip
    # Which run a journal holds is decided under its lock (``prepare``): another run may be
    # creating it right now. So only a default journal, new and named after ``run_id``, takes
    # that id here; a default report is named after the journal's run id once it is known.
    chosen = config.run_id or (run_id if config.state is None else None)
    return dataclasses.replace(config, state=state, run_id=chosen)


def prepare(
    config: RunConfig, stop: asyncio.Event | None = None, fence: str | None = None
) -> tuple[JournalBase, str, list[InputFile]]:
    """Check inputs, open (or create) the journal and make sure the plan is complete.

    ``fence``: the run lock's token, carried by every state write (journal/lock.py)."""
    if config.report is not None:
        check_report_path(config.report)
    files = inspect_inputs(config.inputs, phone_column=config.phone_column, encoding=config.encoding,
                           delimiter=config.delimiter, sheet=config.sheet)
    if config.state_db is not None:
        return _prepare_shared(config, files, stop), str(config.run_id), files
    run_id = config.run_id or new_run_id()
    state = config.state or Path("state") / f"{run_id}.sqlite"
    journal = Journal.open(state, fence=fence)
    try:
        if journal.is_new():
            journal.set_meta(
                run_id=run_id, version=__version__, created_at=time.time(),
                operator=_operator(), inputs=_identity(files),
                fingerprint=config.fingerprint(), config=config.public(), planned=False,
            )  # fmt: skip
        else:
            run_id = str(journal.get_meta("run_id"))
            if config.run_id and config.run_id != run_id and not config.force:
                raise JournalMismatch(
                    f"journal {journal.location} belongs to run {run_id}, not {config.run_id}; "
                    "use --force to resume anyway"
                )
            _check_resume(journal, files, config)
        if not journal.get_meta("planned"):
            counts = build_plan(journal, files, config, run_id, stop=stop)
            journal.set_meta(planned=True, plan_counts=dict(counts))
    except BaseException:
        journal.close()
        raise
    return journal, run_id, files


def _prepare_shared(config: RunConfig, files: list[InputFile], stop: asyncio.Event | None) -> PgJournal:
    """A job in PostgreSQL: the first worker makes it and plans it; the others check that
    they were given the same inputs and settings, and wait for the plan."""
    from batch_cancel.journal.postgres import PgJournal, check_job_rate

    assert config.state_db is not None
    if not config.run_id:
        raise ConfigError("--state postgresql://… needs --run-id: the job's name, the same for every worker")
    journal = PgJournal.open(config.state_db, config.run_id)
    try:
        made = journal.create(
            run_id=config.run_id, version=__version__, created_at=time.time(), operator=_operator(),
            inputs=_identity(files), fingerprint=config.fingerprint(), config=config.public(),
            planned=False,
        )  # fmt: skip
        if not made:
            _check_resume(journal, files, config)
            if journal.running_workers() > 0:  # refused before login; join decides for good
                check_job_rate(config.run_id, journal.job_rate(), config.rate)
        said = False
        while not journal.get_meta("planned"):
            with journal.plan_lock(wait=1.0, stop=stop.is_set if stop else None) as got:
                if got and not journal.get_meta("planned"):
                    counts = build_plan(journal, files, config, config.run_id, stop=stop)
                    journal.finish_plan(planned=True, plan_counts=dict(counts))
            if stop is not None and stop.is_set():
                raise Interrupted("interrupted while waiting for the plan: nothing was sent")
            if not got and not said:
                log.info("another worker is planning job %s: waiting for its plan", config.run_id)
                said = True
    except BaseException:
        journal.close()
        raise
    return journal


def _operator() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in some containers
        return "unknown"


def _check_resume(journal: JournalBase, files: list[InputFile], config: RunConfig) -> None:
    if config.force:
        return
    before = [(i["sha256"], i["size"]) for i in journal.get_meta("inputs") or []]
    now = [(f.sha256, f.size) for f in files]
    if before != now:
        raise JournalMismatch(
            f"journal {journal.location} belongs to other input files "
            f"({len(before)} file(s) with other contents); use --force to resume anyway"
        )
    # the same bytes under a new version (an object replaced by an upload of the same list)
    # is another input too: the store says so where it keeps versions or ETags
    for old, f in zip(journal.get_meta("inputs") or [], files, strict=True):
        for key, label in (("version_id", "version"), ("etag", "ETag")):
            if old.get(key) and getattr(f, key) and old[key] != getattr(f, key):
                raise JournalMismatch(
                    f"journal {journal.location}: input {f.path} was replaced since the run began "
                    f"({label} {old[key]}, now {getattr(f, key)}); use --force to resume anyway"
                )
    old = journal.get_meta("fingerprint") or {}
    new = config.fingerprint()
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        raise JournalMismatch(
            f"journal {journal.location} was made with other settings ({', '.join(changed)}); "
            "use --force to resume anyway"
        )


async def run_job(
    config: RunConfig,
    gws: GwsConfig | None,
    *,
    stop: asyncio.Event | None = None,
    progress: ProgressFactory | None = None,
    journaling: bool = True,
) -> Summary:
    """Run (or resume) a job to the end and write its report.

    Every output path is checked first, then the journal's lock is taken (one run
    per journal, see ``journal/lock.py``) and held until the report is written.
    """
    clock = PhaseClock()  # start-up ends here (benchmarks: phase_cpu.py)
    stop = stop or asyncio.Event()
    # checking paths, waiting for the lock and planning block on files: threads keep
    # signals answered meanwhile
    config = await asyncio.to_thread(decide_outputs, config)
    if config.state_db is not None:
        # the workers of a fleet share the journal by design: rows are theirs by lease
        return await _run_locked(config, gws, stop, progress, journaling, clock=clock)
    assert config.state is not None
    try:
        lock = await asyncio.to_thread(JournalLock.acquire, config.state, wait=config.wait_lock,
                                       should_stop=stop.is_set)  # fmt: skip
    except sqlite3.DatabaseError as exc:
        raise _journal_error(exc, config.state) from None
    loop = asyncio.get_running_loop()

    def lost() -> None:  # called from the lock's heartbeat thread
        loop.call_soon_threadsafe(stop.set)

    lock.on_lost(lost)
    try:
        return await _run_locked(config, gws, stop, progress, journaling, lock.holder.token, clock=clock)
    except Interrupted as exc:
        if not lock.lost.is_set():
            raise
        taken = JournalLocked(f"journal {config.state}: another run took this run's lock over "
                              "(it judged this run dead); this run stopped sending")  # fmt: skip
        taken.summary = getattr(exc, "summary", None)  # type: ignore[attr-defined]
        raise taken from None
    finally:
        lock.release()


def _journal_error(exc: sqlite3.DatabaseError, state: Path | None) -> BaseException:
    """What SQLite's refusal to open, lock or plan the journal means to the user."""
    name = exc.sqlite_errorname or ""
    if name in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
        # a journal damaged past the pages the path check reads (a disk fault): a retry
        # reads the same bytes, so this is exit 2, not an "internal error" (exit 3)
        return JournalUnusable(f"journal {state} is damaged ({exc}); restore it from a copy "
                               "or give another --state")  # fmt: skip
    if name.startswith(("SQLITE_FULL", "SQLITE_IOERR", "SQLITE_READONLY", "SQLITE_CANTOPEN")):
        # before anything is sent: once there is room (or the disk is back), a run again
        # with the same --state goes on from what was committed
        return JournalUnwritable(f"journal {state} cannot be written ({exc}); nothing was sent: "
                                 "make room (or repair the disk) and run again with the same --state",
                                 location=str(state))  # fmt: skip
    return exc


async def _run_locked(
    config: RunConfig,
    gws: GwsConfig | None,
    stop: asyncio.Event,
    progress: ProgressFactory | None,
    journaling: bool,
    fence: str | None = None,
    *,
    clock: PhaseClock,
) -> Summary:
    started = time.monotonic()
    try:
        journal, run_id, _files = await asyncio.to_thread(prepare, config, stop, fence)
    except sqlite3.DatabaseError as exc:
        raise _journal_error(exc, config.state) from None
    clock.end("plan")
    RUN_ID.set(run_id)  # every log line of the run carries it (JSON logs)
    report = config.report or Path("reports") / f"{run_id}.csv"
    metrics: RunMetrics | None = None
    fleet: FleetWorker | None = None
    try:
        timed_out_before: float | None = None
        if (config.retry_failed or config.retry_timed_out) and not config.dry_run:
            again, timed_out_before = journal.start_round(
                retry_failed=config.retry_failed, retry_timed_out=config.retry_timed_out, at=time.time())
            if again:
                log.info("--retry-failed: %d failed row(s) will be sent again, each with a new "
                         "referenceId (suffix -r<round>)", again)  # fmt: skip
        # a dry run sends nothing: its counts are the summary's, unless the metrics
        # file needs them now
        dry = config.dry_run and config.metrics_file is None
        counts = {} if dry else journal.counts()
        to_send = counts.get(Status.PLANNED, 0) + counts.get(Status.SENT, 0)
        if config.retry_timed_out:
            to_send += counts.get(Status.TIMED_OUT, 0)
        if config.metrics_file is not None:
            from batch_cancel.metrics import RunMetrics  # prometheus_client: only for --metrics-file

            metrics = RunMetrics(config.metrics_file, run_id, counts, retry_timed_out=config.retry_timed_out,
                                 rate_limit=config.rate, interval=config.metrics_interval)  # fmt: skip
            metrics.write(strict=True)  # an unwritable path fails here, before anything is sent
        stats: dict[str, float] = {}
        if not config.dry_run and to_send:
            if gws is None:
                raise ConfigError("no GWS to send to: give --base-url, --username and a password")
            from batch_cancel.send.phase import Engine

            view = progress(to_send) if progress is not None else None
            if config.state_db is not None:
                from batch_cancel.send.fleet import FleetWorker

                # a journal given as postgresql://… is a PgJournal (prepare made it so)
                fleet = FleetWorker(cast("PgJournal", journal), rate=config.rate,
                                    batch=config.concurrency, retry_timed_out_before=timed_out_before,
                                    stop=stop, max_outage=config.max_outage,
                                    keep_sent_for=config.ack_timeout)  # fmt: skip
            engine = Engine(config, gws, journal, stop=stop, progress=view,
                            on_latency=metrics.observe_latency if metrics else None,
                            fleet=fleet)  # fmt: skip
            # the metrics writer runs in the send phase's task group: if it fails, the run
            # ends at once naming it, like any task the run relies on
            alongside = {"metrics file writer": lambda: metrics.follow(engine)} if metrics else {}
            try:
                await engine.run(journaling=journaling, alongside=alongside)
            except BatchCancelError as exc:
                # whatever stopped the run (an abort, a login page that is not GWS, a refused
                # certificate...), the report and the JSON line say what was done
                summary = _finish(journal, run_id, report, config, engine.stats(), started, metrics,
                                  fleet=fleet, state="stopped")  # fmt: skip
                # a RequestError here: e.g. the device list could not be read
                error: BatchCancelError = (
                    AbortedError(str(exc)) if isinstance(exc, RequestError) else exc
                )
                error.summary = summary  # type: ignore[attr-defined]
                if error is exc:
                    raise
                raise error from exc
            stats = engine.stats()
            if fleet is not None:
                stats.update(fleet_rows_claimed=fleet.claimed, fleet_rate_share=fleet.share)
            if engine.interrupted:
                summary = _finish(journal, run_id, report, config, stats, started, metrics, fleet=fleet,
                                  state="stopped")  # fmt: skip
                stopped = Interrupted("interrupted by a signal: the run can be resumed with --state")
                stopped.summary = summary  # type: ignore[attr-defined]
                raise stopped
        clock.end("send")
        summary = _finish(journal, run_id, report, config, stats, started, metrics, fleet=fleet, shared=True)
        clock.end("report")
        clock.write()
        return summary
    finally:
        journal.close()


def _finish(
    journal: JournalBase,
    run_id: str,
    report: Location,
    config: RunConfig,
    stats: dict[str, float],
    started: float,
    metrics: RunMetrics | None = None,
    *,
    fleet: FleetWorker | None = None,
    state: str = "done",
    shared: bool = False,
) -> Summary:
    """Write the report and answer the summary. In a fleet only the last worker to
    leave writes the report (the job's, complete); the others answer an empty path."""
    last = True
    if fleet is not None:
        last = fleet.leave(state)
    elif shared:
        last = journal.running_workers() == 0
    unwritten: ReportUnwritable | None = None
    if last:
        with contextlib.suppress(Exception):
            journal.set_meta(finished_at=time.time(), last_stats=stats)
        try:
            write_report(journal, report)
        except ReportUnwritable as exc:
            unwritten = exc
    else:
        log.info("other workers are still running job %s: the last to finish writes the report", run_id)
    try:
        summary = summarise(journal, run_id, report if last and unwritten is None else None, config,
                            stats, time.monotonic() - started)  # fmt: skip
    except Exception as exc:
        if state == "done":
            raise
        # the run is stopping because its journal is out of reach: its own error says so,
        # and the counts are the journal's to tell once it is back (status, report)
        log.error("journal %s could not be read for the summary: %s", journal.location, exc)
        summary = Summary(run_id=run_id, total=0, cancelled=0, failed=0, timed_out=0, rejected=0,
                          duplicate=0, pending=0, report="", state=journal.location,
                          dry_run=config.dry_run, duplicates_of_unsuccessful=0,
                          elapsed_s=round(time.monotonic() - started, 3), stats=stats)  # fmt: skip
    if metrics is not None:
        metrics.final(summary)
        metrics.write()
    if config.html is not None and last:
        from batch_cancel.report.evidence import write_html

        try:
            write_html(journal, summary, config.html)
        except ReportUnwritable as exc:
            unwritten = unwritten or exc
    if unwritten is not None:
        # the outcomes are all in the journal: the summary says them, and a run again
        # (nothing left to send) or `batch-cancel report` writes the files
        message = (f"{unwritten}; every outcome is in the journal: run again with the same --state "
                   "to write it (nothing is sent again), or use batch-cancel report")  # fmt: skip
        if state != "done":
            log.error("%s", message)  # the run's own error says why it stopped
            return summary
        error = ReportUnwritable(message)
        error.summary = summary  # type: ignore[attr-defined]
        raise error
    return summary
