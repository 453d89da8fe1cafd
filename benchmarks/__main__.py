"""batch-cancel's figures against the GWS simulator on loopback: ``python -m benchmarks``.

    python -m benchmarks [--pairs 15] [--repeat 3] [--quick] [--records N] [--json OUT]

Every figure is the median of ``--repeat`` runs. The simulator runs in a process of
its own (a fresh one per run, so ledgers never mix) and batch-cancel runs through
its real CLI as a subprocess; the clients to compare are run in turn within each
repeat, in an order that flips every repeat, so a busy moment or a drift of a shared
box hits them alike; their paired ratio carries a 95 % bootstrap interval, which
says whether a difference is more than the box's noise. Throughput is measured on
the simulator's clock, from the first POST it received to the last ack it
published, for every client alike (start-up, planning and the report are shown
separately as the tool's wall time).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batch_cancel.phase_cpu import ENV as PHASE_ENV
from batch_cancel.phase_cpu import PHASES
from benchmarks.sim import (
    PASSWORD,
    USER,
    LedgerFigures,
    SimProcess,
    ledger_figures,
    percentile,
    write_numbers,
)

__all__ = ["main"]

ENV = {**os.environ, "GWS_PASSWORD": PASSWORD}
HEAVY = ("pandas", "pyarrow", "aiohttp", "httpx")


@dataclass(frozen=True)
class Sizes:
    records: int  # tool, lean baseline (aiohttp), journal on/off
    httpx_records: int  # lean baseline on stock httpx (about 5x slower)
    sequential_records: int
    rate_seconds: float  # how long each --rate run lasts
    help_runs: int


FULL = Sizes(records=10_000, httpx_records=2_000, sequential_records=1_000, rate_seconds=5.0, help_runs=10)
QUICK = Sizes(records=1_500, httpx_records=400, sequential_records=150, rate_seconds=1.5, help_runs=3)


# -- running things ---------------------------------------------------------------------
def _python(*args: str) -> list[str]:
    return [sys.executable, *args]


def _last_json(out: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = out.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"{out.args[:4]} printed nothing; stderr: {out.stderr[-800:]}")
    data: dict[str, Any] = json.loads(lines[-1])
    return data


def _tool_args(src: Path, base_url: str, tmp: Path, *extra: str) -> list[str]:
    return _python("-m", "batch_cancel", "run", str(src), "--base-url", base_url, "--username", USER,
                   "--application-id", "134", "--campaign", "Campaign1", "--calling-list", "CallingList1",
                   "--state", str(tmp / "state.sqlite"), "--report", str(tmp / "report.csv"), "-q",
                   *extra)  # fmt: skip


@dataclass
class Run:
    figures: LedgerFigures
    wall: float
    out: dict[str, Any]
    tool_latency_ms: list[float]
    cpu_s: float = 0.0  # the client process's user + system CPU seconds
    peak_rss_mb: float = 0.0  # the client process's peak resident memory
    sim_cpu_s: float = 0.0  # the simulator's CPU while this client ran (its start-up excluded)
    phases: dict[str, float] | None = None  # the tool's CPU per phase (batch_cancel/phase_cpu.py)

    @property
    def cpu_per_1000(self) -> float:
        return self.cpu_s / self.figures.acked * 1000 if self.figures.acked else 0.0

    @property
    def sim_cpu_per_1000(self) -> float:
        return self.sim_cpu_s / self.figures.acked * 1000 if self.figures.acked else 0.0


def _measured(cmd: list[str], env: dict[str, str] | None = None,
              ) -> tuple[subprocess.CompletedProcess[str], float, float]:  # fmt: skip
    """Run ``cmd``; answer its output, CPU seconds and peak RSS (MB) from the kernel's
    accounting of that one child (wait4), not a sampler's guess."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env or ENV)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
    return done, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024  # Linux: kB


