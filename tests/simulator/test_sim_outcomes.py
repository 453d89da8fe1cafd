"""Outcomes of outbound-record requests as a real CometD client (aiocometd_noloop) sees them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiocometd_noloop import Client
from aiocometd_noloop.extensions import Extension
from simhelpers import FAILING_LIST, FAILING_NUMBER, NOTIFICATIONS, GwsTestClient, MakeClient, StartSim

from batch_cancel.simulator import GwsSimulator


class SessionCookie(Extension):  # type: ignore[misc]
    """Carries the GWS session cookie and asks for an immediate first connect."""

    def __init__(self, cookie: str) -> None:
        self._cookie = cookie
        self._fresh_handshake = False

    async def outgoing(self, payload: list[dict[str, Any]], headers: dict[str, str]) -> None:
        headers["Cookie"] = f"JSESSIONID={self._cookie}"
        for message in payload:
            if message["channel"] == "/meta/handshake":
                self._fresh_handshake = True
            elif message["channel"] == "/meta/connect" and self._fresh_handshake:
                # Without this the client's open() sits out a whole long poll.
                message["advice"] = {"timeout": 0}
                self._fresh_handshake = False

    async def incoming(self, payload: list[dict[str, Any]], headers: dict[str, str] | None = None) -> None:
        return None


@asynccontextmanager
async def cometd(sim: GwsSimulator, rest: GwsTestClient) -> AsyncIterator[Client]:
    cookie = rest.http.cookies["JSESSIONID"]
    client = Client(sim.base_url + NOTIFICATIONS, extensions=[SessionCookie(cookie)])
    await client.open()
    try:
        await client.subscribe("/v2/me/outbound")
        await client.subscribe("/me/internal")
        yield client
    finally:
        await client.close()


async def receive(client: Client, count: int, timeout: float = 3.0) -> list[dict[str, Any]]:
    return [await asyncio.wait_for(client.receive(), timeout) for _ in range(count)]


async def test_cancel_record_ack_arrives_with_same_reference_on_both_channels(
    sim: GwsSimulator, make_client: MakeClient
) -> None:
    rest = await make_client(sim)
    async with cometd(sim, rest) as client:
        response = await rest.post_record(rest.record(referenceId="123456789"))
        assert response.json() == {"statusCode": 0}
        ack, device = sorted(await receive(client, 2), key=lambda m: m["channel"] != "/v2/me/outbound")
    assert ack == {
        "channel": "/v2/me/outbound",
        "data": {
            "record": {
                "devicePath": rest.device_path,
                "callingList": "CallingList1",
                "applicationId": 134,
                "campaignName": "Campaign1",
            },
            "notificationType": "RecordCancelAcknowledge",
            "messageType": "OutboundRecordMessage",
            "referenceId": "123456789",
        },
    }
    assert device["channel"] == "/me/internal"
    data = device["data"]
    assert data["messageType"] == "DeviceUserEventMessage"
    assert "referenceId" not in data
    assert data["userData"]["GSW_PHONE"] == "4100180988"
    assert data["userData"]["GSW_CALLING_LIST"] == "CallingList1"
    assert data["userData"]["GSW_CAMPAIGN_NAME"] == "Campaign1"
    assert data["userData"]["GSW_APPLICATION_ID"] == 134
    assert data["userData"]["GSW_USER_EVENT"] == "RecordCancelAcknowledge"
    assert isinstance(data["userData"]["GSW_RECORD_HANDLE"], int)
    assert sim.ledger.acknowledged_refs() == {"123456789"}
    assert sim.ledger.outcome("123456789") == "cancelled"
    assert sim.ledger.subscribe_count == 2


async def test_do_not_call_record_is_acknowledged_as_such(sim: GwsSimulator, make_client: MakeClient) -> None:
    rest = await make_client(sim, ready=True)
    await rest.post_record(rest.record(operationName="DoNotCallRecord", referenceId="dnc-1"))
    [ack, device] = await rest.collect(2)
    assert ack["data"]["notificationType"] == "DoNotCallAcknowledge"
    assert ack["data"]["referenceId"] == "dnc-1"
    assert device["data"]["userData"]["GSW_USER_EVENT"] == "DoNotCallAcknowledge"


@pytest.mark.parametrize(
    ("override", "ref"),
    [({"phoneNumber": FAILING_NUMBER}, "fail-number"), ({"callingList": FAILING_LIST}, "fail-list")],
)
async def test_failure_as_error_message(
    sim: GwsSimulator, make_client: MakeClient, override: dict[str, str], ref: str
) -> None:
    rest = await make_client(sim)
    async with cometd(sim, rest) as client:
        assert (await rest.post_record(rest.record(referenceId=ref, **override))).status_code == 200
        [message] = await receive(client, 1)
        # Nothing else (no device event) follows a failure.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(client.receive(), 0.2)
    assert message["channel"] == "/v2/me/outbound"
    assert message["data"] == {
        "messageType": "ErrorMessage",
        "errorCode": 6,
        "errorMessage": "Record not found",
        "referenceId": ref,
    }
    assert sim.ledger.outcome(ref) == "failed"
    assert sim.ledger.failed_refs() == {ref}
    assert sim.ledger.acknowledged_refs() == set()


async def test_failure_as_outbound_notification(start_sim: StartSim, make_client: MakeClient) -> None:
    sim = await start_sim(failure_style="outbound_notification")
    rest = await make_client(sim, ready=True)
    await rest.post_record(rest.record(phoneNumber=FAILING_NUMBER, referenceId="f-2"))
    [message] = await rest.collect(1)
    data = message["data"]
    assert data["messageType"] == "OutboundRecordMessage"
    assert data["notificationType"] == "RecordCancelError"
    assert data["errorMessage"] == "Record not found"
    assert data["referenceId"] == "f-2"
    assert data["record"]["callingList"] == "CallingList1"


async def test_repeated_reference_is_processed_again_and_marked_repeat(
    sim: GwsSimulator, make_client: MakeClient
) -> None:
    rest = await make_client(sim, ready=True)
    body = rest.record(referenceId="twice")
    assert (await rest.post_record(body)).status_code == 200
    assert (await rest.post_record(body)).status_code == 200
    events = await rest.collect(4)
    assert [e["data"].get("referenceId") for e in events if e["channel"] == "/v2/me/outbound"] == [
        "twice",
        "twice",
    ]
    first, second = sim.ledger.requests_for("twice")
    assert (first.repeat, second.repeat) == (False, True)
    assert first.processed and second.processed
