"""CometD liveness: every long poll is bounded (the server's advised timeout, or a default
when it gives none, plus a margin), the channel knows when a poll last completed, and a
lost Bayeux session is reported as a gap. The bound's arithmetic on a fake clock, then
over real HTTP/Bayeux against the simulator's half-open long polls (no answer, no reset),
with and without timeout advice: the 20 s scenario of issue 21 scaled down."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from fake_time import FakeTime
from helpers import PASSWORD, USER, numbers, read_report, write_csv

from batch_cancel.config import Credentials, GwsConfig, JobDefaults, RunConfig
from batch_cancel.gws.ack_channel import AckChannel, Gap
from batch_cancel.gws.bayeux import DEFAULT_POLL_MARGIN, DEFAULT_POLL_TIMEOUT, PollBound
from batch_cancel.gws.session import GwsSession
from batch_cancel.job import run_job
from batch_cancel.simulator import Faults, GwsSimulator, SimulatorConfig, ThreadedSimulator

CONNECT = "/meta/connect"


def test_a_poll_is_bounded_by_what_it_asks_else_the_advice_else_the_default_plus_the_margin() -> None:
    t = FakeTime()
    bound = PollBound(margin=2.0, default_timeout=30.0, clock=t.clock)
    poll = [{"channel": CONNECT}]
    assert bound.of(poll) == 32.0  # no advice yet: the default
    bound.advice({"timeout": 5000, "interval": 0})
    assert bound.of(poll) == bound.poll == 7.0  # the server's, not 1.2 x it
    assert bound.of([{"channel": CONNECT, "advice": {"timeout": 0}}]) == 2.0  # after a handshake
    assert bound.of([{"channel": "/meta/handshake"}]) == 2.0
    assert bound.of([{"channel": "/meta/subscribe", "subscription": "/v2/me/outbound"}]) == 2.0
    for nonsense in (float("nan"), True, "30000", -1):
        bound.advice({"timeout": nonsense})
    assert bound.poll == 7.0  # advice that is not a duration is no advice
    assert bound.silent_for() == 0.0
    t.advance(8.0)
    assert bound.silent_for() == 8.0
    bound.completed()
    assert bound.silent_for() == 0.0 and bound.last_completed == t.now


def test_the_defaults_are_cometds_own() -> None:
    # a CometD server holds a poll 30 s unless it says otherwise; its JS client allows
    # maxNetworkDelay (10 s) on top of a poll's timeout
    assert (DEFAULT_POLL_TIMEOUT, DEFAULT_POLL_MARGIN) == (30.0, 10.0)
    assert PollBound().poll == 40.0


# -- over real HTTP/Bayeux --------------------------------------------------------------------------


async def _until(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


@pytest.mark.parametrize(
    ("advise", "poll_timeout", "margin", "bound"),
    [
        # advised 4 s: cut at 4.2 s, where aiocometd (the client before ours) waited 1.2 x 4 = 4.8 s
        (True, 30.0, 0.2, 4.2),
        # no advice (the server still holds each poll 1 s): our default 1.5 s + 0.5 s,
        # where aiocometd waited for ever (aiohttp's 300 s)
        (False, 1.5, 0.5, 2.0),
    ],
    ids=["advised", "no-advice"],
)
async def test_a_half_open_poll_ends_within_its_bound_and_the_lost_session_is_a_gap(
    advise: bool, poll_timeout: float, margin: float, bound: float
) -> None:
    # the server holds polls 4 s (advised or not: 1 s when not), and forgets a client
    # that has not polled for 1 s, so the half-open window loses what it published
    held = 4.0 if advise else 1.0
    config = SimulatorConfig(users={USER: PASSWORD}, long_poll_timeout=held, advise_timeout=advise,
                             max_interval=1.0)  # fmt: skip
    async with GwsSimulator(config) as sim:
        gws = GwsConfig(base_url=sim.base_url, credentials=Credentials(USER, PASSWORD))
        received: list[dict[str, Any]] = []
        states: list[tuple[float, bool, str]] = []
        gaps: list[Gap] = []
        async with GwsSession(gws, max_connections=4) as session:
            await session.login()
            device = (await session.devices())[0]["id"]
            channel = AckChannel(
                gws.notifications_url, channels=gws.ack_channels, headers=session.auth_headers,
                on_messages=received.extend, on_gap=gaps.append,
                on_state=lambda up, why: states.append((time.monotonic(), up, why)),
                poll_margin=margin, poll_timeout=poll_timeout,
            )  # fmt: skip
            try:
                await channel.start(timeout=5)
                assert channel.poll_bound == pytest.approx(bound)
                # a poll held by the server completes: the channel knows it
                await _until(lambda: channel.bound.silent_for() < 0.5 and not channel.silent(), held + 1,
                             "no poll completed")  # fmt: skip
                sim.half_open_polls(6.0)
                went_silent = time.monotonic()
                last_before = channel.last_poll_completed
                # an outcome published while the polls are half-open
                body = {"operationName": "CancelRecord", "applicationId": 134, "campaignName": "Campaign1",
                        "callingList": "CallingList1", "phoneNumber": "2125550142",
                        "devicePath": f"/devices/{device}", "referenceId": "r-half-open"}  # fmt: skip
                await session.post_record(body)
                posted = time.monotonic()
                await _until(lambda: any(not up for _, up, _ in states), bound + 1.0,
                             f"a half-open poll was never given up: {states}")  # fmt: skip
                [(down_at, _, why)] = [s for s in states if not s[1]][:1]
                # cut within its bound (+ scheduling slack), counted from when it began
                assert down_at - last_before <= bound + 0.35, (down_at - last_before, why)
                assert channel.bound.polls_cut >= 1
                assert channel.heard_since(last_before) and not channel.heard_since(posted)
                # while polls are cut and re-made silently, the channel says so
                await _until(channel.silent, bound + 1.0, "a deaf channel did not say it is silent")
                assert channel.last_poll_completed == last_before
                # the half-open window ends; the server forgot us: 402, handshake, subscribe
                await _until(lambda: channel.up.is_set() and gaps, 6.0 + 2 * bound + 3.0,
                             f"no recovery: {states}")  # fmt: skip
            finally:
                await channel.close()
        [gap] = gaps
        assert channel.heard_since(posted)  # polls come back again
        assert gap.since == last_before  # what the lost session delivered, it delivered
        assert gap.since <= went_silent <= posted <= gap.until
        assert channel.handshakes >= 2 and channel.gaps == 1
        # ground truth: GWS published the outcome to the lost session only; the gap says so
        assert not any(m.get("data", {}).get("referenceId") == "r-half-open" for m in received)
        [ack] = [e for e in sim.ledger.events if e.kind == "ack"]
        assert ack.delivered_to == 0
        assert sim.ledger.silent_poll_count >= 2


async def test_a_quiet_channel_is_not_silent_and_reports_no_gap() -> None:
    """Polls answered empty at the server's timeout keep the channel live: never cut."""
    config = SimulatorConfig(users={USER: PASSWORD}, long_poll_timeout=0.5, advise_timeout=False)
    async with GwsSimulator(config) as sim:
        gws = GwsConfig(base_url=sim.base_url, credentials=Credentials(USER, PASSWORD))
        gaps: list[Gap] = []
        async with GwsSession(gws, max_connections=4) as session:
            await session.login()
            channel = AckChannel(gws.notifications_url, channels=gws.ack_channels,
                                 headers=session.auth_headers, on_messages=lambda _: None,
                                 on_gap=gaps.append, poll_margin=0.5, poll_timeout=1.0)  # fmt: skip
            try:
                await channel.start(timeout=5)
                for _ in range(10):
                    await asyncio.sleep(0.25)
                    assert not channel.silent()
                assert channel.bound.silent_for() < 1.0
            finally:
                await channel.close()
        assert channel.bound.polls_cut == 0 and gaps == [] and channel.handshakes == 1


