"""What a log line carries besides its words: the run id, an event name and its figures.

Code that logs something a machine may want to count names it and gives its numbers::

    log.info("progress: %d/%d", done, total, extra=event("progress", done=done, total=total))

The text format shows only the message; :class:`JsonFormatter` writes one JSON object
per line with ``time``, ``level``, ``event``, ``run_id``, ``logger``, ``message`` and
the figures, for log shippers (Airflow, Kubernetes, journald). An event without a
name of its own is named by its message template, which stays the same from one
occurrence to the next. The run id is a context variable that :func:`run_job` sets,
so every line of a run carries it, whichever task or thread logs it.
"""

from __future__ import annotations

import json
import logging
import math
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

__all__ = ["RUN_ID", "JsonFormatter", "event"]

RUN_ID: ContextVar[str | None] = ContextVar("batch_cancel_run_id", default=None)

_RESERVED = frozenset({"time", "level", "event", "run_id", "logger", "message"})


def event(name: str, /, **figures: Any) -> dict[str, Any]:
    """``extra=`` for a log call: the event's name and its figures."""
    return {"event": name, "figures": figures}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; phone numbers are masked by the callers, as in text."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": getattr(record, "event", None) or str(record.msg),
            "run_id": getattr(record, "run_id", None) or RUN_ID.get(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        figures = getattr(record, "figures", None)
        if isinstance(figures, dict):
            data["run_id"] = data["run_id"] or figures.get("run_id")  # e.g. the summary, after the run
            data.update({k: v for k, v in figures.items() if k not in _RESERVED})
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        # NaN and infinities are not JSON: null (an ETA not known yet, say)
        clean = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in data.items()}
        return json.dumps(clean, default=str, allow_nan=False)
