"""Every command that reads an input or writes a report takes object URLs: preflight,
validate-job, status, report and merge (run: tests/test_object_storage.py), against
moto's real S3 server (tests/s3_server.py) and the simulator."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from helpers import ENV, USER, job_args, numbers, run_cli
from s3_server import S3Server

from batch_cancel.simulator import ThreadedSimulator


def _csv(nums: list[str]) -> bytes:
    return ("phone_number\n" + "\n".join(nums) + "\n").encode()


def _rows(s3: S3Server, bucket: str, key: str) -> list[dict[str, str]]:
    body = s3.client().get_object(Bucket=bucket, Key=key)["Body"].read().decode("utf-8")
    return list(csv.DictReader(io.StringIO(body)))


def _summary(stdout: str) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(stdout.strip().splitlines()[-1])
    return parsed


def test_preflight_and_validate_job_read_inputs_from_s3(
    s3: S3Server, sim: ThreadedSimulator, tmp_path: Path
) -> None:
    bucket = s3.bucket()
    s3.client().put_object(Bucket=bucket, Key="in/dnc.csv", Body=_csv([*numbers(7), "12345"]))
    url = f"s3://{bucket}/in/dnc.csv"
    checked = run_cli(["preflight", url, "--base-url", sim.base_url, "--username", USER], ENV)
    assert checked.exit_code == 0, checked.stderr
    assert "8 row(s)" in checked.stderr
    job = tmp_path / "job.toml"
    job.write_text(f'inputs = ["{url}"]\nreport = "s3://{bucket}/out/report.csv"\napplication_id = 1\n'
                   'campaign = "C"\ncalling_list = "L"\n', encoding="utf-8")  # fmt: skip
    valid = run_cli(["validate-job", str(job)])
    assert valid.exit_code == 0, valid.stderr
    summary = _summary(valid.stdout)
    assert summary["valid"] is True, summary
    assert summary["would_send"] == 7 and summary["rejected"] == 1, summary
    missing = run_cli(["validate-job", str(job), f"s3://{bucket}/in/none.csv"])
    assert missing.exit_code == 2
    assert f"s3://{bucket}/in/none.csv: no such object" in missing.stderr
    assert sim.ledger.entries == []  # neither command sends
    # nothing written to the bucket by either (the report check is a probe, removed)
    assert [o["Key"] for o in s3.client().list_objects_v2(Bucket=bucket)["Contents"]] == ["in/dnc.csv"]


def test_status_report_and_merge_with_s3_inputs_and_outputs(
    s3: S3Server, sim: ThreadedSimulator, tmp_path: Path
) -> None:
    bucket = s3.bucket(versioned=True)
    client = s3.client()
    client.put_object(Bucket=bucket, Key="dnc.csv", Body=_csv(numbers(9)))
    head = client.head_object(Bucket=bucket, Key="dnc.csv")
    url = f"s3://{bucket}/dnc.csv"
    for shard in range(2):
        args = job_args(sim.base_url, tmp_path, url, shard=f"{shard}/2", run_id="night-1",  # type: ignore[arg-type]
                        rate=0, state=tmp_path / f"shard-{shard}.sqlite")  # fmt: skip
        args[args.index("--report") + 1] = f"s3://{bucket}/shards/{shard}.csv"
        assert run_cli(args, ENV).exit_code == 0
    # status names the input by its URL, its hash, its ETag and version
    status = run_cli(["status", "--state", str(tmp_path / "shard-0.sqlite"), "--json"])
    assert status.exit_code == 0, status.stderr
    (source,) = json.loads(status.stdout)["inputs"]
    assert source["path"] == url
    assert source["etag"] == head["ETag"].strip('"') and source["version_id"] == head["VersionId"]
    refused = run_cli(["status", "--state", f"s3://{bucket}/state.sqlite"])
    assert refused.exit_code == 2
    assert "the journal is a local SQLite file or a postgresql://" in refused.stderr
    # report: a journal's report and evidence page written to the bucket
    report = run_cli(["report", "--state", str(tmp_path / "shard-1.sqlite"), "--out",
                      f"s3://{bucket}/again/1.csv", "--html", f"s3://{bucket}/again/1.html"])  # fmt: skip
    assert report.exit_code == 0, report.stderr
    assert _rows(s3, bucket, "again/1.csv") == _rows(s3, bucket, "shards/1.csv")
    page = client.get_object(Bucket=bucket, Key="again/1.html")["Body"].read().decode()
    assert url in page and f"version {head['VersionId']}" in page
    # merge: the shards' reports read from the bucket, the merged report written there
    merged = run_cli(["merge", f"s3://{bucket}/shards/0.csv", f"s3://{bucket}/shards/1.csv",
                      "--out", f"s3://{bucket}/merged.csv", "--run-id", "night-1"])  # fmt: skip
    assert merged.exit_code == 0, merged.stderr
    rows = _rows(s3, bucket, "merged.csv")
    assert [int(r["row"]) for r in rows] == list(range(1, 10))
    assert [r["phone_number"] for r in rows] == numbers(9) and {r["status"] for r in rows} == {"cancelled"}
    assert _summary(merged.stdout)["merged"] == [f"s3://{bucket}/shards/0.csv", f"s3://{bucket}/shards/1.csv"]
    gone = run_cli(["merge", f"s3://{bucket}/shards/0.csv", f"s3://{bucket}/shards/9.csv",
                    "--out", f"s3://{bucket}/merged2.csv"])  # fmt: skip
    assert gone.exit_code == 2 and f"report s3://{bucket}/shards/9.csv does not exist" in gone.stderr
    same = run_cli(["merge", f"s3://{bucket}/shards/0.csv", "--out", f"s3://{bucket}/shards/0.csv"])
    assert same.exit_code == 2 and "is the input file" in same.stderr
