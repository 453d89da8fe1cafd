"""--service-time: each outbound-record request takes that long before GWS answers it."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import ENV, job_args, make_sim, numbers, read_report, run_cli, write_csv


def test_each_request_takes_the_service_time(tmp_path: Path) -> None:
    sim = make_sim(service_time=0.05)
    try:
        src = write_csv(tmp_path / "in.csv", ["phone_number"], [[x] for x in numbers(6)])
        result = run_cli(job_args(sim.base_url, tmp_path, src, rate=0, concurrency=3), ENV)
        entries = list(sim.ledger.entries)
    finally:
        sim.stop()
    assert result.exit_code == 0, result.stderr
    assert {r["status"] for r in read_report(tmp_path / "report.csv")} == {"cancelled"}
    assert len(entries) == 6
    assert all(e.t_end is not None and e.t_end - e.t_start >= 0.05 for e in entries)


def test_service_time_must_not_be_negative() -> None:
    from batch_cancel.simulator import SimulatorConfig

    with pytest.raises(ValueError, match="service_time"):
        SimulatorConfig(service_time=-1.0)
