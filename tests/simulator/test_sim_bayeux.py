"""The Bayeux long-polling endpoint, spoken to with raw messages."""

from __future__ import annotations

import asyncio
import time

import httpx
from simhelpers import NOTIFICATIONS, GwsTestClient, MakeClient, StartSim

from batch_cancel.simulator import GwsSimulator


async def test_handshake_answers_client_id_and_advice(sim: GwsSimulator, make_client: MakeClient) -> None:
    client = await make_client(sim)
    reply = await client.handshake()
    assert reply["successful"] is True
    assert reply["version"] == "1.0"
    assert reply["supportedConnectionTypes"] == ["long-polling"]
    assert reply["advice"] == {"reconnect": "retry", "interval": 0, "timeout": 2000}
    assert reply["clientId"]
    assert sim.ledger.handshake_count == 1


async def test_bayeux_needs_a_live_session_cookie(sim: GwsSimulator) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url) as http:
        message = {"channel": "/meta/handshake", "version": "1.0"}
        response = await http.post(NOTIFICATIONS, json=[message])
        assert response.status_code == 401
        assert response.json()["statusCode"] == 20
    assert sim.ledger.handshake_count == 0


async def test_connect_with_timeout_zero_is_answered_at_once(
    sim: GwsSimulator, client: GwsTestClient
) -> None:
    started = time.monotonic()
    [reply] = await client.connect(timeout_ms=0)
    assert reply["channel"] == "/meta/connect" and reply["successful"]
    assert time.monotonic() - started < 0.5  # the server's own timeout is 2 s


async def test_first_connect_is_held_unless_configured_otherwise(
    start_sim: StartSim, make_client: MakeClient
) -> None:
    holding = await make_client(await start_sim(long_poll_timeout=0.3))
    await holding.handshake()
    started = time.monotonic()
    await holding.connect()
    assert time.monotonic() - started >= 0.25

    answering = await make_client(await start_sim(hold_first_connect=False))
    await answering.handshake()
    started = time.monotonic()
    await answering.connect()
    assert time.monotonic() - started < 0.5  # its long poll is 2 s
    second = asyncio.create_task(answering.connect())
    await asyncio.sleep(0.3)
    assert not second.done()
    second.cancel()


async def test_held_poll_is_answered_when_a_message_arrives(sim: GwsSimulator, client: GwsTestClient) -> None:
    poll = asyncio.create_task(client.connect(timeout_ms=5000))
    await asyncio.sleep(0.1)
    assert not poll.done()
    started = time.monotonic()
    assert (await client.post_record(client.record(referenceId="r-held"))).status_code == 200
    replies = await asyncio.wait_for(poll, 2.0)
    assert time.monotonic() - started < 1.0
    # Both channels' messages come in the same answer, before the connect reply.
    assert [r["channel"] for r in replies] == ["/v2/me/outbound", "/me/internal", "/meta/connect"]
    assert replies[0]["data"]["referenceId"] == "r-held"


async def test_held_poll_ends_with_the_timeout_when_nothing_happens(
    sim: GwsSimulator, client: GwsTestClient
) -> None:
    started = time.monotonic()
    [reply] = await client.connect(timeout_ms=300)
    elapsed = time.monotonic() - started
    assert reply["successful"] and 0.25 < elapsed < 1.5


async def test_newer_connect_releases_the_older_one(sim: GwsSimulator, client: GwsTestClient) -> None:
    older = asyncio.create_task(client.connect(timeout_ms=5000))
    await asyncio.sleep(0.1)
    newer = asyncio.create_task(client.connect(timeout_ms=5000))
    [released] = await asyncio.wait_for(older, 1.0)
    assert released["successful"] is True
    await client.post_record(client.record(referenceId="r-newer"))
    replies = await asyncio.wait_for(newer, 2.0)
    assert replies[0]["data"]["referenceId"] == "r-newer"


async def test_unknown_client_gets_402_and_rehandshakes(sim: GwsSimulator, client: GwsTestClient) -> None:
    client.client_id = "not-a-client"
    [reply] = await client.connect(timeout_ms=0)
    assert reply == {
        "channel": "/meta/connect",
        "successful": False,
        "error": "402::unknown_client",
        "advice": {"reconnect": "handshake", "interval": 0},
        "id": reply["id"],
        "clientId": "not-a-client",
    }
    assert (await client.handshake())["successful"]
    assert all(r["successful"] for r in await client.subscribe("/v2/me/outbound"))
    await client.connect(timeout_ms=0)
    await client.post_record(client.record(referenceId="r-again"))
    [event] = await client.collect(1)
    assert event["data"]["referenceId"] == "r-again"


