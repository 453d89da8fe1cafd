"""Throughput under a real GWS's throttles: ``python -m benchmarks.gws_throttles``.

    python -m benchmarks.gws_throttles [--repeat 3] [--quick]

1. Sporadic 503s (statusCode 4, no Retry-After) on 5 % of POSTs at ``--rate 200``,
   beside the fault-free run at the same rate: a lone 503 backs off only its own
   request, so the rate holds (target: at least 85 % of 200/s).
2. Jetty's DoS filter delaying above 25 requests/s per session (and 429 past a 2 s
   queue): ``--rate 100 --adaptive-rate`` against ``--rate 100`` alone, and the calm
   POST latency of a run at ``--rate 20`` under the limit (targets with the adaptive
   rate: at least 90 % of 25/s, p95 POST latency at most twice the calm p95).

Every figure is the median of ``--repeat`` runs; the variants run in turn within each
repeat. Rates come from the simulator's ledger (rows acknowledged per second, first
POST to last acknowledgement); POST latency is the tool's own (POST to its HTTP answer,
``stats.post_p95_ms``), as the server's delay is what it must notice.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.sim import PASSWORD, USER, SimProcess, ledger_figures, write_numbers

__all__ = ["main", "measure", "table"]

ENV = {**os.environ, "GWS_PASSWORD": PASSWORD}
DOS_LIMIT = 25.0


@dataclass(frozen=True)
class Sizes:
    rows_503: int
    rows_dos: int
    rows_calm: int


FULL = Sizes(rows_503=2000, rows_dos=500, rows_calm=200)
QUICK = Sizes(rows_503=400, rows_dos=80, rows_calm=40)


@dataclass(frozen=True)
class Figures:
    rows_per_s: float  # acknowledged rows per second (simulator clock)
    request_rate: float  # POSTs per second between the first and the last
    post_p50_ms: float
    post_p95_ms: float
    stats: dict[str, Any]


def _one(rows: int, sim_args: Sequence[str], tool_args: Sequence[str]) -> Figures:
    with tempfile.TemporaryDirectory(prefix="bc-bench-throttle-") as name:
        tmp = Path(name)
        write_numbers(tmp / "in.csv", rows)
        with SimProcess(*sim_args) as sim:
            cmd = [sys.executable, "-m", "batch_cancel", "run", str(tmp / "in.csv"),
                   "--base-url", sim.base_url, "--username", USER, "--application-id", "134",
                   "--campaign", "Campaign1", "--calling-list", "CallingList1",
                   "--state", str(tmp / "state.sqlite"), "--report", str(tmp / "report.csv"),
                   "-q", "--max-attempts", "10", *tool_args]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True, env=ENV, check=False)
            lines = out.stdout.strip().splitlines()
            if not lines:
                raise RuntimeError(f"the tool printed nothing: {out.stderr[-800:]}")
            summary = json.loads(lines[-1])
            figures = ledger_figures(sim.ledger())
    stats = summary.get("stats", {})
    return Figures(figures.throughput, figures.rate, float(stats.get("post_p50_ms", 0.0)),
                   float(stats.get("post_p95_ms", 0.0)), stats)  # fmt: skip


VARIANTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # name: (simulator flags, tool flags)
    "rate200-clean": ((), ("--rate", "200", "--concurrency", "16")),
    "rate200-503": (("--seed", "5", "--fault-503-rate", "0.05"), ("--rate", "200", "--concurrency", "16")),
    "dos-calm": (("--dos-max-requests-per-sec", "25"), ("--rate", "20", "--concurrency", "8")),
    "dos-adaptive": (("--dos-max-requests-per-sec", "25"),
                     ("--rate", "100", "--concurrency", "8", "--adaptive-rate")),
    "dos-fixed": (("--dos-max-requests-per-sec", "25"), ("--rate", "100", "--concurrency", "8")),
}  # fmt: skip


def measure(sizes: Sizes, repeat: int, log: Any = None) -> dict[str, list[Figures]]:
    rows = {"rate200-clean": sizes.rows_503, "rate200-503": sizes.rows_503, "dos-calm": sizes.rows_calm,
            "dos-adaptive": sizes.rows_dos, "dos-fixed": sizes.rows_dos}  # fmt: skip
    runs: dict[str, list[Figures]] = {k: [] for k in VARIANTS}
    for i in range(repeat):
        for key, (sim_args, tool_args) in VARIANTS.items():
            f = _one(rows[key], sim_args, tool_args)
            runs[key].append(f)
            if log is not None:
                log(f"  repeat {i + 1}/{repeat} {key:<14} {f.rows_per_s:7.1f} rows/s  "
                    f"POST p50 {f.post_p50_ms:7.2f} p95 {f.post_p95_ms:8.2f} ms")  # fmt: skip
    return runs


def _med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def table(runs: dict[str, list[Figures]], repeat: int) -> tuple[str, bool]:
    """The printed table, and whether every target was met."""
    def med(key: str, attr: str) -> float:
        return _med([getattr(f, attr) for f in runs[key]])

    out: list[str] = [f"GWS throttles: medians of {repeat} run(s), simulator on loopback in its own process"]
    clean, faulty = med("rate200-clean", "rows_per_s"), med("rate200-503", "rows_per_s")
    ok_503 = faulty >= 0.85 * 200
    out.append("6. sporadic 503s (5 % of POSTs, no Retry-After) at --rate 200")
    pauses = _med([f.stats.get("throttle_pauses", 0) for f in runs["rate200-503"]])
    out.append(f"   fault-free {clean:7.1f} rows/s ({clean / 200:5.1%} of 200)")
    out.append(f"   5 % 503s   {faulty:7.1f} rows/s ({faulty / 200:5.1%} of 200, "
               f"{faulty / clean if clean else 0:5.1%} of fault-free), shared pauses {pauses:.0f}"
               f"   target >= 85 % of 200: {'met' if ok_503 else 'MISSED'}")  # fmt: skip
    calm95, calm50 = med("dos-calm", "post_p95_ms"), med("dos-calm", "post_p50_ms")
    out.append(f"7. a DoS filter that delays above {DOS_LIMIT:g} requests/s per session (429 past 2 s)")
    out.append(f"   calm (--rate 20, under the limit): POST p50 {calm50:6.2f} ms  p95 {calm95:6.2f} ms")
    ok_dos = True
    for key, label in (("dos-adaptive", "--rate 100 --adaptive-rate"), ("dos-fixed", "--rate 100")):
        rate, p95 = med(key, "rows_per_s"), med(key, "post_p95_ms")
        ratio = p95 / calm95 if calm95 else 0.0
        line = (f"   {label:<27} {rate:6.1f} rows/s ({rate / DOS_LIMIT:5.1%} of 25/s)  POST p95 {p95:8.2f} ms"
                f" ({ratio:5.1f}x calm)")  # fmt: skip
        if key == "dos-adaptive":
            met = rate >= 0.9 * DOS_LIMIT and p95 <= 2 * calm95
            ok_dos = met
            settled = _med([f.stats.get("adaptive_rate", 0.0) for f in runs[key]])
            line += f"  settled at {settled:5.1f}/s  targets >=90 %, <=2x: {'met' if met else 'MISSED'}"
        out.append(line)
    return "\n".join(out), ok_503 and ok_dos


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gws_throttles", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (the median is shown)")
    parser.add_argument("--quick", action="store_true", help="small runs, one repeat: a smoke test")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    repeat = 1 if args.quick else args.repeat

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    text, ok = table(measure(sizes, repeat, log), repeat)
    print(text)
    if not ok and not args.quick:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
