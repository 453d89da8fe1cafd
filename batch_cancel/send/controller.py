"""The adaptive controls, in one place beside the plain rate pacer (pacer.py).

The pacer keeps a schedule: a rate, a pause everyone shares, one probe after a pause.
What the rate should be, and when everyone should pause, follows from GWS's answers;
:class:`Controller` decides it, with a small interface the sender calls once per answer:

- :meth:`Controller.accepted` (latency): a POST went through;
- :meth:`Controller.refused`: GWS's own refusal (the request was wrong, GWS is well);
- :meth:`Controller.overloaded` (HTTP status, Retry-After): a transient failure; it
  answers whether everyone pauses (a 429, a Retry-After, failures that cluster) or
  this request backs off alone (a lone 503).

Four signals feed it:

- **failure clusters** (:class:`FailureCluster`): a lone 503 is one request's bad luck;
  only when a high share of the latest answers fail does GWS need silence from all;
- **delay watch** (:class:`DelayWatch`): a throttle that only delays (Jetty's DoS
  filter) refuses nothing, so POST latency is judged against calm latency, as measured
  on this link and box (no number of milliseconds);
- **AIMD** (adaptive mode, ``--adaptive-rate``, as TCP does): a throttling answer halves
  the rate (not below ``floor``), at most once per ``cooldown`` seconds because the
  requests in flight answer 429 together for one overload; every calm second adds
  ``increase`` of the ceiling back. The ceiling is ``--rate``; with ``--rate 0``
  requests go unpaced until the first throttling, and the rate observed over the last
  second then becomes the ceiling. A lone 503 does not lower the rate (one request's
  bad luck; 5 % of them, each cutting 10 %, held 200/s to 104/s). When answers get slow
  and GWS answered fewer than ``held_share`` of the pace over the last second, what it
  answered is the rate it serves (the knee: the more of the last second's answers and
  those of the second up to the first answer it held, which a run's bunched first
  answers do not cut short); answers slow at the pace say nothing about
  its rate, so the knee then only rises (a busy box made it ratchet down: 62/s held
  under a limit of 100/s). The rate drops to ``hold_share`` of the knee, and no request
  goes until the ones sent behind the slow one drained at the knee (a pacer deferral:
  paced at 0.7 of the knee instead, a queue of eight at 10/s kept filling for two
  seconds). Latency is not judged again until a request sent after that is answered
  calm (one still held defers the others as long) or ``drain_timeout`` passed. The
  rate holds ``hold`` seconds after the last slow answers; only then does it probe
  above, slowly (``probe_increase`` a second). So it settles just under a server that
  only delays instead of oscillating around its limit.
- **stalls** (pacer.py): the first sign of a queue is a request that is not answered,
  long before a slow answer comes back (the DoS filter answers the first request over
  its rate when its window moves, up to a second later). When a request due finds one
  sent longer than ``factor`` calm p90s ago unanswered, and no answer since, it waits
  for an answer instead of joining the queue; :meth:`Controller.stalled` judges what GWS
  served in the second before the held request went, as slow answers are judged.

Without adaptive mode the rate is fixed: only the failure clusters act (a shared pause).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import NamedTuple

from batch_cancel.send.pacer import Pacer

__all__ = ["Controller", "DelayWatch", "FailureCluster", "Latency", "Reaction"]


class Reaction(NamedTuple):
    """What a transient failure asks: ``pause`` seconds for everyone (None: this request
    backs off alone), and why."""

    pause: float | None
    why: str


class Controller:
    def __init__(
        self,
        pacer: Pacer,
        *,
        clock: Callable[[], float],
        floor: float = 1.0,
        decrease: float = 0.5,
        increase: float = 0.05,
        cooldown: float = 1.0,
        drain_share: float = 0.7,
        hold_share: float = 0.95,
        hold: float = 30.0,
        probe_increase: float = 0.02,
        drain_timeout: float = 5.0,
        held_share: float = 0.95,
    ) -> None:
        self.pacer = pacer
        self._clock = clock
        self.adaptive = pacer.adaptive  # --adaptive-rate: the pacer then notes what it served
        self._floor = floor
        self._decrease = decrease
        self._increase = increase
        self._cooldown = cooldown
        self._drain_share = drain_share
        self._hold_share = hold_share
        self._hold = hold
        self._probe_increase = probe_increase
        self._drain_timeout = drain_timeout
        self._held_share = held_share
        self.cluster = FailureCluster(clock)
        self.delays = DelayWatch()
        self.minimum = pacer.current
        self.decreases = 0
        self.delay_decreases = 0
        self.knee: float | None = None
        self._last_decrease = -math.inf
        self._last_raise = -math.inf
        self._slow_at = -math.inf
        self._draining_since: float | None = None
        self._resumed_at = -math.inf  # when requests went again after the latest slow answers
        self._answers: deque[float] = deque()
        self._held_at: float | None = None  # the first answer slow on its own since a calm one
        self._first_answer: float | None = None
        if self.adaptive:
            pacer.on_stall = self.stalled

    # the rate requests are paced at: the pacer's, which this controller sets
    @property
    def current(self) -> float:
        return self.pacer.current

    @current.setter
    def current(self, rate: float) -> None:
        self.pacer.current = rate

    @property
    def ceiling(self) -> float:
        return self.pacer.ceiling

    # -- what the sender tells ------------------------------------------------------------
    def accepted(self, latency: float) -> None:
        """A POST went through after ``latency`` seconds."""
        self.answered(latency)
        self.cluster.answered(False)
        self.calm()

    def refused(self) -> None:
        """GWS refused the request itself: GWS is well, so no cluster and no slow-down."""
        self.pacer.answered_any()
        self.cluster.answered(False)
        self._heard(self._clock())

    def overloaded(self, http_status: int | None, retry_after: float | None) -> Reaction:
        """A transient failure GWS (or what is in front of it) answered."""
        clustered = self.cluster.answered(True)
        self._heard(self._clock())
        if http_status == 429 or retry_after is not None or clustered:
            # GWS asks the client, not this request, to slow down: everyone pauses
            self.throttled()
            waited = self.pacer.pause(retry_after)
            why = "failures cluster" if clustered and http_status != 429 else "GWS throttled"
            return Reaction(waited, why)
        if http_status is not None and http_status >= 500:
            # a lone 503: this request backs off on its own; the rate stays (one request's bad
            # luck says nothing about the rate: with 5 % of answers failing, cutting 10 % for
            # each held 200/s to 104/s)
            self.pacer.answered_any()
            return Reaction(None, "lone")
        return Reaction(None, "retry")

    # -- AIMD ---------------------------------------------------------------------------
    def calm(self) -> None:
        """A request went through: the next throttling starts a fresh backoff, and an
        adaptive rate recovers a little."""
        self.pacer.calm()
        if self.adaptive and self.current < self.ceiling and self._draining_since is None:
            self._raise(self._clock())

    def throttled(self) -> None:
        """GWS answered 429, a Retry-After, or failures cluster: multiplicative decrease
        (adaptive mode only)."""
        if not self.adaptive:
            return
        now = self._clock()
        if now - self._last_decrease < self._cooldown:
            return
        if math.isinf(self.current):
            observed = self.pacer.observed_rate(now)
            self.pacer.ceiling = self.current = max(self._floor, observed)
        self._lower(now, self.current * self._decrease)

    def _lower(self, now: float, rate: float) -> None:
        self.current = max(self._floor, min(self.current, rate))
        self.minimum = min(self.minimum, self.current)
        self.decreases += 1
        self._last_decrease = self._last_raise = now

    def answered(self, latency: float) -> None:
        """A POST was answered after ``latency`` seconds: the delay-throttle watch."""
        if not self.adaptive:
            return  # what was served is only asked by the adaptive rate
        now = self._clock()
        self._heard(now)
        if self.delays.calm_p90 is not None:
            # requests unanswered for this long: the pacer holds the others (pacer.py)
            self.pacer.stall_after = self.delays.factor * self.delays.calm_p90
        if self._draining_since is not None:
            if now - self._draining_since >= self._drain_timeout:
                self._draining_since = None  # judged as usual again
            elif now - latency < self._resumed_at:
                return  # sent before the queue could have drained: its delay says nothing new
            elif self.delays.slow(latency):
                # sent once the queue should have drained, and still held back: GWS still
                # counts the overload against this client (Jetty's window of a second
                # remembers the bunched requests it let through); none goes for as long
                wait = latency - (self.delays.baseline or 0.0)
                self.pacer.defer(wait)
                self._resumed_at = now + wait
                return
            else:
                self._draining_since = None
                self._last_raise = now
        # the first answer slow on its own since a calm one: GWS let that request through
        # when the second of admissions before it allowed, which is the second to count
        if not self.delays.slow(latency):
            self._held_at = None
        elif self._held_at is None:
            self._held_at = now
        verdict = self.delays.answered(latency, now)
        if verdict is Latency.SLOW:
            served = self._served(now)
            if self._held_at is not None:
                served = max(served, self._served_before(self._held_at))
            self._slowed(now, served, self.pacer.sent_since(now - latency))

    def _heard(self, now: float) -> None:
        """GWS answered (however): what it served."""
        if not self.adaptive:
            return
        if self._first_answer is None:
            self._first_answer = now
        self._answers.append(now)
        while self._answers and self._answers[0] <= now - 2.0:  # a stall looks a second back from its request
            self._answers.popleft()

    def stalled(self, sent_at: float) -> None:
        """A request went at ``sent_at`` and no answer came since, for longer than calm
        allows (the pacer holds the others back): GWS queues it. What GWS served is the
        answers of the second before it went (a throttle with a window of a second holds a
        request when that second's requests are all it lets through: at 10/s, the answers
        in the second up to a stall read 9 when the client had itself waited in it).
        Only far under the pace (the drain share) is it GWS's rate: on a busy box the
        pacer itself runs some 8 % under --rate and this box stalls for milliseconds
        (with 5 % lone 503s at --rate 200, stalls judged against 95 % of the pace cut
        the rate seven times, to 68/s); nor does a run's first second tell."""
        first = self._first_answer
        if first is None or sent_at - 1.0 < first - (self.delays.baseline or 0.0):
            return
        if self._draining_since is not None or self.knee is not None:
            # once a knee is known, slow answers judge it (a median, not one request a
            # loaded box may have held: stalls judged against the pace held 200/s at 48/s)
            return
        served = float(sum(1 for t in self._answers if sent_at - 1.0 < t <= sent_at))
        if served < self._drain_share * self.current:
            self._slowed(self._clock(), served, self.pacer.sent_since(self.pacer.last_answer))

    def _slowed(self, now: float, served: float, queued: int) -> None:
        """GWS delays: ``served`` a second lately, ``queued`` requests sent since the one
        that was slow (or unanswered)."""
        if math.isinf(self.current):
            self.pacer.ceiling = self.current = max(self._floor, served)
        # asked: what this client sent over the same second, not the pace (a loaded box
        # paces some 8 % under it, and answers as many as it sent)
        asked = min(self.current, self.pacer.observed_rate(now))
        if served and (self.knee is None or served < self._held_share * asked):
            # GWS held the answers under what it was asked: what it served is its rate
            self.knee = served
        elif served:
            # it answered as fast as it was asked: no sign its rate is lower than known
            # (answers slow for another reason: the knee does not ratchet down)
            self.knee = max(self.knee or 0.0, served)
        hold_at = self._hold_share * self.knee if self.knee else 0.0
        # already at or below the hold and still slow: the knee was misjudged
        self._lower(now, hold_at if 0 < hold_at < self.current else self.current * self._drain_share)
        # the queue GWS built: the requests sent after the slow one wait behind it and drain
        # at the knee, so none goes until they did (at the lowered rate the queue would keep
        # filling for seconds, each request in it as slow as the last)
        wait = queued / self.knee if self.knee else 0.0
        self.pacer.defer(wait)
        self._resumed_at = now + wait
        self._slow_at = now
        self.delay_decreases += 1
        self._draining_since = now
        self.delays.forget_recent()

    def _served(self, now: float) -> float:
        """What GWS answered over the last second: the answers in it, per second.

        A throttle such as Jetty's DoS filter admits at most N requests in any one second,
        so a second of answers while it holds a queue is exactly N of them, however
        bunched (its admissions repeat the pattern of the second before: the rate
        between the first and the last answer read 9.2/s under a limit of 10). The
        answer to the request admitted exactly one second before this one is on the
        edge: the window starts a calm latency later, so jitter does not count it in
        (the calm median: a p90 that slow answers moved up cut answers off the far end).
        """
        edge = min(0.1, self.delays.baseline or 0.0)
        start = now - 1.0 + edge
        return sum(1 for t in self._answers if t > start) / (1.0 - edge)

    def _served_before(self, held: float) -> float:
        """What GWS answered over the second up to ``held``, the answer to the first request
        it held back since a calm answer: the answers in it, less one.

        Jetty's DoS filter lets a held request through when the N-th admission before it
        is a second old, so the second up to its answer holds N + 1 answers with the one
        admitted a second earlier on its far edge; the window reaches a calm p90 further
        back so that jitter does not cut that one off, and takes it off. Unlike the second
        up to a later answer (:meth:`_served`), nothing is cut off where the answers
        bunch: when a run meets the limit at its start, GWS admits N at once and holds the
        rest, and the first answers came 6-11 ms after their requests as connections
        opened, then 1 ms (the last second, with its edge a calm median, read 191 under
        a limit of 200: held at 90.7 %). A steady rate adds at most a p90's worth.
        """
        edge = min(0.1, self.delays.calm_p90 or 0.0)
        start = held - 1.0 - edge
        return float(max(0, sum(1 for t in self._answers if start < t <= held) - 1))

    def _raise(self, now: float) -> None:
        # only time since the last decrease and outside a pause counts as calm
        since = max(self._last_raise, self.pacer.paused_until)
        if now > since:
            step = self._increase * self.ceiling * (now - since)
            ceiling = self.ceiling
            if self.knee is not None:
                hold_at = self._hold_share * self.knee
                if self.current < hold_at:
                    ceiling = min(ceiling, hold_at)  # recover quickly, up to just under the knee
                elif now - self._slow_at < self._hold:
                    step = 0.0  # hold just under the rate where GWS started delaying
                else:
                    # long calm: GWS may serve more now; probe slowly
                    step = min(step, self._probe_increase * self.current * (now - since))
            self.current = min(ceiling, self.current + step)
            self._last_raise = now


