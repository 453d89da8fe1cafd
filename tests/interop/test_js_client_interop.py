"""The CometD project's own JavaScript client (npm ``cometd`` + ``cometd-nodejs-client``).

* Against the CometD project's own Node server: checks the harness itself (the client script, the
  cookie it is given reaching the server next to the server's BAYEUX_BROWSER cookie, the control
  API's publish), so a failure of the simulator test below is not a harness problem.
* Against our GWS simulator: a REST login (httpx) gives the JSESSIONID cookie and CSRF token, the
  official client handshakes and subscribes to /v2/me/outbound with that cookie, a CancelRecord is
  POSTed, and the client must receive the RecordCancelAcknowledge carrying our referenceId; the
  simulator's ledger must show the request. Run both with the JS client's default
  ``appendMessageTypeToURL`` (requests to ``/api/v2/notifications/handshake``, ``.../connect``:
  what any browser CometD application sends) and with it off (the bare endpoint).
* After the simulator drops every CometD client, the official client (told ``402::unknown_client``)
  re-handshakes and re-subscribes by itself and receives the next acknowledgement.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from conftest import CometDNodeServer, JsClientStarter, NodeProcess

pytestmark = [pytest.mark.interop, pytest.mark.timeout(30)]

OUTBOUND = "/v2/me/outbound"


def is_message_for(reference_id: str) -> Any:
    def match(line: dict[str, Any]) -> bool:
        data = line.get("data")
        return (
            line.get("event") == "message"
            and isinstance(data, dict)
            and data.get("referenceId") == reference_id
        )

    return match


async def finished(client: NodeProcess) -> dict[str, Any]:
    """The client's last line ("done" once it got its messages)."""
    return await client.wait_for(
        lambda line: line.get("event") in ("done", "timeout", "stdin_closed"), within=10
    )


@pytest.mark.parametrize("append_message_type", [True, False], ids=["type-in-url", "bare-url"])
async def test_js_client_against_cometd_node_server(
    cometd_server: CometDNodeServer,
    start_js_client: JsClientStarter,
    append_message_type: bool,
) -> None:
    client = await start_js_client(
        cometd_server.bayeux_url("127.0.0.1"),
        cookie="JSESSIONID=rest-login-cookie",
        append_message_type=append_message_type,
        count=1,
    )
    await cometd_server.wait_for_subscribers(generation=0, count=1, within=5)
    assert await cometd_server.publish({"referenceId": "harness-1"}) == 1
    await client.wait_for(is_message_for("harness-1"), within=5)
    assert (await finished(client))["event"] == "done"

    requests = (await cometd_server.stats())["requests"]
    assert requests[0]["channels"] == ["/meta/handshake"]
    # The cookie we pass goes on every request, the server's own once it has set it.
    assert all("JSESSIONID=rest-login-cookie" in (r["cookie"] or "") for r in requests), requests
    assert all("BAYEUX_BROWSER=" in (r["cookie"] or "") for r in requests[1:]), requests


