"""Shared pacing for every sender: the rate limit and the pause after throttling.

A 429, a Retry-After or a cluster of failures (controller.py) seen by
one worker pauses all of them: GWS is telling the client, not one request, to
slow down. A lone 503 is not: that request backs off on its own. A pause is only
ever extended, never cut short by a later, shorter Retry-After; when it ends, one
request goes first as a probe and the others follow only once it was answered, so
a server that is still overloaded hears one request per pause, not a storm.

Pacing is virtual scheduling (GCRA): each request reserves the next free slot,
``1/rate`` after the previous one, and sleeps until it. Requests may run up to
1% of a second's slots ahead of schedule, so any 1 s window holds at most
``rate`` + 1% (+ 1) of them. That bound holds for the moments requests really go,
not only for their slots: a request that wakes late (its process was stalled or
frozen, the event loop busy) by more than a slot or 10 ms has missed its slot and
takes a new one; were it sent anyway, every request whose slot passed during the
stall would go at once, on top of the next second's full schedule (a loaded fleet
worker at 40/s put 45-47 requests in one second, up to its concurrency at once).
Likewise a hold (a fleet worker's share of 0) restarts the schedule from the moment
it ends: no credit for the time held. It replaces aiolimiter, measured at 2000/s against the
simulator: aiolimiter's futures and timers held the run to about 900/s, and it
reads the event loop's clock, which a unit test cannot fake.

What the rate should be (adaptive mode: AIMD and the delay watch) and when failures
cluster is decided in controller.py, which sets ``current`` and calls :meth:`Pacer.pause`.
"""

from __future__ import annotations

import asyncio
import math
import random
import threading
from collections import deque
from collections.abc import Awaitable, Callable

__all__ = ["Pacer"]

# Share of a second's requests that may go at once: about 10 ms of them keeps
# high rates free of timer resolution while a 1 s window holds at most rate + 1%.
_BURST_SHARE = 0.01
# A request that wakes later than this past its slot (or than one slot, at low rates)
# missed it and takes a new one: a window then holds at most ``rate`` * (1 + 1%) + 1
# slots' requests, plus what wakes within this margin.
_LATE = 0.01
# How far back an adaptive pacer remembers when requests went: longer than a server's
# queue holds a request (Jetty's DoS filter: maxWaitMs), shorter than a run.
_SENT_KEPT = 10.0


def _always() -> bool:
    return True


def _ignore(now: float) -> None:
    pass


