"""CPU seconds per phase of a run, for the benchmarks (a bench-only hook).

``python -m benchmarks`` compares the tool's send phase with a script that only
sends; the whole process's CPU also carries start-up (imports), planning and the
report. With ``BATCH_CANCEL_PHASE_CPU=<file>`` in its environment, a run writes
there, as JSON, the process's CPU seconds (user + system, every thread) spent in
each phase: ``startup`` (until ``run_job`` starts), ``plan`` (outputs checked,
lock taken, plan complete), ``send`` and ``report`` (report and summary). Without
it nothing is written: the cost is four ``os.times()`` calls.
"""

from __future__ import annotations

import json
import os

__all__ = ["ENV", "PHASES", "PhaseClock"]

ENV = "BATCH_CANCEL_PHASE_CPU"
PHASES = ("startup", "plan", "send", "report")


def _cpu() -> float:
    # process-wide, children excluded: planning and the journal writer run on threads
    t = os.times()
    return t.user + t.system


class PhaseClock:
    """Marks the end of each phase in PHASES, in order; ``write`` saves the split."""

    def __init__(self) -> None:
        self._ends: dict[str, float] = {"startup": _cpu()}  # made when run_job starts

    def end(self, phase: str) -> None:
        self._ends[phase] = _cpu()

    def split(self) -> dict[str, float]:
        """Seconds per phase ended so far (a phase not ended is absent)."""
        out: dict[str, float] = {}
        before = 0.0
        for phase in PHASES:
            if phase in self._ends:
                out[phase] = round(self._ends[phase] - before, 4)
                before = self._ends[phase]
        return out

    def write(self) -> None:
        path = os.environ.get(ENV)
        if path:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(self.split(), f)
