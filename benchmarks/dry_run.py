"""Time the real ``batch-cancel run --dry-run`` on big generated inputs.

    python -m benchmarks.dry_run [--rows 1000000] [--formats csv,parquet] [--repeat 3]
    python -m benchmarks.dry_run --against DIR   # paired with another checkout (e.g. main's)

Generates ``numbers_<label>.csv`` / ``.parquet`` with benchmarks/gen_numbers.py
when missing (``--data``, default bench_data/), then for each format runs the
CLI as a subprocess ``--repeat`` times (fresh journal and report each time) and
prints the median wall time and peak RSS of the child, read from ``os.wait4``
(per child, unlike RUSAGE_CHILDREN, which keeps the maximum over all of them).
For context, each file is also read whole by pyarrow in a fresh interpreter,
measured the same way: the ratio says what planning, journaling and reporting
cost on top of just parsing the input. Targets (issue 5): 1M rows in < 20 s
and < 300 MB; memory flat in the number of rows.

``--against DIR`` compares this tree with another checkout of the project (its
``batch_cancel`` runs with DIR as the working directory, so it is the one
imported): the two run in turn, the order flipping every repeat, so a busy spell
of a shared box hits both alike; it prints both medians (wall, CPU, peak RSS)
and the median of the paired wall-time ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Measurement", "dry_run_argv", "main", "measure"]

TARGET_SECONDS_PER_MILLION = 20.0
TARGET_RSS_MB = 300.0
_BASELINE = """
import sys, pyarrow.csv as c, pyarrow.parquet as pq
p = sys.argv[1]
t = pq.read_table(p) if p.endswith(".parquet") else c.read_csv(p)
print(t.num_rows)
"""


@dataclass(frozen=True)
class Measurement:
    seconds: float
    peak_mb: float
    exit_code: int
    cpu_seconds: float = 0.0  # the child's user + system CPU (every thread)


# Linux carries the parent's peak RSS over to a child at exec (exec_mmap keeps the old
# mm's high-water mark, and Popen's vfork shares the parent's), so a child started by a
# big parent (pyarrow, boto3 loaded: 230 MB) reports at least that. A small launcher
# starts the measured child, so its floor is the launcher's ~10 MB, and reports both.
_LAUNCH = """
import os, subprocess, sys, time
started = time.perf_counter()
child = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(child.pid, 0)
print(time.perf_counter() - started, usage.ru_maxrss, os.waitstatus_to_exitcode(status),
      usage.ru_utime + usage.ru_stime)
