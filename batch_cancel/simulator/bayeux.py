"""Bayeux 1.0 server side (long-polling only), free of HTTP: messages in, replies out.

The HTTP layer authenticates the request and hands the decoded message list to
``BayeuxHub.handle``; ``None`` back means "answer nothing, drop the connection", and
``SILENT`` "answer nothing and keep the connection open" (a half-open long poll).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from batch_cancel.simulator.channels import channel_matches, may_subscribe
from batch_cancel.simulator.config import SimulatorConfig
from batch_cancel.simulator.ledger import Ledger, PublishEvent

__all__ = ["SILENT", "BayeuxClient", "BayeuxHub", "Message"]

Message = dict[str, Any]
SILENT: Literal["silent"] = "silent"
_Wake = Literal["messages", "superseded", "dropped", "abort", "silent"]
_Item = tuple[Message, PublishEvent | None]


@dataclass(eq=False)
class BayeuxClient:
    client_id: str
    user: str
    session_id: str
    queue: deque[_Item]
    subscriptions: set[str] = field(default_factory=set)
    last_seen: float = field(default_factory=time.monotonic)
    busy: int = 0
    waiter: asyncio.Future[_Wake] | None = None
    gone: bool = False
    connected: bool = False

    def wake(self, why: _Wake) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(why)

    def wants(self, channel: str) -> bool:
        return any(channel_matches(p, channel) for p in self.subscriptions)


class BayeuxHub:
    """All CometD clients of the simulator and the queues of messages owed to them."""

    def __init__(self, config: SimulatorConfig, ledger: Ledger) -> None:
        self._config = config
        self._ledger = ledger
        self._clients: dict[str, BayeuxClient] = {}
        self._paused_until = 0.0

    # -- control ---------------------------------------------------------------------------

    @property
    def client_count(self) -> int:
        return len(self._clients)

    def drop_clients(self, where: Callable[[BayeuxClient], bool] = lambda c: True) -> int:
        """Forget clients; what was queued for them is lost, as in CometD."""
        doomed = [c for c in self._clients.values() if where(c)]
        for client in doomed:
            self._forget(client, "dropped")
        if doomed:
            self._ledger.clients_dropped()
        return len(doomed)

    def pause(self, seconds: float) -> None:
        """Behave as an unreachable endpoint for a while, cutting the held polls too."""
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)
        for client in self._clients.values():
            client.wake("abort")

    def go_silent(self) -> None:
        """The polls held now die silently: never answered, never reset; what was queued
        for their clients stays queued (a later poll on the same client gets it)."""
        for client in self._clients.values():
            client.wake("silent")

    def is_paused(self) -> bool:
        return time.monotonic() < self._paused_until

    def close(self) -> None:
        for client in self._clients.values():
            client.wake("abort")

    def sweep(self) -> None:
        """Forget clients that stopped polling more than max_interval ago."""
        now = time.monotonic()
        for client in [c for c in self._clients.values() if self._expired(c, now)]:
            self._forget(client, "dropped")

    def listeners(self, user: str, channel: str) -> int:
        """Live clients of ``user`` that a message on ``channel`` would reach now."""
        now = time.monotonic()
        return sum(
            1
            for c in self._clients.values()
            if c.user == user and not self._expired(c, now) and c.wants(channel)
        )

    def publish(self, user: str, items: Iterable[tuple[str, Any, PublishEvent | None]]) -> None:
        """Queue messages for every live client of ``user`` subscribed to their channel.

        All items land before any held poll runs, so they leave in one answer.
        """
        now = time.monotonic()
        batch = [({"channel": ch, "data": data}, ev) for ch, data, ev in items]
        for client in list(self._clients.values()):
            if client.user != user:
                continue
            if self._expired(client, now):
                self._forget(client, "dropped")
                continue
            took = False
            for message, event in batch:
                if client.wants(message["channel"]):
                    client.queue.append((message, event))
                    if event is not None:
                        event.queued_to += 1
                    took = True
            if took:
                client.wake("messages")

    # -- protocol --------------------------------------------------------------------------

    async def handle(
        self,
        messages: list[Any],
        *,
        user: str,
        session_id: str,
        still_connected: Callable[[], bool],
    ) -> list[Message] | Literal["silent"] | None:
        replies: list[Message] = []
        connect: Message | None = None
        for message in messages:
            if not isinstance(message, dict) or not isinstance(message.get("channel"), str):
                replies.append({"successful": False, "error": "400::invalid_message"})
            elif message["channel"] == "/meta/connect" and connect is None:
                connect = message
            else:
                replies.append(self._handle_one(message, user, session_id))
        if connect is None:
            return replies
        tail = await self._connect(connect, user, still_connected)
        return tail if tail is None or tail == SILENT else replies + tail

    def _handle_one(self, message: Message, user: str, session_id: str) -> Message:
        channel: str = message["channel"]
        if channel == "/meta/handshake":
            return self._handshake(message, user, session_id)
        client = self._lookup(message, user)
        if client is None:
            return _unknown_client(message)
        client.last_seen = time.monotonic()
        if channel == "/meta/subscribe":
            return self._subscribe(message, client, add=True)
        if channel == "/meta/unsubscribe":
            return self._subscribe(message, client, add=False)
        if channel == "/meta/disconnect":
            self._forget(client, "dropped")
            return _reply(message, True)
        if channel.startswith("/meta/"):
            return _reply(message, False, error="400::unknown_meta_channel")
        return _reply(message, False, error="403::publish_denied")

    def _handshake(self, message: Message, user: str, session_id: str) -> Message:
        types = message.get("supportedConnectionTypes")
        if isinstance(types, list) and "long-polling" not in types:
            return _reply(message, False, error="301::connection_type_unsupported")
        client = BayeuxClient(
            client_id=uuid.uuid4().hex,
            user=user,
            session_id=session_id,
            queue=deque(maxlen=self._config.client_queue_limit),
        )
        self._clients[client.client_id] = client
        self._ledger.count("handshakes")
        reply = _reply(message, True)
        reply.update(
            clientId=client.client_id,
            version="1.0",
            supportedConnectionTypes=["long-polling"],
            advice=self._advice(),
        )
        return reply

    def _subscribe(self, message: Message, client: BayeuxClient, *, add: bool) -> Message:
        wanted = message.get("subscription")
        channels = [wanted] if isinstance(wanted, str) else wanted
        if not isinstance(channels, list) or not channels or not all(isinstance(c, str) for c in channels):
            return _reply(message, False, error="400::missing_subscription")
        if add:
            denied = [c for c in channels if not may_subscribe(c)]
            if denied:
                reply = _reply(message, False, error=f"403:{denied[0]}:subscribe_denied")
                reply["subscription"] = wanted
                return reply
            client.subscriptions.update(channels)
            self._ledger.count("subscribes")
        else:
            client.subscriptions.difference_update(channels)
        reply = _reply(message, True)
        reply["subscription"] = wanted
        return reply

    async def _connect(
        self, message: Message, user: str, still_connected: Callable[[], bool]
    ) -> list[Message] | Literal["silent"] | None:
        client = self._lookup(message, user)
        if client is None:
            return [_unknown_client(message)]
        self._ledger.count("connects")
        # every poll counts as a sign of life, not only one that was held open
        client.last_seen = time.monotonic()
        client.wake("superseded")
        why: _Wake = "messages"
        timeout = self._poll_timeout(message)
        if not client.connected and not self._config.hold_first_connect:
            timeout = 0.0
        client.connected = True
        if not client.queue and timeout > 0:
            waiter: asyncio.Future[_Wake] = asyncio.get_running_loop().create_future()
            client.waiter = waiter
            client.busy += 1
            try:
                done, _ = await asyncio.wait({waiter}, timeout=timeout)
                why = waiter.result() if done else "messages"
            finally:
                client.busy -= 1
                client.last_seen = time.monotonic()
                if client.waiter is waiter:
                    client.waiter = None
        if why == "silent":
            return SILENT
        if why == "abort" or not still_connected():
            return None
        if why == "dropped" or client.gone:
            return [_unknown_client(message)]
        delivered: list[Message] = []
        if why == "messages":
            delivered = self._drain(client)
        reply = _reply(message, True)
        reply["advice"] = self._advice()
        return [*delivered, reply]

    # -- helpers ---------------------------------------------------------------------------

    def _drain(self, client: BayeuxClient) -> list[Message]:
        queue = client.queue
        items = list(queue)
        queue.clear()
        self._ledger.mark_delivered(ev for _, ev in items if ev is not None)
        return [m for m, _ in items]

    def _lookup(self, message: Message, user: str) -> BayeuxClient | None:
        client = self._clients.get(str(message.get("clientId")))
        if client is None or client.user != user:
            return None
        if self._expired(client, time.monotonic()):
            self._forget(client, "dropped")
            return None
        return client

    def _expired(self, client: BayeuxClient, now: float) -> bool:
        return client.busy == 0 and now - client.last_seen > self._config.max_interval

    def _forget(self, client: BayeuxClient, why: _Wake) -> None:
        client.gone = True
        client.queue.clear()
        self._clients.pop(client.client_id, None)
        client.wake(why)

    def _poll_timeout(self, message: Message) -> float:
        advice = message.get("advice")
        if isinstance(advice, dict):
            asked = advice.get("timeout")
            if isinstance(asked, int | float) and not isinstance(asked, bool) and asked >= 0:
                return float(asked) / 1000.0
        return self._config.long_poll_timeout

    def _advice(self) -> Message:
        advice: Message = {"reconnect": "retry", "interval": 0}
        if self._config.advise_timeout:
            advice["timeout"] = int(self._config.long_poll_timeout * 1000)
        return advice


def _reply(message: Message, successful: bool, *, error: str | None = None) -> Message:
    reply: Message = {"channel": message.get("channel"), "successful": successful}
    if "id" in message:
        reply["id"] = message["id"]
    if "clientId" in message:
        reply["clientId"] = message["clientId"]
    if error is not None:
        reply["error"] = error
    return reply


def _unknown_client(message: Message) -> Message:
    reply = _reply(message, False, error="402::unknown_client")
    reply["advice"] = {"reconnect": "handshake", "interval": 0}
    if "subscription" in message:
        reply["subscription"] = message["subscription"]
    return reply
