"""Workers of a fleet as real CLI processes (the tests of tests/test_fleet*.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from helpers import job_args

from batch_cancel.simulator import ThreadedSimulator

__all__ = ["figures", "finish", "fleet_args", "spawn", "with_option"]


def fleet_args(sim: ThreadedSimulator, tmp: Path, src: Path, url: str, run_id: str,
               **opts: object) -> list[str]:
    """``run`` arguments for one worker of job ``run_id`` in the PostgreSQL journal ``url``."""
    args = job_args(sim.base_url, tmp, src, **opts)
    i = args.index("--state")
    args[i + 1] = url
    return [*args, "--run-id", run_id]


def with_option(args: list[str], flag: str, value: str) -> list[str]:
    """``args`` with ``flag``'s value replaced (or the flag added)."""
    if flag in args:
        i = args.index(flag)
        return [*args[:i + 1], value, *args[i + 2:]]
    return [*args, flag, value]


def spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "batch_cancel", *args], env={**os.environ, **env},
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _tail(stderr: str) -> str:
    """What explains a hang: a worker's log without its progress lines (one every 10 s
    would push everything else out of any tail that fits in a message)."""
    lines = [line for line in stderr.splitlines() if "batch_cancel.progress" not in line]
    return "\n".join(lines)[-4000:]


def finish(procs: list[subprocess.Popen[str]], timeout: float = 90) -> list[tuple[int, dict[str, Any], str]]:
    """Wait for each worker: (exit code, the JSON summary of its last stdout line, stderr)."""
    out = []
    for i, p in enumerate(procs):
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            tails = [f"worker {j}: {_tail(q.communicate()[1])}" for j, q in enumerate(procs) if j >= i]
            raise AssertionError(f"worker {i} still running after {timeout} s; stderr: "
                                 + "\n".join(tails)) from None  # fmt: skip
        last = stdout.strip().splitlines()[-1] if stdout.strip() else "{}"
        out.append((p.returncode, json.loads(last), stderr))
    return out


def figures(test: str, **values: object) -> None:
    """One line of a test's measured figures (``pytest -s`` shows them)."""
    print(f"\nFIGURES {test}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