"""


def measure(argv: list[str], cwd: Path | None = None) -> Measurement:
    """Run one child to the end; its wall time and its own peak RSS (not its parent's)."""
    launched = subprocess.run([sys.executable, "-c", _LAUNCH, *argv], cwd=cwd, capture_output=True)
    seconds, maxrss_kb, code, cpu = launched.stdout.split()
    if int(code) not in (0, 1):  # 1: some rows rejected, as generated inputs have
        stderr = launched.stderr.decode(errors="replace")
        raise SystemExit(f"{' '.join(argv)} exited {int(code)}:\n{stderr}")
    return Measurement(float(seconds), int(maxrss_kb) / 1024, int(code), float(cpu))


def _label(rows: int) -> str:
    from benchmarks.gen_numbers import _label

    return _label(rows)


def inputs(rows: int, data: Path, formats: list[str]) -> dict[str, Path]:
    paths = {fmt: data / f"numbers_{_label(rows)}.{fmt}" for fmt in formats}
    if not all(p.exists() for p in paths.values()):
        from benchmarks.gen_numbers import generate

        print(f"generating {rows:,} rows into {data} ...", flush=True)
        generate(rows, data)
    return paths


def dry_run_argv(path: Path | str, work: Path) -> list[str]:
    """``run --dry-run`` on ``path`` (a file or an object URL), journal and report in ``work``."""
    return [sys.executable, "-m", "batch_cancel", "run", str(path), "--application-id", "1",
            "--campaign", "C", "--calling-list", "L", "--dry-run", "--state",
            str(work / "state.sqlite"), "--report", str(work / "report.csv"), "-q"]


def _median(runs: list[Measurement]) -> Measurement:
    return Measurement(statistics.median(r.seconds for r in runs),
                       statistics.median(r.peak_mb for r in runs), runs[-1].exit_code,
                       statistics.median(r.cpu_seconds for r in runs))


def paired(path: Path, repeat: int, against: Path) -> tuple[list[Measurement], list[Measurement]]:
    """Dry runs of this tree and of the checkout ``against``, in turn, the order flipping."""
    here = Path(__file__).resolve().parent.parent
    ours: list[Measurement] = []
    theirs: list[Measurement] = []
    for i in range(repeat):
        turns = [(ours, here), (theirs, against)]
        for runs, tree in turns if i % 2 == 0 else turns[::-1]:
            with tempfile.TemporaryDirectory(prefix="bc-dry-run-") as tmp:
                runs.append(measure(dry_run_argv(path, Path(tmp)), cwd=tree))
    return ours, theirs


def _paired_line(fmt: str, rows: int, ours: list[Measurement], theirs: list[Measurement],
                 against: Path) -> str:
    a, b = _median(ours), _median(theirs)
    ratio = statistics.median(o.seconds / t.seconds for o, t in zip(ours, theirs, strict=True))
    return (f"{fmt:8} {rows:>12,} rows  this tree {a.seconds:6.2f} s cpu {a.cpu_seconds:5.2f} s "
            f"peak {a.peak_mb:4.0f} MB | {against}: {b.seconds:6.2f} s cpu {b.cpu_seconds:5.2f} s "
            f"peak {b.peak_mb:4.0f} MB | paired ratio {ratio:5.3f}"
            f"  | runs {', '.join(f'{m.seconds:.2f}' for m in ours)} / "
            f"{', '.join(f'{m.seconds:.2f}' for m in theirs)} s")


def bench(path: Path, repeat: int, rows: int) -> tuple[Measurement, Measurement, list[float]]:
    runs = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="bc-dry-run-") as tmp:
            runs.append(measure(dry_run_argv(path, Path(tmp))))
    base = _median([measure([sys.executable, "-c", _BASELINE, str(path)]) for _ in range(repeat)])
    return _median(runs), base, [r.seconds for r in runs]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dry_run")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--formats", default="csv,parquet",
                        help="comma-separated: csv, parquet (default both)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path("bench_data"),
                        help="where the generated inputs are (made if missing)")
    parser.add_argument("--against", type=Path, metavar="DIR",
                        help="another checkout to pair with (runs alternate); prints both and the ratio")
    args = parser.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = set(formats) - {"csv", "parquet"}
    if unknown or args.repeat < 1 or args.rows < 1:
        parser.error(f"bad --formats {sorted(unknown)} or --repeat/--rows")
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
          f"median of {args.repeat} run(s)")
    if args.against is not None:
        if not (args.against / "batch_cancel" / "__main__.py").exists():
            parser.error(f"--against {args.against}: not a checkout of batch-cancel")
        for fmt, path in inputs(args.rows, args.data, formats).items():
            ours, theirs = paired(path, args.repeat, args.against.resolve())
            print(_paired_line(fmt, args.rows, ours, theirs, args.against))
        return 0
    target = TARGET_SECONDS_PER_MILLION * args.rows / 1e6
    failed = False
    for fmt, path in inputs(args.rows, args.data, formats).items():
        run, base, all_seconds = bench(path, args.repeat, args.rows)
        ok = run.seconds < target and run.peak_mb < TARGET_RSS_MB
        failed |= not ok
        print(f"{fmt:8} {args.rows:>12,} rows  dry-run {run.seconds:7.2f} s "
              f"({args.rows / run.seconds:>9,.0f} rows/s) peak {run.peak_mb:6.0f} MB  | "
              f"pyarrow read {base.seconds:5.2f} s peak {base.peak_mb:5.0f} MB  | "
              f"ratio {run.seconds / base.seconds:5.1f}x time {run.peak_mb / base.peak_mb:4.1f}x RSS"
              f"  | runs {', '.join(f'{s:.2f}' for s in all_seconds)} s"
              f"  [{'ok' if ok else 'MISSED'}: < {target:.0f} s, < {TARGET_RSS_MB:.0f} MB]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
