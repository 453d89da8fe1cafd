"""Log-in outages are outages: one log-in at a time for every sender, a shared back-off
honouring a capped Retry-After, bounded by --max-outage. On a fake clock first, then over
real HTTP against the simulator's node restart, then the whole job."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import socket
from pathlib import Path
from typing import Any

import pytest
from fake_time import FakeTime
from helpers import ENV, job_args, make_sim, numbers, read_report, run_cli, write_csv

from batch_cancel.config import Credentials, GwsConfig
from batch_cancel.exceptions import AuthenticationError, GwsUnavailable, TransientError
from batch_cancel.gws.login_gate import LoginGate
from batch_cancel.gws.responses import RETRY_AFTER_CAP, Reply, error_for_response, translate_transport_error
from batch_cancel.gws.session import GwsSession
from batch_cancel.simulator import Faults, GwsSimulator, SimulatorConfig


def _unavailable(retry_after: str | None = "2") -> TransientError:
    headers = {"Content-Type": "application/json"} | ({"Retry-After": retry_after} if retry_after else {})
    body = b'{"statusCode":4,"statusMessage":"Service is starting"}'
    error = error_for_response(Reply(503, "", headers, body))
    assert isinstance(error, TransientError)
    return error


class FakeGws:
    """A log-in that fails with ``errors`` (one per attempt) and then succeeds."""

    def __init__(self, time: FakeTime, *errors: BaseException) -> None:
        self.time = time
        self.errors = list(errors)
        self.at: list[float] = []

    async def login(self) -> str:
        self.at.append(self.time.now)
        await self.time.sleep(0.01)  # a round trip, so callers overlap with it
        if self.errors:
            raise self.errors.pop(0)
        return "logged in"


def _gate(time: FakeTime, max_outage: float = 300.0, **kwargs: Any) -> LoginGate:
    return LoginGate(max_outage=max_outage, clock=time.clock, sleep=time.sleep, rng=random.Random(1),
                     **kwargs)


def test_concurrent_callers_share_one_log_in_and_its_back_off() -> None:
    time = FakeTime()
    gws = FakeGws(time, _unavailable("2"), _unavailable("2"), _unavailable("2"))
    gate = _gate(time)

    async def senders() -> list[str]:
        return list(await asyncio.gather(*(gate.run(gws.login) for _ in range(64))))

    results = asyncio.run(time.run(senders()))
    assert results == ["logged in"] * 64
    # four log-ins for 64 senders, Retry-After: 2 between them
    assert [round(t - gws.at[0], 2) for t in gws.at] == [0.0, 2.01, 4.02, 6.03]
    assert (gate.attempts, gate.failures, gate.outages) == (4, 3, 1)


def test_without_retry_after_the_back_off_grows_with_jitter_to_its_ceiling() -> None:
    time = FakeTime()
    gws = FakeGws(time, *[_unavailable(None) for _ in range(9)])
    gate = _gate(time)
    asyncio.run(time.run(gate.run(gws.login)))
    pauses = [b - a - 0.01 for a, b in zip(gws.at, gws.at[1:], strict=False)]
    ceilings = [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert len(pauses) == 9
    for pause, ceiling in zip(pauses, ceilings, strict=True):
        assert ceiling / 2 - 1e-6 <= pause <= ceiling + 1e-6


@pytest.mark.parametrize("header", ["inf", "1e308", "nan", "Infinity"])
def test_retry_after_inf_nan_or_huge_never_pauses_forever_nor_logs_a_non_finite_number(
    header: str, caplog: pytest.LogCaptureFixture
) -> None:
    time = FakeTime()
    gws = FakeGws(time, _unavailable(header), _unavailable(header))
    gate = _gate(time, max_outage=1000.0)
    with caplog.at_level(logging.WARNING, logger="batch_cancel.gws"):
        asyncio.run(time.run(gate.run(gws.login), limit=500))
    pauses = [b - a - 0.01 for a, b in zip(gws.at, gws.at[1:], strict=False)]
    assert all(0 < p <= RETRY_AFTER_CAP + 1e-6 for p in pauses), pauses
    for record in caplog.records:
        numbers = [a for a in record.args or () if isinstance(a, float)]
        assert all(math.isfinite(n) for n in numbers), record.getMessage()
        json.dumps(numbers, allow_nan=False)
        assert "inf" not in record.getMessage().split("(")[-1]


def test_an_outage_past_max_outage_is_gws_unavailable_for_every_caller() -> None:
    time = FakeTime()
    gws = FakeGws(time, *[_unavailable("2") for _ in range(1000)])
    gate = _gate(time, max_outage=20.0)

    async def two() -> list[BaseException | str]:
        return list(await asyncio.gather(gate.run(gws.login), gate.run(gws.login), return_exceptions=True))

    first, second = asyncio.run(time.run(two()))
    assert isinstance(first, GwsUnavailable) and isinstance(second, GwsUnavailable)
    assert "--max-outage 20 s" in str(first) and "HTTP 503" in str(first)
    # bounded: one log-in per Retry-After over the outage, never a loop
    assert 10 <= len(gws.at) <= 12
    assert gws.at[-1] - gws.at[0] == pytest.approx(20.0, abs=0.1)


def test_a_transport_error_while_logging_in_again_is_an_outage_not_an_abort() -> None:
    time = FakeTime()
    reset = translate_transport_error(ConnectionResetError("reset by peer"))
    gws = FakeGws(time, reset, reset)
    gate = _gate(time)
    assert asyncio.run(time.run(gate.run(gws.login))) == "logged in"
    assert gate.attempts == 3


def test_refused_credentials_are_raised_at_once() -> None:
    time = FakeTime()
    gws = FakeGws(time, AuthenticationError("refused"))
    gate = _gate(time)
    with pytest.raises(AuthenticationError):
        asyncio.run(time.run(gate.run(gws.login)))
    assert gate.attempts == 1


def test_a_caller_cancelled_meanwhile_does_not_cancel_the_log_in_of_the_others() -> None:
    time = FakeTime()
    gws = FakeGws(time, _unavailable("2"))
    gate = _gate(time)

    async def scene() -> str:
        cut_short = asyncio.ensure_future(gate.run(gws.login))
        waiting = asyncio.ensure_future(gate.run(gws.login))
        await time.sleep(1.0)
        cut_short.cancel()
        return await waiting

    assert asyncio.run(time.run(scene())) == "logged in"
    assert gate.attempts == 2


def test_sessions_lost_before_carrying_anything_make_log_ins_wait_longer_each_time() -> None:
    time = FakeTime()
    gws = FakeGws(time)
    gate = _gate(time)

    async def scene() -> None:
        for wasted in (True, True, True, True, False, True):
            await gate.run(gws.login, wasted=wasted)

    asyncio.run(time.run(scene()))
    gaps = [round(b - a - 0.01, 2) for a, b in zip(gws.at, gws.at[1:], strict=False)]
    # 0.5 before the first, then doubling; a session that carried requests resets it
    assert round(gws.at[0] - 1000.0, 2) == 0.5
    assert gaps == [1.0, 2.0, 4.0, 0.0, 0.5]


# -- over real HTTP -------------------------------------------------------------------------------


def _config(base_url: str) -> GwsConfig:
    return GwsConfig(base_url=base_url, credentials=Credentials("agent", "secret"))


async def test_senders_meeting_a_node_restart_make_one_log_in_at_a_time() -> None:
    async with (
        GwsSimulator(SimulatorConfig()) as sim,
        GwsSession(_config(sim.base_url), max_outage=30.0) as session,
    ):
        await session.login_within(30.0)
        seen = session.generation
        sim.restart_node(seconds=2.0, retry_after=0.5)
        await asyncio.gather(*(session.relogin(seen) for _ in range(50)))
        assert session.generation == seen + 1
    ledger = sim.ledger
    # the first log-in, then one every 0.5 s (after a first 0.5 s: the lost session had
    # carried nothing) for the rest of the 2 s restart, then the one that works
    assert 2 <= ledger.login_unavailable_count <= 5
    assert ledger.login_attempt_count == ledger.login_unavailable_count + 2


async def test_gws_unreachable_while_logging_in_again_waits_within_max_outage() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    loop = asyncio.get_running_loop()
    async with GwsSession(_config(f"http://127.0.0.1:{port}"), max_outage=1.5) as session:
        started = loop.time()
        with pytest.raises(GwsUnavailable, match="cannot reach GWS"):
            await session.relogin(session.generation)
        assert loop.time() - started >= 1.4  # tried for the whole outage, not aborted at once
        assert session.gate.attempts >= 3


# -- the whole job --------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_through_a_node_restart_completes_with_few_log_ins(tmp_path: Path) -> None:
    concurrency = 32
    sim = make_sim(faults=Faults(seed=3, restart_every=150, restart_for=6.0, restart_retry_after=2.0))
    try:
        src = write_csv(tmp_path / "in.csv", ["phone_number"], [[x] for x in numbers(200)])
        args = job_args(sim.base_url, tmp_path, src, concurrency=concurrency, rate=0, ack_timeout=5,
                        max_outage=60)  # fmt: skip
        result = run_cli(args, ENV)
    finally:
        sim.stop()
    assert result.exit_code == 0, result.stderr
    assert result.summary["cancelled"] == 200
    ledger = sim.ledger
    [window] = ledger.restart_windows
    assert ledger.login_unavailable_count >= 2  # the outage was met, and waited out
    assert ledger.login_attempt_count <= 30, ledger.login_attempt_count
    assert len(ledger.requests_during([window])) <= 2 * concurrency
    rows = read_report(tmp_path / "report.csv")
    assert {r["status"] for r in rows} == {"cancelled"}


def test_a_log_in_outage_longer_than_max_outage_exits_3(tmp_path: Path) -> None:
    sim = make_sim(faults=Faults(restart_every=5, restart_for=120.0, restart_retry_after=1.0))
    try:
        src = write_csv(tmp_path / "in.csv", ["phone_number"], [[x] for x in numbers(20)])
        result = run_cli(job_args(sim.base_url, tmp_path, src, concurrency=4, rate=0, max_outage=3), ENV)
    finally:
        sim.stop()
    assert result.exit_code == 3, result.stderr
    assert "--max-outage 3 s" in result.summary["error"]
    assert sim.ledger.login_attempt_count <= 10
