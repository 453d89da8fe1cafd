"""Airflow DAGs: the nightly DNC scrub, resumable, one report. Two modes, one file:

**fleet** (``batch_cancel_nightly_dnc_fleet``, for several hosts): the journal is a
PostgreSQL database that every Airflow worker reaches; the mapped tasks are workers
of one job, no shards, no merge:

    find_input ──> run_worker[0..W-1] (mapped) ──> write_report

* ``run_worker`` runs ``batch-cancel run --job <job file> <input> --run-id <from the
  DAG run id> --state postgresql://…`` (the database from the Airflow connection
  ``BATCH_CANCEL_JOURNAL_CONN_ID``, its password handed over as PGPASSWORD in the
  environment). The first worker plans, the others wait for the plan; each claims
  rows under a lease and takes its share of the job file's ``rate`` (the job's
  total, whatever W is). A retry, on any host, joins the same job again; rows a
  killed try had in flight are resent with the same referenceId once its lease
  expires. Exit 0/1 (the whole job is complete) succeeds; 3 fails the try and
  Airflow retries; 2 fails at once.
* ``write_report`` runs ``batch-cancel report`` (even when a worker failed for
  good: its rows show as pending); its exit code colours the DAG run: 0 green,
  1 (rows failed) or 3 (rows pending) red.

**shards** (``batch_cancel_nightly_dnc_scrub``, single host): one SQLite journal
per shard, merged at the end:

    find_input ──> run_shard[0..N-1] (mapped) ──> merge_reports

SQLite journals must be on a **local disk** of the one host that runs every shard:
SQLite's WAL does not work over a network filesystem (its documentation says so),
and an Airflow retry that lands on another host would not find the journal. For
more than one host use the fleet mode.

* ``find_input`` (both modes) copies the newest file of the inbox into this run's
  folder, so every task (and every retry) reads the same bytes; in fleet mode that
  folder must be on storage every worker host reads (plain files, no SQLite there).
  An inbox in object storage (``s3://``, ``gs://``, ``az://``) is not copied: the
  newest object's URL is handed to the tasks as it is, and batch-cancel reads it
  there, streaming (no download task, no local disk for the list). Its journal
  records the object's content hash and ETag/version, so a retry refuses an
  object replaced under the same key.
* ``run_shard`` runs ``batch-cancel run --job <job file> <input> --shard i/N
  --run-id <from the DAG run id> --state <run folder>/shard-i.sqlite --report
  <run folder>/shard-i.csv`` as a subprocess. The journal path and run id are the
  same on every try, so an Airflow retry resumes the shard, it never restarts it.
  Exit 0/1 (finished) succeeds and pushes the JSON summary (the last stdout line)
  to XCom; 3 (aborted, resumable) fails the try and Airflow retries; 2 (usage or
  input error) fails at once, since a retry cannot fix it.
* ``merge_reports`` runs ``batch-cancel merge`` over the shards' reports even when a
  shard failed; its exit code colours the DAG run: 0 green, anything else red.

Object storage (inbox and reports) follows Airflow's ``ObjectStoragePath``
convention: ``s3://CONN_ID@bucket/prefix/`` names an Airflow connection (type
aws: login = access key id, password = secret access key, extras
``endpoint_url`` and ``region_name``), whose keys reach batch-cancel as
AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_ENDPOINT_URL in its environment,
never on its command line. Without ``CONN_ID@`` the worker's own credentials
are used, found the way the cloud's SDK finds them (environment, profile,
instance role). Journals never go there: SQLite on a local disk, or PostgreSQL.

Configuration is environment only, read by the scheduler (mode, shard and worker
counts) and the workers (the rest); nothing secret is in this file:

    BATCH_CANCEL_MODE        which DAG is scheduled: "shards" (default) or "fleet";
                             the other one is defined but runs only when triggered
    BATCH_CANCEL_WORKERS     W, fleet workers run at once (4); GWS sees the job's rate
    BATCH_CANCEL_JOURNAL_CONN_ID  Airflow connection (type postgres) of the fleet's
                             journal (batch_cancel_journal): host, port, login, password,
                             schema = the database; extras: journal_schema (batch_cancel),
                             lease (seconds, 30), sslmode and other libpq options

    BATCH_CANCEL_INBOX       folder the nightly files arrive in (/data/dnc/inbox), or an
                             object-storage prefix (s3://[CONN_ID@]bucket/inbox/)
    BATCH_CANCEL_REPORTS     where reports go, a folder or an object-storage prefix
                             (s3://[CONN_ID@]bucket/reports/): <run id>/merged.csv etc.;
                             default the run folder
    BATCH_CANCEL_PATTERN     which of its files count ("*.csv")
    BATCH_CANCEL_MIN_AGE_S   ignore files younger than this, still being written (300)
    BATCH_CANCEL_SHARED      run folders: input copy, reports, shard journals (/data/batch-cancel);
                             shards: a local disk; fleet: storage every worker reads; a file
                             system, never a bucket (SQLite journals are locked in place)
    BATCH_CANCEL_SHARDS      N, the number of shards run at once (4); GWS sees N x rate
    BATCH_CANCEL_SCHEDULE    cron schedule ("0 2 * * *")
    BATCH_CANCEL_RETRIES     tries after the first for a stopped shard (3), each resuming
    BATCH_CANCEL_RETRY_DELAY_S  seconds before the first retry, doubled each time (120)
    BATCH_CANCEL_JOB_FILE    job file (../nightly_dnc_scrub.toml beside this folder)
    BATCH_CANCEL_CMD         how to start the CLI ("<this python> -m batch_cancel")
    BATCH_CANCEL_CONN_ID     Airflow connection with GWS host, login and password
                             (batch_cancel_gws); when it does not exist, the worker's
                             environment must hold the variables the job file names

The connection's password reaches the subprocess as GWS_PASSWORD in its
environment, never on a command line (where `ps` would show it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

from airflow.sdk import BaseHook, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowNotFoundException

log = logging.getLogger(__name__)

DAG_ID = "batch_cancel_nightly_dnc_scrub"
FLEET_DAG_ID = "batch_cancel_nightly_dnc_fleet"
MODE = os.environ.get("BATCH_CANCEL_MODE", "shards")
SHARDS = int(os.environ.get("BATCH_CANCEL_SHARDS", "4"))
WORKERS = int(os.environ.get("BATCH_CANCEL_WORKERS", "4"))
SCHEDULE = os.environ.get("BATCH_CANCEL_SCHEDULE", "0 2 * * *")
RETRIES = int(os.environ.get("BATCH_CANCEL_RETRIES", "3"))
RETRY_DELAY = timedelta(seconds=float(os.environ.get("BATCH_CANCEL_RETRY_DELAY_S", "120")))


def _setting(name: str, default: str) -> str:
    return os.environ.get(name) or default


def batch_run_id(airflow_run_id: str) -> str:
    """A batch-cancel run id ([A-Za-z0-9_.-]{1,64}) that is the same on every try of one DAG run."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", airflow_run_id).strip("_.") or "run"
    if len(safe) <= 56:
        return "nightly-" + safe
    digest = hashlib.blake2b(airflow_run_id.encode(), digest_size=4).hexdigest()
    return f"nightly-{safe[:47]}-{digest}"