@pytest.mark.parametrize(
    "append_message_type",
    [
        pytest.param(
            True,
            id="type-in-url",
        ),
        pytest.param(False, id="bare-url"),
    ],
)
async def test_js_client_receives_cancel_ack_from_simulator(
    start_js_client: JsClientStarter,
    append_message_type: bool,
) -> None:
    try:
        from batch_cancel.simulator import GwsSimulator, SimulatorConfig
    except ImportError as exc:  # pragma: no cover - only while the simulator is being written
        pytest.fail(f"batch_cancel.simulator is not importable: {exc}")

    reference_id = f"interop-{uuid.uuid4()}"
    async with (
        GwsSimulator(SimulatorConfig(users={"agent": "secret"})) as sim,
        httpx.AsyncClient(base_url=sim.base_url, timeout=5) as http,
    ):
        me = await http.get("/api/v2/me", auth=("agent", "secret"))
        assert me.status_code == 200, me.text
        session_cookie = me.cookies.get("JSESSIONID") or http.cookies.get("JSESSIONID")
        assert session_cookie, f"no JSESSIONID cookie in {me.headers}"
        csrf_header = me.headers.get("X-CSRF-HEADER", "X-CSRF-TOKEN")
        csrf = {csrf_header: me.headers["X-CSRF-TOKEN"]} if "X-CSRF-TOKEN" in me.headers else {}
        devices = await http.get("/api/v2/me/devices")
        assert devices.status_code == 200, devices.text
        device_path = f"/devices/{devices.json()['devices'][0]['id']}"

        client = await start_js_client(
            f"{sim.base_url}/api/v2/notifications",
            cookie=f"JSESSIONID={session_cookie}",
            append_message_type=append_message_type,
            count=1,
        )
        record = {
            "operationName": "CancelRecord",
            "applicationId": 101,
            "campaignName": "Interop",
            "callingList": "CL_Interop",
            "phoneNumber": "+15551230001",
            "devicePath": device_path,
            "chainAttribute": "AllChain",
            "referenceId": reference_id,
        }
        posted = await http.post("/api/v2/me/outbound-records", json=record, headers=csrf)
        assert posted.status_code == 200, posted.text
        assert posted.json()["statusCode"] == 0

        line = await client.wait_for(is_message_for(reference_id), within=10)
        assert line["channel"] == OUTBOUND
        assert line["data"]["messageType"] == "OutboundRecordMessage"
        assert line["data"]["notificationType"] == "RecordCancelAcknowledge"
        assert line["data"]["record"]["devicePath"] == device_path
        assert (await finished(client))["event"] == "done"

        entries = sim.ledger.requests_for(reference_id)
        assert len(entries) == 1, entries
        assert entries[0].operation == "CancelRecord"
        assert entries[0].phone_number == "+15551230001"
        assert entries[0].status_code == 0
        assert sim.ledger.outcome(reference_id) == "cancelled"
        assert sim.ledger.handshake_count >= 1


async def test_js_client_recovers_after_simulator_drops_cometd_clients(
    start_js_client: JsClientStarter,
) -> None:
    """After the simulator forgets every CometD client (402), the official client re-handshakes,
    re-subscribes on its own, and gets the acknowledgement of a request sent afterwards."""
    from batch_cancel.simulator import GwsSimulator, SimulatorConfig

    async with (
        GwsSimulator(SimulatorConfig(users={"agent": "secret"}, long_poll_timeout=5)) as sim,
        httpx.AsyncClient(base_url=sim.base_url, timeout=5) as http,
    ):
        me = await http.get("/api/v2/me", auth=("agent", "secret"))
        assert me.status_code == 200, me.text
        csrf = {me.headers.get("X-CSRF-HEADER", "X-CSRF-TOKEN"): me.headers["X-CSRF-TOKEN"]}
        device_id = (await http.get("/api/v2/me/devices")).json()["devices"][0]["id"]
        client = await start_js_client(
            f"{sim.base_url}/api/v2/notifications",
            cookie=f"JSESSIONID={me.cookies['JSESSIONID']}",
            append_message_type=False,
            count=2,
        )

        async def cancel(reference_id: str) -> None:
            record = {
                "operationName": "CancelRecord",
                "applicationId": 101,
                "campaignName": "Interop",
                "callingList": "CL_Interop",
                "phoneNumber": "+15551230002",
                "devicePath": f"/devices/{device_id}",
                "referenceId": reference_id,
            }
            posted = await http.post("/api/v2/me/outbound-records", json=record, headers=csrf)
            assert posted.status_code == 200 and posted.json()["statusCode"] == 0, posted.text

        await cancel("before-drop")
        await client.wait_for(is_message_for("before-drop"), within=10)
        subscribes_before = sim.ledger.subscribe_count
        assert sim.drop_all_clients() == 1

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while sim.ledger.subscribe_count <= subscribes_before:
            assert loop.time() < deadline, f"JS client did not re-subscribe: {client.lines}"
            await asyncio.sleep(0.05)
        assert sim.ledger.handshake_count >= 2
        await cancel("after-drop")
        await client.wait_for(is_message_for("after-drop"), within=10)
        assert (await finished(client))["event"] == "done"
        # What the official client was told in between (printed for unsuccessful meta replies).
        refused = [line for line in client.lines if line.get("event") == "meta"]
        assert refused and all(str(r["error"]).startswith("402::") for r in refused), refused
