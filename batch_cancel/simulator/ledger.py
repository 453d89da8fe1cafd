"""The simulator's memory of what it was asked and what it told: the tests' ground truth.

Written from the event loop, read from any thread (tests, the ledger HTTP endpoint), so
every access goes through one lock and readers get copies.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

__all__ = ["Effect", "Ledger", "Outcome", "PublishEvent", "PublishKind", "RequestEntry"]

# What the server told the client it decided (over CometD, or 404 for a repeat).
Outcome = Literal["cancelled", "failed"]
# What a request really did to its record, whatever the client was told: "cancelled"
# (this request cancelled it), "already" (an earlier request had: nothing changed),
# "failed" (GWS could not do it). None: not processed.
Effect = Literal["cancelled", "already", "failed"]
# "error_event": a failure told as a user event on /me/internal; "foreign": a message
# that answers no request (the foreign_every knob).
PublishKind = Literal["ack", "failure", "device_event", "error_event", "foreign"]


@dataclass
class RequestEntry:
    """One outbound-record request, whatever happened to it."""

    seq: int
    t_start: float
    t_end: float | None = None
    reference_id: str | None = None
    operation: str | None = None
    phone_number: str | None = None
    application_id: int | None = None
    campaign_name: str | None = None
    calling_list: str | None = None
    # None when no HTTP answer was sent (connection reset).
    http_status: int | None = None
    status_code: int | None = None
    fault: str | None = None
    processed: bool = False
    repeat: bool = False
    outcome: Outcome | None = None
    effect: Effect | None = None
    # CometD clients of the user subscribed to /v2/me/outbound when the request was
    # processed: 0 means its outcome was published to nobody
    listeners: int | None = None
    # Seconds the DoS filter held the request back before looking at it.
    dos_wait: float = 0.0
    # The user whose session sent it (a fleet's workers may log in as different users).
    user: str | None = None


@dataclass
class PublishEvent:
    """One CometD message the server published for a request's outcome."""

    t: float
    reference_id: str | None
    channel: str
    kind: PublishKind
    # Clients whose queue took the message, and those that were actually handed it in a
    # /meta/connect answer; the difference was lost with a dropped client.
    queued_to: int = 0
    delivered_to: int = 0
    dropped: bool = False
    duplicate: bool = False


@dataclass
class _Counters:
    logins: int = 0
    handshakes: int = 0
    subscribes: int = 0
    connects: int = 0
    client_drops: int = 0
    session_expiries: int = 0
    csrf_rotations: int = 0
    cc_session_starts: int = 0
    cc_session_ends: int = 0
    login_pages: int = 0  # log-ins answered by an HTML page instead of GWS
    # every GET /api/v2/me carrying credentials, whatever it was answered (logins counts
    # those that made or kept a session)
    login_attempts: int = 0
    login_unavailable: int = 0  # log-ins answered 503 while a node restarted
    restarts: int = 0
    half_opens: int = 0  # windows in which long polls went silent
    silent_polls: int = 0  # /meta/connect requests never answered nor reset