def run_folder(run_id: str) -> Path:
    return Path(_setting("BATCH_CANCEL_SHARED", "/data/batch-cancel")) / run_id


def cli() -> list[str]:
    configured = os.environ.get("BATCH_CANCEL_CMD")
    return shlex.split(configured) if configured else [sys.executable, "-m", "batch_cancel"]


def job_file() -> str:
    default = Path(__file__).resolve().parent.parent / "nightly_dnc_scrub.toml"
    return _setting("BATCH_CANCEL_JOB_FILE", str(default))


_STORES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")


def split_store_url(text: str) -> tuple[str, str | None]:
    """``s3://CONN_ID@bucket/key`` (ObjectStoragePath's convention) as the plain URL batch-cancel
    reads and the Airflow connection id; a path or a URL without ``CONN_ID@`` has none."""
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme not in _STORES:
        return text, None
    parts = urlsplit(text)
    if "@" not in parts.netloc:
        return text, None
    conn_id, bucket = parts.netloc.rsplit("@", 1)
    return f"{parts.scheme}://{bucket}{parts.path}", unquote(conn_id)


def report_location(run_id: str, name: str) -> str:
    """Where this run's report ``name`` goes: BATCH_CANCEL_REPORTS/<run id>/name (a path or
    an object URL, without its connection id), else the run folder."""
    base = os.environ.get("BATCH_CANCEL_REPORTS")
    if not base:
        return str(run_folder(run_id) / name)
    plain, _ = split_store_url(base)
    if "://" in plain:
        return f"{plain.rstrip('/')}/{run_id}/{name}"
    return str(Path(plain) / run_id / name)


