"""Our Python CometD client against the CometD project's own Node server (cometd-nodejs-server).

The server (cometd_server.cjs) is the reference Bayeux implementation, long-polling only; it finds
sessions by its BAYEUX_BROWSER cookie. Its control API publishes ack-shaped messages and simulates a
restart (every Bayeux session forgotten, long polls in flight cut).

What is proved here:

* raw aiocometd-noloop works against it once given: a URL whose host is a name (``localhost``) or a
  cookie jar that accepts IP hosts, and ``advice: {timeout: 0}`` on the first ``/meta/connect``
  after a handshake (else ``open()`` sits out a whole long poll);
* after a session loss the server answers ``402::session_unknown`` with advice ``handshake``, and
  aiocometd-noloop re-handshakes and re-subscribes *by itself* (the subscribe rides on the first
  ``/meta/connect`` after the new handshake), so a message published afterwards arrives;
* the same through our own client, ``batch_cancel.gws.ack_channel.AckChannel`` (``gws/bayeux.py``
  over ``gws/long_poll.py``), including its own cookies (IP host 127.0.0.1), its headers (a
  JSESSIONID cookie sent next to BAYEUX_BROWSER) and its up/down signal. Raw aiocometd-noloop stays
  here as a second, independent peer: what it needs is what ours does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import pytest
from aiocometd_noloop import Client, ConnectionType
from aiocometd_noloop.exceptions import ServerError
from aiocometd_noloop.extensions import Extension

if TYPE_CHECKING:
    from conftest import CometDNodeServer, ServerStarter

pytestmark = [pytest.mark.interop, pytest.mark.timeout(30)]

OUTBOUND = "/v2/me/outbound"
Message = dict[str, Any]


def ack(reference_id: str) -> Message:
    """A GWS CancelRecord acknowledgement, as documented (data part of the CometD message)."""
    return {
        "messageType": "OutboundRecordMessage",
        "notificationType": "RecordCancelAcknowledge",
        "referenceId": reference_id,
        "record": {
            "devicePath": "/devices/dev-1",
            "callingList": "CL_Interop",
            "applicationId": 101,
            "campaignName": "Interop",
        },
    }


class FirstConnectNoWait(Extension):  # type: ignore[misc]
    """Sends ``advice: {timeout: 0}`` on the first /meta/connect after each handshake.

    The CometD JavaScript client does the same; without it the server holds that first poll for
    its whole long-poll timeout and aiocometd's ``open()`` waits for it. Also records every reply
    that carries an ``error`` so the test can show what the client was told.
    """

    def __init__(self) -> None:
        self.after_handshake = False
        self.errors: list[Message] = []
        self.sent: list[list[str]] = []

    async def outgoing(self, payload: list[Message], headers: dict[str, str]) -> None:
        # aiocometd uses a str Enum (MetaChannel) for meta channels: keep the plain value.
        self.sent.append([str(getattr(m.get("channel"), "value", m.get("channel"))) for m in payload])
        for message in payload:
            if message.get("channel") == "/meta/handshake":
                self.after_handshake = True
            elif message.get("channel") == "/meta/connect" and self.after_handshake:
                message["advice"] = {"timeout": 0}
                self.after_handshake = False

    async def incoming(self, payload: list[Message], headers: Any = None) -> None:
        self.errors.extend(m for m in payload if "error" in m)


@pytest.fixture(autouse=True)
def _quiet_aiocometd_close(caplog: pytest.LogCaptureFixture) -> None:
    # close() logs a cancelled-task traceback (cosmetic, see the protocol notes).
    caplog.set_level(logging.CRITICAL, logger="asyncio")


@contextlib.asynccontextmanager
async def open_client(url: str, extension: FirstConnectNoWait | None = None) -> AsyncIterator[Client]:
    client = Client(
        url,
        ConnectionType.LONG_POLLING,
        extensions=[extension] if extension else None,
        connection_timeout=5,
    )
    try:
        await asyncio.wait_for(client.open(), 8)
        yield client
    finally:
        await close_client(client)


async def close_client(client: Client) -> None:
    """Close *client*, also when its open() failed.

    After a failed open() aiocometd's close() is a no-op (the client counts as closed) while the
    transport keeps following the server's advice in a background task: against a 402 with
    ``reconnect: handshake, interval: 0`` that is a handshake/connect loop at hundreds of requests
    a second. Stopping it takes the transport's disconnect() and closing the HTTP session.
    """
    with contextlib.suppress(Exception):
        if not client.closed:
            await asyncio.wait_for(client.close(), 3)
        elif client._transport is not None:
            await asyncio.wait_for(client._transport.disconnect(), 3)
            await client._close_http_session()


async def receive_ref(client: Client, reference_id: str, within: float) -> Message:
    """The next message on /v2/me/outbound whose data carries *reference_id*."""
    async with asyncio.timeout(within):
        while True:
            message: Message = await client.receive()
            if message.get("channel") == OUTBOUND and (
                message.get("data", {}).get("referenceId") == reference_id
            ):
                return message


async def test_raw_aiocometd_receives_publish_and_recovers_from_session_loss(
    cometd_server: CometDNodeServer,
) -> None:
    watch = FirstConnectNoWait()
    started = time.monotonic()
    async with open_client(cometd_server.bayeux_url("localhost"), watch) as client:
        open_seconds = time.monotonic() - started
        assert open_seconds < 2, f"open() took {open_seconds:.1f} s: advice timeout 0 not honoured"

        await asyncio.wait_for(client.subscribe(OUTBOUND), 5)
        assert await cometd_server.publish(ack("r1")) == 1
        message = await receive_ref(client, "r1", within=5)
        assert message["data"]["notificationType"] == "RecordCancelAcknowledge"

        # Server restart: every session forgotten, the long poll in flight cut.
        assert await cometd_server.drop() == 1
        # No subscribe() call from here on: the client must recover on its own.
        await cometd_server.wait_for_subscribers(generation=1, count=1, within=8)
        assert await cometd_server.publish(ack("r2")) == 1
        message = await receive_ref(client, "r2", within=5)
        assert message["data"]["referenceId"] == "r2"
        assert OUTBOUND in client.subscriptions

    # What the client was told, and how it recovered.
    assert {e["channel"]: e["error"] for e in watch.errors} == {"/meta/connect": "402::session_unknown"}
    refused = next(e for e in watch.errors if e["channel"] == "/meta/connect")
    assert refused["advice"]["reconnect"] == "handshake"
    handshake_at = [i for i, chans in enumerate(watch.sent) if chans == ["/meta/handshake"]]
    assert len(handshake_at) == 2, watch.sent
    # The re-subscription rides on the first /meta/connect after the new handshake.
    assert watch.sent[handshake_at[1] + 1] == ["/meta/connect", "/meta/subscribe"], watch.sent

    stats = await cometd_server.stats()
    assert stats["handshakes"] == 2
    assert [e["error"] for e in stats["errors"]] == ["402::session_unknown"]
    # Every request after the first handshake carried the BAYEUX_BROWSER cookie.
    assert all("BAYEUX_BROWSER=" in (r["cookie"] or "") for r in stats["requests"][1:])


async def test_raw_aiocometd_with_ip_host_loses_its_session_cookie(
    cometd_server: CometDNodeServer,
) -> None:
    """aiohttp's default cookie jar ignores cookies from 127.0.0.1: the first connect gets 402.

    Also shows what a failed open() leaves behind: a background handshake/connect loop (the
    server advises ``reconnect: handshake, interval: 0``) that only close_client() stops.
    """
    client = Client(
        cometd_server.bayeux_url("127.0.0.1"),
        ConnectionType.LONG_POLLING,
        extensions=[FirstConnectNoWait()],
    )
    try:
        with pytest.raises(ServerError) as refused:
            await asyncio.wait_for(client.open(), 8)
        response = refused.value.response
        assert response["channel"] == "/meta/connect"
        assert response["error"] == "402::session_unknown"
        assert response["advice"] == {"reconnect": "handshake", "interval": 0}
        first = await cometd_server.stats()
        assert first["requests"][1]["channels"] == ["/meta/connect"]
        assert first["requests"][1]["cookie"] is None

        assert client.closed  # so aiocometd's own close() would do nothing ...
        await asyncio.sleep(0.3)
        looping = (await cometd_server.stats())["handshakes"]
        assert looping > 5, "expected aiocometd to keep re-handshaking after the failed open()"
    finally:
        await close_client(client)
    stopped = (await cometd_server.stats())["handshakes"]
    await asyncio.sleep(0.3)
    assert (await cometd_server.stats())["handshakes"] == stopped


async def test_raw_aiocometd_open_waits_a_long_poll_without_the_advice(
    cometd_server_with: ServerStarter,
) -> None:
    """Documents why the advice extension exists (with a 1.5 s long-poll timeout)."""
    async with cometd_server_with(long_poll_ms=1500) as server:
        started = time.monotonic()
        async with open_client(server.bayeux_url("localhost")):
            waited = time.monotonic() - started
        assert waited >= 1.4, f"open() returned in {waited:.2f} s"

        started = time.monotonic()
        async with open_client(server.bayeux_url("localhost"), FirstConnectNoWait()):
            quick = time.monotonic() - started
        assert quick < 1.0, f"open() with advice timeout 0 took {quick:.2f} s"


async def test_ack_channel_against_cometd_node_server(cometd_server: CometDNodeServer) -> None:
    """batch-cancel's AckChannel: subscribe, receive, survive a session loss, receive again."""
    from batch_cancel.gws import ack_channel as notifications

    received: list[Message] = []
    states: list[tuple[bool, str]] = []
    channel = notifications.AckChannel(
        cometd_server.bayeux_url("127.0.0.1"),  # an IP host: AckChannel's own jar must cope
        channels=(OUTBOUND,),
        headers=lambda: {"Cookie": "JSESSIONID=interop-session"},
        on_messages=received.extend,
        on_state=lambda up, reason: states.append((up, reason)),
    )

    async def seen(reference_id: str, within: float) -> Message:
        def find() -> Message | None:
            return next(
                (m for m in received if m.get("data", {}).get("referenceId") == reference_id),
                None,
            )

        found: Message = await poll(find, within, f"message {reference_id} not delivered: {received}")
        return found

    started = time.monotonic()
    await channel.start(timeout=5)
    try:
        assert time.monotonic() - started < 2
        assert channel.up.is_set()
        assert await cometd_server.publish(ack("r1")) == 1
        assert (await seen("r1", 5))["data"]["notificationType"] == "RecordCancelAcknowledge"

        assert await cometd_server.drop() == 1
        await poll(
            lambda: channel.handshakes >= 2 and channel.up.is_set(),
            8,
            f"AckChannel did not come back: {states}",
        )
        await cometd_server.wait_for_subscribers(generation=1, count=1, within=5)
        assert await cometd_server.publish(ack("r2")) == 1
        await seen("r2", 5)
    finally:
        await channel.close()

    assert [up for up, _ in states][:3] == [True, False, True], states
    assert channel.reconnects >= 1
    stats = await cometd_server.stats()
    assert [e["error"] for e in stats["errors"]] == ["402::session_unknown"]
    bayeux_cookies = [r["cookie"] or "" for r in stats["requests"]]
    # Our header cookie on every request; the server's own cookie once it was set.
    assert all("JSESSIONID=interop-session" in c for c in bayeux_cookies), bayeux_cookies
    assert all("BAYEUX_BROWSER=" in c for c in bayeux_cookies[1:]), bayeux_cookies


