"""--metrics-file: Prometheus text exposition, parsed with prometheus-client's own parser
while the run is going and at its end, where it must say what the summary says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from helpers import ENV, Faults, job_args, make_sim, numbers, read_report, write_csv
from prometheus_client.parser import text_string_to_metric_families


def parse(path: Path) -> dict[str, Any]:
    """{sample name (+labels): value} of one textfile."""
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(path.read_text(encoding="utf-8")):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[s.name + (f"{{{labels}}}" if labels else "")] = s.value
    return out


def rows(m: dict[str, Any]) -> dict[str, float]:
    statuses = ("cancelled", "failed", "timed_out", "rejected", "duplicate", "pending")
    return {s: m[f"batch_cancel_rows{{status={s}}}"] for s in statuses}


@pytest.mark.subprocess
def test_metrics_file_mid_run_and_at_the_end_equal_the_summary(tmp_path: Path) -> None:
    nums = numbers(40)
    sim = make_sim(failing_numbers=frozenset(nums[:3]),
                   faults=Faults(seed=5, http_429_rate=0.15, retry_after=0.05))  # fmt: skip
    metrics = tmp_path / "batch_cancel.prom"
    try:
        src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in nums] + [["12345"]])
        args = [*job_args(sim.base_url, tmp_path, src, rate=25), "--metrics-file", str(metrics),
                "--metrics-interval", "0.2"]  # fmt: skip
        proc = subprocess.Popen([sys.executable, "-m", "batch_cancel", *args], env={**os.environ, **ENV},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        snapshots: list[dict[str, Any]] = []
        while proc.poll() is None:
            if metrics.exists():
                snapshots.append(parse(metrics))  # replaced whole, so always parseable
            time.sleep(0.05)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        sim.stop()
    assert proc.returncode == 1, stderr  # 3 failures and a rejected row
    summary = json.loads(stdout.strip().splitlines()[-1])
    mid = [m for m in snapshots if m["batch_cancel_run_finished"] == 0 and
           0 < m["batch_cancel_requests_total"] < 40]  # fmt: skip
    assert mid, "the file is rewritten while the run goes on"
    for m in mid:
        assert sum(rows(m).values()) == m["batch_cancel_input_rows"] == 41
        assert rows(m)["rejected"] == 1
    requests = [m["batch_cancel_requests_total"] for m in snapshots]
    assert requests == sorted(requests)  # a counter never goes back
    final = parse(metrics)
    assert final["batch_cancel_run_finished"] == 1
    assert final[f"batch_cancel_run_info{{run_id={summary['run_id']}}}"] == 1
    for status, value in rows(final).items():
        assert value == summary[status], status
    stats = summary["stats"]
    assert final["batch_cancel_requests_total"] == stats["requests"]
    assert final["batch_cancel_retries_total"] == stats["retries"] > 0
    assert final["batch_cancel_throttle_pauses_total"] == stats["throttle_pauses"] > 0
    assert final["batch_cancel_cometd_reconnects_total"] == stats["cometd_reconnects"]
    # one latency observation per record whose outcome came over CometD
    with_latency = [r for r in read_report(tmp_path / "report.csv") if r["latency_ms"]]
    assert final["batch_cancel_ack_latency_seconds_count"] == len(with_latency) == 40
    assert final["batch_cancel_ack_latency_seconds_bucket{le=+Inf}"] == 40
    assert final["batch_cancel_in_flight"] == 0 and final["batch_cancel_rate_limit"] == 25


def test_an_unwritable_metrics_file_exits_2_before_sending(tmp_path: Path) -> None:
    from helpers import run_cli

    sim = make_sim()
    try:
        (tmp_path / "not-a-folder").write_text("x")  # even root cannot write beneath a file
        src = write_csv(tmp_path / "in.csv", ["phone_number"], [[numbers(1)[0]]])
        result = run_cli([*job_args(sim.base_url, tmp_path, src),
                          "--metrics-file", str(tmp_path / "not-a-folder" / "m.prom")], ENV)  # fmt: skip
        assert result.exit_code == 2, result.stderr
        assert "--metrics-file" in result.stderr
        assert len(sim.ledger.entries) == 0
    finally:
        sim.stop()
