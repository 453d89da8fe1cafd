"""What the journal costs per record in a real run, this tree against another.

    python -m benchmarks.journal_run --baseline DIR [--records 5000] [--repeat 5]

``DIR`` is another checkout of batch-cancel (``git archive main | tar -x -C DIR``).
Each repeat runs the CLI once from each tree, in an order that flips every repeat,
against a fresh simulator (its own process, this tree's, 5 ms service time) at 64
in flight, ``--rate 0``. Per run it reads:

* journal writes per record: the state rows (UPDATE) and event rows (INSERT) handed
  to ``save_states``, and the commits, counted around that call;
* the journal writer thread's CPU (``time.thread_time`` around each call made on
  that thread: commits, the reads of the next records, opening the store), and the
  part of it spent in the commits (``save_states``);
* the send phase's CPU, process-wide (``BATCH_CANCEL_PHASE_CPU``).

Both counters are installed by wrapping two methods in the child process (the same
two in both trees), so the figures mean the same thing on either side. Medians of
the repeats, and the median of the paired ratios (this tree / baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["main"]

HERE = Path(__file__).resolve().parent.parent
_PHASE_ENV = "BATCH_CANCEL_PHASE_CPU"  # batch_cancel/phase_cpu.py (not imported: the child's tree decides)


def _child(out: str, cli_args: list[str]) -> None:
    """In the run's process: count and time the journal writer, then run the CLI."""
    import atexit
    import time

    from batch_cancel.journal import writer
    from batch_cancel.journal.store import Journal

    figures = {"journal_cpu_s": 0.0, "commit_cpu_s": 0.0, "commits": 0, "states": 0, "events": 0}
    call = writer.JournalWriter._call
    save = Journal.save_states

    def timed_call(self: Any, fn: Any) -> Any:
        started = time.thread_time()
        try:
            return call(self, fn)
        finally:
            figures["journal_cpu_s"] += time.thread_time() - started

    def counted_save(self: Any, states: Any, events: Any) -> Any:
        figures["commits"] += 1
        figures["states"] += len(states)
        figures["events"] += len(events)
        started = time.thread_time()
        try:
            return save(self, states, events)
        finally:
            figures["commit_cpu_s"] += time.thread_time() - started

    writer.JournalWriter._call = timed_call  # type: ignore[method-assign]
    Journal.save_states = counted_save  # type: ignore[method-assign]
    atexit.register(lambda: Path(out).write_text(json.dumps(figures)))
    from batch_cancel.cli import main as cli

    sys.argv = ["batch-cancel", *cli_args]
    cli()


def _run(tree: Path, records: int) -> dict[str, float]:
    from benchmarks.sim import PASSWORD, USER, SimProcess, write_numbers

    with tempfile.TemporaryDirectory(prefix="bc-journal-run-") as name:
        tmp = Path(name)
        write_numbers(tmp / "in.csv", records)
        counters, phases = tmp / "journal.json", tmp / "phases.json"
        with SimProcess("--service-time", "0.005") as sim:
            args = ["run", str(tmp / "in.csv"), "--base-url", sim.base_url, "--username", USER,
                    "--application-id", "134", "--campaign", "Campaign1", "--calling-list", "CallingList1",
                    "--state", str(tmp / "state.sqlite"), "--report", str(tmp / "report.csv"), "-q",
                    "--rate", "0", "--concurrency", "64"]  # fmt: skip
            env = {**os.environ, "GWS_PASSWORD": PASSWORD, "PYTHONPATH": str(tree), _PHASE_ENV: str(phases)}
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(counters),
                                   *args], env=env, capture_output=True, text=True, check=False)  # fmt: skip
        summary = json.loads(done.stdout.strip().splitlines()[-1])
        if summary.get("cancelled") != records:
            raise RuntimeError(f"{tree}: {summary}; {done.stderr[-800:]}")
        figures = json.loads(counters.read_text())
        db = sqlite3.connect(tmp / "state.sqlite")
        try:
            rows = db.execute("SELECT count(*) FROM events").fetchone()[0]
        finally:
            db.close()
        per = 1000 / records
        return {
            "events/record": figures["events"] / records,
            "event rows in the journal/record": rows / records,
            "state writes/record": figures["states"] / records,
            "commits": figures["commits"],
            "journal thread cpu ms/1000": figures["journal_cpu_s"] * per * 1000,
            "  of which commits (save_states)": figures["commit_cpu_s"] * per * 1000,
            "send phase cpu ms/1000": json.loads(phases.read_text())["send"] * per * 1000,
        }


def _spread(values: list[float]) -> tuple[float, float]:
    """The lower and upper quartiles (how far the paired ratios scatter on a shared box)."""
    if len(values) < 4:
        return min(values, default=0.0), max(values, default=0.0)
    q = statistics.quantiles(values, n=4)
    return q[0], q[2]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        _child(argv[1], argv[2:])
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.journal_run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--baseline", type=Path, required=True, help="another checkout of batch-cancel")
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    trees = {"baseline": args.baseline.resolve(), "this tree": HERE}
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    for i in range(args.repeat):
        order = list(trees) if i % 2 == 0 else list(reversed(trees))
        for name in order:
            runs[name].append(_run(trees[name], args.records))
            print(f"repeat {i + 1}/{args.repeat} {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
    print(f"journal per record, {args.records:,} records at 64 in flight (medians of {args.repeat}; "
          "ratio: median of the paired this/baseline)")
    for key in runs["baseline"][0]:
        before = statistics.median(r[key] for r in runs["baseline"])
        after = statistics.median(r[key] for r in runs["this tree"])
        ratios = [a[key] / b[key] for a, b in zip(runs["this tree"], runs["baseline"], strict=True) if b[key]]
        ratio = f"{statistics.median(ratios):5.2f}x" if ratios else ""
        low, high = _spread(ratios)
        print(f"   {key:<36} before {before:9.3f}   after {after:9.3f}   {ratio} (paired ratios "
              f"{low:4.2f}-{high:4.2f}, quartiles)")


if __name__ == "__main__":
    main()