def _run(cmd_for: Callable[[str, Path], list[str]], records: int, *, read_report: bool = False,
         sim_args: Sequence[str] = ()) -> Run:  # fmt: skip
    """A fresh simulator and a fresh temp dir; the command gets (base_url, tmp)."""
    with tempfile.TemporaryDirectory(prefix="bc-bench-") as name:
        tmp = Path(name)
        write_numbers(tmp / "in.csv", records)
        split = tmp / "phase_cpu.json"  # written by batch-cancel only; the baselines ignore it
        with SimProcess(*sim_args) as sim:
            sim_before = sim.cpu_seconds()
            started = time.monotonic()
            out, cpu, rss = _measured(cmd_for(sim.base_url, tmp), {**ENV, PHASE_ENV: str(split)})
            wall = time.monotonic() - started
            sim_cpu = sim.cpu_seconds() - sim_before
            data = _last_json(out)
            figures = ledger_figures(sim.ledger())
        latency = _report_latency(tmp / "report.csv") if read_report else []
        phases = json.loads(split.read_text()) if split.exists() else None
    return Run(figures, wall, data, latency, cpu, rss, sim_cpu, phases)


def _report_latency(path: Path) -> list[float]:
    import csv

    with path.open(newline="", encoding="utf-8") as f:
        return [float(r["latency_ms"]) for r in csv.DictReader(f) if r.get("latency_ms")]


# -- the measurements ---------------------------------------------------------------------
def _tool(extra: Sequence[str]) -> Callable[[str, Path], list[str]]:
    return lambda url, tmp: _tool_args(tmp / "in.csv", url, tmp, *extra)


def _lean(http: str, *, internal: bool = False, journal: bool = False) -> Callable[[str, Path], list[str]]:
    """The lean script, unchanged; run through benchmarks.lean_phases (its CPU split by
    phase) or benchmarks.lean_journal (plus a SQLite journal: the informative row)."""
    also = ["--internal"] if internal else []

    def cmd(url: str, tmp: Path) -> list[str]:
        runner = ["benchmarks.lean_journal", "--journal", str(tmp / "lean.sqlite")] if journal else [
            "benchmarks.lean_phases"]  # fmt: skip
        return _python("-m", *runner, str(tmp / "in.csv"), "--base-url", url, "--username", USER,
                       "--concurrency", "64", "--http", http, *also)  # fmt: skip

    return cmd


def _sequential(url: str, tmp: Path) -> list[str]:
    return _python("-m", "benchmarks.sequential_baseline", str(tmp / "in.csv"), "--base-url", url,
                   "--username", USER)  # fmt: skip


def _inproc(journal: bool) -> Callable[[str, Path], list[str]]:
    def cmd(url: str, tmp: Path) -> list[str]:
        args = _python("-m", "benchmarks.inproc", str(tmp / "in.csv"), "--base-url", url, "--username", USER,
                       "--state", str(tmp / "state.sqlite"), "--report", str(tmp / "report.csv"))  # fmt: skip
        return [*args, "--no-journal"] if not journal else args

    return cmd


FAST = ("--rate", "0", "--concurrency", "64")


def _observed(url: str, tmp: Path) -> list[str]:
    """The tool as an operator watching it runs it: JSON logs, a metrics file rewritten every second."""
    metrics = str(tmp / "batch_cancel.prom")
    return _tool_args(tmp / "in.csv", url, tmp, *FAST, "--log-format", "json",
                      "--metrics-file", metrics, "--metrics-interval", "1")  # fmt: skip


RATES = (20.0, 200.0, 2000.0)
SERVICE_MS = 5.0  # the simulator's service time per request in the throughput comparison
SERVED = ("--service-time", f"{SERVICE_MS / 1000:g}")


