"""One log-in at a time for every sender, through a GWS outage.

While a GWS node restarts behind its load balancer, sessions are lost and log-ins answer
503 (often with ``Retry-After``) for seconds to minutes. A client whose senders each log
in on their own, and again at once when that fails, makes thousands of log-ins (issue 21
measured 59,091 in 300 s) and never stops. :class:`LoginGate` makes it one:

* **single flight**: the first caller starts the log-in as a task of its own; every
  caller arriving while it runs awaits that same task. Callers await it shielded, so a
  caller cancelled meanwhile (a POST cut short, a sender stopping) does not cancel the
  log-in the others wait for.
* **shared, bounded back-off**: a log-in that fails transiently (``TransientError``:
  503/429/5xx, a proxy's 5xx page, a transport error) is tried again by that same task,
  after the server's ``Retry-After`` when it gave one (already finite and capped by
  ``gws.responses``; at least ``min_pause``), else after an exponential back-off with
  jitter (``first_delay`` doubling up to ``max_delay``).
* **an outage, counted**: log-ins failing in a row are an outage; once it has lasted
  ``max_outage`` seconds (the run's ``--max-outage``) :class:`GwsUnavailable` is raised
  to every waiting caller (exit 3: a resume finishes the run).
* **never a loop**: a log-in that replaces a session which carried no accepted request
  (``wasted``: a server that forgets sessions as soon as it makes them) first waits
  ``first_delay``, doubling for each such log-in in a row, up to ``max_delay``.

Anything else (credentials refused, a page that is not the GWS API, a certificate
refused) is raised at once: it is no outage. Time, sleep and the jitter's random source
are injected, so the gate runs on a fake clock in tests.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from batch_cancel.exceptions import GwsUnavailable, TransientError
from batch_cancel.gws.cancelling import cancel_and_wait

__all__ = ["LoginGate"]

log = logging.getLogger("batch_cancel.gws")


class LoginGate:
    """Runs log-ins one at a time, retrying transient failures within ``max_outage``."""

    def __init__(
        self,
        *,
        max_outage: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: random.Random | None = None,
        first_delay: float = 0.5,
        max_delay: float = 30.0,
        min_pause: float = 0.5,
    ) -> None:
        self.max_outage = max_outage
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._min_pause = min_pause
        self._flight: asyncio.Future[Any] | None = None
        self._wasted_in_a_row = 0
        self.attempts = 0  # log-ins tried through the gate
        self.failures = 0  # of which failed transiently
        self.outages = 0  # flights that met at least one failure
        self.waited = 0.0  # seconds spent backing off

    @property
    def in_flight(self) -> bool:
        return self._flight is not None and not self._flight.done()

    async def run(self, login: Callable[[], Awaitable[Any]], *, wasted: bool = False) -> Any:
        """Log in with ``login`` (retried as above), or join the log-in in flight; the
        result of the flight's successful ``login()``. ``wasted``: the session being
        replaced carried no accepted request."""
        if self._flight is None or self._flight.done():
            self._flight = asyncio.ensure_future(self._until_logged_in(login, wasted))
            # every caller may have been cancelled meanwhile: the outcome is still retrieved
            self._flight.add_done_callback(_retrieve)
        return await asyncio.shield(self._flight)

    async def aclose(self) -> None:
        """Stop a log-in still in flight (the run is ending)."""
        flight, self._flight = self._flight, None
        if flight is not None and not flight.done():
            await cancel_and_wait(flight, lambda exc: log.debug("log-in in flight ended with %r while "
                                                                "closing", exc))  # fmt: skip

    async def _until_logged_in(self, login: Callable[[], Awaitable[Any]], wasted: bool) -> Any:
        await self._respite(wasted)
        started = self._clock()
        delay = self._first_delay
        failed = False
        while True:
            self.attempts += 1
            try:
                result = await login()
            except TransientError as exc:
                self.failures += 1
                if not failed:
                    failed = True
                    self.outages += 1
                elapsed = self._clock() - started
                left = self.max_outage - elapsed
                if left <= 0:
                    raise GwsUnavailable(
                        f"GWS log-in kept failing for {elapsed:.0f} s (--max-outage "
                        f"{self.max_outage:g} s): {exc}"
                    ) from exc
                if exc.retry_after is not None:
                    pause = max(exc.retry_after, self._min_pause)
                else:
                    pause = self._rng.uniform(delay / 2, delay)
                    delay = min(delay * 2, self._max_delay)
                pause = min(pause, left)
                log.warning("log-in failed (%s); one log-in for all senders again in %.1f s "
                            "(for up to %.0f s more)", exc, pause, left)  # fmt: skip
                self.waited += pause
                await self._sleep(pause)
                continue
            if failed:
                log.info("logged in again after %.1f s of failing log-ins", self._clock() - started)
            return result

    async def _respite(self, wasted: bool) -> None:
        """Wait before a log-in whose previous session carried nothing (see above)."""
        if not wasted:
            self._wasted_in_a_row = 0
            return
        self._wasted_in_a_row += 1
        pause = min(self._first_delay * 2 ** (self._wasted_in_a_row - 1), self._max_delay)
        log.warning("the GWS session was lost before it carried any request: logging in again "
                    "in %.1f s", pause)  # fmt: skip
        self.waited += pause
        await self._sleep(pause)


def _retrieve(flight: asyncio.Future[Any]) -> None:
    """Mark the flight's exception as seen (asyncio warns about one nobody retrieved)."""
    if not flight.cancelled():
        flight.exception()