async def test_drop_all_clients_answers_held_poll_with_402_and_loses_queue(
    sim: GwsSimulator, client: GwsTestClient
) -> None:
    poll = asyncio.create_task(client.connect(timeout_ms=5000))
    await asyncio.sleep(0.1)
    assert sim.drop_all_clients() == 1
    [reply] = await asyncio.wait_for(poll, 1.0)
    assert reply["error"] == "402::unknown_client"
    assert reply["advice"]["reconnect"] == "handshake"
    # What is published while the client is unknown is lost, not replayed.
    await client.post_record(client.record(referenceId="r-lost"))
    await asyncio.sleep(0.05)
    await client.handshake()
    await client.subscribe("/v2/me/outbound")
    assert [r["channel"] for r in await client.connect(timeout_ms=200)] == ["/meta/connect"]
    assert "r-lost" not in sim.ledger.acknowledged_refs()
    assert sim.ledger.outcome("r-lost") == "cancelled"


async def test_client_expires_after_max_interval_without_polls(
    start_sim: StartSim, make_client: MakeClient
) -> None:
    sim = await start_sim(max_interval=0.2)
    client = await make_client(sim, ready=True)
    await asyncio.sleep(0.4)
    [reply] = await client.connect(timeout_ms=0)
    assert reply["error"] == "402::unknown_client"


async def test_wildcard_subscriptions(sim: GwsSimulator, make_client: MakeClient) -> None:
    one_level = await make_client(sim)
    await one_level.handshake()
    await one_level.subscribe("/v2/me/*")
    deep = await make_client(sim)
    await deep.handshake()
    await deep.subscribe("/**")
    internal = await make_client(sim)
    await internal.handshake()
    await internal.subscribe("/me/*")
    for c in (one_level, deep, internal):
        await c.connect(timeout_ms=0)

    await one_level.post_record(one_level.record(referenceId="r-wild"))
    assert [e["channel"] for e in await one_level.collect(1, rounds=1)] == ["/v2/me/outbound"]
    assert [e["channel"] for e in await deep.collect(2, rounds=2)] == [
        "/v2/me/outbound",
        "/me/internal",
    ]
    assert [e["channel"] for e in await internal.collect(1, rounds=1)] == ["/me/internal"]


async def test_subscribe_list_unsubscribe_and_denials(sim: GwsSimulator, make_client: MakeClient) -> None:
    client = await make_client(sim)
    await client.handshake()
    reply = (
        await client.bayeux(
            {"channel": "/meta/subscribe", "subscription": ["/v2/me/outbound", "/me/internal"]}
        )
    ).json()[0]
    assert reply["successful"] and reply["subscription"] == ["/v2/me/outbound", "/me/internal"]
    for channel in ("/v2/users/someone", "/meta/connect", "/service/x", "/v2/*"):
        [denied] = await client.subscribe(channel)
        assert denied["successful"] is False, channel
        assert denied["error"].startswith("403:"), denied
    unsub = (await client.bayeux({"channel": "/meta/unsubscribe", "subscription": "/me/internal"})).json()[0]
    assert unsub["successful"]
    await client.connect(timeout_ms=0)
    await client.post_record(client.record())
    assert [e["channel"] for e in await client.collect(1, rounds=1)] == ["/v2/me/outbound"]


async def test_publishing_from_a_client_is_denied(sim: GwsSimulator, client: GwsTestClient) -> None:
    [reply] = (await client.bayeux({"channel": "/v2/me/outbound", "data": {"x": 1}})).json()
    assert reply["successful"] is False
    assert reply["error"] == "403::publish_denied"


async def test_messages_go_only_to_the_publishing_users_clients(
    sim: GwsSimulator, make_client: MakeClient
) -> None:
    mine = await make_client(sim, ready=True)
    theirs = await make_client(sim, ready=True, user="other", password="pw2")
    await mine.post_record(mine.record(referenceId="r-mine"))
    assert len(await mine.collect(2)) == 2
    assert [r["channel"] for r in await theirs.connect(timeout_ms=200)] == ["/meta/connect"]
    # Another user's session cannot use this user's clientId either.
    theirs.client_id = mine.client_id
    [reply] = await theirs.connect(timeout_ms=0)
    assert reply["error"] == "402::unknown_client"


async def test_pause_cometd_answers_503_then_recovers(sim: GwsSimulator, client: GwsTestClient) -> None:
    poll = asyncio.create_task(client.bayeux({"channel": "/meta/connect", "advice": {"timeout": 5000}}))
    await asyncio.sleep(0.1)
    sim.pause_cometd(0.3)
    held = await asyncio.wait_for(poll, 1.0)
    assert held.status_code == 503
    assert (await client.bayeux({"channel": "/meta/connect"})).status_code == 503
    # REST is not affected by a CometD outage.
    assert (await client.post_record(client.record(referenceId="r-pause"))).status_code == 200
    await asyncio.sleep(0.35)
    events = await client.collect(2)
    assert [e["data"].get("referenceId") for e in events][:1] == ["r-pause"]


async def test_disconnect_forgets_the_client(sim: GwsSimulator, client: GwsTestClient) -> None:
    [reply] = (await client.bayeux({"channel": "/meta/disconnect"})).json()
    assert reply["successful"]
    [after] = await client.connect(timeout_ms=0)
    assert after["error"] == "402::unknown_client"
    assert sim.cometd_client_count == 0
