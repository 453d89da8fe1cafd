"""The command line's event loop (batch_cancel/event_loop.py): uvloop by default, the
standard loop on request, a clear exit 2 for a value that names neither."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from batch_cancel import event_loop
from batch_cancel.exceptions import ConfigError


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_uvloop_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(event_loop.ENV, raising=False)
    assert event_loop.run(_loop_module()).startswith("uvloop")


def test_the_standard_loop_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.ENV, "asyncio")
    assert event_loop.run(_loop_module()).startswith("asyncio")


def test_an_unknown_loop_is_refused_before_anything_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(event_loop.ENV, "trio")
    started = []

    async def main() -> None:
        started.append(True)

    with pytest.raises(ConfigError, match="BATCH_CANCEL_EVENT_LOOP='trio'"):
        event_loop.run(main())
    assert not started


def test_the_cli_says_so_in_one_line_and_exits_2(tmp_path: Path) -> None:
    numbers = tmp_path / "in.csv"
    numbers.write_text("phone\n+12025550143\n")
    args = [sys.executable, "-m", "batch_cancel", "run", str(numbers), "--dry-run", "--application-id", "1",
            "--campaign", "C", "--calling-list", "L", "--state", str(tmp_path / "s.sqlite"),
            "--report", str(tmp_path / "r.csv")]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, env={**os.environ, event_loop.ENV: "trio"},
                         check=False)  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "BATCH_CANCEL_EVENT_LOOP='trio'" in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "r.csv").exists()
    assert not (tmp_path / "s.sqlite").exists()
