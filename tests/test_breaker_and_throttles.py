"""The breaker, the failure cluster, the delay watch, the user-event index and the pacer's
probe and latency-driven rate: unit tests on a fake clock (time and sleep injected)."""

from __future__ import annotations

import asyncio

import pytest
from test_throttle import FakeTime, controls, pacer

from batch_cancel.journal.store import next_round_reference
from batch_cancel.send.breaker import Breaker, FailureKind, Verdict
from batch_cancel.send.controller import DelayWatch, FailureCluster, Latency
from batch_cancel.send.outcomes import Record, UserEventIndex, UserEventVerdict

STATE = FailureKind("statusCode 2", "HTTP 400 statusCode 2: Contact center session is not started")
NOT_FOUND = FailureKind("errorCode 6", "ErrorMessage: code 6: Record not found")
GO, PROBE, TRIP = Verdict.GO_ON, Verdict.PROBE, Verdict.TRIP


# -- breaker ------------------------------------------------------------------------------
def test_breaker_trips_on_n_failures_of_one_code_in_a_row() -> None:
    b = Breaker(25)
    assert [b.failure(STATE) for _ in range(25)] == [GO] * 24 + [TRIP]
    assert b.tripped == "statusCode 2"
    assert "25 outcomes in a row" in b.describe() and "(25 rows hit)" in b.describe()


def test_breaker_streak_is_broken_by_a_success_or_another_code() -> None:
    b = Breaker(5)
    for _ in range(4):
        b.failure(STATE)
    b.success()
    assert [b.failure(STATE) for _ in range(4)] == [GO] * 4
    assert b.failure(FailureKind("statusCode 10", "HTTP 400 statusCode 10: Invalid parameter")) is GO
    assert b.tripped is None


def test_breaker_keys_on_the_code_not_the_wording() -> None:
    b = Breaker(3)
    kinds = [FailureKind("statusCode 10", f"HTTP 400 statusCode 10: Invalid parameter: x{i}")
             for i in range(3)]  # fmt: skip
    assert [b.failure(k) for k in kinds] == [GO, GO, TRIP]
    assert b.tripped == "statusCode 10" and b.rows_hit("statusCode 10") == 3
    # one wording under two codes is two kinds (a notification failure's code is not 0)
    b = Breaker(2)
    first, second = FailureKind("errorCode 4", "x"), FailureKind("GSW_ERROR_NUMBER 4", "x")
    assert [b.failure(first), b.failure(second)] == [GO, GO]


def test_breaker_falls_back_to_the_text_without_a_code() -> None:
    b = Breaker(2)
    assert b.failure(FailureKind(None, "ErrorMessage: boom")) is GO
    assert b.failure(FailureKind(None, "ErrorMessage: bang")) is GO
    assert b.failure(FailureKind(None, "ErrorMessage: bang")) is TRIP
    assert b.tripped == "ErrorMessage: bang"


def test_breaker_counts_time_outs() -> None:
    b = Breaker(3)
    timeout = FailureKind("timeout", "no acknowledgement within 30 s")
    assert [b.failure(timeout) for _ in range(3)] == [GO, GO, TRIP]
    assert b.tripped == "timeout"


def test_breaker_a_per_record_streak_probes_elsewhere_and_a_success_there_clears_it() -> None:
    b = Breaker(3, probes=2)
    assert [b.failure(NOT_FOUND) for _ in range(3)] == [GO, GO, PROBE]
    assert b.failure(NOT_FOUND) is GO  # more of the block while the probes are out
    b.success(probe=True)  # a row elsewhere in the list was cancelled: not a wrong list
    assert b.probing is None and b.tripped is None
    assert [b.failure(NOT_FOUND) for _ in range(2)] == [GO, GO]  # a fresh streak is needed


def test_breaker_a_per_record_streak_trips_when_the_probes_fail_alike() -> None:
    b = Breaker(3, probes=2)
    assert [b.failure(NOT_FOUND) for _ in range(3)] == [GO, GO, PROBE]
    assert b.failure(NOT_FOUND, probe=True) is GO
    assert b.failure(NOT_FOUND, probe=True) is TRIP
    assert b.tripped == "errorCode 6" and "from elsewhere in the list" in b.describe()