# -- failure clusters ---------------------------------------------------------------------
# When failures cluster: the signal for a pause shared by every sender.
#
# A lone 503 (no Retry-After) is one request's bad luck: that request backs off on
# its own. Only when a high share of the latest requests fail does the server need
# silence from all of them. The window is the last ``window`` answers no older than
# ``max_age`` seconds; it clusters when at least ``min_failures`` of them failed and
# they are at least ``share`` of it. With 5 % of answers failing at random, 5 of 10
# failing together happens about once in 16,000 windows; when every request fails
# it takes five answers to notice.

class FailureCluster:
    def __init__(
        self,
        clock: Callable[[], float],
        *,
        window: int = 10,
        min_failures: int = 5,
        share: float = 0.5,
        max_age: float = 2.0,
    ) -> None:
        self._clock = clock
        self._window = window
        self._min = min_failures
        self._share = share
        self._max_age = max_age
        self._answers: deque[tuple[float, bool]] = deque()
        self._failures = 0  # failed answers in the window, kept as it changes (asked per answer)

    def answered(self, failed: bool) -> bool:
        """Record one answer; True when failures now cluster."""
        now = self._clock()
        answers = self._answers
        answers.append((now, failed))
        self._failures += failed
        oldest = now - self._max_age
        while answers and (len(answers) > self._window or answers[0][0] < oldest):
            self._failures -= answers.popleft()[1]
        failures = self._failures
        return failures >= self._min and failures >= self._share * len(answers)

    def clear(self) -> None:
        self._answers.clear()
        self._failures = 0


