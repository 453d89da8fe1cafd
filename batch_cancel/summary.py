"""The run's summary: the counts Airflow reads from the last stdout line."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from batch_cancel.config import RunConfig
from batch_cancel.journal.base import JournalBase
from batch_cancel.journal.rows import REPORTED_PENDING, Status

if TYPE_CHECKING:
    from batch_cancel.object_store import Location

__all__ = ["Summary", "summarise"]


@dataclass(frozen=True)
class Summary:
    run_id: str
    total: int
    cancelled: int
    failed: int
    timed_out: int
    rejected: int
    duplicate: int
    pending: int
    report: str
    state: str
    dry_run: bool = False
    duplicates_of_unsuccessful: int = 0
    elapsed_s: float = 0.0
    stats: dict[str, float] = field(default_factory=dict)
    first_rejected: list[tuple[int, str, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 only when every row is cancelled or a duplicate of a cancelled row."""
        if self.dry_run:
            return 1 if self.rejected else 0
        bad = self.failed + self.timed_out + self.rejected + self.pending
        return 1 if bad or self.duplicates_of_unsuccessful else 0

    def as_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("first_rejected")
        d["exit_code"] = self.exit_code
        return d


def summarise(
    journal: JournalBase,
    run_id: str,
    report: Location | None,
    config: RunConfig,
    stats: dict[str, float],
    elapsed: float,
) -> Summary:
    c = journal.counts()
    return Summary(
        run_id=run_id,
        total=sum(c.values()),
        cancelled=c.get(Status.CANCELLED, 0),
        failed=c.get(Status.FAILED, 0),
        timed_out=c.get(Status.TIMED_OUT, 0),
        rejected=c.get(Status.REJECTED, 0),
        duplicate=c.get(Status.DUPLICATE, 0),
        pending=sum(c.get(s, 0) for s in REPORTED_PENDING),
        report=str(report) if report is not None else "",
        state=journal.location,
        dry_run=config.dry_run,
        duplicates_of_unsuccessful=journal.duplicate_of_unsuccessful(),
        elapsed_s=round(elapsed, 3),
        stats=stats,
        # without a rejected row the query would scan every record to find none
        first_rejected=journal.first_rejected() if c.get(Status.REJECTED) else [],
    )