def storage_env() -> dict[str, str]:
    """The object-storage credentials of the connection the inbox and reports URLs name
    (``s3://CONN_ID@…``), as the AWS SDK reads them; {} when they name none."""
    conn_ids = {c for c in (split_store_url(os.environ.get(n, ""))[1]
                            for n in ("BATCH_CANCEL_INBOX", "BATCH_CANCEL_REPORTS")) if c}  # fmt: skip
    if not conn_ids:
        return {}
    if len(conn_ids) > 1:
        raise AirflowFailException(f"inbox and reports name different connections {sorted(conn_ids)}: "
                                   "batch-cancel runs with one set of storage credentials")  # fmt: skip
    (conn_id,) = conn_ids
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise AirflowFailException(f"no Airflow connection {conn_id!r} (named in an s3:// URL)") from None
    extras = conn.extra_dejson
    env = {"AWS_ACCESS_KEY_ID": conn.login, "AWS_SECRET_ACCESS_KEY": conn.password,
           "AWS_ENDPOINT_URL": extras.get("endpoint_url"),
           "AWS_DEFAULT_REGION": extras.get("region_name")}  # fmt: skip
    return {k: str(v) for k, v in env.items() if v}


def shard_command(input_path: str, shard: int, count: int, run_id: str) -> list[str]:
    folder = run_folder(run_id)
    return [*cli(), "run", "--job", job_file(), input_path, "--shard", f"{shard}/{count}",
            "--run-id", run_id, "--state", str(folder / f"shard-{shard}.sqlite"),
            "--report", report_location(run_id, f"shard-{shard}.csv")]  # fmt: skip


def merge_command(count: int, run_id: str) -> list[str]:
    reports = [report_location(run_id, f"shard-{i}.csv") for i in range(count)]
    return [*cli(), "merge", *reports, "--out", report_location(run_id, "merged.csv"), "--run-id", run_id]


def journal_url() -> tuple[str, dict[str, str]]:
    """The fleet's journal as ``postgresql://LOGIN@HOST:PORT/DB?schema=…`` (no password in it)
    and the environment that carries its password (PGPASSWORD), from the Airflow connection."""
    conn_id = _setting("BATCH_CANCEL_JOURNAL_CONN_ID", "batch_cancel_journal")
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise AirflowFailException(f"fleet mode needs the Airflow connection {conn_id!r} "
                                   "(type postgres) for its journal") from None  # fmt: skip
    if not conn.host or not conn.login:
        raise AirflowFailException(f"connection {conn_id!r}: host and login are required")
    extras = dict(conn.extra_dejson)
    query = {"schema": str(extras.pop("journal_schema", "batch_cancel"))}
    query.update({str(k): str(v) for k, v in extras.items()})
    url = (f"postgresql://{quote(conn.login, safe='')}@{conn.host}:{conn.port or 5432}/"
           f"{quote(conn.schema or 'postgres', safe='')}?{urlencode(query)}")  # fmt: skip
    return url, ({"PGPASSWORD": str(conn.password)} if conn.password else {})


