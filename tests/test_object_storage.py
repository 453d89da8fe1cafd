"""Inputs, report and evidence page in object storage, end to end against a real S3 server.

The server is moto's standalone server (tests/s3_server.py), started by the tests on
a loopback port, checking signatures; the CLI finds it and its keys the SDK's way
(AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID...), and GWS is the simulator.
"""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from helpers import ENV, job_args, make_sim, numbers, run_cli
from s3_server import S3Server

from batch_cancel.exceptions import ReportUnwritable
from batch_cancel.object_store import ObjectUrl, write_object
from batch_cancel.simulator import ThreadedSimulator


def _parquet(nums: list[str]) -> bytes:
    buf = io.BytesIO()
    pq.write_table(pa.table({"phone_number": nums}), buf)
    return buf.getvalue()


def _csv(nums: list[str]) -> bytes:
    return ("phone_number\n" + "\n".join(nums) + "\n").encode()


def _get(s3: S3Server, bucket: str, key: str) -> dict[str, Any]:
    answer: dict[str, Any] = s3.client().get_object(Bucket=bucket, Key=key)
    answer["bytes"] = answer["Body"].read()
    return answer


def _report_rows(data: bytes) -> list[dict[str, str]]:
    import csv

    return list(csv.DictReader(io.StringIO(data.decode("utf-8"))))


def _args(sim: ThreadedSimulator, tmp: Path, *inputs: str, report: str, **opts: Any) -> list[str]:
    args = job_args(sim.base_url, tmp, *inputs, **opts)  # type: ignore[arg-type]
    args[args.index("--report") + 1] = report
    return args