class Pacer:
    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        rng: random.Random | None = None,
        base_backoff: float = 0.5,
        max_backoff: float = 30.0,
        adaptive: bool = False,
        probe_timeout: float = 2.0,
    ) -> None:
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._base = base_backoff
        self._max = max_backoff
        self.rate = rate
        # --adaptive-rate: the controller (controller.py) moves ``current``; the pacer notes
        # what it served while unlimited, for the controller to find the ceiling
        self.adaptive = adaptive
        # the rate requests are paced at now (0: unpaced) and the most it may reach
        self.ceiling = rate if rate > 0 else math.inf
        self.current = rate if rate > 0 else math.inf
        self._next_slot = -math.inf
        # set_rate runs on the journal's thread while requests reserve slots on the loop's:
        # the schedule's read-modify-writes must not interleave (a lost update is a doubled slot)
        self._slots = threading.Lock()
        # when requests went (adaptive mode only): what an unlimited run served, for its
        # ceiling, and what went since a slow answer's request, for the queue behind it
        self._sent: deque[float] | None = deque() if adaptive else None
        self.paused_until = 0.0
        self.held = False  # a fleet worker whose share of the job's rate is 0 for now
        self._rate_changes = 0
        self.pauses = 0
        self.paused_seconds = 0.0
        self._streak = 0
        self._probe_timeout = probe_timeout
        # after a pause one request goes first; the others wait for its answer
        self._probe_needed = False
        self._probe_out: asyncio.Event | None = None
        self.probes = 0
        # adaptive mode: a request went this long ago and no answer came since, so GWS holds
        # requests back (a queue, not a refusal: Jetty's DoS filter); the others wait for an
        # answer instead of joining the queue, each as slow as the last. The controller sets
        # it from the calm latency (None: not known yet) and hears of it (``on_stall``, with
        # when the unanswered request went).
        self.stall_after: float | None = None
        self.on_stall: Callable[[float], None] = _ignore
        self.last_answer = -math.inf
        self.stalls = 0
        self._stalled_send: float | None = None  # the held request's send, until judged
        # a fleet worker's deadline (send/fleet.py): asked right before a request goes, so
        # a worker whose lease may have run out (a frozen process that thaws) sends nothing
        self.gate: Callable[[], bool] = _always

    # -- throttling pause --------------------------------------------------------
    def pause(self, retry_after: float | None) -> float:
        """Pause everyone; without Retry-After back off exponentially with jitter."""
        if retry_after is None:
            self._streak += 1
            ceiling = min(self._max, self._base * 2 ** (self._streak - 1))
            retry_after = self._rng.uniform(ceiling / 2, ceiling)
        self.last_answer = self._clock()
        self._stalled_send = None
        until = self.last_answer + retry_after
        if until > self.paused_until:
            start = max(self.paused_until, self._clock())
            self.paused_seconds += until - start
            self.paused_until = until
            self.pauses += 1
        self._probe_needed = True
        self._release_probe()
        return retry_after

    def calm(self) -> None:
        """A request went through: the next throttling starts a fresh backoff."""
        self._streak = 0
        self.answered_any()

    def answered_any(self) -> None:
        """GWS answered a request (however): a probe's answer lets the others go."""
        self.last_answer = self._clock()
        self._stalled_send = None
        if self._probe_out is not None and self.paused_until <= self._clock():
            self._probe_needed = False
            self._release_probe()

    def _release_probe(self) -> None:
        if self._probe_out is not None:
            self._probe_out.set()
            self._probe_out = None

    async def wait_pause(self) -> None:
        while True:
            while (left := self.paused_until - self._clock()) > 0:
                await self._sleep(left)
            if not self._probe_needed:
                return
            if self._probe_out is None:
                # this request is the probe; the others wait for its answer
                self._probe_out = asyncio.Event()
                self.probes += 1
                return
            waiting = self._probe_out
            stalled = self._stalled_send
            if stalled is not None and self.stall_after is not None:
                # told only if no answer comes for as long again: after a freeze of this
                # process the answers that came meanwhile are read within a few turns of
                # the loop, while a request GWS holds stays unanswered
                try:
                    await asyncio.wait_for(waiting.wait(), self.stall_after)
                except TimeoutError:
                    if self._stalled_send == stalled:
                        self._stalled_send = None
                        self.on_stall(stalled)
                continue
            try:
                await asyncio.wait_for(waiting.wait(), self._probe_timeout)
            except TimeoutError:
                # the probe hangs: let the next request probe instead
                if self._probe_out is waiting:
                    self._release_probe()

    # -- what was served -----------------------------------------------------------
    def observed_rate(self, now: float | None = None) -> float:
        """Requests acquired over the last second (adaptive mode only)."""
        now = self._clock() if now is None else now
        return float(self.sent_since(now - 1.0))

    def sent_since(self, since: float) -> int:
        """Requests acquired after ``since``, up to ``_SENT_KEPT`` seconds back (adaptive mode only)."""
        if self._sent is None:
            return 0
        count = 0
        for at in reversed(self._sent):
            if at <= since:
                break
            count += 1
        return count

    # -- a fleet worker's share ---------------------------------------------------
    def set_rate(self, rate: float) -> None:
        """A new share of a job's rate (``send/fleet.py``): the rate and its ceiling.

        0 holds every request until a share comes. Slots already reserved at a lower
        rate are pulled in to the new interval, so a raised share takes effect at once.
        Called from the journal's thread: the fields are plain floats, each assignment
        atomic, and ``acquire`` reads the rate once per request.
        """
        if rate <= 0:
            self.held = True
            self._rate_changes += 1
            return
        self.ceiling = rate
        # an adaptive rate stays where the controller put it, within the new share
        self.current = min(self.current, rate) if self.adaptive else rate
        with self._slots:
            now = self._clock()
            # pulled in to the new interval (a raise applies at once), but never before now:
            # a schedule that fell behind during a hold gets no credit for the time held
            self._next_slot = max(now, min(self._next_slot, now + 1.0 / self.current))
            self._rate_changes += 1  # requests asleep on a slot of the old schedule take a new one
        self.held = False

    def defer(self, seconds: float) -> None:
        """No request goes for ``seconds`` (the queue a server built drains first); unlike a
        pause, no probe and no back-off: the rate controller asks it, not a refusal."""
        with self._slots:
            self._next_slot = max(self._next_slot, self._clock() + seconds)
            self._rate_changes += 1  # requests asleep on an earlier slot take a new one

    # -- pacing ------------------------------------------------------------------
    def take_free(self) -> bool:
        """Take a slot at once if nothing stands in the way (no rate limit, no pause,
        no probe, not held): True then. Else the caller awaits :meth:`acquire`.

        Without a rate limit this is every request of a calm run; answering it here
        spares each of them the coroutines of the general path."""
        if self.held or self._probe_needed or not math.isinf(self.current) or not self.gate():
            return False
        now = self._clock()
        if self.paused_until > now or self._answers_stopped(now):
            return False
        self._note_sent(now)
        return True

    def _answers_stopped(self, now: float) -> bool:
        """True (and the others then wait for an answer) when the first request sent since
        the latest answer went more than ``stall_after`` ago."""
        if self.stall_after is None or self._sent is None or self._probe_needed:
            return False
        first = None
        for at in reversed(self._sent):
            if at <= self.last_answer:
                break
            first = at
        if first is None or now - first <= self.stall_after:
            return False
        self.stalls += 1
        # the unanswered request is the probe: the next answer lets the others go
        self._probe_needed = True
        self._probe_out = asyncio.Event()
        self._stalled_send = first
        return True

    def _note_sent(self, now: float) -> None:
        """An adaptive pacer remembers when requests went (what it served, what is queued)."""
        sent = self._sent
        if sent is not None:
            sent.append(now)
            while sent[0] < now - _SENT_KEPT or len(sent) > 8192:
                sent.popleft()

    async def acquire(self) -> None:
        """Wait out any pause, then for this request's slot in the schedule."""
        while True:
            while self.held or not self.gate():
                await self._sleep(0.05)
            changes = self._rate_changes
            await self._acquire_slot()
            if self._answers_stopped(self._clock()):
                continue  # waits for an answer, then for a slot of the schedule as it is then
            # a fleet share lowered while this request slept: its slot was of the old
            # schedule, so it takes one of the new (the declared share bounds the sending);
            # and the gate is asked again after the sleep, with nothing awaited after it
            if changes == self._rate_changes and self.gate():
                self._note_sent(self._clock())
                return

    async def _acquire_slot(self) -> None:
        await self.wait_pause()
        rate = self.current
        if math.isinf(rate):
            return
        interval = 1.0 / rate
        ahead = (max(1, math.floor(rate * _BURST_SHARE)) - 1) * interval
        late = max(interval, _LATE)
        while True:
            with self._slots:
                now = self._clock()
                # the slot is reserved before sleeping, so concurrent callers queue in order
                slot = max(self._next_slot, now - ahead)
                self._next_slot = slot + interval
            if slot <= now:
                return
            await self._sleep(slot - now)
            # a throttling pause may have started while this request waited its turn
            await self.wait_pause()
            if self._clock() - slot <= late:
                return
            # woken late (a stalled loop or process): the slot passed unused; sent now, it
            # would go together with every other request whose slot passed meanwhile