def worker_command(input_path: str, run_id: str, url: str) -> list[str]:
    return [*cli(), "run", "--job", job_file(), input_path, "--run-id", run_id, "--state", url,
            "--report", report_location(run_id, "report.csv")]  # fmt: skip


def report_command(run_id: str, url: str) -> list[str]:
    return [*cli(), "report", "--state", url, "--run-id", run_id,
            "--out", report_location(run_id, "report.csv"), "--html", report_location(run_id, "report.html")]


def gws_env() -> dict[str, str]:
    """The subprocess's environment: the worker's, plus GWS_* from the Airflow connection if
    any, plus the storage connection's keys (storage_env)."""
    env = {**os.environ, **storage_env()}
    conn_id = _setting("BATCH_CANCEL_CONN_ID", "batch_cancel_gws")
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        log.info("no Airflow connection %r: GWS settings come from the environment", conn_id)
        return env
    base_url = conn.extra_dejson.get("base_url") or _url(conn.schema, conn.host, conn.port)
    for name, value in (("GWS_BASE_URL", base_url), ("GWS_USERNAME", conn.login),
                        ("GWS_PASSWORD", conn.password)):  # fmt: skip
        if value:
            env[name] = str(value)
    return env


def _url(scheme: str | None, host: str | None, port: int | None) -> str | None:
    if not host:
        return None
    if "://" in host:
        return host.rstrip("/")
    return f"{scheme or 'https'}://{host}" + (f":{port}" if port else "")


def invoke(cmd: list[str], env: dict[str, str]) -> tuple[int, dict[str, Any] | None]:
    """Run the CLI; its stderr (logs, progress) goes to the task log, the last stdout line is parsed."""
    log.info("running: %s", shlex.join(cmd))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    try:
        out, _ = proc.communicate()
    except BaseException:
        # the task was killed (timeout, mark-failed): SIGTERM lets the CLI finish
        # its journal within --grace, so the next try resumes where this one stopped
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    lines = out.strip().splitlines()
    try:
        summary = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        summary = None
    log.info("exit code %d; summary: %s", proc.returncode, lines[-1] if lines else "(none)")
    return proc.returncode, summary if isinstance(summary, dict) else None


def store(url: str) -> tuple[Any, str]:
    """The fsspec filesystem (the layer under ObjectStoragePath and batch-cancel alike) of an
    object URL, with the connection's keys if the inbox or reports URL names one, and the
    URL's ``bucket/key``."""
    import fsspec

    plain, _ = split_store_url(url)
    scheme, key = plain.split("://", 1)
    env = storage_env()
    options: dict[str, Any] = {}
    if env and scheme.lower() in ("s3", "s3a"):
        options = {"key": env.get("AWS_ACCESS_KEY_ID"), "secret": env.get("AWS_SECRET_ACCESS_KEY"),
                   "endpoint_url": env.get("AWS_ENDPOINT_URL"),
                   "client_kwargs": {"region_name": env.get("AWS_DEFAULT_REGION", "us-east-1")}}  # fmt: skip
    protocol = {"s3a": "s3", "gs": "gcs", "az": "abfs", "abfss": "abfs"}.get(scheme.lower(), scheme.lower())
    return fsspec.filesystem(protocol, skip_instance_cache=True, **options), key


def object_identity(url: str) -> dict[str, str]:
    """What tells one upload of an object from another: ETag and version (where kept)."""
    fs, key = store(url)
    info = fs.info(key)
    return {"etag": str(info.get("ETag") or info.get("etag") or "").strip('"'),
            "version": str(info.get("VersionId") or info.get("generation") or info.get("version_id") or "")}