def test_breaker_a_per_record_streak_with_nothing_elsewhere_trips() -> None:
    b = Breaker(2)
    assert [b.failure(NOT_FOUND) for _ in range(2)] == [GO, PROBE]
    assert b.nothing_to_probe() is TRIP


def test_breaker_device_not_found_is_systematic_though_its_code_is_not_found() -> None:
    device = FailureKind("statusCode 6", "HTTP 404 statusCode 6: Device not found: /devices/x")
    assert not device.per_record and NOT_FOUND.per_record
    assert FailureKind("GSW_ERROR_NUMBER 103", "GSW_ERROR_NUMBER 103: Record not found").per_record
    b = Breaker(2)
    assert [b.failure(device) for _ in range(2)] == [GO, TRIP]


def test_breaker_zero_is_off() -> None:
    b = Breaker(0)
    assert all(b.failure(STATE) is GO for _ in range(1000))
    assert b.rows_hit("statusCode 2") == 1000


def test_retry_failed_reference_ids_count_rounds() -> None:
    assert next_round_reference("bc-20261129T000000Z-ab12cd-7") == "bc-20261129T000000Z-ab12cd-7-r1"
    assert next_round_reference("bc-run-7-r1") == "bc-run-7-r2"
    assert next_round_reference("bc-run-7-r9") == "bc-run-7-r10"
    assert next_round_reference("-r") == "-r-r1"


# -- failure cluster ----------------------------------------------------------------------
def test_lone_failures_do_not_cluster_but_a_run_of_them_does() -> None:
    t = FakeTime()
    c = FailureCluster(t.clock)
    # 1 in 20 failing, for a long time: never a cluster
    for i in range(400):
        t.now += 0.005
        assert not c.answered(i % 20 == 0)
    # every request failing: the fifth failure says so
    verdicts = []
    for _ in range(5):
        t.now += 0.005
        verdicts.append(c.answered(True))
    assert verdicts == [False, False, False, False, True]


def test_old_failures_fall_out_of_the_cluster_window() -> None:
    t = FakeTime()
    c = FailureCluster(t.clock, max_age=2.0)
    for _ in range(4):
        c.answered(True)
    t.now += 2.5
    assert not c.answered(True)


# -- delay watch --------------------------------------------------------------------------
def _judge(w: DelayWatch, t: FakeTime, latencies: list[float], step: float) -> list[Latency]:
    """Answers ``step`` seconds apart; the watch's verdict on each."""
    verdicts = []
    for x in latencies:
        t.now += step
        verdicts.append(w.answered(x, t.now))
    return verdicts


def test_delay_watch_learns_the_calm_figures_then_judges_the_recent_median() -> None:
    w = DelayWatch(baseline_samples=10, recent=3, span=0.25, factor=2.0)
    t = FakeTime()
    first = [0.002, 0.003, 0.003, 0.003, 0.003, 0.003, 0.003, 0.004, 0.004, 0.005]
    # judged from the third answer (``recent``) on, against the figures so far
    assert _judge(w, t, first, 0.01) == [Latency.LEARNING] * 2 + [Latency.CALM] * 8
    assert w.baseline == pytest.approx(0.003) and w.calm_p90 == pytest.approx(0.005)
    # an answer every 0.1 s: the quarter second's window holds the last three
    assert _judge(w, t, [0.003] * 3, 0.1) == [Latency.CALM] * 3
    # slow means twice the calm p90 (10 ms here), not twice the median: 8 ms is calm
    assert _judge(w, t, [0.008] * 3, 0.1)[-1] is Latency.CALM
    assert _judge(w, t, [0.011] * 3, 0.1) == [Latency.CALM, Latency.SLOW, Latency.SLOW]
    w.forget_recent()
    assert _judge(w, t, [0.003], 0.1) == [Latency.LEARNING]


