"""The breaker for systematic failure: stop sending when every recent outcome failed alike.

A missing contact-center session, a wrong application id, a campaign that is not
loaded or a ack channel that hears nothing makes every row end the same way;
sending the rest of the list at full rate only burns it. When the last
``threshold`` outcomes all failed with the same *code*, the breaker trips: the run
stops sending and aborts (exit 3), and the journal resumes once the cause is fixed.

The code is what GWS says the failure is, never its wording first: the HTTP answer's
``statusCode`` (else the HTTP status), a CometD failure's ``errorCode``, OCS's
``GSW_ERROR_NUMBER``, ``timeout`` for a row no outcome came for; only a failure
that carries none of them is keyed on its text. Time-outs count: when every row
times out, nothing is being heard, and that is systematic too.

Some failures are about one record, not the run: "Record not found" (the number is
not in the list, or no longer dialable), a record in use. A block of such numbers is
normal in a list; a wrong calling list makes *every* number fail so. So a streak of a
per-record kind does not trip the breaker at once: it asks for ``probes`` rows from
elsewhere in the list (the send phase sends them ahead of their turn). If they all
fail the same way the list as a whole is wrong and the breaker trips; any other
outcome clears the streak. Where nothing can be probed (a fleet worker, or no rows
left elsewhere) a per-record streak trips like any other.
"""

from __future__ import annotations

import re
from collections import Counter, deque
from dataclasses import dataclass
from enum import Enum

__all__ = ["DEFAULT_BREAKER", "PROBES", "Breaker", "FailureKind", "Verdict"]

DEFAULT_BREAKER = 25
PROBES = 5  # rows from elsewhere in the list asked before a per-record streak trips

# What names one record rather than the run: GWS's and OCS's wording for a record that
# is not (or no longer) in the list, or busy. "Device not found" (the same statusCode 6)
# is the run's own problem and stays systematic.
_PER_RECORD = re.compile(
    r"record\b[^.;]*\bnot found|not in (?:the |this )?(?:calling )?list|no such record"
    r"|record\b[^.;]*\bin use",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class FailureKind:
    """What identifies a failure: its code (None: only text is known) and its text."""

    code: str | None
    text: str

    @property
    def key(self) -> str:
        return self.code or self.text

    @property
    def per_record(self) -> bool:
        return bool(_PER_RECORD.search(self.text))


class Verdict(Enum):
    GO_ON = "go on"
    PROBE = "probe"  # send rows from elsewhere in the list, then judge
    TRIP = "trip"


class Breaker:
    def __init__(self, threshold: int = DEFAULT_BREAKER, *, probes: int = PROBES) -> None:
        self.threshold = threshold
        self.probes = probes
        self._recent: deque[FailureKind | None] = deque(maxlen=max(1, threshold))
        self._hits: Counter[str] = Counter()
        self.tripped: str | None = None
        self.probing: FailureKind | None = None  # the per-record kind under test
        self._probe_failures = 0
        self.probe_rounds = 0

    def success(self, *, probe: bool = False) -> None:
        # any success (a probe's or another row's) shows the list is not wrong as a whole
        self.probing = None
        self._recent.append(None)

    def failure(self, kind: FailureKind, *, probe: bool = False) -> Verdict:
        """Count a failed (or timed-out) row; say whether to go on, probe or stop."""
        self._hits[kind.key] += 1
        if self.threshold <= 0 or self.tripped is not None:
            return Verdict.GO_ON
        if self.probing is not None:
            if not probe:
                return Verdict.GO_ON  # the streak is being judged by the probes
            if kind.key != self.probing.key:
                self.probing = None  # elsewhere the list fails otherwise: not one cause
                self._recent.clear()
                return Verdict.GO_ON
            self._probe_failures += 1
            if self._probe_failures >= self.probes:
                return self._trip(kind)
            return Verdict.GO_ON
        self._recent.append(kind)
        if len(self._recent) < self.threshold:
            return Verdict.GO_ON
        kinds = [k for k in self._recent if k is not None]
        if len(kinds) < self.threshold or len({k.key for k in kinds}) != 1:
            return Verdict.GO_ON
        if all(k.per_record for k in kinds):
            self.probing, self._probe_failures = kind, 0
            self.probe_rounds += 1
            return Verdict.PROBE
        return self._trip(kind)

    def nothing_to_probe(self) -> Verdict:
        """No row elsewhere can be asked: a per-record streak stands for the list."""
        if self.probing is None or self.tripped is not None:
            return Verdict.GO_ON
        return self._trip(self.probing)

    def _trip(self, kind: FailureKind) -> Verdict:
        self.tripped = kind.key
        self.probing = None
        return Verdict.TRIP

    def rows_hit(self, error: str) -> int:
        """Rows of this run that failed with ``error`` (a code, or a text without one)."""
        return self._hits[error]

    def describe(self) -> str:
        error = self.tripped or ""
        probed = f", and {self.probes} rows from elsewhere in the list too" if self.probe_rounds else ""
        return (
            f"{self.threshold} outcomes in a row failed with the same error, {error!r}{probed} "
            f"({self.rows_hit(error)} rows hit): stopped sending; fix the cause and resume "
            "with --state (--retry-failed sends the failed rows again)"
        )
