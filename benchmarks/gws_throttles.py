"""Throughput under a real GWS's throttles: ``python -m benchmarks.gws_throttles``.

    python -m benchmarks.gws_throttles [--repeat 3] [--quick] [--limits 10,25,50,100,200]

1. Sporadic 503s (statusCode 4, no Retry-After) on 5 % of POSTs at ``--rate 200``,
   with and without ``--adaptive-rate``, beside the fault-free run at the same rate: a
   lone 503 backs off only its own request, so the rate holds (target: at least 85 %
   of 200/s, both ways).
2. The throttle sweep: Jetty's DoS filter delaying above N requests/s per session (and
   429 past a 2 s queue) for N = 10, 25, 50, 100, 200. Per N, a calm run at ``--rate``
   0.8 N (under the limit) gives the calm POST p95, and ``--rate`` 4N
   ``--adaptive-rate`` must settle at at least 90 % of N with a POST p95 at most twice
   the calm p95.

Every figure is the median of ``--repeat`` runs; the variants run in turn within each
repeat. Rows/s come from the simulator's ledger (rows acknowledged per second, first
POST to last acknowledgement); the settled rate is the POSTs the simulator received per
second over the second half of the run (the first half holds the search for the limit);
POST latency is the tool's own over the whole run (POST to its HTTP answer,
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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch_cancel.simulator.ledger import Ledger
from benchmarks.sim import PASSWORD, USER, SimProcess, ledger_figures, write_numbers

__all__ = ["main", "measure", "table"]

ENV = {**os.environ, "GWS_PASSWORD": PASSWORD}
LIMITS = (10, 25, 50, 100, 200)


@dataclass(frozen=True)
class Sizes:
    rows_503: int
    sweep_seconds: float  # an adaptive run lasts about this long at the limit
    calm_seconds: float


FULL = Sizes(rows_503=2000, sweep_seconds=20.0, calm_seconds=4.0)
QUICK = Sizes(rows_503=400, sweep_seconds=8.0, calm_seconds=2.0)


@dataclass(frozen=True)
class Figures:
    rows_per_s: float  # acknowledged rows per second (simulator clock)
    settled_rate: float  # POSTs received per second over the second half of the run
    post_p50_ms: float
    post_p95_ms: float
    stats: dict[str, Any]


def settled_rate(ledger: Ledger) -> float:
    """POSTs the simulator received per second over the second half of the run."""
    starts = sorted(e.t_start for e in ledger.entries)
    if len(starts) < 4:
        return 0.0
    middle = (starts[0] + starts[-1]) / 2
    late = [t for t in starts if t >= middle]
    return (len(late) - 1) / (late[-1] - late[0]) if late[-1] > late[0] else 0.0


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
            ledger = sim.ledger()
    stats = summary.get("stats", {})
    return Figures(ledger_figures(ledger).throughput, settled_rate(ledger),
                   float(stats.get("post_p50_ms", 0.0)), float(stats.get("post_p95_ms", 0.0)),
                   stats)  # fmt: skip


@dataclass(frozen=True)
class Variant:
    rows: int
    sim_args: tuple[str, ...]
    tool_args: tuple[str, ...]


def _fmt(rate: float) -> str:
    return f"{rate:g}"


def variants(sizes: Sizes, limits: Sequence[int]) -> dict[str, Variant]:
    fault = ("--seed", "5", "--fault-503-rate", "0.05")
    at_200 = ("--rate", "200", "--concurrency", "16")
    out = {
        "rate200-clean": Variant(sizes.rows_503, (), at_200),
        "rate200-503": Variant(sizes.rows_503, fault, at_200),
        "rate200-503-adaptive": Variant(sizes.rows_503, fault, (*at_200, "--adaptive-rate")),
    }
    for n in limits:
        dos = ("--dos-max-requests-per-sec", _fmt(n))
        out[f"calm-{n}"] = Variant(max(40, round(n * sizes.calm_seconds)), dos,
                                   ("--rate", _fmt(0.8 * n), "--concurrency", "8"))  # fmt: skip
        adaptive = ("--rate", _fmt(4 * n), "--concurrency", "8", "--adaptive-rate")
        out[f"adaptive-{n}"] = Variant(round(n * sizes.sweep_seconds), dos, adaptive)
    return out


def measure(
    sizes: Sizes, repeat: int, limits: Sequence[int] = LIMITS, log: Callable[[str], None] | None = None
) -> dict[str, list[Figures]]:
    todo = variants(sizes, limits)
    runs: dict[str, list[Figures]] = {k: [] for k in todo}
    for i in range(repeat):
        for key, v in todo.items():
            f = _one(v.rows, v.sim_args, v.tool_args)
            runs[key].append(f)
            if log is not None:
                log(f"  repeat {i + 1}/{repeat} {key:<20} {f.rows_per_s:7.1f} rows/s  settled "
                    f"{f.settled_rate:7.1f}/s  POST p50 {f.post_p50_ms:7.2f} "
                    f"p95 {f.post_p95_ms:8.2f} ms")  # fmt: skip
    return runs


def _med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def table(runs: dict[str, list[Figures]], repeat: int) -> tuple[str, bool]:
    """The printed table, and whether every target was met."""

    def med(key: str, attr: str) -> float:
        return _med([getattr(f, attr) for f in runs[key]])

    out: list[str] = [f"GWS throttles: medians of {repeat} run(s), simulator on loopback in its own process"]
    clean = med("rate200-clean", "rows_per_s")
    out.append("1. sporadic 503s (5 % of POSTs, no Retry-After) at --rate 200, 16 in flight")
    out.append(f"   fault-free                   {clean:7.1f} rows/s ({clean / 200:6.1%} of 200)")
    ok = True
    for key, label in (("rate200-503", "5 % 503s"), ("rate200-503-adaptive", "5 % 503s, --adaptive-rate")):
        rate = med(key, "rows_per_s")
        pauses = _med([f.stats.get("throttle_pauses", 0) for f in runs[key]])
        met = rate >= 0.85 * 200
        ok = ok and met
        out.append(f"   {label:<28} {rate:7.1f} rows/s ({rate / 200:6.1%} of 200, "
                   f"{rate / clean if clean else 0:6.1%} of fault-free), shared pauses {pauses:.0f}"
                   f"   >= 85 %: {'met' if met else 'MISSED'}")  # fmt: skip
    out.append("2. a DoS filter that delays above N requests/s per session (429 past 2 s): --adaptive-rate,")
    out.append("   --rate 4N, 8 in flight; calm = --rate 0.8N; targets: settled >= 90 % of N, p95 <= 2x calm")
    out.append(f"   {'N':>5} {'rows/s':>8} {'settled/s':>10} {'% of N':>7} {'POST p95':>9} {'calm p95':>9}"
               f" {'p95/calm':>9}  {'end rate':>8}  targets")  # fmt: skip
    limits = sorted(int(k.split("-")[1]) for k in runs if k.startswith("adaptive-"))
    for n in limits:
        rows, settled = med(f"adaptive-{n}", "rows_per_s"), med(f"adaptive-{n}", "settled_rate")
        p95, calm95 = med(f"adaptive-{n}", "post_p95_ms"), med(f"calm-{n}", "post_p95_ms")
        ratio = p95 / calm95 if calm95 else 0.0
        end = _med([f.stats.get("adaptive_rate", 0.0) for f in runs[f"adaptive-{n}"]])
        met = settled >= 0.9 * n and ratio <= 2.0
        ok = ok and met
        verdict = "met" if met else "MISSED"
        out.append(f"   {n:>5} {rows:>8.1f} {settled:>10.1f} {settled / n:>7.1%} {p95:>7.2f}ms"
                   f" {calm95:>7.2f}ms {ratio:>8.2f}x  {end:>8.1f}  {verdict}")  # fmt: skip
    return "\n".join(out), ok


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gws_throttles", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (the median is shown)")
    parser.add_argument("--quick", action="store_true", help="short runs, one repeat: a smoke test")
    parser.add_argument("--limits", default=",".join(map(str, LIMITS)),
                        help="the DoS filter's limits N to sweep, comma-separated")  # fmt: skip
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    repeat = 1 if args.quick else args.repeat
    limits = [int(x) for x in args.limits.split(",") if x.strip()]

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    load_before = os.getloadavg()
    text, ok = table(measure(sizes, repeat, limits, log), repeat)
    print(text)
    # other work on the box slows the client and the simulator alike: the figures with their load
    print("load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}, after: {:.2f} {:.2f} {:.2f}".format(
        *load_before, *os.getloadavg()))  # fmt: skip
    if not ok and not args.quick:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