def test_delay_watch_a_stall_at_a_high_rate_is_not_slow() -> None:
    """At 100 answers/s the median is over a quarter second's answers: a 40 ms stall of
    the box slows the eight answers in flight, which a median of five would call slow."""
    w = DelayWatch(baseline_samples=20, recent=5, span=0.25, factor=2.0)
    t = FakeTime()
    _judge(w, t, [0.002] * 60, 0.01)
    stall = [0.040 if 20 <= i < 28 else 0.002 for i in range(60)]
    assert Latency.SLOW not in _judge(w, t, stall, 0.01)
    # a server that keeps answering late is slow within the quarter second
    assert Latency.SLOW in _judge(w, t, [0.040] * 15, 0.01)


def test_delay_watch_a_throttle_in_the_first_second_does_not_set_the_baseline() -> None:
    """Half of the first answers delayed (a limit of 10/s met at 40/s): the calm
    figures come from the fastest quarter, so the delayed answers are judged slow."""
    w = DelayWatch(baseline_samples=20, recent=5, factor=2.0)
    t = FakeTime()
    verdicts = _judge(w, t, [0.002] * 10 + [0.4] * 10, 0.05)
    # noticed while the calm figures are still learnt: the third slow answer tips the median
    assert verdicts.index(Latency.SLOW) == 12
    assert w.baseline is not None and w.baseline <= 0.004
    assert w.calm_p90 is not None and w.calm_p90 <= 0.008
    assert _judge(w, t, [0.4] * 5, 0.1)[-1] is Latency.SLOW


def test_delay_watch_follows_a_box_that_gets_busier() -> None:
    w = DelayWatch(baseline_samples=20, recent=5, span=0.25, factor=2.0, settle=10.0)
    t = FakeTime()
    _judge(w, t, [0.002] * 20, 0.01)
    # the box gets slower step by step over a minute: the calm figures follow
    assert Latency.SLOW not in _judge(w, t, [0.002 + 0.004 * i / 6000 for i in range(6000)], 0.01)
    assert w.baseline == pytest.approx(0.006, rel=0.2)


def test_delay_watch_one_answer_slow_on_its_own_does_not_move_the_calm_p90() -> None:
    """A request GWS held 0.75 s comes back among calm answers, 0.75 s after the calm
    figures last moved: its window's median is calm, but it is no calm figure (taken in,
    it raised the p90 from 2.4 to 65 ms and the next second's stalls went unseen)."""
    w = DelayWatch(baseline_samples=20, recent=5, span=0.25, factor=2.0, settle=10.0)
    t = FakeTime()
    _judge(w, t, [0.002] * 20, 0.01)
    p90 = w.calm_p90
    assert p90 is not None
    t.now += 0.75
    assert _judge(w, t, [0.755, 0.002, 0.002, 0.002, 0.002], 0.005) == [Latency.CALM] * 5
    # at most one step towards the slow threshold (twice the p90), not towards 755 ms
    assert w.calm_p90 is not None and w.calm_p90 <= p90 * 1.1
    assert w.slow(0.010)


# -- user events --------------------------------------------------------------------------
def _rec(row: int, phone: str = "2125550101") -> Record:
    return Record(row=row, reference_id=f"r{row}", phone_sent=phone, application_id=134,
                  campaign="Campaign1", calling_list="CallingList1", device_path="/devices/d",
                  chain_attribute=None)  # fmt: skip


def _event(phone: str = "2125550101", **extra: object) -> dict[str, object]:
    user_data = {"GSW_PHONE": phone, "GSW_CAMPAIGN_NAME": "Campaign1", "GSW_CALLING_LIST": "CallingList1",
                 "GSW_USER_EVENT": "RecordCancelAcknowledge", **extra}  # fmt: skip
    return {"messageType": "DeviceUserEventMessage", "userData": user_data}


def test_user_events_error_fails_the_one_row_in_flight() -> None:
    index = UserEventIndex()
    rec = _rec(1)
    index.track(rec)
    match = index.match(_event(GSW_ERROR="Record not found", GSW_ERROR_NUMBER=103))
    assert match.verdict is UserEventVerdict.ERROR and match.record is rec
    assert match.error == "GSW_ERROR_NUMBER 103: Record not found"


