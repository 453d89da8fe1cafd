"""The lean script (benchmarks/lean_baseline.py) run as it is, with its CPU split by phase.

    python -m benchmarks.lean_phases NUMBERS.csv [lean_baseline's options]

``make bench`` compares batch-cancel's send phase with the lean script's. The script
stays unchanged (it is the yardstick); this wrapper only notes the process's CPU
where its phases meet, the way batch-cancel's own ``phase_cpu.PhaseClock`` does
(``BATCH_CANCEL_PHASE_CPU=<file>``): ``startup`` until it reads its numbers (aiohttp imported), ``plan``
(reading them), ``send`` (log-in, subscribing, every POST and ack, closing) and
``report`` (printing its JSON line). Three calls of ``os.times()`` is all it adds.
"""

from __future__ import annotations

import functools
from typing import Any

from batch_cancel.phase_cpu import PhaseClock
from benchmarks import lean_baseline

__all__ = ["main"]


def main(argv: list[str] | None = None) -> None:
    clock = PhaseClock()  # start-up: the interpreter and the imports, as for batch-cancel
    # the script imports its HTTP stack when it opens it, inside what would be its send
    # phase; batch-cancel imports aiohttp at start-up: so does this, so the send phases
    # compare the same work (aiohttp's import is ~0.15 s of CPU)
    import aiohttp  # noqa: F401
    read, run = lean_baseline.read_numbers, lean_baseline.run

    def read_numbers(path: str) -> list[str]:
        clock.end("startup")
        numbers = read(path)
        clock.end("plan")
        return numbers

    @functools.wraps(run)
    async def timed_run(*args: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return await run(*args, **kwargs)
        finally:
            clock.end("send")

    lean_baseline.read_numbers = read_numbers
    lean_baseline.run = timed_run  # type: ignore[assignment]
    try:
        lean_baseline.main(argv)
    finally:
        clock.end("report")
        clock.write()



if __name__ == "__main__":
    main()