def test_parquet_and_csv_in_from_s3_report_and_evidence_out_to_s3(
    s3: S3Server, sim: ThreadedSimulator, tmp_path: Path
) -> None:
    bucket = s3.bucket(versioned=True)
    client = s3.client()
    client.put_object(Bucket=bucket, Key="in/dnc.parquet", Body=_parquet(numbers(30)))
    client.put_object(Bucket=bucket, Key="in/extra.csv", Body=_csv(numbers(6, start=700)))
    parquet_head = client.head_object(Bucket=bucket, Key="in/dnc.parquet")
    args = _args(sim, tmp_path, f"s3://{bucket}/in/dnc.parquet", f"s3://{bucket}/in/extra.csv",
                 report=f"s3://{bucket}/out/report.csv", html=f"s3://{bucket}/out/report.html",
                 rate=0)  # fmt: skip
    result = run_cli(args, ENV)
    assert result.exit_code == 0, result.stderr
    assert result.summary["cancelled"] == 36
    assert result.summary["report"] == f"s3://{bucket}/out/report.csv"
    assert len({e.reference_id for e in sim.ledger.entries}) == 36
    report = _get(s3, bucket, "out/report.csv")
    rows = _report_rows(report["bytes"])
    assert [r["phone_number"] for r in rows] == numbers(30) + numbers(6, start=700)
    assert {r["status"] for r in rows} == {"cancelled"}
    assert {r["source"] for r in rows} == {f"s3://{bucket}/in/dnc.parquet", f"s3://{bucket}/in/extra.csv"}
    assert report["Metadata"] == {"generator": "batch-cancel"}
    page = _get(s3, bucket, "out/report.html")["bytes"].decode()
    import hashlib

    inputs = page[page.index('id="inputs"'):page.index("</table>", page.index('id="inputs"'))]
    assert f"s3://{bucket}/in/dnc.parquet" in inputs
    assert hashlib.sha256(_parquet(numbers(30))).hexdigest() in inputs
    assert f"version {parquet_head['VersionId']}" in inputs
    assert f"ETag {parquet_head['ETag'].strip(chr(34))}" in inputs
    # no probe object or half upload left behind
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]}
    assert keys == {"in/dnc.parquet", "in/extra.csv", "out/report.csv", "out/report.html"}
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_resume_after_kill_9_reads_the_object_again(s3: S3Server, tmp_path: Path) -> None:
    n = 300
    sim = make_sim()
    try:
        bucket = s3.bucket()
        s3.client().put_object(Bucket=bucket, Key="dnc.parquet", Body=_parquet(numbers(n)))
        args = _args(sim, tmp_path, f"s3://{bucket}/dnc.parquet", report=f"s3://{bucket}/report.csv",
                     rate=200, concurrency=8)  # fmt: skip
        proc = subprocess.Popen([sys.executable, "-m", "batch_cancel", *args], env={**os.environ, **ENV},
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 60
        while len(sim.ledger.entries) < 80:
            assert time.monotonic() < deadline and proc.poll() is None, "the job never got going"
            time.sleep(0.005)
        proc.kill()  # SIGKILL: no report, no clean-up
        proc.wait(10)
        time.sleep(0.3)
        killed_at = time.time()
        db = sqlite3.connect(f"file:{tmp_path / 'state.sqlite'}?mode=ro", uri=True)
        done = {ref for (ref,) in db.execute("SELECT reference_id FROM records WHERE status='cancelled'")}
        db.close()
        assert 0 < len(done) < n
        resumed = run_cli(args, ENV)
        assert resumed.exit_code == 0, resumed.stderr
        rows = _report_rows(_get(s3, bucket, "report.csv")["bytes"])
        assert len(rows) == n and {r["status"] for r in rows} == {"cancelled"}
        # nothing cancelled before the kill went out again
        again = [e for e in sim.ledger.entries if e.t_start > killed_at and e.reference_id in done]
        assert again == []
        assert {e.reference_id for e in sim.ledger.entries} == {r["reference_id"] for r in rows}
    finally:
        sim.stop()


def test_a_replaced_object_is_refused_on_resume(s3: S3Server, sim: ThreadedSimulator, tmp_path: Path) -> None:
    bucket = s3.bucket(versioned=True)
    body = _csv(numbers(4))
    s3.client().put_object(Bucket=bucket, Key="dnc.csv", Body=body)
    args = _args(sim, tmp_path, f"s3://{bucket}/dnc.csv", report=str(tmp_path / "report.csv"), rate=0)
    assert run_cli(args, ENV).exit_code == 0
    sent = len(sim.ledger.entries)
    # the same list uploaded again: the same bytes, another version of the object
    s3.client().put_object(Bucket=bucket, Key="dnc.csv", Body=body)
    again = run_cli(args, ENV)
    assert again.exit_code == 2
    assert f"input s3://{bucket}/dnc.csv was replaced since the run began (version" in again.stderr
    assert len(sim.ledger.entries) == sent
    # other bytes under the key are refused by the content hash, versions or not
    s3.client().put_object(Bucket=bucket, Key="dnc.csv", Body=_csv(numbers(4, start=500)))
    assert run_cli(args, ENV).exit_code == 2
    assert len(sim.ledger.entries) == sent


def test_an_existing_object_not_written_by_batch_cancel_is_not_overwritten(
    s3: S3Server, sim: ThreadedSimulator, tmp_path: Path
) -> None:
    bucket = s3.bucket()
    client = s3.client()
    client.put_object(Bucket=bucket, Key="dnc.csv", Body=_csv(numbers(3)))
    client.put_object(Bucket=bucket, Key="notes.csv", Body=b"who,what\nlegal,keep this\n")
    result = run_cli(_args(sim, tmp_path, f"s3://{bucket}/dnc.csv", report=f"s3://{bucket}/notes.csv"), ENV)
    assert result.exit_code == 2
    assert f"--report s3://{bucket}/notes.csv exists and is not a batch-cancel report" in result.stderr
    assert _get(s3, bucket, "notes.csv")["bytes"] == b"who,what\nlegal,keep this\n"
    assert sim.ledger.entries == []
    # the report equal to the input is refused too; a report of ours is replaced
    same = run_cli(_args(sim, tmp_path, f"s3://{bucket}/dnc.csv", report=f"s3a://{bucket}/dnc.csv"), ENV)
    assert same.exit_code == 2 and "is the input file" in same.stderr
    ours = _args(sim, tmp_path, f"s3://{bucket}/dnc.csv", report=f"s3://{bucket}/report.csv", rate=0)
    assert run_cli(ours, ENV).exit_code == 0
    (tmp_path / "state.sqlite").unlink()
    assert run_cli(ours, ENV).exit_code == 0


def test_wrong_credentials_exit_2_with_one_line_and_nothing_sent(
    s3: S3Server, sim: ThreadedSimulator, tmp_path: Path
) -> None:
    bucket = s3.bucket()
    s3.client().put_object(Bucket=bucket, Key="dnc.csv", Body=_csv(numbers(3)))
    wrong = "wrong-secret-Zq81"
    env = {**os.environ, **ENV, **s3.env(AWS_SECRET_ACCESS_KEY=wrong)}
    args = _args(sim, tmp_path, f"s3://{bucket}/dnc.csv", report=str(tmp_path / "r.csv"))
    proc = subprocess.run([sys.executable, "-m", "batch_cancel", *args], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"batch-cancel: error: s3://{bucket}/dnc.csv: access denied (Forbidden); check the "
                     "credentials the cloud's SDK finds (environment, profile, instance role)"]  # fmt: skip
    assert wrong not in proc.stderr + proc.stdout
    assert sim.ledger.entries == []
    assert not (tmp_path / "r.csv").exists()


def test_state_in_object_storage_is_refused(s3: S3Server, tmp_path: Path) -> None:
    result = run_cli(["run", str(tmp_path / "x.csv"), "--dry-run", "--state", "s3://b/state.sqlite"])
    assert result.exit_code == 2
    assert "--state s3://b/state.sqlite: the journal is a local SQLite file or a postgresql:// URL" in (
        result.stderr)


def test_an_upload_that_fails_half_way_leaves_the_old_object_and_no_parts(s3: S3Server) -> None:
    bucket = s3.bucket()
    client = s3.client()
    client.put_object(Bucket=bucket, Key="report.csv", Body=b"row,phone_number,status\n")

    def write(f: Any) -> None:
        f.write(b"x" * (6 << 20))  # past one part (5 MiB): a multipart upload has begun
        f.flush()
        raise OSError(28, "No space left on device")

    with pytest.raises(ReportUnwritable):
        write_object(ObjectUrl(f"s3://{bucket}/report.csv"), write, ReportUnwritable)
    assert _get(s3, bucket, "report.csv")["bytes"] == b"row,phone_number,status\n"
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
