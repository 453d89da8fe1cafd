"""The breaker for systematic failure: stop sending when every recent outcome failed alike.

A missing contact-center session, a wrong application id or a campaign that is not
loaded makes GWS refuse every request the same way; sending the rest of the list
at full rate only burns it. When the last ``threshold`` outcomes are all failures
that share their status code or their error text, the breaker trips: the run stops
sending and aborts (exit 3), and the journal resumes once the cause is fixed.

A success, or a failure of another kind, resets the streak; timeouts do not count
either way (an unknown outcome says nothing about the requests).
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass

__all__ = ["DEFAULT_BREAKER", "Breaker", "FailureKind"]

DEFAULT_BREAKER = 25


@dataclass(frozen=True, slots=True)
class FailureKind:
    """What identifies a failure: GWS's statusCode (HTTP answers) and the text."""

    status_code: int | None
    text: str


class Breaker:
    def __init__(self, threshold: int = DEFAULT_BREAKER) -> None:
        self.threshold = threshold
        self._recent: deque[FailureKind | None] = deque(maxlen=max(1, threshold))
        self._hits: Counter[str] = Counter()
        self.tripped: str | None = None

    def success(self) -> None:
        self._recent.append(None)

    def failure(self, kind: FailureKind) -> bool:
        """Count a failed row; True when this one trips the breaker."""
        self._hits[kind.text] += 1
        if kind.status_code is not None:
            self._hits[_code_name(kind.status_code)] += 1
        if self.threshold <= 0:
            return False
        self._recent.append(kind)
        if self.tripped is None and len(self._recent) == self.threshold:
            self.tripped = self._common()
            return self.tripped is not None
        return False

    def rows_hit(self, error: str) -> int:
        """Rows of this run that failed with ``error`` (a text or a statusCode)."""
        return self._hits[error]

    def describe(self) -> str:
        error = self.tripped or ""
        return (
            f"{self.threshold} outcomes in a row failed with the same error, {error!r} "
            f"({self.rows_hit(error)} rows hit): stopped sending; fix the cause and resume "
            "with --state (--retry-failed sends the failed rows again)"
        )

    def _common(self) -> str | None:
        recent = list(self._recent)
        if any(k is None for k in recent):
            return None
        kinds = [k for k in recent if k is not None]
        texts = {k.text for k in kinds}
        if len(texts) == 1:
            return kinds[0].text
        codes = {k.status_code for k in kinds}
        if len(codes) == 1 and kinds[0].status_code is not None:
            return _code_name(kinds[0].status_code)
        return None


def _code_name(code: int) -> str:
    return f"statusCode {code}"
