"""What the protocol notes leave open, served over real HTTP and Bayeux: repeats for a
record already cancelled, node restarts, gateways in front of GWS, half-open long polls,
statusCode 7 and 9; and the ledger's ground truth of what GWS really did."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from simhelpers import NOTIFICATIONS, GwsTestClient, MakeClient, StartSim

from batch_cancel.cli import cli
from batch_cancel.cli.simulate import _config, simulate
from batch_cancel.simulator import Faults, GwsSimulator


def _outbound(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e["data"] for e in events if e["channel"] == "/v2/me/outbound"]


# -- a repeat for a record already cancelled --------------------------------------------


@pytest.mark.parametrize("same_ref", [True, False], ids=["same-ref", "new-ref"])
async def test_repeat_answered_by_a_second_acknowledgement(
    start_sim: StartSim, make_client: MakeClient, same_ref: bool
) -> None:
    sim = await start_sim(faults=Faults(repeat_answer="ack"))
    client = await make_client(sim, ready=True)
    second = "r-1" if same_ref else "r-2"
    assert (await client.post_record(client.record(referenceId="r-1"))).status_code == 200
    assert (await client.post_record(client.record(referenceId=second))).status_code == 200
    acks = _outbound(await client.collect(4))
    assert [a["notificationType"] for a in acks] == ["RecordCancelAcknowledge"] * 2
    assert [a["referenceId"] for a in acks] == ["r-1", second]
    first, repeat = sim.ledger.entries
    assert (first.effect, repeat.effect) == ("cancelled", "already")
    assert sim.ledger.cancelled_by() == {"4100180988": "r-1"}
    assert sim.ledger.refs_by_number() == {"4100180988": ["r-1"] if same_ref else ["r-1", "r-2"]}


@pytest.mark.parametrize("same_ref", [True, False], ids=["same-ref", "new-ref"])
async def test_repeat_answered_record_not_found_over_cometd(
    start_sim: StartSim, make_client: MakeClient, same_ref: bool
) -> None:
    sim = await start_sim(faults=Faults(repeat_answer="failure"))
    client = await make_client(sim, ready=True)
    second = "r-1" if same_ref else "r-2"
    await client.post_record(client.record(referenceId="r-1"))
    # the HTTP answer accepts the repeat: the failure comes later, like any outcome
    assert (await client.post_record(client.record(referenceId=second))).json() == {"statusCode": 0}
    ack, failure = _outbound(await client.collect(3))
    assert (ack["notificationType"], ack["referenceId"]) == ("RecordCancelAcknowledge", "r-1")
    assert (failure["messageType"], failure["errorMessage"], failure["referenceId"]) == (
        "ErrorMessage", "Record not found", second,
    )  # fmt: skip
    repeat = sim.ledger.entries[1]
    assert (repeat.processed, repeat.outcome, repeat.effect) == (True, "failed", "already")
    # the truth: r-1 cancelled it, and the failure changed nothing
    assert sim.ledger.cancelled_by() == {"4100180988": "r-1"}


async def test_repeat_record_not_found_as_an_error_event(
    start_sim: StartSim, make_client: MakeClient
) -> None:
    sim = await start_sim(faults=Faults(repeat_answer="failure"), failure_style="user_event")
    client = await make_client(sim, ready=True)
    await client.post_record(client.record(referenceId="r-1"))
    await client.post_record(client.record(referenceId="r-2"))
    events = await client.collect(3)
    errors = [e["data"]["userData"] for e in events if "GSW_ERROR" in e["data"].get("userData", {})]
    assert [(u["GSW_PHONE"], u["GSW_ERROR"]) for u in errors] == [("4100180988", "Record not found")]


async def test_repeat_answered_as_a_json_error(start_sim: StartSim, make_client: MakeClient) -> None:
    sim = await start_sim(faults=Faults(repeat_answer="http_error"))
    client = await make_client(sim, ready=True)
    await client.post_record(client.record(referenceId="r-1"))
    response = await client.post_record(client.record(referenceId="r-2"))
    assert response.status_code == 404
    assert response.json() == {"statusCode": 6, "statusMessage": "Record not found"}
    # another number is not a repeat
    other = await client.post_record(client.record(referenceId="r-3", phoneNumber="4100180989"))
    assert other.status_code == 200
    assert [a["referenceId"] for a in _outbound(await client.collect(4))] == ["r-1", "r-3"]
    _, repeat, _ = sim.ledger.entries
    assert (repeat.processed, repeat.fault, repeat.effect) == (False, "repeat_not_found", "already")
    assert sim.ledger.cancelled_by() == {"4100180988": "r-1", "4100180989": "r-3"}
    assert sim.ledger.refs_by_number() == {"4100180988": ["r-1", "r-2"], "4100180989": ["r-3"]}


async def test_failing_number_is_never_cancelled_and_fails_again(
    sim: GwsSimulator, client: GwsTestClient
) -> None:
    from simhelpers import FAILING_NUMBER

    await client.post_record(client.record(referenceId="f-1", phoneNumber=FAILING_NUMBER))
    await client.post_record(client.record(referenceId="f-2", phoneNumber=FAILING_NUMBER))
    assert [e.effect for e in sim.ledger.entries] == ["failed", "failed"]
    assert sim.ledger.cancelled_by() == {}


# -- a GWS node restart -------------------------------------------------------------------


async def test_restart_after_n_requests_loses_sessions_and_refuses_logins(
    start_sim: StartSim, make_client: MakeClient
) -> None:
    sim = await start_sim(faults=Faults(restart_every=2, restart_for=1.0, restart_retry_after=2.0))
    client = await make_client(sim, ready=True)
    assert sim.ledger.login_attempt_count == 1
    for ref in ("r-1", "r-2"):
        assert (await client.post_record(client.record(referenceId=ref))).status_code == 200
    # the second request restarted the node: the session is gone, and so is the CometD client
    assert (await client.post_record(client.record(referenceId="r-3"))).status_code == 401
    login = await client.login()
    assert (login.status_code, login.headers.get("Retry-After")) == (503, "2")
    assert login.json()["statusCode"] == 4
    assert "JSESSIONID" not in login.cookies
    await asyncio.sleep(1.1)
    assert (await client.login()).status_code == 200
    [reply] = await client.connect(timeout_ms=0)
    assert reply["error"] == "402::unknown_client"
    ledger = sim.ledger
    assert (ledger.login_attempt_count, ledger.login_unavailable_count, ledger.login_count) == (3, 1, 2)
    [(start, end)] = ledger.restart_windows
    assert end - start == pytest.approx(1.0)
    [during] = ledger.requests_during(ledger.restart_windows)
    assert (during.reference_id, during.fault) == ("r-3", "session_expired")


@pytest.mark.parametrize(("retry_after", "header"), [(math.inf, "inf"), (math.nan, "nan"), (None, None)])
async def test_restart_retry_after_is_sent_as_given(
    sim: GwsSimulator, make_client: MakeClient, retry_after: float | None, header: str | None
) -> None:
    client = await make_client(sim)
    sim.restart_node(5.0, retry_after)
    login = await client.login()
    assert (login.status_code, login.headers.get("Retry-After")) == (503, header)


# -- a gateway in front of GWS --------------------------------------------------------------


@pytest.mark.parametrize("status", [502, 504, 408])
async def test_gateway_answers_after_gws_processed_the_request(
    start_sim: StartSim, make_client: MakeClient, status: int
) -> None:
    sim = await start_sim(faults=Faults(gateway_after_rate=1.0, gateway_statuses=(status,)))
    client = await make_client(sim, ready=True)
    response = await client.post_record(client.record(referenceId="r-gw"))
    assert response.status_code == status
    assert response.headers["Content-Type"].startswith("text/html")
    assert "statusCode" not in response.text
    # GWS did it all the same: the acknowledgement is published
    assert [a["referenceId"] for a in _outbound(await client.collect(2))] == ["r-gw"]
    [entry] = sim.ledger.entries
    assert (entry.http_status, entry.status_code, entry.fault, entry.effect) == (
        status, None, "gateway_after", "cancelled",
    )  # fmt: skip


async def test_gateway_with_an_empty_body_before_gws_saw_the_request(
    start_sim: StartSim, make_client: MakeClient
) -> None:
    sim = await start_sim(faults=Faults(gateway_before_rate=1.0, gateway_body="empty"))
    client = await make_client(sim, ready=True)
    response = await client.post_record(client.record(referenceId="r-gw"))
    assert response.status_code in (502, 504, 408)
    assert response.content == b""
    assert [r["channel"] for r in await client.connect(timeout_ms=200)] == ["/meta/connect"]
    [entry] = sim.ledger.entries
    assert (entry.processed, entry.fault, entry.effect) == (False, "gateway_before", None)


# -- statusCode 7 and 9 ------------------------------------------------------------------------


async def test_partial_success_is_processed_and_told_over_cometd(
    start_sim: StartSim, make_client: MakeClient
) -> None:
    sim = await start_sim(faults=Faults(partial_success_rate=1.0))
    client = await make_client(sim, ready=True)
    response = await client.post_record(client.record(referenceId="r-7"))
    assert (response.status_code, response.json()["statusCode"]) == (200, 7)
    assert [a["referenceId"] for a in _outbound(await client.collect(2))] == ["r-7"]
    assert sim.ledger.cancelled_by() == {"4100180988": "r-7"}


@pytest.mark.parametrize("processed", [False, True])
async def test_processing_incomplete_may_or_may_not_have_been_done(
    start_sim: StartSim, make_client: MakeClient, processed: bool
) -> None:
    sim = await start_sim(faults=Faults(incomplete_rate=1.0, incomplete_processed_rate=float(processed)))
    client = await make_client(sim, ready=True)
    response = await client.post_record(client.record(referenceId="r-9"))
    assert response.status_code == 500
    assert response.json() == {"statusCode": 9, "statusMessage": "Processing incomplete"}
    acks = _outbound(await client.collect(2, timeout_ms=300, rounds=2))
    assert [a["referenceId"] for a in acks] == (["r-9"] if processed else [])
    [entry] = sim.ledger.entries
    assert (entry.processed, entry.fault) == (processed, "incomplete")
    assert sim.ledger.cancelled_by() == ({"4100180988": "r-9"} if processed else {})


# -- half-open long polls and no timeout advice ------------------------------------------------


async def test_no_timeout_advice_when_configured(start_sim: StartSim, make_client: MakeClient) -> None:
    sim = await start_sim(advise_timeout=False, long_poll_timeout=0.3)
    client = await make_client(sim)
    handshake = await client.handshake()
    assert handshake["successful"] and "timeout" not in handshake["advice"]
    started = time.monotonic()
    *_, reply = await client.connect()
    # the poll is still held for the server's timeout; the client is just not told
    assert time.monotonic() - started >= 0.25
    assert reply["successful"] and "timeout" not in reply["advice"]


async def _silent_connect(client: GwsTestClient, seconds: float) -> None:
    """A /meta/connect that must get neither an answer nor a reset within ``seconds``."""
    message = {"channel": "/meta/connect", "connectionType": "long-polling", "clientId": client.client_id}
    with pytest.raises(httpx.ReadTimeout):  # a reset would raise RemoteProtocolError/ReadError
        await client.http.post(NOTIFICATIONS, json=[message], timeout=seconds)


async def test_half_open_poll_is_neither_answered_nor_reset(sim: GwsSimulator, client: GwsTestClient) -> None:
    # the poll held when the connection goes half-open (server timeout 2 s) ...
    held = asyncio.create_task(_silent_connect(client, 3.0))
    await asyncio.sleep(0.2)
    sim.half_open_polls(3.5)
    await held
    # ... and one made while it lasts
    await _silent_connect(client, 2.5)
    assert sim.ledger.silent_poll_count == 2
    await asyncio.sleep(1.0)
    # over: polls are answered again (this client was not forgotten: max_interval is 10 s)
    [reply] = await client.connect(timeout_ms=0)
    assert reply["successful"]
    assert len(sim.ledger.half_open_windows) == 1


async def test_half_open_after_n_requests_loses_what_was_published(
    start_sim: StartSim, make_client: MakeClient
) -> None:
    sim = await start_sim(faults=Faults(half_open_every=1, half_open_for=1.0), max_interval=0.5)
    client = await make_client(sim, ready=True)
    assert (await client.post_record(client.record(referenceId="r-ho"))).status_code == 200
    await _silent_connect(client, 1.5)
    # the server never saw the client poll, so it forgot it, and its ack with it
    [reply] = await client.connect(timeout_ms=0)
    assert reply["error"] == "402::unknown_client"
    [ack] = [e for e in sim.ledger.events if e.kind == "ack"]
    assert (ack.queued_to, ack.delivered_to) == (1, 0)


# -- the command line ----------------------------------------------------------------------------


def test_simulate_flags_reach_the_simulator() -> None:
    args = [
        "--repeat-answer", "http_error", "--fault-gateway-after-rate", "0.5",
        "--fault-gateway-before-rate", "0.1", "--fault-gateway-status", "504",
        "--fault-gateway-body", "empty", "--fault-partial-success-rate", "0.2",
        "--fault-incomplete-rate", "0.3", "--fault-incomplete-processed-rate", "0.4",
        "--fault-restart-every", "100", "--fault-restart-for", "6",
        "--fault-restart-retry-after", "inf", "--fault-half-open-every", "50",
        "--fault-half-open-for", "20", "--no-timeout-advice",
    ]  # fmt: skip
    ctx = simulate.make_context("simulate", args)
    config = _config(ctx.params)
    f = config.faults
    assert (f.repeat_answer, f.gateway_after_rate, f.gateway_before_rate) == ("http_error", 0.5, 0.1)
    assert (f.gateway_statuses, f.gateway_body) == ((504,), "empty")
    assert (f.partial_success_rate, f.incomplete_rate, f.incomplete_processed_rate) == (0.2, 0.3, 0.4)
    assert (f.restart_every, f.restart_for, f.restart_retry_after) == (100, 6.0, math.inf)
    assert (f.half_open_every, f.half_open_for, config.advise_timeout) == (50, 20.0, False)
    default = _config(simulate.make_context("simulate", []).params)
    assert default.faults == Faults() and default.advise_timeout


def test_simulate_help_names_the_new_knobs() -> None:
    result = CliRunner().invoke(cli, ["simulate", "--help"])
    for knob in ("--repeat-answer", "--fault-gateway-after-rate", "--fault-restart-every",
                 "--fault-half-open-every", "--no-timeout-advice", "--fault-incomplete-rate"):  # fmt: skip
        assert knob in result.output


def test_new_fault_values_are_validated() -> None:
    with pytest.raises(ValueError, match="repeat_answer"):
        Faults(repeat_answer="maybe")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="gateway_statuses"):
        Faults(gateway_statuses=(200,))
    with pytest.raises(ValueError, match="incomplete_processed_rate"):
        Faults(incomplete_processed_rate=2.0)
