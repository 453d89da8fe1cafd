"""The nightly DAG under real Apache Airflow: it loads, it maps, and dag.test() runs it end to end.

The GWS peer is `batch-cancel simulate`, started as a subprocess on a free port;
the DAG reaches it through an Airflow connection given as AIRFLOW_CONN_* env.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.dag_processing.dagbag import DagBag

from batch_cancel.simulator.ledger import Ledger

DAG_FILE = Path(__file__).resolve().parents[1] / "batch_cancel_dag.py"
DAG_ID = "batch_cancel_nightly_dnc_scrub"
CLI = str(Path(sys.executable).with_name("batch-cancel"))
USER, PASSWORD = "svc_dnc", "Airflow-test-pw-7"


def load_dag() -> Any:
    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}, bag.import_errors
    return bag.get_dag(DAG_ID)


def numbers(n: int, start: int) -> list[str]:
    return [f"646{3000000 + start + i:07d}" for i in range(n)]


def write_numbers(path: Path, nums: list[str], mtime: float) -> Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["phone_number"])
        w.writerows([n] for n in nums)
    os.utime(path, (mtime, mtime))
    return path


class Simulator:
    def __init__(self, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [CLI, "simulate", "--port", "0", "--user", f"{USER}:{PASSWORD}", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "GWS simulator listening on http://127.0.0.1:PORT ..."
        assert "listening on http://" in line, line
        self.base_url = line.split("listening on ", 1)[1].split()[0]

    def ledger(self) -> Ledger:
        with urllib.request.urlopen(self.base_url + "/_sim/ledger", timeout=10) as r:
            return Ledger.from_json(r.read().decode())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    now = time.time()
    older = write_numbers(inbox / "dnc_2026-11-25.csv", numbers(5, start=900), now - 86400)
    newer = numbers(14, start=100)
    write_numbers(inbox / "dnc_2026-11-26.csv", newer, now - 60)
    (inbox / "notes.txt").write_text("not an input", encoding="utf-8")
    for name, value in {
        "BATCH_CANCEL_INBOX": str(inbox), "BATCH_CANCEL_MIN_AGE_S": "0",
        "BATCH_CANCEL_SHARED": str(tmp_path / "shared"), "BATCH_CANCEL_CMD": CLI,
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    for name in ("GWS_BASE_URL", "GWS_USERNAME", "GWS_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    yield {"tmp": tmp_path, "numbers": newer, "older": older}


def use_connection(monkeypatch: pytest.MonkeyPatch, sim: Simulator) -> None:
    host, port = sim.base_url.removeprefix("http://").split(":")
    conn = {"conn_type": "http", "host": host, "port": int(port), "schema": "http",
            "login": USER, "password": PASSWORD}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_BATCH_CANCEL_GWS", json.dumps(conn))


def dag_module() -> Any:
    """The DAG file as a plain module, for its path and command helpers."""
    spec = importlib.util.spec_from_file_location("batch_cancel_dag", DAG_FILE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_folder(dag_run: Any) -> Path:
    dags = dag_module()
    return Path(dags.run_folder(dags.batch_run_id(dag_run.run_id)))


def states(dag_run: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for ti in dag_run.get_task_instances():
        found.setdefault(ti.task_id, []).append(str(ti.state))
    return found


def xcoms(dag_run: Any, task_id: str, key: str = "return_value") -> list[Any]:
    return xcoms_of(dag_run, DAG_ID, task_id, key)


def xcoms_of(dag_run: Any, dag_id: str, task_id: str, key: str = "return_value") -> list[Any]:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    query = XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_id, task_ids=task_id, key=key)
    with create_session() as session:
        rows = sorted(session.scalars(query).all(), key=lambda r: r.map_index)
        return [XComModel.deserialize_value(r) for r in rows]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_dag_loads_with_the_expected_tasks_and_mapping() -> None:
    dag = load_dag()
    assert set(dag.task_ids) == {"find_input", "run_shard", "merge_reports"}
    shard = dag.get_task("run_shard")
    assert shard.upstream_task_ids == {"find_input"}
    assert dag.get_task("merge_reports").upstream_task_ids == {"run_shard"}
    assert type(shard).__name__ == "DecoratedMappedOperator"
    assert shard.op_kwargs_expand_input.value == {"shard": [0, 1, 2]}  # BATCH_CANCEL_SHARDS=3
    assert shard.partial_kwargs["op_kwargs"]["count"] == 3
    assert shard.partial_kwargs["retries"] == 1  # BATCH_CANCEL_RETRIES; a retry resumes the journal
    assert str(dag.get_task("merge_reports").trigger_rule) in ("all_done", "TriggerRule.ALL_DONE")
    assert dag.max_active_runs == 1 and dag.catchup is False
    # credentials come from a connection or the environment, never from the DAG file
    source = DAG_FILE.read_text(encoding="utf-8")
    assert "conn.password" in source and "--password" not in source


def test_dag_run_is_green_and_merges_every_shard(setup: dict[str, Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    sim = Simulator()
    try:
        use_connection(monkeypatch, sim)
        dag_run = load_dag().test()
        assert str(dag_run.state) in ("success", "DagRunState.SUCCESS"), states(dag_run)
        folder = run_folder(dag_run)
        merged = read_csv(folder / "merged.csv")
        assert [int(r["row"]) for r in merged] == list(range(1, 15))
        assert {r["status"] for r in merged} == {"cancelled"}
        assert [r["phone_number"] for r in merged] == setup["numbers"]  # the newest file, not the older
        shard_rows = [read_csv(folder / f"shard-{i}.csv") for i in range(3)]
        assert sum(len(rows) for rows in shard_rows) == 14 and all(shard_rows)
        # each task pushed the CLI's last stdout line, the JSON summary
        pushed = xcoms(dag_run, "run_shard")
        assert [p["total"] for p in pushed] == [len(rows) for rows in shard_rows]
        assert {p["exit_code"] for p in pushed} == {0}
        (summary,) = xcoms(dag_run, "merge_reports")
        assert summary["total"] == summary["cancelled"] == 14 and summary["exit_code"] == 0
        ledger = sim.ledger()
        assert sorted(e.phone_number for e in ledger.entries) == sorted(setup["numbers"])
        assert all(e.operation == "DoNotCallRecord" for e in ledger.entries)  # from the job file
        run_id = folder.name
        assert {r["reference_id"] for r in merged} == {f"bc-{run_id}-{i}" for i in range(1, 15)}
        # an Airflow retry runs the same command: it resumes the journal and sends nothing again
        cmd = dag_module().shard_command(str(next((folder / "input").iterdir())), 0, 3, run_id)
        env = {**os.environ, "GWS_BASE_URL": sim.base_url, "GWS_USERNAME": USER, "GWS_PASSWORD": PASSWORD}
        again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout.strip().splitlines()[-1])["cancelled"] == len(shard_rows[0])
        assert len(sim.ledger().entries) == 14
    finally:
        sim.stop()


def test_dag_run_is_red_when_rows_fail(setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    failing = setup["numbers"][4]
    sim = Simulator("--fail-number", failing)
    try:
        use_connection(monkeypatch, sim)
        dag_run = load_dag().test()
        got = states(dag_run)
        assert str(dag_run.state) in ("failed", "DagRunState.FAILED"), got
        # the shards finished (exit 1 is a finished run); the merge decides the colour
        assert got["run_shard"] == ["success"] * 3 and got["find_input"] == ["success"], got
        assert got["merge_reports"] == ["failed"], got
        merged = read_csv(run_folder(dag_run) / "merged.csv")
        failed = [r for r in merged if r["status"] == "failed"]
        assert [r["phone_number"] for r in failed] == [failing]
        (summary,) = xcoms(dag_run, "merge_reports", key="summary")
        assert summary["failed"] == 1 and summary["cancelled"] == 13 and summary["exit_code"] == 1
    finally:
        sim.stop()


def test_no_input_fails_the_run(setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BATCH_CANCEL_PATTERN", "*.parquet")
    dag_run = load_dag().test()
    got = states(dag_run)
    assert got["find_input"] == ["failed"] and str(dag_run.state) in ("failed", "DagRunState.FAILED"), got
    assert got["merge_reports"] == ["failed"], got  # runs after all, and finds no reports


# -- fleet mode: the mapped tasks are workers of one PostgreSQL job ---------------------------
FLEET_DAG_ID = "batch_cancel_nightly_dnc_fleet"


def use_journal_connection(monkeypatch: pytest.MonkeyPatch, server: Any, journal_schema: str) -> None:
    conn = {"conn_type": "postgres", "host": server.host, "port": server.port, "login": server.user,
            "password": server.password, "schema": "postgres",
            "extra": {"journal_schema": journal_schema, "lease": "5"}}  # fmt: skip
    monkeypatch.setenv("AIRFLOW_CONN_BATCH_CANCEL_JOURNAL", json.dumps(conn))
    monkeypatch.delenv("PGPASSWORD", raising=False)


def load_fleet_dag() -> Any:
    bag = DagBag(dag_folder=str(DAG_FILE))
    assert bag.import_errors == {}, bag.import_errors
    return bag.get_dag(FLEET_DAG_ID)


def test_fleet_dag_maps_workers_of_one_job_and_writes_one_report() -> None:
    dag = load_fleet_dag()
    assert set(dag.task_ids) == {"find_input", "run_worker", "write_report"}
    worker = dag.get_task("run_worker")
    assert type(worker).__name__ == "DecoratedMappedOperator"
    assert worker.op_kwargs_expand_input.value == {"worker": [0, 1, 2]}  # BATCH_CANCEL_WORKERS=3
    assert dag.get_task("write_report").upstream_task_ids == {"run_worker"}
    assert str(dag.get_task("write_report").trigger_rule) in ("all_done", "TriggerRule.ALL_DONE")
    # only one of the two DAGs is scheduled (BATCH_CANCEL_MODE, shards by default)
    assert dag.schedule is None or str(dag.timetable.summary) in ("None", "")
    source = DAG_FILE.read_text(encoding="utf-8")
    assert "local disk" in source  # SQLite journals: the DAG's documentation says where


def test_fleet_dag_run_in_postgresql_mode(setup: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                          pg_server: Any) -> None:  # fmt: skip
    sim = Simulator()
    try:
        use_connection(monkeypatch, sim)
        use_journal_connection(monkeypatch, pg_server, "af_fleet")
        dag_run = load_fleet_dag().test()
        got = states(dag_run)
        assert str(dag_run.state) in ("success", "DagRunState.SUCCESS"), got
        assert got["run_worker"] == ["success"] * 3 and got["write_report"] == ["success"], got
        folder = run_folder(dag_run)
        report = read_csv(folder / "report.csv")
        assert [int(r["row"]) for r in report] == list(range(1, 15))
        assert {r["status"] for r in report} == {"cancelled"}
        assert [r["phone_number"] for r in report] == setup["numbers"]
        assert (folder / "report.html").is_file()
        assert not list(folder.glob("*.sqlite"))  # no SQLite journal: the job lives in PostgreSQL
        # dag.test() runs mapped tasks one after another: the first worker drains the job, the
        # others join a complete job and send nothing (workers at once: test_scheduler.py)
        pushed = xcoms_of(dag_run, FLEET_DAG_ID, "run_worker")
        assert [p["exit_code"] for p in pushed] == [0, 0, 0]
        assert all(p["cancelled"] == 14 and p["pending"] == 0 for p in pushed)
        (summary,) = xcoms_of(dag_run, FLEET_DAG_ID, "write_report", key="summary")
        assert summary["total"] == summary["cancelled"] == 14 and summary["exit_code"] == 0
        ledger = sim.ledger()
        assert sorted(e.phone_number for e in ledger.entries) == sorted(setup["numbers"])  # once each
        # the password reached the workers through the environment only
        assert pg_server.password not in json.dumps([*pushed, summary])
    finally:
        sim.stop()