def test_user_events_are_matched_on_the_application_id_too() -> None:
    index = UserEventIndex()
    ours, other_app = _rec(1), _rec(2)
    other_app.application_id = 200  # the same number, campaign and list in another OCS application
    index.track(ours)
    # an error of application 200 is not our row's (and with both in flight, it is still one)
    assert index.match(_event(GSW_ERROR="x", GSW_APPLICATION_ID=200)).verdict is UserEventVerdict.UNMATCHED
    index.track(other_app)
    match = index.match(_event(GSW_ERROR="x", GSW_APPLICATION_ID="134"))
    assert match.verdict is UserEventVerdict.ERROR and match.record is ours
    # without the id, the two rows cannot be told apart
    assert index.match(_event(GSW_ERROR="x")).verdict is UserEventVerdict.AMBIGUOUS


def test_user_events_same_number_twice_in_flight_is_ambiguous() -> None:
    index = UserEventIndex()
    index.track(_rec(1))
    index.track(_rec(2))
    match = index.match(_event(GSW_ERROR="Record not found"))
    assert match.verdict is UserEventVerdict.AMBIGUOUS and match.record is None


def test_user_events_companion_after_the_ack_finds_the_settled_row() -> None:
    index = UserEventIndex()
    rec = _rec(1, "(212) 555-0101")  # digits compared, whatever the formatting
    index.track(rec)
    rec.status = "cancelled"
    index.settled(rec)
    match = index.match(_event(GSW_RECORD_HANDLE=11))
    assert match.verdict is UserEventVerdict.HANDLE and match.record is rec and match.handle == 11
    # once given, the row is not offered again
    assert index.match(_event(GSW_RECORD_HANDLE=11)).verdict is UserEventVerdict.UNMATCHED


def test_user_events_for_other_numbers_or_without_phone_are_unmatched() -> None:
    index = UserEventIndex()
    index.track(_rec(1))
    assert index.match(_event("9999999999", GSW_ERROR="x")).verdict is UserEventVerdict.UNMATCHED
    no_phone = {"messageType": "DeviceUserEventMessage", "userData": {"GSW_USER_EVENT": "X"}}
    assert index.match(no_phone).verdict is UserEventVerdict.UNMATCHED