def check_input_unchanged(input_path: str, run_id: str) -> None:
    """Every task must read the list find_input chose: an object replaced under its key since
    then (another ETag or version) fails the task for good, before anything is sent. (Each
    batch-cancel journal keeps the object's identity too, so a retry refuses it as well.)"""
    chosen = run_folder(run_id) / "input.json"
    if "://" not in input_path or not chosen.is_file():
        return
    then = json.loads(chosen.read_text(encoding="utf-8"))
    now = object_identity(input_path)
    if {k: then.get(k) for k in now} != now:
        raise AirflowFailException(f"input {input_path} was replaced since find_input chose it "
                                   f"({then} then, {now} now): the tasks of one run must read the same "
                                   "list; start a new DAG run")  # fmt: skip


def newest_object(inbox: str, pattern: str, min_age: float) -> str:
    """The URL (no connection id) of the newest object under the prefix ``inbox`` whose name
    matches ``pattern`` and that is at least ``min_age`` seconds old."""
    import fnmatch

    fs, prefix = store(inbox)
    scheme = split_store_url(inbox)[0].split("://", 1)[0]
    now = datetime.now().timestamp()
    ready: list[tuple[float, str]] = []
    for info in fs.ls(prefix.rstrip("/"), detail=True):
        name = str(info["name"]).rsplit("/", 1)[-1]
        # each filesystem names the time its own way (s3fs, gcsfs, adlfs)
        keys = ("LastModified", "last_modified", "updated", "mtime")
        when = next((info[k] for k in keys if info.get(k)), 0)
        if isinstance(when, str):
            when = datetime.fromisoformat(when.replace("Z", "+00:00"))
        stamp = when.timestamp() if isinstance(when, datetime) else float(when or 0)
        if info.get("type") == "file" and fnmatch.fnmatch(name, pattern) and now - stamp >= min_age:
            ready.append((stamp, str(info["name"])))
    if not ready:
        raise AirflowFailException(f"no input: nothing matching {pattern} (older than "
                                   f"{min_age:.0f} s) in {split_store_url(inbox)[0]}")  # fmt: skip
    return f"{scheme}://{max(ready)[1]}"


@task
def find_input() -> str:
    """The newest file of the inbox, copied into this run's folder (kept on retries); an
    object's URL, not copied (kept on retries too)."""
    ctx = get_current_context()
    run_id = batch_run_id(str(ctx["run_id"]))
    folder = run_folder(run_id)
    snapshot = folder / "input"
    taken = sorted(p for p in snapshot.glob("*") if not p.name.startswith("."))  # not a half copy
    if taken:
        return str(taken[0])  # a retry of this task keeps the file the run started with
    inbox_setting = _setting("BATCH_CANCEL_INBOX", "/data/dnc/inbox")
    pattern = _setting("BATCH_CANCEL_PATTERN", "*.csv")
    min_age = float(_setting("BATCH_CANCEL_MIN_AGE_S", "300"))
    if split_store_url(inbox_setting)[0].split("://", 1)[0].lower() in _STORES:
        chosen = folder / "input.json"
        if chosen.is_file():
            return str(json.loads(chosen.read_text(encoding="utf-8"))["url"])
        url = newest_object(inbox_setting, pattern, min_age)
        identity = {"url": url, **object_identity(url)}
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / ".input.json.writing"
        partial.write_text(json.dumps(identity), encoding="utf-8")
        partial.rename(chosen)
        log.info("input %s (read in place by every task): %s", url, identity)
        return url
    inbox = Path(inbox_setting)
    now = datetime.now().timestamp()
    ready = [p for p in inbox.glob(pattern) if p.is_file() and now - p.stat().st_mtime >= min_age]
    if not ready:
        raise AirflowFailException(f"no input: nothing matching {pattern} (older than "
                                   f"{min_age:.0f} s) in {inbox}")  # fmt: skip
    newest = max(ready, key=lambda p: (p.stat().st_mtime, p.name))
    snapshot.mkdir(parents=True, exist_ok=True)
    partial = snapshot / f".{newest.name}.copying"
    shutil.copy2(newest, partial)
    target = snapshot / newest.name
    partial.rename(target)
    log.info("input %s (copied from %s)", target, newest)
    return str(target)