def measure(sizes: Sizes, repeat: int, log: Callable[[str], None], *, pairs: int = 15,
            only_throughput: bool = False) -> dict[str, list[Run]]:  # fmt: skip
    """``pairs`` repeats of the compared clients (batch-cancel and the lean script's
    variants, back to back, the order flipped every repeat) and ``repeat`` of the rest."""
    runs: dict[str, list[Run]] = {}

    def add(key: str, run: Run) -> None:
        runs.setdefault(key, []).append(run)
        f = run.figures
        log(f"  {key:<22} acked {f.acked:>6}/{f.requests:<6} {f.throughput:8.1f}/s  rate {f.rate:8.1f}/s  "
            f"peak1s {f.peak_1s:>5}  wall {run.wall:6.2f} s  cpu {run.cpu_s:6.2f} s  "
            f"sim cpu {run.sim_cpu_s:6.2f} s  rss {run.peak_rss_mb:5.0f} MB")  # fmt: skip

    for i in range(max(pairs, 0 if only_throughput else repeat)):
        log(f"repeat {i + 1}/{max(pairs, repeat)}")
        # the pair the issue asks about, back to back in each repeat, same simulator
        # settings, with the lean script's two informative variants; the order flips
        # every repeat, so a box that speeds up or slows down over the series (it
        # does, by a third here) favours none of them
        compared = [
            ("tool", lambda: _run(_tool(FAST), sizes.records, read_report=True, sim_args=SERVED)),
            ("lean-aiohttp", lambda: _run(_lean("aiohttp"), sizes.records, sim_args=SERVED)),
            ("lean-internal", lambda: _run(_lean("aiohttp", internal=True), sizes.records, sim_args=SERVED)),
            ("lean-journal", lambda: _run(_lean("aiohttp", internal=True, journal=True), sizes.records,
                                          sim_args=SERVED)),
            # what batch-cancel's own record client buys: the same tool, POSTs on aiohttp
            ("tool-aiohttp", lambda: _run(_tool((*FAST, "--record-client", "aiohttp")), sizes.records,
                                          sim_args=SERVED)),
        ]
        if i < pairs:
            for key, run in compared if i % 2 == 0 else reversed(compared):
                add(key, run())
        if only_throughput or i >= repeat:
            continue
        add("observed", _run(_observed, sizes.records, sim_args=SERVED))
        add("lean-httpx", _run(_lean("httpx"), sizes.httpx_records))
        add("sequential", _run(_sequential, sizes.sequential_records))
        add("journal-on", _run(_inproc(True), sizes.records))
        add("journal-off", _run(_inproc(False), sizes.records))
        for rate in RATES:
            n = max(40, round(rate * sizes.rate_seconds))
            add(f"rate-{rate:g}", _run(_tool(("--rate", f"{rate:g}", "--concurrency", "64")), n,
                                       read_report=True))  # fmt: skip
    return runs


def startup(sizes: Sizes) -> dict[str, Any]:
    exe = str(Path(sys.executable).with_name("batch-cancel"))
    cmd = [exe, "--help"] if Path(exe).exists() else _python("-m", "batch_cancel", "--help")
    subprocess.run(cmd, capture_output=True, check=True)  # warm the file cache
    times = []
    for _ in range(sizes.help_runs):
        started = time.perf_counter()
        subprocess.run(cmd, capture_output=True, check=True)
        times.append(time.perf_counter() - started)
    trace = subprocess.run(_python("-X", "importtime", "-m", "batch_cancel", "--help"), capture_output=True,
                           text=True, check=True)  # fmt: skip
    loaded = {m.group(1).split(".")[0] for m in re.finditer(r"\|\s+(\S+)\s*$", trace.stderr, re.M)}
    return {"median_s": statistics.median(times), "heavy_loaded": sorted(set(HEAVY) & loaded)}


