"""The GWS simulator in a process of its own, and what benchmarks read from its ledger.

A separate process (not a thread) so the client under test owns its event loop and
its interpreter lock: on a small box a simulator sharing the GIL would slow the
client down and blur every figure.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from batch_cancel.simulator.ledger import Ledger

__all__ = ["PASSWORD", "USER", "SimProcess", "ledger_figures", "percentile", "write_numbers"]

USER = "agent"
PASSWORD = "bench-secret"
_URL = re.compile(r"listening on (http://\S+)")


class SimProcess:
    """``python -m batch_cancel simulate`` on a free loopback port."""

    def __init__(self, *extra: str) -> None:
        self._extra = extra
        self._proc: subprocess.Popen[str] | None = None
        self.base_url = ""

    def __enter__(self) -> SimProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        cmd = [sys.executable, "-m", "batch_cancel", "simulate", "--port", "0",
               "--user", f"{USER}:{PASSWORD}", "--long-poll-timeout", "5",
               # a long max-interval: a benchmark measures throughput, not session expiry
               "--max-interval", "3600", *self._extra]  # fmt: skip
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                      text=True, env=env)  # fmt: skip
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        match = _URL.search(line)
        if match is None:
            self._proc.kill()
            raise RuntimeError(f"the simulator did not start: {line!r}")
        self.base_url = match.group(1)
        return self

    def cpu_seconds(self) -> float:
        """The simulator's user + system CPU so far (0.0 where psutil is missing)."""
        try:
            import psutil
        except ImportError:
            return 0.0
        assert self._proc is not None
        times = psutil.Process(self._proc.pid).cpu_times()
        return float(times.user + times.system)

    def ledger(self) -> Ledger:
        with urllib.request.urlopen(self.base_url + "/_sim/ledger", timeout=60) as answer:
            return Ledger.from_json(answer.read().decode())

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._proc is not None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()


def write_numbers(path: Path, n: int) -> Path:
    """``n`` distinct, valid US numbers in a one-column CSV."""
    with path.open("w", encoding="utf-8") as f:
        f.write("phone_number\n")
        for i in range(n):
            f.write(f"212{2000000 + i:07d}\n")
    return path


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass(frozen=True)
class LedgerFigures:
    requests: int
    acked: int
    send_seconds: float  # first POST received -> last ack published
    rate: float  # requests per second between the first and the last POST
    peak_1s: int
    latency_ms: list[float]  # per acked ref: POST received -> ack published

    @property
    def throughput(self) -> float:
        return self.acked / self.send_seconds if self.send_seconds > 0 else 0.0


def ledger_figures(ledger: Ledger) -> LedgerFigures:
    entries = ledger.entries
    acks = {e.reference_id: e.t for e in ledger.events if e.kind == "ack" and not e.duplicate}
    starts = sorted(e.t_start for e in entries)
    first_sent: dict[str, float] = {}
    for e in entries:
        if e.reference_id is not None and e.reference_id not in first_sent:
            first_sent[e.reference_id] = e.t_start
    latency = [(t - first_sent[ref]) * 1000.0 for ref, t in acks.items()
               if ref is not None and ref in first_sent]  # fmt: skip
    span = (max(acks.values()) - starts[0]) if acks and starts else 0.0
    post_span = starts[-1] - starts[0] if len(starts) > 1 else 0.0
    return LedgerFigures(
        requests=len(entries),
        acked=len(acks),
        send_seconds=span,
        rate=(len(starts) - 1) / post_span if post_span > 0 else 0.0,
        peak_1s=ledger.peak_rate(1.0),
        latency_ms=latency,
    )
