"""The fleet DAG under a real Airflow scheduler: workers run at the same time.

``dag.test()`` (test_dag.py) runs mapped tasks one after another, so there the
first worker drains the job and the others join a finished one. Here the DAG runs
the way it runs in production: an API server (the tasks' execution API), a DAG
processor and a scheduler with the LocalExecutor (parallelism 4), each its own
process, their metadata database on the test's PostgreSQL server (the same server
that holds the job's journal), the GWS peer the simulator. The test triggers one
DAG run and reads what happened from the metadata database (task instances'
start and end) and from the journal (its workers' rows).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from test_dag import DAG_FILE, FLEET_DAG_ID, PASSWORD, USER, Simulator, numbers, read_csv, write_numbers

AIRFLOW = str(Path(sys.executable).with_name("airflow"))
CLI = str(Path(sys.executable).with_name("batch-cancel"))
ROWS = 90  # at the job's 5/s, ~18 s of sending: long enough for every worker to join


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _connect(server: Any, db: str) -> psycopg.Connection[Any]:
    return psycopg.connect(host=server.host, port=server.port, user=server.user, password=server.password,
                           dbname=db, autocommit=True)  # fmt: skip


def _wait(what: str, ok: Any, timeout: float, procs: list[subprocess.Popen[bytes]], logs: Path) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = ok()
        if got:
            return got
        dead = [p.args for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            tails = {p.name: p.read_text(errors="replace")[-1500:] for p in sorted(logs.glob("*.log"))}
            raise AssertionError(f"{what}; dead: {dead}; logs: {json.dumps(tails, indent=1)}")
        time.sleep(0.5)


@pytest.fixture
def airflow(pg_server: Any, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """An Airflow installation of three processes on a metadata database in ``pg_server``."""
    pg_server.create_database("airflow_meta")
    home = Path(tempfile.mkdtemp(prefix="airflow-sched-"))
    dags = home / "dags"
    dags.mkdir()
    (dags / DAG_FILE.name).symlink_to(DAG_FILE)  # the DAG file alone (not its tests)
    port = _free_port()
    meta = (f"postgresql+psycopg://{pg_server.user}:{pg_server.password}@{pg_server.host}:"
            f"{pg_server.port}/airflow_meta")  # fmt: skip
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    nums = numbers(ROWS, start=500)
    write_numbers(inbox / "dnc_2026-11-27.csv", nums, time.time() - 60)
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "4",
        # paused until the test unpauses the fleet DAG: the shards DAG, scheduled nightly with
        # catchup off, would otherwise start its latest run at once and send every number too
        "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "True",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta,
        # the async engine through psycopg too (Airflow's default for PostgreSQL is asyncpg)
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC": meta.replace("+psycopg:", "+psycopg_async:"),
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "BATCH_CANCEL_WORKERS": "3",
        "BATCH_CANCEL_RETRIES": "0",
        "BATCH_CANCEL_INBOX": str(inbox),
        "BATCH_CANCEL_MIN_AGE_S": "0",
        "BATCH_CANCEL_SHARED": str(tmp_path / "shared"),
        "BATCH_CANCEL_CMD": CLI,
    }
    for name in ("GWS_BASE_URL", "GWS_USERNAME", "GWS_PASSWORD", "PGPASSWORD"):
        env.pop(name, None)
    migrated = subprocess.run([AIRFLOW, "db", "migrate"], env=env, capture_output=True, text=True,
                              timeout=300)  # fmt: skip
    assert migrated.returncode == 0, migrated.stderr[-3000:] + migrated.stdout[-2000:]
    sim = Simulator()
    host, sim_port = sim.base_url.removeprefix("http://").split(":")
    env["AIRFLOW_CONN_BATCH_CANCEL_GWS"] = json.dumps(
        {"conn_type": "http", "host": host, "port": int(sim_port), "schema": "http",
         "login": USER, "password": PASSWORD})  # fmt: skip
    env["AIRFLOW_CONN_BATCH_CANCEL_JOURNAL"] = json.dumps(
        {"conn_type": "postgres", "host": pg_server.host, "port": pg_server.port, "login": pg_server.user,
         "password": pg_server.password, "schema": "postgres",
         "extra": {"journal_schema": "af_sched", "lease": "5"}})  # fmt: skip
    logs = home / "logs-of-processes"
    logs.mkdir()
    procs = [subprocess.Popen([AIRFLOW, *cmd], env=env, stdout=(logs / f"{cmd[0]}.log").open("wb"),
                              stderr=subprocess.STDOUT, start_new_session=True)
             for cmd in (["api-server", "--port", str(port)], ["dag-processor"], ["scheduler"])]  # fmt: skip
    try:
        yield {"env": env, "procs": procs, "logs": logs, "sim": sim, "numbers": nums,
               "shared": tmp_path / "shared"}  # fmt: skip
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 15)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, 9)
                p.wait()
        sim.stop()
        subprocess.run(["rm", "-rf", str(home)], check=False)


@pytest.mark.timeout(420)
def test_fleet_dag_under_the_scheduler_runs_its_workers_at_the_same_time(
        airflow: dict[str, Any], pg_server: Any) -> None:  # fmt: skip
    procs, logs, env = airflow["procs"], airflow["logs"], airflow["env"]
    with _connect(pg_server, "airflow_meta") as meta:
        _wait("the DAG processor never serialized the fleet DAG",
              lambda: meta.execute("SELECT 1 FROM serialized_dag WHERE dag_id=%s", [FLEET_DAG_ID]).fetchone(),
              180, procs, logs)  # fmt: skip
        subprocess.run([AIRFLOW, "dags", "unpause", FLEET_DAG_ID], env=env, check=True,
                       capture_output=True, timeout=120)  # fmt: skip
        run_id = "sched-test"
        subprocess.run([AIRFLOW, "dags", "trigger", FLEET_DAG_ID, "--run-id", run_id], env=env, check=True,
                       capture_output=True, timeout=120)  # fmt: skip
        state = _wait("the DAG run never finished", lambda: (meta.execute(
            "SELECT state FROM dag_run WHERE dag_id=%s AND run_id=%s AND state IN ('success', 'failed')",
            [FLEET_DAG_ID, run_id]).fetchone() or [None])[0], 300, procs, logs)  # fmt: skip
        tis = meta.execute("SELECT task_id, map_index, state, start_date, end_date FROM task_instance "
                           "WHERE dag_id=%s AND run_id=%s ORDER BY task_id, map_index",
                           [FLEET_DAG_ID, run_id]).fetchall()  # fmt: skip
    assert state == "success", tis
    assert [t[2] for t in tis if t[0] in ("find_input", "write_report")] == ["success", "success"], tis
    workers = [t for t in tis if t[0] == "run_worker"]
    assert [(t[1], t[2]) for t in workers] == [(0, "success"), (1, "success"), (2, "success")], tis
    # the task instances overlapped: the last one started before the first one ended
    last_start, first_end = max(t[3] for t in workers), min(t[4] for t in workers)
    assert last_start < first_end, workers
    # and so did the journal's workers, each of which sent its share
    batch_run = "nightly-" + run_id
    with _connect(pg_server, "postgres") as journal:
        rows = journal.execute("SELECT worker, state, started_at, finished_at FROM af_sched.workers "
                               "WHERE run_id=%s ORDER BY started_at", [batch_run]).fetchall()  # fmt: skip
    assert len(rows) == 3 and {r[1] for r in rows} == {"done"}, rows
    j_last_start, j_first_end = max(r[2] for r in rows), min(r[3] for r in rows)
    assert j_last_start < j_first_end, rows
    report = read_csv(airflow["shared"] / batch_run / "report.csv")
    assert len(report) == ROWS and {r["status"] for r in report} == {"cancelled"}
    ledger = airflow["sim"].ledger()
    assert {str(e.reference_id).rsplit("-", 1)[0] for e in ledger.entries} == {f"bc-{batch_run}"}
    assert sorted(e.phone_number for e in ledger.entries) == sorted(airflow["numbers"])  # once each
    spans = ", ".join(f"{t[1]}:{t[3]:%H:%M:%S}-{t[4]:%H:%M:%S}" for t in workers)
    print(f"\nFIGURES airflow-scheduler: rows={ROWS}, task_instances={spans}, "
          f"ti_overlap_s={(first_end - last_start).total_seconds():.1f}, "
          f"journal_overlap_s={(j_first_end - j_last_start).total_seconds():.1f}, "
          f"posts={len(ledger.entries)}")