@dag(
    dag_id=DAG_ID,
    schedule=SCHEDULE if MODE != "fleet" else None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,  # two nights at once would double the load on GWS
    tags=["batch-cancel", "dnc"],
    doc_md=__doc__,
)
def nightly_dnc_scrub() -> None:
    @task(retries=RETRIES, retry_delay=RETRY_DELAY, retry_exponential_backoff=True)
    def run_shard(shard: int, count: int, input_path: str) -> dict[str, Any]:
        run_id = batch_run_id(str(get_current_context()["run_id"]))
        run_folder(run_id).mkdir(parents=True, exist_ok=True)
        check_input_unchanged(input_path, run_id)
        code, summary = invoke(shard_command(input_path, shard, count, run_id), gws_env())
        if code == 2:
            raise AirflowFailException(f"shard {shard}/{count}: usage or input error (exit 2), see the log")
        if code not in (0, 1) or summary is None:
            raise AirflowException(f"shard {shard}/{count}: stopped (exit {code}); a retry resumes it")
        return summary  # 0 or 1: finished; the merged report decides the colour

    @task(trigger_rule="all_done")  # also after a failed shard: its rows must show as not done
    def merge_reports(count: int) -> dict[str, Any]:
        ctx = get_current_context()
        run_id = batch_run_id(str(ctx["run_id"]))
        code, summary = invoke(merge_command(count, run_id), {**os.environ, **storage_env()})
        if summary is not None:
            ctx["ti"].xcom_push(key="summary", value=summary)  # also when the run goes red
        if code != 0 or summary is None:
            counts = {k: (summary or {}).get(k) for k in ("total", "cancelled", "failed", "timed_out",
                                                             "rejected", "duplicate", "pending")}  # fmt: skip
            raise AirflowFailException(f"merged run {run_id}: exit {code}: {counts}")
        return summary

    shards = run_shard.partial(count=SHARDS, input_path=find_input()).expand(shard=list(range(SHARDS)))
    shards >> merge_reports(SHARDS)


nightly_dnc_scrub()


@dag(
    dag_id=FLEET_DAG_ID,
    schedule=SCHEDULE if MODE == "fleet" else None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["batch-cancel", "dnc", "fleet"],
    doc_md=__doc__,
)
def nightly_dnc_fleet() -> None:
    @task(retries=RETRIES, retry_delay=RETRY_DELAY, retry_exponential_backoff=True)
    def run_worker(worker: int, input_path: str) -> dict[str, Any]:
        run_id = batch_run_id(str(get_current_context()["run_id"]))
        run_folder(run_id).mkdir(parents=True, exist_ok=True)
        url, secret = journal_url()
        check_input_unchanged(input_path, run_id)
        code, summary = invoke(worker_command(input_path, run_id, url), {**gws_env(), **secret})
        if code == 2:
            raise AirflowFailException(f"worker {worker}: usage or input error (exit 2), see the log")
        if code not in (0, 1) or summary is None:
            raise AirflowException(f"worker {worker}: stopped (exit {code}); a retry joins the job again")
        return summary  # 0 or 1: the whole job is complete; the report decides the colour

    @task(trigger_rule="all_done")  # also after a failed worker: its rows show as pending
    def write_report() -> dict[str, Any]:
        ctx = get_current_context()
        run_id = batch_run_id(str(ctx["run_id"]))
        run_folder(run_id).mkdir(parents=True, exist_ok=True)
        url, secret = journal_url()
        code, summary = invoke(report_command(run_id, url), {**os.environ, **storage_env(), **secret})
        if summary is not None:
            ctx["ti"].xcom_push(key="summary", value=summary)
        if code != 0 or summary is None:
            counts = {k: (summary or {}).get(k) for k in ("total", "cancelled", "failed", "timed_out",
                                                             "rejected", "duplicate", "pending")}  # fmt: skip
            raise AirflowFailException(f"job {run_id}: exit {code}: {counts}")
        return summary

    workers = run_worker.partial(input_path=find_input()).expand(worker=list(range(WORKERS)))
    workers >> write_report()


nightly_dnc_fleet()
