"""The nightly DAG with its inbox and reports in object storage, under real Apache Airflow.

The store is moto's standalone S3 server (the main suite's tests/s3_server.py: signatures
checked), started here; the DAG names it in ObjectStoragePath's way, ``s3://CONN_ID@bucket/…``,
through an Airflow connection given as AIRFLOW_CONN_* env, and the worker's environment
holds no AWS keys: what reaches the store comes from the connection. No task downloads the
list or uploads the report: batch-cancel reads and writes the bucket itself.
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk.exceptions import AirflowFailException
from test_dag import Simulator, dag_module, load_dag, numbers, run_folder, states, use_connection, xcoms

STORE_CONN = "dnc_store"


@pytest.fixture(scope="module")
def s3_server() -> Iterator[Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "tests"))
    try:
        from s3_server import serve
    finally:
        sys.path.pop(0)
    yield from serve()


def _csv(nums: list[str]) -> bytes:
    return ("phone_number\n" + "\n".join(nums) + "\n").encode()


def _rows(server: Any, bucket: str, key: str) -> list[dict[str, str]]:
    body = server.client().get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
    return list(csv.DictReader(io.StringIO(body)))


def test_dag_reads_its_list_from_s3_and_writes_its_reports_there(
    s3_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bucket = s3_server.bucket("dnc-exports", versioned=True)
    client = s3_server.client()
    client.put_object(Bucket=bucket, Key="inbox/2026-12-05.csv", Body=_csv(numbers(5, start=900)))
    time.sleep(1.1)  # S3's LastModified counts seconds: the next one is the newer
    newest = numbers(14, start=100)
    client.put_object(Bucket=bucket, Key="inbox/2026-12-06.csv", Body=_csv(newest))
    client.put_object(Bucket=bucket, Key="inbox/notes.txt", Body=b"not an input")
    head = client.head_object(Bucket=bucket, Key="inbox/2026-12-06.csv")
    store = {"conn_type": "aws", "login": s3_server.key_id, "password": s3_server.secret,
             "extra": {"endpoint_url": s3_server.endpoint, "region_name": "us-east-1"}}  # fmt: skip
    for name, value in {
        "AIRFLOW_CONN_DNC_STORE": json.dumps(store),
        "BATCH_CANCEL_INBOX": f"s3://{STORE_CONN}@{bucket}/inbox/",
        "BATCH_CANCEL_REPORTS": f"s3://{STORE_CONN}@{bucket}/reports/",
        "BATCH_CANCEL_MIN_AGE_S": "0", "BATCH_CANCEL_SHARED": str(tmp_path / "shared"),
        "BATCH_CANCEL_CMD": str(Path(sys.executable).with_name("batch-cancel")),
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_PROFILE",
                 "GWS_BASE_URL", "GWS_USERNAME", "GWS_PASSWORD"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    sim = Simulator()
    try:
        use_connection(monkeypatch, sim)
        dag = load_dag()
        assert set(dag.task_ids) == {"find_input", "run_shard", "merge_reports"}  # no download/upload task
        dag_run = dag.test()
        assert str(dag_run.state) in ("success", "DagRunState.SUCCESS"), states(dag_run)
        run_id = run_folder(dag_run).name
        url = f"s3://{bucket}/inbox/2026-12-06.csv"
        assert xcoms(dag_run, "find_input") == [url]  # the newest object, by its URL
        merged = _rows(s3_server, bucket, f"reports/{run_id}/merged.csv")
        assert [int(r["row"]) for r in merged] == list(range(1, 15))
        assert [r["phone_number"] for r in merged] == newest
        assert {r["status"] for r in merged} == {"cancelled"}
        assert {r["source"] for r in merged} == {url}
        keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="reports/")["Contents"]}
        assert keys == {f"reports/{run_id}/{name}" for name in ("shard-0.csv", "shard-1.csv", "shard-2.csv",
                                                                 "merged.csv")}  # fmt: skip
        (summary,) = xcoms(dag_run, "merge_reports")
        assert summary["total"] == summary["cancelled"] == 14
        assert summary["report"] == f"s3://{bucket}/reports/{run_id}/merged.csv"
        # nothing of the list on the worker's disk: only the shards' journals, which record the
        # object's version, so a retry would refuse a list replaced under the same key
        folder = run_folder(dag_run)
        assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(("-wal", "-shm"))) == [
            "input.json", "shard-0.sqlite", "shard-1.sqlite", "shard-2.sqlite"]
        import sqlite3

        db = sqlite3.connect(folder / "shard-0.sqlite")
        (inputs,) = db.execute("SELECT value FROM meta WHERE key = 'inputs'").fetchone()
        db.close()
        assert json.loads(inputs)[0]["version_id"] == head["VersionId"]
        assert sorted(e.phone_number for e in sim.ledger().entries) == sorted(newest)
        # the connection's secret reached batch-cancel through its environment only
        assert s3_server.secret not in json.dumps([*xcoms(dag_run, "run_shard"), summary])
        # the same list uploaded again under the key: a task of this run would refuse it, and
        # so would a retry of a shard (its journal kept the version it read)
        sent = len(sim.ledger().entries)
        client.put_object(Bucket=bucket, Key="inbox/2026-12-06.csv", Body=_csv(newest))
        dags = dag_module()
        with pytest.raises(AirflowFailException, match="was replaced since find_input chose it"):
            dags.check_input_unchanged(url, run_id)
        env = {**dags.gws_env(), "GWS_BASE_URL": sim.base_url}
        again = subprocess.run(dags.shard_command(url, 0, 3, run_id), env=env, capture_output=True,
                               text=True, timeout=60)  # fmt: skip
        assert again.returncode == 2, again.stderr
        assert f"input {url} was replaced since the run began (version" in again.stderr
        assert len(sim.ledger().entries) == sent
    finally:
        sim.stop()
