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
                    "5. start-up", "6. peak RSS", "cpu", "CPU by phase", "lean script  ",
                    "order-flipped pairs", "a SQLite journal"):  # fmt: skip
        assert heading in text, text
    assert "heavy modules loaded: none" in text, text


def test_the_paired_ratio_interval_tells_noise_from_a_difference() -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.__main__ import interval

    # tool/lean ratios of a real series of 9 repeats on this box: a median of 0.94, yet
    # the interval reaches parity, so 9 repeats cannot tell these two apart
    noisy = [0.96, 0.86, 0.78, 1.08, 0.84, 0.94, 0.85, 1.00, 0.94]
    low, high = interval(noisy)
    assert low < 0.9 and high >= 1.0
    assert interval(noisy) == (low, high)  # seeded: the same runs print the same figures
    assert interval([0.90, 0.86, 0.88, 0.93, 0.84, 0.91, 0.87])[1] < 1.0  # clearly slower
    low, high = interval([0.97, 1.05, 0.92, 1.08, 1.01, 0.95, 1.03])
    assert low < 1.0 < high  # parity within the noise: neither side is faster
    assert interval([1.21, 1.25, 1.19, 1.3, 1.22, 1.24, 1.2])[0] > 1.0
    assert interval([1.0] * 8 + [0.5, 1.5]) == (1.0, 1.0)  # the median's interval, not the range
    assert interval([1.1]) == (1.1, 1.1)  # too few repeats for a bootstrap: the range itself