# -- pacer: the probe after a pause, the lone 503, the delay throttle ----------------------
async def test_after_a_pause_one_probe_goes_first_and_the_others_wait_for_its_answer() -> None:
    t = FakeTime()
    p = pacer(0, t)
    p.pause(1.0)
    probe = asyncio.create_task(p.acquire())
    others = [asyncio.create_task(p.acquire()) for _ in range(3)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert probe.done() and not any(o.done() for o in others)
    assert p.probes == 1
    p.calm()  # the probe went through
    await asyncio.gather(*others)
    assert p.probes == 1


async def test_a_failed_probe_extends_the_pause_and_a_new_probe_follows() -> None:
    t = FakeTime()
    p = pacer(0, t)
    p.pause(1.0)
    await p.acquire()  # the probe
    waiter = asyncio.create_task(p.acquire())
    await asyncio.sleep(0)
    p.pause(2.0)  # it failed again
    await waiter  # waits out the new pause, then is the next probe
    assert t.now >= 100.0 + 2.0 and p.probes == 2


def test_a_lone_503_keeps_an_adaptive_rate() -> None:
    """One request's bad luck says nothing about the rate; a 429 still halves it."""
    t = FakeTime()
    p = controls(200, t, adaptive=True)
    for _ in range(3):
        t.now += 0.5
        assert p.overloaded(503, None).why == "lone"
    assert p.current == 200 and p.decreases == 0
    t.now += 2
    assert p.overloaded(429, None).pause is not None
    assert p.current == pytest.approx(100)


def _learn_calm(p: object, t: FakeTime, latency: float = 0.003, n: int = 20) -> None:
    for _ in range(n):
        t.now += 0.01
        p.answered(latency)  # type: ignore[attr-defined]


def test_slow_answers_drop_the_rate_just_under_what_gws_served() -> None:
    t = FakeTime()
    p = controls(100, t, adaptive=True)
    _learn_calm(p, t)
    # GWS now delays: 25 answers a second, each 200 ms late
    for _ in range(25):
        t.now += 0.04
        p.answered(0.2)
    assert p.delay_decreases == 1
    assert p.knee == pytest.approx(25, abs=1)
    # just under what GWS served (the queue it built drains during a deferral, below)
    assert p.current == pytest.approx(0.95 * p.knee)


def test_no_second_decrease_while_the_servers_queue_drains() -> None:
    t = FakeTime()
    p = controls(100, t, adaptive=True)
    _learn_calm(p, t)
    for _ in range(30):
        t.now += 0.04
        p.answered(0.2)
    lowered = p.current
    # still slow for a while (the queue GWS built drains): no further cut, no raise
    for _ in range(50):
        t.now += 0.04
        p.answered(0.15)
        p.calm()
    assert p.delay_decreases == 1 and p.current == lowered
    # calm again: the rate holds just under the knee
    _learn_calm(p, t, n=30)
    p.calm()
    t.now += 1.0
    p.calm()
    assert p.current == lowered


def test_after_slow_answers_the_rate_holds_just_under_the_knee() -> None:
    t = FakeTime()
    p = controls(100, t, adaptive=True)
    _learn_calm(p, t)
    for _ in range(25):
        t.now += 0.04
        p.answered(0.2)
    knee = p.knee
    assert knee is not None
    _learn_calm(p, t, n=5)  # drained
    for _ in range(20):  # 20 s of calm answers: up to 95 % of the knee, and no further
        t.now += 1.0
        p.answered(0.003)
        p.calm()
    assert p.current == pytest.approx(0.95 * knee)
    t.now += 30.0  # a long calm: probe above, slowly
    p.answered(0.003)
    p.calm()
    assert 0.95 * knee < p.current <= 0.95 * knee * 1.02 * 31


def test_near_the_knee_the_rate_probes_slowly() -> None:
    t = FakeTime()
    p = controls(100, t, adaptive=True)
    p.throttled()  # a decrease starts the clock of the additive increase
    p.knee = 25.0
    p.current = 24.0
    t.now += 1.0
    p.calm()
    assert p.current == pytest.approx(24.0 * 1.02)  # 2 % a second, not 5 % of the ceiling (5/s)
    p.current = 10.0
    t.now += 1.0
    p.calm()
    assert p.current == pytest.approx(15.0)  # far below the knee: the usual additive increase


def test_a_fixed_rate_ignores_latency() -> None:
    t = FakeTime()
    p = controls(100, t)
    _learn_calm(p, t)
    for _ in range(30):
        t.now += 0.04
        p.answered(0.5)
    assert p.current == 100 and p.delay_decreases == 0


def test_slow_answers_at_the_pace_do_not_lower_the_knee() -> None:
    """Answers slow while GWS answered as fast as it was asked (a busy box, not a
    throttle): the rate drains as for any slowness, but the knee stays where GWS's limit
    was measured, so the rate comes back to just under it instead of ratcheting down."""
    t = FakeTime()
    p = controls(100, t, adaptive=True)
    _learn_calm(p, t)
    for _ in range(30):  # GWS holds the answers at 25/s, under the pace of 100/s
        t.now += 0.04
        p.answered(0.2)
    knee = p.knee
    assert knee == pytest.approx(25, abs=1)
    for _ in range(20):  # drained, then 20 s of calm answers: just under the knee
        t.now += 1.0
        p.answered(0.003)
        p.calm()
    held = p.current
    assert held == pytest.approx(0.95 * knee)
    for i in range(3 * int(held)):  # answers at the pace (held/s), calm, then slow
        t.now += 1.0 / held
        p.answered(0.003 if i < 2 * held else 0.2)
    assert p.delay_decreases == 2 and p.knee == knee
    for _ in range(40):
        t.now += 0.01
        p.answered(0.003)
    for _ in range(10):
        t.now += 1.0
        p.answered(0.003)
        p.calm()
    assert p.current == pytest.approx(held)


def test_the_knee_is_a_seconds_answers_however_bunched() -> None:
    """Jetty's window lets N requests through in any one second; while it holds a queue
    they come bunched as the second before (here 10 within 0.2 s, then none for 0.8 s):
    what was served is still 10 a second, not the rate between first and last answer."""
    t = FakeTime()
    p = controls(40, t, adaptive=True)
    _learn_calm(p, t)
    t.now += 1.0
    for _ in range(10):
        t.now += 0.025
        p.answered(0.003)  # the first burst, answered at once
    t.now += 0.75
    for _ in range(3):  # the queue behind it, let through a second after the burst
        t.now += 0.025
        p.answered(0.75)
    assert p.delay_decreases == 1
    assert p.knee == pytest.approx(10, abs=0.2)
    assert p.current == pytest.approx(0.95 * p.knee)


async def test_slow_answers_defer_requests_until_the_queue_behind_them_drained() -> None:
    t = FakeTime()
    p = controls(40, t, adaptive=True)
    _learn_calm(p, t)
    for _ in range(10):  # a second of calm answers at 10/s
        t.now += 0.1
        p.accepted(0.003)
    p.pacer.stall_after = None  # (the hold when answers stop is tested on its own)
    for _ in range(8):  # eight requests go at 40/s and wait in GWS's queue
        await p.pacer.acquire()
    for _ in range(3):  # answers at 10/s, each slow
        t.now += 0.1
        p.accepted(0.5)
    assert p.delay_decreases == 1
    # the requests sent after the latest slow one (all eight: 0.5 s back) drain at the knee
    slow_at = t.now
    await p.pacer.acquire()
    assert t.now >= slow_at + 8 / p.knee - 1e-9


async def test_a_request_still_held_after_the_queue_drained_defers_the_others() -> None:
    """Jetty's window remembers the requests it let through bunched: one sent once the
    queue drained may still wait. Its answer defers the rest as long, without another cut."""
    t = FakeTime()
    p = controls(40, t, adaptive=True)
    _learn_calm(p, t)
    for _ in range(13):
        t.now += 0.1
        p.answered(0.5)
    lowered, cuts = p.current, p.delay_decreases
    t.now += 0.2  # a request sent now, after the deferral (nothing was queued)...
    t.now += 0.2
    p.answered(0.2)  # ...still waited 200 ms
    asked = t.now
    await p.pacer.acquire()
    assert t.now >= asked + 0.2 - 0.01
    assert (p.current, p.delay_decreases) == (lowered, cuts)
    t.now += 0.1
    p.answered(0.003)  # calm: the rate is judged as usual again
    t.now += 0.1
    for _ in range(6):
        t.now += 0.01
        p.answered(0.5)
    assert p.delay_decreases == cuts + 1


async def test_when_answers_stop_the_others_wait_for_one() -> None:
    """A request unanswered for longer than calm allows: GWS queues it, so the others
    wait for an answer instead of joining the queue (each as slow as the last)."""
    t = FakeTime()
    p = pacer(40, t, adaptive=True)
    stalls: list[float] = []
    p.on_stall = stalls.append
    p.stall_after = 0.01
    await p.acquire()
    p.answered_any()
    await p.acquire()
    held_since = t.now
    waiter = asyncio.create_task(p.acquire())
    for _ in range(5):
        await asyncio.sleep(0)
    # held, and told once no answer came for as long again (the loop's own time)
    assert not waiter.done() and p.stalls == 1 and stalls == []
    await asyncio.sleep(0.05)
    assert not waiter.done() and stalls == [held_since]
    p.answered_any()  # the held request is answered: the others go on at the pace
    await asyncio.wait_for(waiter, 1.0)
    assert p.stalls == 1


async def test_answers_read_right_after_a_hold_tell_no_stall() -> None:
    """This process froze: the answers that came meanwhile are read a moment after the
    next request woke. It waits for them, and no stall is told."""
    t = FakeTime()
    p = pacer(10, t, adaptive=True)  # a slot every 100 ms: the first request was held for two
    stalls: list[float] = []
    p.on_stall = stalls.append
    p.stall_after = 0.05
    await p.acquire()
    p.answered_any()
    await p.acquire()
    waiter = asyncio.create_task(p.acquire())
    for _ in range(5):
        await asyncio.sleep(0)
    p.answered_any()
    await asyncio.wait_for(waiter, 1.0)
    await asyncio.sleep(0.1)
    assert p.stalls == 1 and stalls == []


async def test_answers_coming_keep_the_pace() -> None:
    t = FakeTime()
    p = pacer(40, t, adaptive=True)
    p.on_stall = lambda at: pytest.fail("no stall while answers come")
    p.stall_after = 0.01
    for _ in range(20):
        await p.acquire()
        p.answered_any()
    assert p.stalls == 0


def _answers_at(p: object, t: FakeTime, rate: float, seconds: float) -> None:
    for _ in range(round(rate * seconds)):
        t.now += 1.0 / rate
        p.accepted(0.003)  # type: ignore[attr-defined]


def test_a_stall_far_under_the_pace_sets_the_knee_from_the_second_before() -> None:
    t = FakeTime()
    p = controls(40, t, adaptive=True)
    _answers_at(p, t, 40, 0.25)  # the first requests, at the pace
    t.now += 0.75
    _answers_at(p, t, 40, 0.2)  # GWS let ten more through a second later, then held one
    p.stalled(t.now)
    assert p.knee == pytest.approx(10, abs=1) and p.delay_decreases == 1
    assert p.current == pytest.approx(0.95 * p.knee)


def test_a_stall_once_the_knee_is_known_cuts_nothing() -> None:
    """Slow answers judge a known knee (their median): one request held on a loaded box
    must not ratchet it down."""
    t = FakeTime()
    p = controls(40, t, adaptive=True)
    _answers_at(p, t, 40, 0.25)
    t.now += 0.75
    _answers_at(p, t, 40, 0.2)
    p.stalled(t.now)
    knee, rate = p.knee, p.current
    t.now += 6.0  # the drain is over
    _answers_at(p, t, 4, 2.0)  # a frozen box: few answers
    p.stalled(t.now)
    assert (p.knee, p.current, p.delay_decreases) == (knee, rate, 1)


def test_a_stall_at_the_pace_or_in_the_first_second_cuts_nothing() -> None:
    """This box stalled (or GWS did, once): GWS answered what it was asked."""
    t = FakeTime()
    p = controls(200, t, adaptive=True)
    _answers_at(p, t, 200, 0.5)
    p.stalled(t.now)  # the run's first second: it says nothing about GWS's rate
    _answers_at(p, t, 185, 2.0)  # a busy box paces under --rate
    p.stalled(t.now)
    assert (p.current, p.knee, p.delay_decreases) == (200, None, 0)


async def test_a_known_knee_falls_when_gws_answers_fewer_than_were_sent() -> None:
    """Compared with what this client sent over the same second (not the pace, which a
    loaded box does not reach): GWS lowered its limit, so the knee follows it down."""
    t = FakeTime()
    p = controls(100, t, adaptive=True)
    _learn_calm(p, t, latency=0.03)  # (calm answers slower than a slot: no stall in this test)
    for _ in range(30):  # GWS holds the answers at 25/s: the knee
        t.now += 0.04
        p.answered(0.2)
    knee = p.knee
    assert knee is not None
    t.now += 40.0  # long after: drained, held
    for i in range(24):  # sent at the held rate; GWS answers only every other one, slow
        await p.pacer.acquire()
        if i % 2:
            p.accepted(0.3)
    assert p.delay_decreases == 2 and p.knee is not None and p.knee < 0.9 * knee


def test_a_run_that_meets_the_limit_at_its_start_reads_the_knee_from_the_held_ones_second() -> None:
    """At 4N the run's first N requests go within a quarter second and GWS holds the
    rest a second: the first answers come bunched (connections opening), and the second
    before the latest slow answer cuts some of them off; the second up to the first held
    answer holds them all (a knee of 191 under a limit of 200 held the rate at 90.7 %)."""
    t = FakeTime()
    p = controls(800, t, adaptive=True)
    start = t.now
    for i in range(200):  # admitted at 800/s; the first ten answered together 6 ms late
        t.now = start + (0.006 if i < 10 else i / 800 + 0.001)
        p.answered(0.006 if i < 10 else 0.001)
    for i in range(8):  # the eight in flight, held until the first admissions are a second old
        t.now = start + 1.0 + 0.0003 + i / 800 + 0.004  # (the last second's edge cuts the bunch)
        p.answered(0.76)
    assert p.delay_decreases == 1
    assert p.knee == pytest.approx(200, abs=1)
    assert p.current == pytest.approx(0.95 * p.knee)