# -- the whole run ---------------------------------------------------------------------------------


@pytest.mark.slow
async def test_a_run_through_a_half_open_window_without_timeout_advice_resends_under_the_same_ids(
    tmp_path: Path,
) -> None:
    """Issue 21's 20 s half-open long poll with no timeout advice, scaled down: a 5 s window
    after 80 requests; the server holds polls 1 s, tells nothing, and forgets a client silent
    for 1.5 s, losing the outcomes queued for it. A poll is given up after 2.5 + 1 s, later
    than the 2 s ack timeout (as 30 + 10 s is later than a 30 s one): rows whose deadline
    passes while no poll came back are a gap, not timed out; they are resent under their
    own referenceIds once the channel is back, and end cancelled."""
    n = 100
    sim = ThreadedSimulator(SimulatorConfig(
        users={USER: PASSWORD}, long_poll_timeout=1.0, advise_timeout=False, max_interval=1.5,
        faults=Faults(half_open_every=80, half_open_for=5.0),
    )).start()  # fmt: skip
    try:
        src = write_csv(tmp_path / "in.csv", ["phone_number"], [[x] for x in numbers(n)])
        config = RunConfig(inputs=(src,), state=tmp_path / "state.sqlite", report=tmp_path / "report.csv",
                           defaults=JobDefaults(application_id=134, campaign="Campaign1",
                                                calling_list="CallingList1"),
                           rate=40, concurrency=4, ack_timeout=2.0, max_outage=30)  # fmt: skip
        gws = GwsConfig(base_url=sim.base_url, credentials=Credentials(USER, PASSWORD),
                        poll_timeout=2.5, poll_margin=1.0)  # fmt: skip
        summary = await run_job(config, gws)
    finally:
        sim.stop()
    ledger = sim.ledger
    assert len(ledger.half_open_windows) >= 1 and ledger.silent_poll_count >= 1
    lost = [e for e in ledger.events if e.kind == "ack" and e.delivered_to == 0]
    assert lost, "the window lost no outcome: the scenario did not happen"
    assert summary.exit_code == 0, summary
    rows = read_report(tmp_path / "report.csv")
    assert len(rows) == n and {r["status"] for r in rows} == {"cancelled"}
    # ground truth: every number POSTed under one referenceId only, and cancelled by it
    assert all(len(set(refs)) == 1 for refs in ledger.refs_by_number().values())
    assert len(ledger.cancelled_by()) == n
    assert len(ledger.entries) > n  # some rows were asked again
