"""The benchmark's --quick mode runs end to end, so `python -m benchmarks` cannot rot."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_benchmarks_quick_prints_every_row() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--quick"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=280, check=False)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout
    for heading in ("1. throughput", "journal on/off", "2. rate accuracy", "3. latency", "4. dry run",
                    "5. start-up", "6. peak RSS", "cpu"):  # fmt: skip
        assert heading in text, text
    assert "heavy modules loaded: none" in text, text
