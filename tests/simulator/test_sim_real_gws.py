"""What a real GWS does that the first simulator did not: errors on /me/internal only, hung
requests, Jetty's DoS filter, foreign notifications, DoNotCallRecord without a list,
the contact-center session's start and end in the ledger."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from simhelpers import FAILING_NUMBER, MakeClient, StartSim

from batch_cancel.simulator import Faults, GwsSimulator
from batch_cancel.simulator.dos_filter import DosFilter


async def test_error_told_only_as_user_event_on_me_internal(
    start_sim: StartSim, make_client: MakeClient
) -> None:
    sim = await start_sim(failure_style="user_event")
    client = await make_client(sim, ready=True)
    answer = await client.post_record(client.record(phoneNumber=FAILING_NUMBER, referenceId="r-err"))
    assert answer.json() == {"statusCode": 0}
    [event] = await client.collect(1)
    assert event["channel"] == "/me/internal"
    data = event["data"]
    assert data["messageType"] == "DeviceUserEventMessage"
    assert "referenceId" not in data
    user_data = data["userData"]
    assert user_data["GSW_ERROR"] == "Record not found"
    assert isinstance(user_data["GSW_ERROR_NUMBER"], int)
    assert user_data["GSW_PHONE"] == FAILING_NUMBER
    assert user_data["GSW_CAMPAIGN_NAME"] == "Campaign1"
    assert user_data["GSW_CALLING_LIST"] == "CallingList1"
    assert "GSW_USER_EVENT" in user_data and "GSW_RECORD_HANDLE" not in user_data
    # Nothing at all on /v2/me/outbound for that request.
    assert [r["channel"] for r in await client.connect(timeout_ms=200)] == ["/meta/connect"]
    assert sim.ledger.outcome("r-err") == "failed"
    assert sim.ledger.failed_refs() == {"r-err"}
    assert [e.kind for e in sim.ledger.events] == ["error_event"]


async def test_ack_companion_carries_the_record_handle(sim: GwsSimulator, make_client: MakeClient) -> None:
    client = await make_client(sim, ready=True)
    await client.post_record(client.record(phoneNumber="2125550101", referenceId="r-1"))
    await client.post_record(client.record(phoneNumber="2125550102", referenceId="r-2"))
    events = await client.collect(4)
    companions = [e["data"]["userData"] for e in events if e["channel"] == "/me/internal"]
    handles = {u["GSW_PHONE"]: u["GSW_RECORD_HANDLE"] for u in companions}
    assert set(handles) == {"2125550101", "2125550102"}
    assert len(set(handles.values())) == 2
    assert all("GSW_ERROR" not in u for u in companions)


async def test_hung_requests_are_never_answered(start_sim: StartSim, make_client: MakeClient) -> None:
    sim = await start_sim(faults=Faults(hang_after_rate=1.0))
    client = await make_client(sim, ready=True)
    with pytest.raises(httpx.ReadTimeout):
        await client.http.post(
            "/api/v2/me/outbound-records",
            json=client.record(referenceId="r-hang-after"),
            headers={"X-CSRF-TOKEN": client.token or ""},
            timeout=0.5,
        )
    # Processed all the same: the acknowledgement is published.
    events = await client.collect(2)
    assert {e["channel"] for e in events} == {"/v2/me/outbound", "/me/internal"}
    sim.set_faults(Faults(hang_before_rate=1.0))
    with pytest.raises(httpx.ReadTimeout):
        await client.http.post(
            "/api/v2/me/outbound-records",
            json=client.record(referenceId="r-hang-before"),
            headers={"X-CSRF-TOKEN": client.token or ""},
            timeout=0.5,
        )
    assert [r["channel"] for r in await client.connect(timeout_ms=200)] == ["/meta/connect"]
    after, before = sim.ledger.entries
    assert (after.fault, after.http_status, after.processed) == ("hang_after", None, True)
    assert (before.fault, before.http_status, before.processed) == ("hang_before", None, False)
    assert sim.ledger.outcome("r-hang-after") == "cancelled"
    assert sim.ledger.outcome("r-hang-before") is None


@pytest.mark.slow
async def test_dos_filter_delays_then_refuses_per_session(
    start_sim: StartSim, make_client: MakeClient
) -> None:
    sim = await start_sim(faults=Faults(dos_max_requests_per_sec=5, dos_max_wait=0.5))
    client = await make_client(sim)
    other = await make_client(sim, user="other", password="pw2")
    started = time.monotonic()
    answers = await asyncio.gather(*(client.post_record(client.record()) for _ in range(10)))
    elapsed = time.monotonic() - started
    statuses = sorted(a.status_code for a in answers)
    # 5 pass at once; the next ones wait a second for the window, longer than 0.5 s: refused.
    assert statuses == [200] * 5 + [429] * 5
    refused = [a for a in answers if a.status_code == 429]
    assert all(a.headers.get("Retry-After") is None for a in refused)
    assert refused[0].json()["statusCode"] == 4
    assert elapsed < 0.5
    # Another session has a window of its own.
    assert (await other.post_record(other.record())).status_code == 200
    faults = sim.ledger.faults_seen()
    assert faults == {"dos_429": 5}

    sim.set_faults(Faults(dos_max_requests_per_sec=5, dos_max_wait=2.0))
    await asyncio.sleep(1.05)
    started = time.monotonic()
    answers = await asyncio.gather(*(client.post_record(client.record()) for _ in range(8)))
    elapsed = time.monotonic() - started
    # Delayed, not refused: 3 wait for the next second.
    assert [a.status_code for a in answers] == [200] * 8
    assert 0.9 < elapsed < 1.8
    entries = sim.ledger.entries[-8:]
    assert sum(1 for e in entries if e.dos_wait > 0) == 3
    # never more than 5 admitted within one second (on a busy box the 8 arrive spread out,
    # so the waits differ; the window is the invariant)
    admitted = sorted(e.t_start + e.dos_wait for e in entries)
    assert all(admitted[i + 5] - admitted[i] >= 1.0 - 0.01 for i in range(3))


def test_dos_filter_window_on_a_fake_clock() -> None:
    now = [100.0]
    dos = DosFilter(clock=lambda: now[0])
    assert [dos.admit("s", 2, 5.0) for _ in range(2)] == [0.0, 0.0]
    # The third in the same second waits for the first to leave the window.
    assert dos.admit("s", 2, 5.0) == pytest.approx(1.0)
    assert dos.admit("s", 2, 5.0) == pytest.approx(1.0)
    assert dos.admit("s", 2, 5.0) == pytest.approx(2.0)
    # Beyond the bound: refused, and takes no place in the queue.
    assert dos.admit("s", 2, 1.5) is None
    assert dos.admit("t", 2, 1.5) == 0.0
    now[0] += 10.0
    assert dos.admit("s", 2, 1.5) == 0.0
    assert dos.admit("s", 0, 1.5) == 0.0


async def test_foreign_messages_every_n_requests(start_sim: StartSim, make_client: MakeClient) -> None:
    sim = await start_sim(faults=Faults(foreign_every=2))
    client = await make_client(sim, ready=True)
    for n in range(2):
        await client.post_record(client.record(phoneNumber=f"212555010{n}", referenceId=f"r-{n}"))
    events = await client.collect(6)
    foreign = [e for e in events if e["data"].get("referenceId", "").startswith("foreign-")]
    assert len(foreign) == 1 and foreign[0]["channel"] == "/v2/me/outbound"
    user_events = [e["data"]["userData"] for e in events if e["channel"] == "/me/internal"]
    assert sum(1 for u in user_events if u["GSW_USER_EVENT"] == "CampaignStatusChanged") == 1
    assert sum(1 for e in sim.ledger.events if e.kind == "foreign") == 2


async def test_do_not_call_record_needs_no_calling_list(sim: GwsSimulator, make_client: MakeClient) -> None:
    client = await make_client(sim, ready=True)
    dnc = client.record(operationName="DoNotCallRecord", callingList=None, referenceId="r-dnc")
    assert "callingList" not in dnc
    assert (await client.post_record(dnc)).json() == {"statusCode": 0}
    events = await client.collect(2)
    ack = next(e["data"] for e in events if e["channel"] == "/v2/me/outbound")
    assert ack["notificationType"] == "DoNotCallAcknowledge"
    assert "callingList" not in ack["record"]
    cancel = client.record(callingList=None)
    refused = await client.post_record(cancel)
    assert (refused.status_code, refused.json()["statusMessage"]) == (400, "Missing parameter: callingList")


async def test_contact_center_session_start_and_end_in_the_ledger(
    start_sim: StartSim, make_client: MakeClient
) -> None:
    sim = await start_sim(require_cc_session=True)
    client = await make_client(sim)
    refused = await client.post_record(client.record())
    assert (refused.status_code, refused.json()["statusCode"]) == (400, 2)
    headers = {"X-CSRF-TOKEN": client.token or ""}
    start = {"operationName": "StartContactCenterSession", "channels": ["voice"]}
    await client.http.post("/api/v2/me", json=start, headers=headers)
    assert (sim.ledger.cc_session_starts, sim.ledger.cc_session_ends) == (1, 0)
    await client.http.post("/api/v2/me", json={"operationName": "EndContactCenterSession"}, headers=headers)
    assert (sim.ledger.cc_session_starts, sim.ledger.cc_session_ends) == (1, 1)
    assert sim.ledger.to_dict()["counters"]["cc_session_ends"] == 1