def dry_run_row(quick: bool) -> str:
    """Row 4 comes from benchmarks.dry_run (another helper's), when it exists."""
    import importlib.util

    if importlib.util.find_spec("benchmarks.dry_run") is None:
        return "skipped: benchmarks/dry_run.py does not exist yet"
    cmd = _python("-m", "benchmarks.dry_run")
    helptext = subprocess.run([*cmd, "--help"], capture_output=True, text=True, check=False).stdout
    if quick and "--rows" in helptext:  # a smoke run: 100k rows once, not 1M three times
        cmd += ["--rows", "100000"] + (["--repeat", "1"] if "--repeat" in helptext else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = out.stdout.strip().splitlines()
    if not lines:
        return f"failed (exit {out.returncode}): {out.stderr[-300:]}"
    # its own table, as it prints it (exit 1 there means a target was missed, not a crash)
    note = "" if out.returncode == 0 else f"   (benchmarks.dry_run exit {out.returncode}: a target missed)"
    return "\n".join(["python -m benchmarks.dry_run " + " ".join(cmd[3:]), *lines, note]).rstrip()


# -- the table --------------------------------------------------------------------------
def _med(values: Sequence[float]) -> float:
    return statistics.median(values) if values else 0.0


def _ratios(runs: dict[str, list[Run]], key: str) -> list[float]:
    """Per-repeat throughput ratios, tool / ``key``: a busy spell hits both sides of a pair."""
    pairs = zip(runs["tool"], runs[key], strict=False)
    return [t.figures.throughput / b.figures.throughput for t, b in pairs if b.figures.throughput]


def _phase_cpu(runs: Sequence[Run]) -> dict[str, float]:
    """Median CPU seconds per 1,000 acked records in each phase (phase_cpu.py's split)."""
    split = [r for r in runs if r.phases and r.figures.acked]
    return {p: _med([r.phases[p] / r.figures.acked * 1000 for r in split if r.phases and p in r.phases])
            for p in PHASES} if split else {}  # fmt: skip


def _paired(runs: dict[str, list[Run]], key: str) -> float:
    return _med(_ratios(runs, key))


def interval(values: Sequence[float], *, resamples: int = 4000, seed: int = 11) -> tuple[float, float]:
    """A 95 % percentile-bootstrap interval for the median of ``values`` (seeded, so the
    same runs print the same interval). A ratio whose interval holds 1.0 is parity
    within this box's noise, whatever its median says."""
    import random

    if len(values) < 3:
        return (min(values, default=0.0), max(values, default=0.0))
    draw = random.Random(seed)
    medians = sorted(statistics.median(draw.choices(values, k=len(values))) for _ in range(resamples))
    return medians[int(0.025 * resamples)], medians[int(0.975 * resamples) - 1]


def table(runs: dict[str, list[Run]], start: dict[str, Any] | None, dry: str | None, sizes: Sizes,
          repeat: int, rss: Run | None = None, rss_records: int = 0) -> str:  # fmt: skip
    def thr(key: str) -> float:
        return _med([r.figures.throughput for r in runs[key]])

    rows: list[str] = []
    out = rows.append
    pairs = len(runs.get("tool", []))
    out(f"batch-cancel benchmarks: medians of {pairs} order-flipped repeats of batch-cancel and the lean "
        f"script, {repeat} of the other rows; simulator on loopback in its own process")
    out(f"   load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
        f"({os.cpu_count()} CPUs)")  # fmt: skip
    out("")
    out(f"1. throughput at 64 in flight, --rate 0, simulator service time {SERVICE_MS:g} ms for batch-cancel"
        " and the lean aiohttp baseline (acks/s, simulator clock: first POST -> last ack); client CPU "
        "seconds per 1,000 acked records (user + system, the client process alone); the simulator's CPU "
        "for that client's traffic per 1,000 records, and as a share of one core over the window (near "
        "100 % the simulator, a single event loop, sets the pace)")  # fmt: skip
    tool = thr("tool")
    lines = [
        ("batch-cancel (CLI, journal + report)", "tool", sizes.records),
        ("  + --log-format json --metrics-file (1 s)", "observed", sizes.records),
        ("  + --record-client aiohttp", "tool-aiohttp", sizes.records),
        ("lean script (aiohttp), unchanged", "lean-aiohttp", sizes.records),
        ("  + subscribed to /me/internal too", "lean-internal", sizes.records),
        ("  + /me/internal + a SQLite journal", "lean-journal", sizes.records),
        ("lean baseline, stock httpx (0 ms service)", "lean-httpx", sizes.httpx_records),
        ("sequential baseline (1 at a time, 0 ms)", "sequential", sizes.sequential_records),
    ]
    for label, key, n in lines:
        if key not in runs:
            continue
        acked = _med([r.figures.acked for r in runs[key]])
        cpu = _med([r.cpu_per_1000 for r in runs[key]])
        sim_cpu = _med([r.sim_cpu_per_1000 for r in runs[key]])
        busy = _med([r.sim_cpu_s / r.figures.send_seconds * 100 for r in runs[key] if r.figures.send_seconds])
        ratio = ""
        if key != "tool" and thr(key):
            low, high = interval(_ratios(runs, key))
            ratio = (f"tool/this {tool / thr(key):5.2f} (paired by repeat {_paired(runs, key):5.2f},"
                     f" 95 % {low:4.2f}-{high:4.2f})")  # fmt: skip
        out(f"   {label:<42} {thr(key):8.1f}/s  acked {acked:>7.0f}/{n:<6} cpu {cpu:5.2f} s/1000  "
            f"sim cpu {sim_cpu:5.2f} s/1000 ({busy:3.0f} % of a core)  {ratio}")  # fmt: skip
    per = {key: _phase_cpu(runs.get(key, [])) for key in ("tool", "lean-aiohttp")}
    if per["tool"]:
        out("   CPU by phase, s/1000 acked (process-wide, every thread; medians):")
        for label, key in (("batch-cancel", "tool"), ("lean script", "lean-aiohttp")):
            if per[key]:
                out(f"     {label:<14}" + "  ".join(f"{p} {v:5.3f}" for p, v in per[key].items()))
        if per["lean-aiohttp"].get("send"):
            whole = _med([r.cpu_per_1000 for r in runs["tool"]]) / _med(
                [r.cpu_per_1000 for r in runs["lean-aiohttp"]])  # fmt: skip
            out(f"     send phase, batch-cancel / lean script: "
                f"{per['tool']['send'] / per['lean-aiohttp']['send']:4.2f}   (whole process: {whole:4.2f})")
    if "lean-aiohttp" in runs:
        ratios = _ratios(runs, "lean-aiohttp")
        low, high = interval(ratios)
        out(f"   => batch-cancel / lean script, median of {len(ratios)} order-flipped pairs: "
            f"{_paired(runs, 'lean-aiohttp'):4.2f} (95 % interval {low:4.2f}-{high:4.2f})")  # fmt: skip
    wall = _med([r.wall for r in runs["tool"]])
    out(f"   batch-cancel wall time incl. start-up, plan, report: {wall:.2f} s for {sizes.records} records")
    rss_line = "" if rss is None else (
        f"6. peak RSS of one real run of {rss_records:,} rows against the simulator (--rate 0, 64 in "
        f"flight; the kernel's ru_maxrss of the CLI process): {rss.peak_rss_mb:.0f} MB; "
        f"{rss.figures.acked:,} acked in {rss.wall:.0f} s, cpu {rss.cpu_s:.1f} s")  # fmt: skip
    if "journal-on" not in runs or start is None or dry is None:
        return "\n".join([*rows, "", rss_line] if rss_line else rows)
    on, off = thr("journal-on"), thr("journal-off")
    out("")
    out("   journal on/off (run_job in-process, 64 in flight)")
    pairs = zip(runs["journal-on"], runs["journal-off"], strict=False)
    paired = _med([a.figures.throughput / b.figures.throughput for a, b in pairs if b.figures.throughput])
    out(f"   journal on {on:8.1f}/s   journal off {off:8.1f}/s   on/off {on / off if off else 0:5.3f}"
        f" (paired {paired:5.3f})   journal cost {(1 - on / off) * 100 if off else 0:+.1f}%")  # fmt: skip
    out("")
    out("2. rate accuracy (simulator ledger; a --rate above the unlimited throughput of 1. is client-bound)")
    out(f"   {'--rate':>8} {'achieved':>10} {'error':>8} {'peak 1 s':>9} {'tool says':>10}")
    for rate in RATES:
        rs = runs[f"rate-{rate:g}"]
        achieved = _med([r.figures.rate for r in rs])
        peak = _med([r.figures.peak_1s for r in rs])
        says = _med([float(r.out.get("stats", {}).get("achieved_rate", 0.0)) for r in rs])
        error = (achieved / rate - 1) * 100
        out(f"   {rate:>8g} {achieved:>10.1f} {error:>+7.1f}% {peak:>9.0f} {says:>10.1f}")
    out("")
    out("3. latency, POST -> matched ack (ms)")
    out("   tool = report latency_ms; simulator = request start -> ack publish (ledger); at 64 in flight")
    out("   the tool's figure includes queueing: 64 in flight / throughput (Little's law) per POST")
    for label, key in (("at --rate 200", "rate-200"), ("at 64 in flight, --rate 0", "tool")):
        rs = runs[key]
        t50 = _med([percentile(r.tool_latency_ms, 50) for r in rs])
        t99 = _med([percentile(r.tool_latency_ms, 99) for r in rs])
        s50 = _med([percentile(r.figures.latency_ms, 50) for r in rs])
        s99 = _med([percentile(r.figures.latency_ms, 99) for r in rs])
        out(f"   {label:<26} tool p50 {t50:7.2f} p99 {t99:8.2f} | simulator p50 {s50:7.2f} p99 {s99:8.2f}"
            f" | overhead p50 {t50 - s50:+7.2f}")  # fmt: skip
    out("")
    out("4. dry run (benchmarks.dry_run):")
    out("\n".join("   " + line for line in dry.splitlines()))
    out("")
    heavy = ", ".join(start["heavy_loaded"]) or "none of " + "/".join(HEAVY)
    out(f"5. start-up: batch-cancel --help {start['median_s'] * 1000:.0f} ms (median of {sizes.help_runs});"
        f" heavy modules loaded: {heavy}")  # fmt: skip
    return "\n".join([*rows, "", rss_line] if rss_line else rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (the median is shown)")
    parser.add_argument("--pairs", type=int, default=15,
                        help="repeats of batch-cancel against the lean script (order flipped each time)")
    parser.add_argument("--quick", action="store_true", help="small runs, one repeat: a smoke test")
    parser.add_argument("--records", type=int, help="records per throughput run")
    parser.add_argument("--json", type=Path, help="also write the raw medians here")
    parser.add_argument("--only-throughput", action="store_true",
                        help="only batch-cancel and the lean aiohttp baselines, and the peak-RSS run")
    parser.add_argument("--rss-records", type=int, default=None,
                        help="rows of the peak-RSS run (default 300000, --quick 5000; 0 skips it)")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    if args.records:
        sizes = Sizes(args.records, max(100, args.records // 5), max(50, args.records // 10),
                      sizes.rate_seconds, sizes.help_runs)  # fmt: skip
    repeat = 1 if args.quick else args.repeat

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    pairs = 1 if args.quick else args.pairs
    runs = measure(sizes, repeat, log, pairs=pairs, only_throughput=args.only_throughput)
    rss_records = args.rss_records if args.rss_records is not None else (5_000 if args.quick else 300_000)
    rss = None
    if rss_records:
        log(f"peak RSS: one run of {rss_records} rows")
        rss = _run(_tool(FAST), rss_records)
        log(f"  rss {rss.peak_rss_mb:.0f} MB, acked {rss.figures.acked}, wall {rss.wall:.0f} s")
    start = None if args.only_throughput else startup(sizes)
    dry = None if args.only_throughput else dry_run_row(args.quick)
    print(table(runs, start, dry, sizes, repeat, rss, rss_records))
    if args.json:
        medians = {key: {"throughput": _med([r.figures.throughput for r in rs]),
                         "rate": _med([r.figures.rate for r in rs]),
                         "peak_1s": _med([r.figures.peak_1s for r in rs])}
                   for key, rs in runs.items()}  # fmt: skip
        args.json.write_text(json.dumps({"runs": medians, "startup": start, "dry_run": dry}, indent=2))


if __name__ == "__main__":
    main()
