"""Every fault knob does what it says, and the ledger says so too."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from simhelpers import MakeClient, StartSim

from batch_cancel.simulator import Faults, GwsSimulator


async def test_http_503_then_switched_off_at_run_time(start_sim: StartSim, make_client: MakeClient) -> None:
    sim = await start_sim(faults=Faults(seed=1, http_503_rate=1.0))
    client = await make_client(sim, ready=True)
    response = await client.post_record(client.record(referenceId="r-503"))
    assert response.status_code == 503
    assert response.json() == {
        "statusCode": 4,
        "statusMessage": "Voice service is not available at this time",
    }
    sim.set_faults(Faults())
    assert (await client.post_record(client.record(referenceId="r-ok"))).status_code == 200
    first, second = sim.ledger.entries
    assert (first.fault, first.http_status, first.processed) == ("503", 503, False)
    assert (second.fault, second.processed) == (None, True)
    assert sim.ledger.outcome("r-503") is None


@pytest.mark.parametrize(("retry_after", "header"), [(2.0, "2"), (0.5, "0.5"), (None, None)])
async def test_http_429_with_or_without_retry_after(
    start_sim: StartSim, make_client: MakeClient, retry_after: float | None, header: str | None
) -> None:
    sim = await start_sim(faults=Faults(http_429_rate=1.0, retry_after=retry_after))
    client = await make_client(sim)
    response = await client.post_record(client.record())
    assert response.status_code == 429
    assert response.headers.get("Retry-After") == header
    [entry] = sim.ledger.entries
    assert (entry.fault, entry.http_status, entry.processed) == ("429", 429, False)


async def test_reset_before_processing_does_nothing(start_sim: StartSim, make_client: MakeClient) -> None:
    sim = await start_sim(faults=Faults(reset_before_rate=1.0))
    client = await make_client(sim, ready=True)
    with pytest.raises(httpx.TransportError):
        await client.post_record(client.record(referenceId="r-rb"))
    [entry] = sim.ledger.requests_for("r-rb")
    assert (entry.fault, entry.http_status, entry.processed) == ("reset_before", None, False)
    assert [r["channel"] for r in await client.connect(timeout_ms=200)] == ["/meta/connect"]
    assert sim.ledger.events == []


async def test_reset_after_processing_still_publishes_the_outcome(
    start_sim: StartSim, make_client: MakeClient
) -> None:
    sim = await start_sim(faults=Faults(reset_after_rate=1.0))
    client = await make_client(sim, ready=True)
    with pytest.raises(httpx.TransportError):
        await client.post_record(client.record(referenceId="r-ra"))
    [entry] = sim.ledger.requests_for("r-ra")
    assert (entry.fault, entry.http_status, entry.processed) == ("reset_after", None, True)
    events = await client.collect(2)
    assert events[0]["data"]["referenceId"] == "r-ra"
    assert sim.ledger.acknowledged_refs() == {"r-ra"}


async def test_dropped_ack_is_never_delivered(start_sim: StartSim, make_client: MakeClient) -> None:
    sim = await start_sim(faults=Faults(ack_drop_rate=1.0))
    client = await make_client(sim, ready=True)
    assert (await client.post_record(client.record(referenceId="r-drop"))).status_code == 200
    assert [r["channel"] for r in await client.connect(timeout_ms=200)] == ["/meta/connect"]
    assert sim.ledger.outcome("r-drop") == "cancelled"
    assert sim.ledger.acknowledged_refs() == set()
    assert {(e.kind, e.dropped, e.delivered_to) for e in sim.ledger.events} == {
        ("ack", True, 0),
        ("device_event", True, 0),
    }


async def test_duplicated_ack_arrives_twice(start_sim: StartSim, make_client: MakeClient) -> None:
    sim = await start_sim(faults=Faults(ack_duplicate_rate=1.0))
    client = await make_client(sim, ready=True)
    await client.post_record(client.record(referenceId="r-dup"))
    events = await client.collect(4)
    acks = [e for e in events if e["channel"] == "/v2/me/outbound"]
    assert [a["data"]["referenceId"] for a in acks] == ["r-dup", "r-dup"]
    ack_events = [e for e in sim.ledger.events if e.kind == "ack"]
    assert [e.duplicate for e in ack_events] == [False, True]
    assert all(e.delivered_to == 1 for e in ack_events)


async def test_ack_delay_holds_the_outcome_back(start_sim: StartSim, make_client: MakeClient) -> None:
    sim = await start_sim(faults=Faults(ack_delay=(0.3, 0.3)))
    client = await make_client(sim, ready=True)
    started = time.monotonic()
    await client.post_record(client.record(referenceId="r-late"))
    assert [r["channel"] for r in await client.connect(timeout_ms=150)] == ["/meta/connect"]
    events = await client.collect(2, timeout_ms=1000)
    assert events[0]["data"]["referenceId"] == "r-late"
    assert time.monotonic() - started >= 0.3
    [ack] = [e for e in sim.ledger.events if e.kind == "ack"]
    assert ack.t - sim.ledger.requests_for("r-late")[0].t_start >= 0.29


async def test_ack_before_http_answer(start_sim: StartSim, make_client: MakeClient) -> None:
    sim = await start_sim(faults=Faults(ack_before_http_rate=1.0, ack_before_http_delay=0.1))
    client = await make_client(sim, ready=True)
    poll = asyncio.create_task(client.connect(timeout_ms=3000))
    await asyncio.sleep(0.05)
    post = asyncio.create_task(client.post_record(client.record(referenceId="r-early")))
    done, _ = await asyncio.wait({poll, post}, return_when=asyncio.FIRST_COMPLETED)
    assert done == {poll}
    assert poll.result()[0]["data"]["referenceId"] == "r-early"
    assert (await post).status_code == 200
    [entry] = sim.ledger.requests_for("r-early")
    assert entry.fault == "ack_before_http"
    [ack] = [e for e in sim.ledger.events if e.kind == "ack"]
    assert entry.t_end is not None and ack.t < entry.t_end


async def test_session_expires_after_every_n_requests(start_sim: StartSim, make_client: MakeClient) -> None:
    sim = await start_sim(faults=Faults(session_expiry_every=2))
    client = await make_client(sim)
    statuses = [(await client.post_record(client.record())).status_code for _ in range(3)]
    assert statuses == [200, 200, 401]
    assert sim.ledger.entries[-1].fault == "session_expired"
    assert sim.ledger.entries[-1].status_code == 20
    await client.login()
    statuses = [(await client.post_record(client.record())).status_code for _ in range(3)]
    assert statuses == [200, 200, 401]
    assert sim.ledger.login_count == 2


async def test_csrf_token_rotates_after_every_n_requests(
    start_sim: StartSim, make_client: MakeClient
) -> None:
    sim = await start_sim(faults=Faults(csrf_invalidate_every=2))
    client = await make_client(sim)
    old_token = client.token
    statuses = [(await client.post_record(client.record())).status_code for _ in range(3)]
    assert statuses == [200, 200, 403]
    assert sim.ledger.entries[-1].fault == "csrf"
    refreshed = await client.http.get("/api/v2/me")
    assert refreshed.headers["X-CSRF-TOKEN"] != old_token
    client.token = refreshed.headers["X-CSRF-TOKEN"]
    assert (await client.post_record(client.record())).status_code == 200


async def test_cometd_clients_dropped_after_every_n_requests(
    start_sim: StartSim, make_client: MakeClient
) -> None:
    sim = await start_sim(faults=Faults(drop_cometd_every=2))
    client = await make_client(sim, ready=True)
    await client.post_record(client.record(referenceId="r-1"))
    assert len(await client.collect(2)) == 2
    assert sim.cometd_client_count == 1
    await client.post_record(client.record(referenceId="r-2"))
    [reply] = await client.connect(timeout_ms=0)
    assert reply["error"] == "402::unknown_client"
    assert sim.ledger.client_drop_count == 1
    assert "r-2" not in sim.ledger.acknowledged_refs()


async def _fault_pattern(sim: GwsSimulator, make_client: MakeClient) -> list[str | None]:
    client = await make_client(sim)
    for _ in range(20):
        await client.post_record(client.record())
    return [e.fault for e in sim.ledger.entries]


async def test_faults_are_deterministic_under_the_seed(start_sim: StartSim, make_client: MakeClient) -> None:
    def faults(seed: int) -> Faults:
        return Faults(seed=seed, http_503_rate=0.3, http_429_rate=0.3)

    first = await _fault_pattern(await start_sim(faults=faults(7)), make_client)
    again = await _fault_pattern(await start_sim(faults=faults(7)), make_client)
    other = await _fault_pattern(await start_sim(faults=faults(8)), make_client)
    assert first == again
    assert first != other
    assert {"503", "429", None} <= set(first)


def test_fault_values_are_validated() -> None:
    with pytest.raises(ValueError, match="http_503_rate"):
        Faults(http_503_rate=1.5)
    with pytest.raises(ValueError, match="ack_delay"):
        Faults(ack_delay=(2.0, 1.0))
    with pytest.raises(ValueError, match="session_expiry_every"):
        Faults(session_expiry_every=-1)
