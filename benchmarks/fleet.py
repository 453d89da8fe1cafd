"""The fleet journal's figures: ``python -m benchmarks.fleet`` (also run by ``make bench``).

    python -m benchmarks.fleet [--repeat 3] [--quick]

1. Journal cost: one worker, 64 in flight, no rate limit, the same job with the
   SQLite journal and with the PostgreSQL journal (a real server started for the
   run, fsync on, the way a server runs), in turn within each repeat. Throughput is
   on the simulator's clock (first POST to last ack); client CPU is the CLI
   process's user + system time per 1,000 records.
2. Scaling: a simulator whose DoS filter lets each HTTP session start at most
   200 requests per second (``--dos-max-requests-per-sec``, as Jetty's DoSFilter
   does per session), the job's ``--rate`` unlimited, 1 worker against 3 workers
   of one PostgreSQL job (each with its own session).

Every figure is the median of ``--repeat`` runs; ratios are of the medians.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.sim import PASSWORD, USER, LedgerFigures, SimProcess, ledger_figures, write_numbers

__all__ = ["main"]

PER_SESSION = 200.0


@dataclass
class Result:
    figures: LedgerFigures
    cpu_s: float  # the CLI processes' user + system seconds
    codes: list[int]


def _server() -> Any:
    # the test suite's helper: Debian's PostgreSQL binaries in a temporary data directory
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    try:
        from pg_server import start
    finally:
        sys.path.pop(0)
    server = start(fsync=True)
    if isinstance(server, str):
        raise SystemExit(f"benchmarks.fleet: cannot start PostgreSQL: {server}")
    return server


def _run_args(src: Path, base_url: str, tmp: Path, state: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "batch_cancel", "run", str(src), "--base-url", base_url, "--username", USER,
            "--application-id", "134", "--campaign", "Campaign1", "--calling-list", "CallingList1",
            "--state", state, "--report", str(tmp / "report.csv"), "-q", *extra]  # fmt: skip


def _once(records: int, workers: int, state_for: Callable[[Path], str], env: dict[str, str],
          *, sim_args: tuple[str, ...] = (), extra: tuple[str, ...] = ()) -> Result:  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="bc-fleet-bench-") as name:
        tmp = Path(name)
        src = write_numbers(tmp / "in.csv", records)
        with SimProcess(*sim_args) as sim:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            cmd = _run_args(src, sim.base_url, tmp, state_for(tmp), *extra)
            procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      text=True) for _ in range(workers)]  # fmt: skip
            codes = []
            for p in procs:
                _, err = p.communicate()
                if p.returncode not in (0, 1):
                    raise RuntimeError(f"worker exited {p.returncode}: {err[-800:]}")
                codes.append(p.returncode)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            figures = ledger_figures(sim.ledger())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if figures.acked != records:
        raise RuntimeError(f"{figures.acked} of {records} records acknowledged")
    return Result(figures, cpu, codes)


def _med(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (the median is shown)")
    parser.add_argument("--quick", action="store_true", help="small runs, one repeat: a smoke test")
    args = parser.parse_args(argv)
    repeat = 1 if args.quick else args.repeat
    journal_records = 1_500 if args.quick else 10_000
    scale_records = 600 if args.quick else 3_000
    server = _server()
    env = {**os.environ, "GWS_PASSWORD": PASSWORD, "PGPASSWORD": server.password}
    runs: dict[str, list[Result]] = {}
    n = 0

    def pg(tmp: Path) -> str:
        return server.url("postgres", schema=f"bench_{os.getpid()}_{n}")

    def sqlite(tmp: Path) -> str:
        return str(tmp / "state.sqlite")

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    fast = ("--rate", "0", "--concurrency", "64")
    dos = ("--dos-max-requests-per-sec", f"{PER_SESSION:g}", "--dos-max-wait", "5")
    try:
        for i in range(repeat):
            for key, state, workers, records, sim_args, extra in (
                ("sqlite", sqlite, 1, journal_records, (), fast),
                ("postgresql", pg, 1, journal_records, (), fast),
                ("1 worker", pg, 1, scale_records, dos, ("--rate", "0", "--concurrency", "8")),
                ("3 workers", pg, 3, scale_records, dos, ("--rate", "0", "--concurrency", "8")),
            ):
                n += 1
                run_id = ("--run-id", f"bench-{n}") if state is pg else ()
                started = time.monotonic()
                result = _once(records, workers, state, env, sim_args=sim_args, extra=(*extra, *run_id))
                runs.setdefault(key, []).append(result)
                log(f"repeat {i + 1}/{repeat} {key}: {result.figures.throughput:.0f} rec/s, "
                    f"{time.monotonic() - started:.1f} s")
    finally:
        server.stop()

    def thr(key: str) -> float:
        return _med([r.figures.throughput for r in runs[key]])

    def cpu(key: str, records: int) -> float:
        return _med([r.cpu_s * 1000 / records for r in runs[key]])

    def peak(key: str) -> float:
        return _med([float(r.figures.peak_1s) for r in runs[key]])

    def paired(num: str, den: str) -> float:
        """The median of the per-repeat ratios: each pair ran back to back, so a busy
        moment on a shared box hits both alike."""
        return _med([a.figures.throughput / b.figures.throughput
                     for a, b in zip(runs[num], runs[den], strict=True) if b.figures.throughput])

    lite, post = thr("sqlite"), thr("postgresql")
    one, three = thr("1 worker"), thr("3 workers")
    print(f"Fleet journal (medians of {repeat}; same run)\n"
          f"1. journal cost, 1 worker, 64 in flight, no rate limit, {journal_records} records:\n"
          f"   SQLite      {lite:8.0f} rec/s   client CPU {cpu('sqlite', journal_records):.2f} s/1,000\n"
          f"   PostgreSQL  {post:8.0f} rec/s   client CPU {cpu('postgresql', journal_records):.2f} s/1,000\n"
          f"   PostgreSQL / SQLite throughput: {post / lite if lite else 0:.2f} "
          f"(paired per repeat: {paired('postgresql', 'sqlite'):.2f})\n"
          f"2. scaling, simulator limited to {PER_SESSION:g} requests/s per session, "
          f"{scale_records} records:\n"
          f"   1 worker    {one:8.0f} rec/s   peak 1 s window {peak('1 worker'):.0f}\n"
          f"   3 workers   {three:8.0f} rec/s   peak 1 s window {peak('3 workers'):.0f}\n"
          f"   3 workers / 1 worker: {three / one if one else 0:.2f} "
          f"(paired per repeat: {paired('3 workers', '1 worker'):.2f}; throughput spans the first POST "
          f"to the last ack, so it includes the workers' staggered start)")  # fmt: skip


if __name__ == "__main__":
    main()
