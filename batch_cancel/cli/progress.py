"""Progress on stderr: a live bar on a terminal, a plain periodic line in logs."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from batch_cancel.log_records import event

__all__ = ["ProgressView", "make_progress"]

_SHOWN = ("cancelled", "failed", "timed_out", "awaiting")
log = logging.getLogger("batch_cancel.progress")


class ProgressView:
    def __init__(self, total: int, *, tty: bool, every: float = 10.0) -> None:
        self.total = total
        self._tty = tty
        self._every = every
        self._last_line = 0.0
        self._started = time.monotonic()
        self._bar: Any = None
        self._task: Any = None
        if tty:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("[bold]cancelling"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"), TimeRemainingColumn(),
                console=Console(stderr=True), transient=False,
            )  # fmt: skip
            self._task = self._bar.add_task("send", total=total, counts="")
            self._bar.start()

    def __call__(self, counts: dict[str, int]) -> None:
        done = sum(counts.get(k, 0) for k in ("cancelled", "failed", "timed_out"))
        text = " ".join(f"{k}={counts.get(k, 0)}" for k in _SHOWN)
        if self._bar is not None:
            self._bar.update(self._task, completed=min(done, self.total), counts=text)
            return
        now = time.monotonic()
        if now - self._last_line >= self._every or done >= self.total:
            self._last_line = now
            rate = counts.get("requests", 0) / max(1e-9, now - self._started)
            # no request yet, no estimate: said as "?" and a JSON null (a NaN would make
            # the JSON log line unreadable to strict parsers)
            eta = round((self.total - done) / rate, 1) if rate > 0 else None
            figures = {k: counts.get(k, 0) for k in _SHOWN}
            log.info("progress: %d/%d %s rate=%.1f/s eta=%s", done, self.total, text, rate,
                     "?" if eta is None else f"{eta:.0f}s",
                     extra=event("progress", done=done, total=self.total, requests=counts.get("requests", 0),
                                 rate=round(rate, 2), eta_s=eta, **figures))  # fmt: skip

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def make_progress(total: int) -> ProgressView:
    from batch_cancel.cli._common import json_logs

    # JSON logs are for machines even on a terminal: log lines, no bar
    return ProgressView(total, tty=sys.stderr.isatty() and not json_logs())