# -- delay watch ----------------------------------------------------------------------------
# A throttle that only delays: POST latency against the calm latency, both measured here.
#
# Jetty's DoS filter (in front of GWS) holds requests over its per-session rate back
# before it refuses any, so the first sign of it is answers that get slower. The answers
# are slow when the median of the recent ones (those of the last ``span`` seconds, at
# least ``recent`` of them) is more than ``factor`` times the calm p90: relative to what
# calm looks like on this link and this box, not a number of milliseconds. The window
# is one of time, so at a high rate the median is over many answers: a scheduling
# stall on a busy box slows the few answers in flight, not half of a quarter second's
# (with a median of the last five, such stalls read as slow answers about once a few
# seconds at 100/s, and each cut the rate: 62/s held under a limit of 100/s).
#
# The calm figures come from the first ``baseline_samples`` answers (judging starts with
# the ``recent``-th, against the figures so far); a throttle that
# acts within the first second can only have delayed some of them, so the fastest
# quarter bounds them (the median at most twice, the p90 at most four times it). Later
# every calm judgement moves them towards its window's figures, over ``settle`` seconds,
# so they follow a box whose load changes (the p90 no further than the slow threshold:
# one answer slow on its own in a calm window is not what calm looks like).

class Latency(StrEnum):
    LEARNING = "learning"  # the baseline, or enough recent answers, not known yet
    CALM = "calm"
    SLOW = "slow"


