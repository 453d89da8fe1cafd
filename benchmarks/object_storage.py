"""A 1M-row Parquet list from object storage through ``run --dry-run``, against the same file on disk.

    python -m benchmarks.object_storage [--rows 1000000] [--repeat 3] [--data bench_data]

Starts moto's standalone S3 server on loopback (tests/s3_server.py, signatures
checked), uploads benchmarks/gen_numbers.py's Parquet file, then, in the same
run and alternating, times the real CLI as a subprocess on ``s3://…`` and on the
local path: wall time and the child's own peak RSS (``os.wait4``). The S3 figure
includes moto's own cost (a Python server on the same 2 cores), so it is an upper
bound for a real store's CPU share, not a network figure.

It also measures the layer choice (object_store.py): the same object read batch
by batch through fsspec/s3fs (what batch-cancel uses) and through pyarrow's own
S3FileSystem, each in a fresh interpreter.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.dry_run import Measurement, dry_run_argv, inputs, measure

__all__ = ["main"]

_READ = """
import os, sys, time
import pyarrow.parquet as pq
layer, url = sys.argv[1], sys.argv[2]
if layer == "fsspec":
    import fsspec
    f = fsspec.filesystem("s3", version_aware=True).open(url.split("://", 1)[1], "rb", block_size=8 << 20)
elif layer == "pyarrow":
    import pyarrow.fs as pafs
    fs = pafs.S3FileSystem(endpoint_override=os.environ["AWS_ENDPOINT_URL"], scheme="http",
                           region="us-east-1")
    f = fs.open_input_file(url.split("://", 1)[1])
else:
    f = url
reader = pq.ParquetFile(f)
rows = 0
for group in range(reader.num_row_groups):
    for batch in reader.iter_batches(batch_size=50_000, row_groups=[group]):
        rows += batch.num_rows
print(rows)
"""


def _s3_server() -> Any:
    spec = importlib.util.spec_from_file_location(
        "s3_server", Path(__file__).resolve().parent.parent / "tests" / "s3_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["s3_server"] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    server = module.start()
    if isinstance(server, str):
        raise SystemExit(f"no S3 server: {server}")
    return server


def _median(runs: list[Measurement]) -> tuple[float, float]:
    return statistics.median(r.seconds for r in runs), statistics.median(r.peak_mb for r in runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.object_storage")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--data", type=Path, default=Path("bench_data"))
    args = parser.parse_args(argv)
    local = inputs(args.rows, args.data, ["parquet"])["parquet"]
    server = _s3_server()
    try:
        os.environ.update(server.env())
        bucket = server.bucket("bench")
        server.client().upload_file(str(local), bucket, local.name)
        url = f"s3://{bucket}/{local.name}"
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; "
              f"{local.stat().st_size / 1e6:.1f} MB Parquet, {args.rows:,} rows; "
              f"median of {args.repeat}, local and S3 alternating")  # fmt: skip
        runs: dict[str, list[Measurement]] = {"local": [], "s3": []}
        reads: dict[str, list[Measurement]] = {"local file": [], "fsspec/s3fs": [], "pyarrow.fs": []}
        for i in range(args.repeat):
            order = ["local", "s3"] if i % 2 == 0 else ["s3", "local"]
            for where in order:
                with tempfile.TemporaryDirectory(prefix="bc-s3-bench-") as tmp:
                    source = local if where == "local" else url
                    runs[where].append(measure(dry_run_argv(source, Path(tmp))))
            for name, layer, source in (("local file", "file", str(local)), ("fsspec/s3fs", "fsspec", url),
                                        ("pyarrow.fs", "pyarrow", url)):  # fmt: skip
                reads[name].append(measure([sys.executable, "-c", _READ, layer, source]))
        for where, label in (("local", str(local)), ("s3", url)):
            seconds, peak = _median(runs[where])
            print(f"dry-run {where:6} {seconds:7.2f} s ({args.rows / seconds:>9,.0f} rows/s) peak RSS "
                  f"{peak:6.0f} MB  runs {', '.join(f'{r.seconds:.2f}' for r in runs[where])} s  ({label})")
        for name, measured in reads.items():
            seconds, peak = _median(measured)
            print(f"read only, {name:12} {seconds:6.2f} s  peak RSS {peak:5.0f} MB")
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
