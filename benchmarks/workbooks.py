"""A 100,000-row workbook through ``run --dry-run``, and the reader choice (calamine vs openpyxl).

    python -m benchmarks.workbooks [--rows 100000] [--repeat 3] [--data bench_data]

Writes ``numbers_<label>.xlsx`` (openpyxl, write-only; half the phone numbers typed as
numbers, half as text) and the same rows as ``.csv`` when missing, then, alternating
within each repeat, times the real CLI as a subprocess on both (wall time and the
child's own peak RSS, ``os.wait4``): the CSV run is the baseline measured in the same
run. The reader choice (input/workbooks.py) is measured too: every cell of the sheet
read by python-calamine and by openpyxl (read-only mode, values only), each in a
fresh interpreter.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
from pathlib import Path

from benchmarks.dry_run import Measurement, dry_run_argv, measure

__all__ = ["main"]

_READ = """
import sys
reader, path = sys.argv[1], sys.argv[2]
cells = 0
if reader == "calamine":
    from python_calamine import CalamineWorkbook
    book = CalamineWorkbook.from_path(path)
    for row in book.get_sheet_by_index(0).iter_rows():
        cells += len(row)
else:
    import openpyxl
    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    for row in book.worksheets[0].iter_rows(values_only=True):
        cells += len(row)
print(cells)
"""


def _label(rows: int) -> str:
    from benchmarks.gen_numbers import _label

    return _label(rows)


def inputs(rows: int, data: Path) -> tuple[Path, Path]:
    """The workbook and the same rows as CSV (made when missing)."""
    book, text = data / f"numbers_{_label(rows)}.xlsx", data / f"numbers_{_label(rows)}_sheet.csv"
    if book.exists() and text.exists():
        return book, text
    import openpyxl

    print(f"writing a {rows:,}-row workbook into {data} ...", flush=True)
    data.mkdir(parents=True, exist_ok=True)
    wb = openpyxl.Workbook(write_only=True)
    sheet = wb.create_sheet("dnc")
    sheet.append(["customer_id", "phone_number"])
    with text.open("w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["customer_id", "phone_number"])
        for i in range(rows):
            number = f"646{3_000_000 + i % 7_000_000:07d}"
            sheet.append([f"C{i:08d}", int(number) if i % 2 else number])
            out.writerow([f"C{i:08d}", number])
    wb.save(book)
    return book, text


def _median(runs: list[Measurement]) -> tuple[float, float]:
    return statistics.median(r.seconds for r in runs), statistics.median(r.peak_mb for r in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.workbooks")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path("bench_data"))
    args = parser.parse_args(argv)
    if args.repeat < 1 or not 1 <= args.rows < 1_048_576:
        parser.error("--repeat >= 1; --rows 1..1048575 (a sheet's limit)")
    book, text = inputs(args.rows, args.data)
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; {args.rows:,}-row workbook "
          f"{book.stat().st_size / 1e6:.1f} MB; median of {args.repeat}, alternating")  # fmt: skip
    runs: dict[str, list[Measurement]] = {"xlsx": [], "csv": []}
    reads: dict[str, list[Measurement]] = {"calamine": [], "openpyxl": []}
    for i in range(args.repeat):
        for kind in ("xlsx", "csv") if i % 2 == 0 else ("csv", "xlsx"):
            with tempfile.TemporaryDirectory(prefix="bc-xlsx-bench-") as tmp:
                runs[kind].append(measure(dry_run_argv(book if kind == "xlsx" else text, Path(tmp))))
        for reader in ("calamine", "openpyxl") if i % 2 == 0 else ("openpyxl", "calamine"):
            reads[reader].append(measure([sys.executable, "-c", _READ, reader, str(book)]))
    base, _ = _median(runs["csv"])
    for kind, measured in runs.items():
        seconds, peak = _median(measured)
        print(f"dry-run {kind:5} {seconds:6.2f} s ({args.rows / seconds:>8,.0f} rows/s) "
              f"peak RSS {peak:5.0f} MB  {seconds / base:4.2f}x the CSV  "
              f"runs {', '.join(f'{r.seconds:.2f}' for r in measured)} s")
    fast, _ = _median(reads["calamine"])
    for reader, measured in reads.items():
        seconds, peak = _median(measured)
        print(f"read every cell, {reader:9} {seconds:6.2f} s  peak RSS {peak:5.0f} MB  "
              f"{seconds / fast:4.1f}x calamine")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
