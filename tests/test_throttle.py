"""Pacer: rate schedule, shared pause, and the adaptive (AIMD) rate on a fake clock."""

from __future__ import annotations

import asyncio
import itertools
import math
from pathlib import Path

import pytest
from helpers import ENV, Faults, job_args, make_sim, numbers, run_cli, write_csv

from batch_cancel.send.controller import Controller
from batch_cancel.send.pacer import Pacer


class FakeTime:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)


def pacer(rate: float, t: FakeTime, **kwargs: object) -> Pacer:
    return Pacer(rate, clock=t.clock, sleep=t.sleep, **kwargs)  # type: ignore[arg-type]


def controls(rate: float, t: FakeTime, *, adaptive: bool = False, **kwargs: object) -> Controller:
    """The adaptive controls over a pacer of ``rate`` (controller.py)."""
    return Controller(pacer(rate, t, adaptive=adaptive), clock=t.clock, **kwargs)  # type: ignore[arg-type]


async def send(p: Pacer, t: FakeTime, n: int) -> list[float]:
    """Acquire ``n`` times in a row; answer when each was allowed to go."""
    times = []
    for _ in range(n):
        await p.acquire()
        times.append(t.now)
    return times


async def test_fixed_rate_spaces_requests_evenly() -> None:
    t = FakeTime()
    times = await send(pacer(20, t), t, 41)
    assert times[-1] - times[0] == pytest.approx(2.0)
    assert all(b - a == pytest.approx(0.05) for a, b in itertools.pairwise(times))


async def test_high_rate_allows_a_one_percent_burst_then_keeps_the_average() -> None:
    t = FakeTime()
    times = await send(pacer(2000, t), t, 4001)
    assert times[19] == pytest.approx(times[0])  # 20 = 1% of 2000 go at once
    assert times[20] > times[0] + 0.0004
    assert (len(times) - 1) / (times[-1] - times[0]) == pytest.approx(2000, rel=0.01)
    in_first_second = sum(1 for x in times if x < times[0] + 1.0)
    assert in_first_second <= 2000 * 1.01 + 1


async def test_unlimited_rate_never_sleeps() -> None:
    t = FakeTime()
    await send(pacer(0, t), t, 1000)
    assert t.slept == []


async def test_concurrent_callers_reserve_slots_in_order() -> None:
    t = FakeTime()
    slept: list[float] = []

    async def stand_still(seconds: float) -> None:  # all callers wait at the same instant
        slept.append(seconds)
        await asyncio.sleep(0)

    p = Pacer(10, clock=t.clock, sleep=stand_still)
    await asyncio.gather(*(p.acquire() for _ in range(5)))
    assert [round(s, 3) for s in slept] == [0.1, 0.2, 0.3, 0.4]


async def test_pause_holds_everyone_and_is_only_extended() -> None:
    t = FakeTime()
    p = pacer(0, t)
    p.pause(2.0)
    p.pause(0.5)  # shorter: ignored
    await p.acquire()
    assert t.now == pytest.approx(102.0)
    assert p.pauses == 1 and p.paused_seconds == pytest.approx(2.0)


def test_backoff_without_retry_after_grows_and_calm_resets_it() -> None:
    t = FakeTime()
    p = Pacer(0, clock=t.clock, sleep=t.sleep, base_backoff=1.0, max_backoff=8.0)
    waits = [p.pause(None) for _ in range(6)]
    assert 0.5 <= waits[0] <= 1.0 and 4.0 <= waits[-1] <= 8.0
    p.calm()
    assert p.pause(None) <= 1.0


def test_fixed_mode_ignores_throttling_for_the_rate() -> None:
    t = FakeTime()
    p = controls(100, t)
    p.throttled()
    assert p.current == 100 and p.decreases == 0


def test_aimd_halves_once_per_overload_and_never_below_the_floor() -> None:
    t = FakeTime()
    p = controls(100, t, adaptive=True)
    for _ in range(64):  # every request in flight answers 429 at the same moment
        p.throttled()
    assert p.current == 50 and p.decreases == 1
    for _ in range(20):
        t.now += 1.5  # past the cooldown, still throttled
        p.throttled()
    assert p.current == 1.0 and p.minimum == 1.0


def test_aimd_recovers_additively_up_to_the_ceiling() -> None:
    t = FakeTime()
    p = controls(200, t, adaptive=True)
    p.throttled()
    assert p.current == 100
    t.now += 1.0
    p.calm()
    assert p.current == pytest.approx(110)  # +5% of the 200/s ceiling per calm second
    t.now += 5.0
    p.calm()
    assert p.current == pytest.approx(160)
    t.now += 60.0
    p.calm()
    assert p.current == 200 and p.minimum == 100


def test_aimd_does_not_count_a_pause_as_calm() -> None:
    t = FakeTime()
    p = controls(200, t, adaptive=True)
    p.throttled()
    p.pacer.pause(3.0)
    t.now += 4.0
    p.calm()
    assert p.current == pytest.approx(110)  # only the last second after the pause


async def test_aimd_paces_at_the_lowered_rate() -> None:
    t = FakeTime()
    p = controls(100, t, adaptive=True)
    await send(p.pacer, t, 10)
    p.throttled()
    p.throttled()  # within the cooldown: no second halving
    times = await send(p.pacer, t, 51)
    assert (len(times) - 1) / (times[-1] - times[0]) == pytest.approx(50, rel=0.02)


async def test_aimd_unlimited_takes_the_observed_rate_as_ceiling() -> None:
    t = FakeTime()
    p = controls(0, t, adaptive=True)
    assert math.isinf(p.current)
    for _ in range(300):  # 300 requests over the last second
        await p.pacer.acquire()
        t.now += 1 / 300
    p.throttled()
    assert p.ceiling == pytest.approx(300, abs=2)
    assert p.current == pytest.approx(150, abs=1)
    times = await send(p.pacer, t, 31)
    assert (len(times) - 1) / (times[-1] - times[0]) == pytest.approx(p.current, rel=0.02)


@pytest.mark.slow
def test_adaptive_rate_drops_under_429_and_the_run_completes(tmp_path: Path) -> None:
    sim = make_sim(faults=Faults(seed=5, http_429_rate=0.05, retry_after=0.1))
    try:
        src = write_csv(tmp_path / "in.csv", ["phone_number"], [[n] for n in numbers(200)])
        args = job_args(sim.base_url, tmp_path, src, rate=200, concurrency=16, adaptive_rate=True,
                        max_attempts=20)  # fmt: skip
        result = run_cli(args, ENV)
        assert result.exit_code == 0, result.stderr
        summary = result.summary
        assert summary["cancelled"] == 200
        stats = summary["stats"]
        assert stats["adaptive_decreases"] >= 1
        assert stats["adaptive_min_rate"] < 200
        assert stats["adaptive_ceiling"] == 200
        assert 0 < stats["achieved_rate"] < 200
        assert sim.ledger.faults_seen().get("429", 0) > 0
    finally:
        sim.stop()