@dataclass
class Ledger:
    """Every outbound-record request and every outcome publish, in order."""

    _entries: list[RequestEntry] = field(default_factory=list)
    _events: list[PublishEvent] = field(default_factory=list)
    _counters: _Counters = field(default_factory=_Counters)
    _drop_times: list[float] = field(default_factory=list)  # when CometD clients were dropped
    # (start, end) wall times of node restarts and of half-open windows
    _restart_windows: list[tuple[float, float]] = field(default_factory=list)
    _half_open_windows: list[tuple[float, float]] = field(default_factory=list)
    _in_flight: int = 0
    _peak_in_flight: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- writers (event loop) ------------------------------------------------------------

    def begin_request(self) -> RequestEntry:
        with self._lock:
            entry = RequestEntry(seq=len(self._entries) + 1, t_start=time.time())
            self._entries.append(entry)
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
            return entry

    def finish_request(
        self,
        entry: RequestEntry,
        *,
        http_status: int | None,
        status_code: int | None,
        fault: str | None = None,
    ) -> None:
        with self._lock:
            entry.t_end = time.time()
            entry.http_status = http_status
            entry.status_code = status_code
            entry.fault = fault
            self._in_flight -= 1

    def record_publish(
        self,
        *,
        reference_id: str | None,
        channel: str,
        kind: PublishKind,
        queued_to: int,
        dropped: bool = False,
        duplicate: bool = False,
    ) -> PublishEvent:
        event = PublishEvent(
            t=time.time(),
            reference_id=reference_id,
            channel=channel,
            kind=kind,
            queued_to=queued_to,
            dropped=dropped,
            duplicate=duplicate,
        )
        with self._lock:
            self._events.append(event)
        return event

    def mark_delivered(self, events: Iterable[PublishEvent]) -> None:
        with self._lock:
            for event in events:
                event.delivered_to += 1

    def clients_dropped(self) -> None:
        """The CometD clients were dropped (a fault): counted, and when."""
        with self._lock:
            self._counters.client_drops += 1
            self._drop_times.append(time.time())

    def restarted(self, seconds: float) -> None:
        """A node restart began; log-ins fail for ``seconds``."""
        now = time.time()
        with self._lock:
            self._counters.restarts += 1
            self._restart_windows.append((now, now + seconds))

    def went_half_open(self, seconds: float) -> None:
        now = time.time()
        with self._lock:
            self._counters.half_opens += 1
            self._half_open_windows.append((now, now + seconds))

    def count(self, counter: str) -> None:
        with self._lock:
            setattr(self._counters, counter, getattr(self._counters, counter) + 1)

    # -- readers (any thread) ------------------------------------------------------------

    @property
    def entries(self) -> list[RequestEntry]:
        with self._lock:
            return list(self._entries)

    @property
    def events(self) -> list[PublishEvent]:
        with self._lock:
            return list(self._events)

    @property
    def login_count(self) -> int:
        return self._counters.logins

    @property
    def login_page_count(self) -> int:
        return self._counters.login_pages

    @property
    def login_attempt_count(self) -> int:
        """Log-ins tried, whatever the answer (503s during a restart included)."""
        return self._counters.login_attempts

    @property
    def login_unavailable_count(self) -> int:
        return self._counters.login_unavailable

    @property
    def restart_windows(self) -> list[tuple[float, float]]:
        """(start, end) wall times of each node restart's log-in outage."""
        with self._lock:
            return list(self._restart_windows)

    @property
    def half_open_windows(self) -> list[tuple[float, float]]:
        with self._lock:
            return list(self._half_open_windows)

    @property
    def silent_poll_count(self) -> int:
        return self._counters.silent_polls

    @property
    def handshake_count(self) -> int:
        return self._counters.handshakes

    @property
    def subscribe_count(self) -> int:
        return self._counters.subscribes

    @property
    def connect_count(self) -> int:
        return self._counters.connects

    @property
    def client_drop_count(self) -> int:
        return self._counters.client_drops

    @property
    def client_drop_times(self) -> list[float]:
        with self._lock:
            return list(self._drop_times)

    @property
    def cc_session_starts(self) -> int:
        return self._counters.cc_session_starts

    @property
    def cc_session_ends(self) -> int:
        """EndContactCenterSession requests answered (the agent logged out of its device)."""
        return self._counters.cc_session_ends

    @property
    def peak_in_flight(self) -> int:
        return self._peak_in_flight

    def outcome(self, reference_id: str) -> Outcome | None:
        """What the server last decided for this referenceId (None: never processed)."""
        decided: Outcome | None = None
        for entry in self.entries:
            if entry.reference_id == reference_id and entry.processed:
                decided = entry.outcome
        return decided

    def requests_for(self, reference_id: str) -> list[RequestEntry]:
        return [e for e in self.entries if e.reference_id == reference_id]

    def acknowledged_refs(self) -> set[str]:
        """Refs whose success message was handed to at least one client."""
        return self._delivered_refs("ack")

    def failed_refs(self) -> set[str]:
        """Refs whose failure message (outbound or user event) reached at least one client."""
        return self._delivered_refs("failure") | self._delivered_refs("error_event")

    def refs_with_outcome(self, outcome: Outcome) -> set[str]:
        """Refs the server decided this way, delivered or not."""
        return {
            e.reference_id
            for e in self.entries
            if e.processed and e.outcome == outcome and e.reference_id is not None
        }

    def cancelled_by(self) -> dict[str, str | None]:
        """The ground truth per phone number: the referenceId of the request that really
        cancelled it (None: a request without one). Numbers never cancelled are absent."""
        return {
            e.phone_number: e.reference_id
            for e in self.entries
            if e.effect == "cancelled" and e.phone_number is not None
        }

    def refs_by_number(self) -> dict[str, list[str]]:
        """Every distinct referenceId POSTed for each phone number, in the order first
        seen, whatever happened to the request (a second one means a second CancelRecord
        under a new id)."""
        refs: dict[str, list[str]] = {}
        for e in self.entries:
            if e.phone_number is None or e.reference_id is None:
                continue
            seen = refs.setdefault(e.phone_number, [])
            if e.reference_id not in seen:
                seen.append(e.reference_id)
        return refs

    def requests_during(self, windows: Iterable[tuple[float, float]]) -> list[RequestEntry]:
        """Outbound-record requests that started inside any of these (start, end) windows."""
        spans = list(windows)
        return [e for e in self.entries if any(a <= e.t_start < b for a, b in spans)]

    def processed_count(self) -> int:
        return sum(1 for e in self.entries if e.processed)

    def faults_seen(self) -> dict[str, int]:
        seen: dict[str, int] = {}
        for entry in self.entries:
            if entry.fault is not None:
                seen[entry.fault] = seen.get(entry.fault, 0) + 1
        return seen

    def peak_rate(self, window: float = 1.0) -> int:
        """Most outbound-record requests starting within any ``window`` seconds."""
        starts = sorted(e.t_start for e in self.entries)
        best = 0
        low = 0
        for high, t in enumerate(starts):
            while t - starts[low] >= window:
                low += 1
            best = max(best, high - low + 1)
        return best

    def _delivered_refs(self, kind: PublishKind) -> set[str]:
        return {
            e.reference_id
            for e in self.events
            if e.kind == kind and e.delivered_to > 0 and e.reference_id is not None
        }

    # -- serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": [asdict(e) for e in self._entries],
                "events": [asdict(e) for e in self._events],
                "counters": asdict(self._counters),
                "client_drop_times": list(self._drop_times),
                "restart_windows": [list(w) for w in self._restart_windows],
                "half_open_windows": [list(w) for w in self._half_open_windows],
                "peak_in_flight": self._peak_in_flight,
            }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Ledger:
        """Rebuild a ledger fetched from ``GET /_sim/ledger`` to use its helpers."""
        raw = json.loads(text)
        ledger = cls()
        ledger._entries = [RequestEntry(**e) for e in raw["requests"]]
        ledger._events = [PublishEvent(**e) for e in raw["events"]]
        ledger._counters = _Counters(**raw["counters"])
        ledger._drop_times = list(raw.get("client_drop_times", []))
        ledger._restart_windows = [(a, b) for a, b in raw.get("restart_windows", [])]
        ledger._half_open_windows = [(a, b) for a, b in raw.get("half_open_windows", [])]
        ledger._peak_in_flight = raw["peak_in_flight"]
        return ledger
