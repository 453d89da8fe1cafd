"""``batch-cancel simulate``: help, option errors and a clean stop."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from batch_cancel.cli import cli

ROOT = Path(__file__).resolve().parents[2]


def test_help_carries_a_worked_example() -> None:
    result = CliRunner().invoke(cli, ["simulate", "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output
    # \b keeps the example's lines as written instead of re-wrapping them.
    assert "  batch-cancel simulate --port 8090 --user agent:secret \\\n" in result.output
    for knob in (
        "--fault-503-rate",
        "--fault-ack-delay",
        "--fault-drop-cometd-every",
        "--fault-hang-before-rate",
        "--dos-max-requests-per-sec",
        "user_event",
    ):
        assert knob in result.output


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["--fault-503-rate", "1.5"], "--fault-503-rate"),
        (["--fault-ack-drop-rate", "-0.1"], "--fault-ack-drop-rate"),
        (["--user", "nopassword"], "--user"),
        (["--fault-ack-delay", "2", "1"], "ack_delay"),
        (["--fault-retry-after", "soon"], "--fault-retry-after"),
        (["--port", "70000"], "--port"),
    ],
)
def test_bad_option_is_one_line_and_exit_2(args: list[str], mentions: str) -> None:
    result = CliRunner().invoke(cli, ["simulate", *args])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error:") and mentions in lines[0]
    assert "Traceback" not in result.output


def test_port_in_use_is_one_line_and_exit_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["simulate", "--port", str(port)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0]


@pytest.mark.subprocess
def test_serves_until_sigterm_and_exits_0() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "batch_cancel", "simulate", "--port", "0", "--no-csrf"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line
        base_url = line.split("listening on ")[1].split()[0]
        assert httpx.get(f"{base_url}/api/v2/me", auth=("agent", "secret")).status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.stderr is not None
    assert "Traceback" not in process.stderr.read()