def _quantile(ordered: list[float], q: float) -> float:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class DelayWatch:
    def __init__(
        self,
        *,
        baseline_samples: int = 20,
        recent: int = 5,
        span: float = 0.25,
        factor: float = 2.0,
        settle: float = 10.0,
    ) -> None:
        self._needed = baseline_samples
        self._first: list[float] = []
        self._recent: deque[tuple[float, float]] = deque()
        self._min_recent = recent
        self._span = span
        self._factor = self.factor = factor
        self._settle = settle
        self.baseline: float | None = None  # calm median
        self.calm_p90: float | None = None
        self.typical = 0.0  # the recent median at the latest judgement
        self._moved_at: float | None = None

    def answered(self, latency: float, now: float) -> Latency:
        learning = len(self._first) < self._needed
        if learning:
            # judged from the fifth answer on against what the first ones say so far: a
            # throttle met at the start is noticed within its first slow answers
            self._first.append(latency)
            ordered = sorted(self._first)
            fast = _quantile(ordered, 0.25)
            self.baseline = min(_quantile(ordered, 0.5), 2 * fast)
            self.calm_p90 = min(_quantile(ordered, 0.9), 4 * fast)
            self._moved_at = now
        assert self.baseline is not None and self.calm_p90 is not None
        recent = self._recent
        recent.append((now, latency))
        while len(recent) > self._min_recent and recent[0][0] < now - self._span:
            recent.popleft()
        if len(recent) < self._min_recent:
            return Latency.LEARNING  # too few answers since the last judgement
        ordered = sorted(x for _, x in recent)
        typical = self.typical = _quantile(ordered, 0.5)
        if typical > self._factor * self.calm_p90:
            return Latency.SLOW
        if learning:
            return Latency.CALM
        # a calm judgement: the calm figures follow it, slowly
        share = min(1.0, (now - (self._moved_at or now)) / self._settle)
        self.baseline += (typical - self.baseline) * share
        # an answer slow on its own is no calm figure, though its window's median is calm:
        # a request GWS held 755 ms, in a window of five moved 0.75 s after the last move,
        # raised the calm p90 from 2.4 to 65 ms, and the stalls that followed went unseen
        p90 = min(_quantile(ordered, 0.9), self._factor * self.calm_p90)
        self.calm_p90 += (p90 - self.calm_p90) * share
        self._moved_at = now
        return Latency.CALM

    def slow(self, latency: float) -> bool:
        """One answer, judged alone (where its predecessors' slowness is known already)."""
        return self.calm_p90 is not None and latency > self._factor * self.calm_p90

    def forget_recent(self) -> None:
        """After the rate was lowered, judge only answers to requests sent since."""
        self._recent.clear()
