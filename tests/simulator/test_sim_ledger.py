"""The ledger's helpers, its JSON endpoint and the threaded simulator."""

from __future__ import annotations

import asyncio

import httpx
from simhelpers import MakeClient, StartSim

from batch_cancel.simulator import Faults, GwsSimulator, Ledger, SimulatorConfig, ThreadedSimulator


def _ledger_with_starts(*starts: float) -> Ledger:
    ledger = Ledger()
    for t in starts:
        entry = ledger.begin_request()
        entry.t_start = t
        ledger.finish_request(entry, http_status=200, status_code=0)
    return ledger


def test_peak_rate_is_the_busiest_sliding_window() -> None:
    ledger = _ledger_with_starts(0.0, 0.1, 0.95, 1.05, 1.1, 1.2, 3.0)
    # 0.95..1.2 holds four starts within one second; 0.0..0.95 only three.
    assert ledger.peak_rate(1.0) == 4
    assert ledger.peak_rate(0.2) == 3
    assert Ledger().peak_rate() == 0


async def test_peak_in_flight_counts_concurrent_requests(
    start_sim: StartSim, make_client: MakeClient
) -> None:
    # Holding each answer back keeps all three requests inside the server together.
    sim = await start_sim(faults=Faults(ack_before_http_rate=1.0, ack_before_http_delay=0.2))
    client = await make_client(sim)
    await asyncio.gather(*(client.post_record(client.record()) for _ in range(3)))
    assert sim.ledger.peak_in_flight == 3
    assert sim.ledger.peak_rate() == 3


async def test_ledger_endpoint_round_trips_through_json(sim: GwsSimulator, make_client: MakeClient) -> None:
    client = await make_client(sim, ready=True)
    await client.post_record(client.record(referenceId="r-json"))
    await client.post_record(client.record(referenceId="r-bad", phoneNumber="2125550199"))
    await client.collect(3)
    response = await client.http.get("/_sim/ledger")
    assert response.headers["content-type"].startswith("application/json")
    remote = Ledger.from_json(response.text)
    assert remote.acknowledged_refs() == {"r-json"} == sim.ledger.acknowledged_refs()
    assert remote.failed_refs() == {"r-bad"}
    assert remote.outcome("r-bad") == "failed"
    assert remote.login_count == 1 and remote.handshake_count == 1
    assert [e.seq for e in remote.entries] == [1, 2]


def test_threaded_simulator_serves_from_a_plain_thread() -> None:
    config = SimulatorConfig(users={"agent": "secret"}, long_poll_timeout=1.0)
    with (
        ThreadedSimulator(config).start() as threaded,
        httpx.Client(base_url=threaded.base_url) as http,
    ):
        me = http.get("/api/v2/me", auth=("agent", "secret"))
        assert me.status_code == 200
        device = http.get("/api/v2/me/devices").json()["devices"][0]["id"]
        threaded.set_faults(Faults(http_503_rate=1.0))
        body = {
            "operationName": "CancelRecord",
            "applicationId": 1,
            "campaignName": "C",
            "callingList": "L",
            "phoneNumber": "1",
            "devicePath": f"/devices/{device}",
            "referenceId": "t-1",
        }
        headers = {"X-CSRF-TOKEN": me.headers["X-CSRF-TOKEN"]}
        posted = http.post("/api/v2/me/outbound-records", json=body, headers=headers)
        assert posted.status_code == 503
        assert threaded.expire_all_sessions() == 1
        assert threaded.drop_all_clients() == 0
    # The ledger outlives the server, for tests that inspect it after a crash.
    assert threaded.ledger.requests_for("t-1")[0].fault == "503"
