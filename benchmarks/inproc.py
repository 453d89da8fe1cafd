"""One sending run through ``run_job`` in this process, with the journal on or off.

    python -m benchmarks.inproc NUMBERS.csv --base-url URL --username U --state S --report R \\
        [--no-journal] [--concurrency 64] [--rate 0]      (password from env GWS_PASSWORD)

The CLI has no switch for the journal (a run without one could not be resumed), so
the journal on/off comparison calls the library. The last stdout line is JSON: the
summary's counts and stats.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from pathlib import Path

from batch_cancel.config import Credentials, GwsConfig, JobDefaults, RunConfig
from batch_cancel.job import run_job

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("numbers", type=Path)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--username", required=True)
    parser.add_argument("--state", type=Path, required=True)
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--no-journal", action="store_true")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=float, default=0.0)
    args = parser.parse_args(argv)
    defaults = JobDefaults(application_id=134, campaign="Campaign1", calling_list="CallingList1")
    config = RunConfig(inputs=(args.numbers,), defaults=defaults, rate=args.rate,
                       concurrency=args.concurrency, state=args.state, report=args.report)  # fmt: skip
    gws = GwsConfig(base_url=args.base_url,
                    credentials=Credentials(args.username, os.environ["GWS_PASSWORD"]))  # fmt: skip
    summary = asyncio.run(run_job(config, gws, journaling=not args.no_journal))
    result = {"cancelled": summary.cancelled, "elapsed_s": summary.elapsed_s, "stats": summary.stats}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