async def poll(check: Callable[[], Any], within: float, failure: str) -> Any:
    """Call *check* every 20 ms until it returns something truthy; fail after *within* s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if result:
            return result
        if loop.time() > deadline:
            pytest.fail(failure)
        await asyncio.sleep(0.02)


async def test_ack_channel_failed_start_leaves_nothing_running(
    cometd_server: CometDNodeServer,
) -> None:
    """A start() that cannot subscribe must raise and must not keep polling the server.

    The server is made to lose its session cookie, so every handshake succeeds and every
    /meta/connect is refused with 402 (advice: handshake, interval 0).
    """
    from batch_cancel.exceptions import NotificationChannelLost
    from batch_cancel.gws import ack_channel as notifications

    await cometd_server.strip_cookie(True)
    channel = notifications.AckChannel(
        cometd_server.bayeux_url("127.0.0.1"),
        channels=(OUTBOUND,),
        headers=dict,
        on_messages=lambda messages: None,
    )
    try:
        with pytest.raises(NotificationChannelLost, match="402::session_unknown"):
            await channel.start(timeout=2)
        await channel.close()
        settled = (await cometd_server.stats())["handshakes"]
        await asyncio.sleep(0.5)
        after = (await cometd_server.stats())["handshakes"]
        assert after == settled, f"{after - settled} handshakes in 0.5 s after start() failed"
    finally:
        await channel.close()  # idempotent: stops the poll loop whatever start() did
