"""Write big, realistic do-not-call inputs, and time reading + normalising them.

    python -m benchmarks.gen_numbers --rows 1000000 --out DIR
        -> DIR/numbers_1m.csv and DIR/numbers_1m.parquet
    python -m benchmarks.gen_numbers --measure DIR/numbers_1m.csv [more files]
        -> rows/s and peak RSS of inputs.read_batches + phones.normalise

Generation is vectorised with pyarrow.compute (no per-row Python) and written
in chunks, so memory stays flat whatever --rows is. Same --seed, same bytes.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections import Counter
from itertools import accumulate
from pathlib import Path

import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

__all__ = ["generate", "main", "measure"]

_CHUNK = 100_000
_GARBAGE = ["12345", "n/a", "555-01", "+999 123 4567", "2125550134999999", "call me", "0"]
_CAMPAIGNS = ["DNC_2024_Q4", "Spring Promo, East", "Renewals", "Win-back"]
_LISTS = ["list_a", "list_b"]
SCHEMA = pa.schema([("customer_id", pa.string()), ("phone_number", pa.string()),
                    ("campaign_name", pa.string()), ("calling_list", pa.string())])


def _valid_area_codes() -> pa.Array:
    # Area codes whose every exchange 2xx-9xx is a valid US number, so the mix
    # of valid/invalid rows is controlled by the generator, not by chance.
    def ok(n: str) -> bool:
        return bool(phonenumbers.is_valid_number_for_region(phonenumbers.parse(n, "US"), "US"))

    return pa.array([str(a) for a in range(200, 1000)
                     if all(ok(f"{a}{x}1234") for x in ("200", "456", "789", "999"))])


def _pick(r: pa.Array, values: list[str] | pa.Array) -> pa.Array:
    """values[floor(r * len(values))] for each uniform r in [0, 1)."""
    table = values if isinstance(values, pa.Array) else pa.array(values)
    return pc.take(table, pc.cast(pc.floor(pc.multiply(r, len(table))), pa.int64()))


def _chunk(n: int, seed: int, start: int, area_codes: pa.Array) -> pa.RecordBatch:
    r = [pc.random(n, initializer=seed * 1_000_003 + start * 31 + k) for k in range(9)]
    npa = _pick(r[0], area_codes)
    nxx = pc.cast(pc.add(pc.cast(pc.floor(pc.multiply(r[1], 800)), pa.int64()), 200), pa.string())
    line = pc.utf8_lpad(pc.cast(pc.cast(pc.floor(pc.multiply(r[2], 10_000)), pa.int64()),
                                pa.string()), width=4, padding="0")

    def join(*parts: str | pa.Array) -> pa.Array:
        return pc.binary_join_element_wise(*parts, "")

    forms = [
        join(npa, nxx, line),                            # 2125550134
        join("(", npa, ") ", nxx, "-", line),            # (212) 555-0134
        join(npa, "-", nxx, "-", line),                  # 212-555-0134
        join("+1 ", npa, " ", nxx, " ", line),           # +1 212 555 0134
        join("1-", npa, "-", nxx, "-", line),            # 1-212-555-0134
        join(npa, ".", nxx, ".", line),                  # 212.555.0134
        join("+1", npa, nxx, line),                      # +12125550134
        join(npa, nxx, line, ".0"),                      # spreadsheet float
    ]
    weights = [0.40, 0.20, 0.15, 0.10, 0.05, 0.04, 0.04, 0.02]
    # Bucket r into a format: add one for every cumulative weight it passes.
    form = pc.cast(pc.less(r[3], 0), pa.int8())
    for cut in accumulate(weights[:-1]):
        form = pc.add(form, pc.cast(pc.greater_equal(r[3], cut), pa.int8()))
    phone = pc.choose(form, *forms)
    # ~1% duplicates: the number of some other row in this chunk, as plain digits.
    phone = pc.if_else(pc.less(r[4], 0.01), _pick(r[5], forms[0]), phone)
    # ~0.5% junk that cannot be a phone number at all.
    phone = pc.if_else(pc.less(r[6], 0.005), _pick(r[5], _GARBAGE), phone)
    null = pa.scalar(None, pa.string())
    campaign = pc.if_else(pc.less(r[7], 0.3), _pick(r[8], _CAMPAIGNS), null)
    calling_list = pc.if_else(pc.less(r[7], 0.1), _pick(r[8], _LISTS), null)
    ids = pc.cast(pa.array(range(start, start + n), pa.int64()), pa.string())
    return pa.RecordBatch.from_arrays([ids, phone, campaign, calling_list], schema=SCHEMA)


def _label(rows: int) -> str:
    if rows % 1_000_000 == 0:
        return f"{rows // 1_000_000}m"
    return f"{rows // 1000}k" if rows % 1000 == 0 else str(rows)


def generate(rows: int, out: Path, seed: int = 7) -> tuple[Path, Path]:
    """Write numbers_<label>.csv and .parquet with ``rows`` rows each."""
    out.mkdir(parents=True, exist_ok=True)
    csv_path, pq_path = out / f"numbers_{_label(rows)}.csv", out / f"numbers_{_label(rows)}.parquet"
    area_codes = _valid_area_codes()
    with pacsv.CSVWriter(csv_path, SCHEMA) as csv_out, pq.ParquetWriter(pq_path, SCHEMA) as pq_out:
        for start in range(0, rows, _CHUNK):
            batch = _chunk(min(_CHUNK, rows - start), seed, start, area_codes)
            csv_out.write_batch(batch)
            pq_out.write_batch(batch)
    return csv_path, pq_path


def measure(paths: list[Path]) -> None:
    """Read and normalise every row, as the dry-run does, and report speed and memory."""
    from batch_cancel.input.files import inspect_inputs, read_batches
    from batch_cancel.plan.phones import normalise

    started = time.perf_counter()
    files = inspect_inputs(paths)
    inspected = time.perf_counter()
    outcome: Counter[str] = Counter()
    rows = 0
    for batch in read_batches(files):
        regions = batch.columns.get("region") or [None] * len(batch)
        for raw, region in zip(batch.columns["phone"], regions, strict=True):
            p = normalise(raw, region or "US")
            outcome["error" if p.error else "warning" if p.warning else "ok"] += 1
        rows += len(batch)
    done = time.perf_counter()
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"files: {', '.join(f'{f.path.name} ({f.size / 2**20:.1f} MiB)' for f in files)}")
    print(f"inspect+sha256: {inspected - started:.2f} s; read+normalise: {done - inspected:.2f} s")
    print(f"{rows} rows in {done - started:.2f} s = {rows / (done - started):,.0f} rows/s; "
          f"peak RSS {peak_mib:.0f} MiB; {dict(outcome)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gen_numbers")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", type=Path, default=Path("bench_data"))
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--measure", type=Path, nargs="+", metavar="FILE",
                        help="time reading + normalising these files instead of generating")
    args = parser.parse_args(argv)
    if args.measure:
        measure(args.measure)
        return 0
    began = time.perf_counter()
    for path in generate(args.rows, args.out, args.seed):
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    print(f"{args.rows} rows in {time.perf_counter() - began:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
