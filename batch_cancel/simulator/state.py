"""Everything one running simulator knows, shared by its REST and CometD handlers."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from batch_cancel.simulator.bayeux import BayeuxHub
from batch_cancel.simulator.config import Faults, SimulatorConfig
from batch_cancel.simulator.dos_filter import DosFilter
from batch_cancel.simulator.ledger import Ledger
from batch_cancel.simulator.sessions import HttpSession, SessionStore

__all__ = ["Device", "SimState"]

# Fixed namespace so a user's ids (and so devicePaths) stay the same across runs.
_ID_NAMESPACE = uuid.UUID("6f0c1c2e-5b1e-4a57-9d3e-2f8d1a0b7c11")


@dataclass(frozen=True)
class Device:
    device_id: str
    phone_number: str

    @property
    def path(self) -> str:
        return f"/devices/{self.device_id}"


class SimState:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.ledger = Ledger()
        self.hub = BayeuxHub(config, self.ledger)
        self.sessions = SessionStore(config.session_timeout, self._session_ended)
        self.faults = config.faults
        self.rng = random.Random(config.faults.seed)
        self.user_ids = {u: str(uuid.uuid5(_ID_NAMESPACE, "user:" + u)) for u in config.users}
        self.devices = {
            u: Device(str(uuid.uuid5(_ID_NAMESPACE, "device:" + u)), str(5001 + i))
            for i, u in enumerate(sorted(config.users))
        }
        self.processed_refs: set[str] = set()
        # (operation, calling list, phone number) -> the referenceId (or "#seq") of the
        # request that did it: what GWS has really done, for repeats
        self.done: dict[tuple[str, str | None, str], str] = {}
        self.record_handles: dict[tuple[str, str], int] = {}
        # outbound-record requests that got past authentication: the clock of *_every faults
        self.authenticated_requests = 0
        self.timers: set[asyncio.TimerHandle] = set()
        # what a proxy in front of GWS answers on /api/v2/me (or, everywhere=True, on
        # every /api/v2 request) instead of GWS: an HTML page with this status, until
        # the monotonic time given (see serve_login_page)
        self.login_page: tuple[int, float, bool] | None = None
        self.dos_filter = DosFilter()
        # monotonic ends of a node restart's log-in outage (with its Retry-After) and of
        # a half-open window for long polls
        self.restart_until = 0.0
        self.restart_retry_after: float | None = None
        self.half_open_until = 0.0
        # Set when the server stops, so hung requests let go of their connections.
        self.stopping = asyncio.Event()

    def set_faults(self, faults: Faults) -> None:
        self.faults = faults
        # A new seed restarts the draws, so a test can pin decisions mid-run.
        if faults.seed is not None:
            self.rng = random.Random(faults.seed)

    def restart(self, seconds: float, retry_after: float | None) -> None:
        """A GWS node restarts: sessions and CometD clients are lost at once, and log-ins
        answer 503 for ``seconds``."""
        self.ledger.restarted(seconds)
        self.restart_until = time.monotonic() + seconds
        self.restart_retry_after = retry_after
        self.sessions.end_all()
        self.hub.drop_clients()

    def restarting(self) -> bool:
        return time.monotonic() < self.restart_until

    def go_half_open(self, seconds: float) -> None:
        """Long polls held now or arriving within ``seconds`` are never answered."""
        self.ledger.went_half_open(seconds)
        self.half_open_until = time.monotonic() + seconds
        self.hub.go_silent()

    def half_open(self) -> bool:
        return time.monotonic() < self.half_open_until

    def login_page_status(self, *, login: bool = True) -> int | None:
        """The status of the HTML page that answers log-ins (``login``) or any other API
        request now, or None (GWS answers)."""
        page = self.login_page
        if page is None or time.monotonic() >= page[1] or not (login or page[2]):
            return None
        return page[0]

    def chance(self, rate: float) -> bool:
        # Draw nothing for a switched-off knob, so turning one knob on does not shift
        # the decisions of the others.
        return rate > 0.0 and self.rng.random() < rate

    def record_handle(self, calling_list: str, phone_number: str) -> int:
        key = (calling_list, phone_number)
        handle = self.record_handles.get(key)
        if handle is None:
            handle = self.record_handles[key] = len(self.record_handles) + 1
        return handle

    def call_later(self, delay: float, func: Callable[[], None]) -> None:
        """Run ``func`` later, remembering it so shutdown can cancel what is pending."""
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle

        def run() -> None:
            self.timers.discard(handle)
            func()

        handle = loop.call_later(delay, run)
        self.timers.add(handle)

    def cancel_timers(self) -> None:
        for handle in self.timers:
            handle.cancel()
        self.timers.clear()

    def _session_ended(self, session: HttpSession) -> None:
        if self.config.session_end_drops_clients:
            self.hub.drop_clients(lambda c: c.session_id == session.session_id)
