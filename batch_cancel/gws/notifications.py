"""The CometD (Bayeux long-polling) channel that carries CancelRecord outcomes.

Built on ``aiocometd-noloop`` with three fixes the protocol notes call for:

* a cookie jar that keeps cookies from IP-address hosts (CometD servers that find
  their session by cookie, like the CometD project's own, answer 402 otherwise);
* ``advice: {timeout: 0}`` on the first ``/meta/connect`` after each handshake, so
  opening (and re-opening) takes milliseconds instead of a whole long poll;
* a ``402`` without advice is treated as "handshake again" so a lost session is
  always re-established and re-subscribed.

:class:`AckChannel` tells the sender, through :attr:`AckChannel.up`, whether the
subscription is known to be live: a request sent while it is not would have its
acknowledgement lost, so the sender waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from aiocometd_noloop import Client, ConnectionType
from aiocometd_noloop.extensions import Extension

from batch_cancel.exceptions import NotificationChannelLost

__all__ = ["AckChannel"]

log = logging.getLogger("batch_cancel.cometd")

Message = dict[str, Any]


class _Client(Client):  # type: ignore[misc]
    """aiocometd's client with a cookie jar that accepts IP-address hosts."""

    def __init__(self, *args: Any, verify_tls: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._verify_tls = verify_tls

    async def _get_http_session(self) -> aiohttp.ClientSession:
        session: aiohttp.ClientSession | None = self.__dict__.get("_http_session")
        if session is None:
            session = aiohttp.ClientSession(
                cookie_jar=aiohttp.CookieJar(unsafe=True),
                json_serialize=self._json_dumps,
                connector=aiohttp.TCPConnector(ssl=bool(self._verify_tls)),
            )
            self._http_session = session
        return session

    def forget_cookies(self, names: set[str]) -> None:
        """aiohttp lets its jar override a Cookie header: drop the jar's copies of the
        session cookies we send ourselves, or a stale JSESSIONID would win after a re-login."""
        session: aiohttp.ClientSession | None = self.__dict__.get("_http_session")
        if session is not None and names:
            session.cookie_jar.clear(lambda morsel: morsel.key in names)

    @property
    def queue(self) -> asyncio.Queue[Message] | None:
        return self._incoming_queue  # type: ignore[no-any-return]

    @property
    def transport(self) -> Any:
        return self._transport


def _cookie_names(header: str) -> set[str]:
    return {part.split("=", 1)[0].strip() for part in header.split(";") if "=" in part}


class _Watch(Extension):  # type: ignore[misc]
    """Adds our session headers and follows the subscription's life."""

    def __init__(self, channel: AckChannel) -> None:
        self._channel = channel
        self._fresh_handshake = False
        self._failures = 0
        self._timeout: float | None = None

    async def outgoing(self, payload: list[Message], headers: dict[str, str]) -> None:
        fresh = dict(self._channel._headers())
        headers.update(fresh)
        if "Cookie" in fresh:
            self._channel._client.forget_cookies(_cookie_names(fresh["Cookie"]))
        for message in payload:
            name = message.get("channel")
            if name == "/meta/handshake":
                self._fresh_handshake = True
            elif name == "/meta/connect" and self._fresh_handshake:
                # the first poll after a handshake answers at once (as the CometD
                # JavaScript client does), so subscriptions are confirmed quickly
                message["advice"] = {"timeout": 0}
                self._fresh_handshake = False

    async def incoming(self, payload: list[Any], headers: Any = None) -> None:
        for message in payload:
            if not isinstance(message, dict):
                continue  # an error body that is not Bayeux (e.g. HTTP 401 JSON)
            self._channel._observe(message)
            refused = message.get("channel") == "/meta/subscribe" and not message.get("successful")
            if refused and str(message.get("error", "")).startswith("402"):
                # aiocometd forgets a channel whose subscribe was refused, so after the
                # next handshake it would not subscribe again; a refusal because the
                # session was lost (402) must not cost us the subscription
                message.pop("subscription", None)
            if message.get("channel") in ("/meta/handshake", "/meta/connect"):
                self._pace_reconnects(message)

    def _pace_reconnects(self, message: Message) -> None:
        """Bayeux gives ``advice.interval`` in milliseconds; aiocometd sleeps that many
        *seconds*. Convert it, and back off while the server keeps refusing us, so a
        lost session never turns into a hot handshake loop."""
        advice = message.get("advice")
        if message.get("successful", False):
            self._failures = 0
        else:
            self._failures += 1
        if not isinstance(advice, dict):
            if self._failures == 0:
                return
            advice = message["advice"] = {}
        if isinstance(advice.get("timeout"), (int, float)):
            self._timeout = advice["timeout"]
        elif self._timeout is not None:
            # aiocometd replaces its whole advice: without this a later advice that
            # omits the timeout leaves every poll with no client-side time limit
            advice["timeout"] = self._timeout
        interval = advice.get("interval")
        seconds = interval / 1000.0 if isinstance(interval, (int, float)) else 0.0
        if self._failures > 1:
            seconds = max(seconds, min(5.0, 0.05 * 2 ** (self._failures - 1)))
        advice["interval"] = seconds


class AckChannel:
    """A self-healing CometD subscription; every event message goes to ``on_messages``.

    ``headers`` is called before every Bayeux request, so a re-login's new cookie
    and token are used from the next request on. aiocometd re-handshakes and
    re-subscribes by itself after a lost session; if it still has not recovered
    after ``stall_reset`` seconds (a poll held forever, a reconnect loop that gave
    up), the client is thrown away and a fresh one handshakes and subscribes.
    """

    def __init__(
        self,
        url: str,
        *,
        channels: tuple[str, ...],
        headers: Callable[[], Mapping[str, str]],
        on_messages: Callable[[list[Message]], None],
        verify_tls: bool = True,
        on_state: Callable[[bool, str], None] | None = None,
        stall_reset: float = 10.0,
    ) -> None:
        self.url = url
        self.channels = channels
        self._header_source = headers
        self._on_messages = on_messages
        self._on_state = on_state
        self._verify_tls = verify_tls
        self._stall_reset = stall_reset
        self.up = asyncio.Event()
        self.down_since: float | None = time.monotonic()
        self.handshakes = 0
        self.reconnects = 0
        self.resets = 0
        self.last_error = ""
        self._confirmed: set[str] = set()
        self._closing = False
        self._client = self._new_client()
        self._tasks: list[asyncio.Task[None]] = []
        self._supervisor: asyncio.Task[None] | None = None

    def _new_client(self) -> _Client:
        return _Client(
            self.url,
            ConnectionType.LONG_POLLING,
            extensions=[_Watch(self)],
            max_pending_count=0,  # unbounded: we drain in batches, never block the poll
            verify_tls=self._verify_tls,
            connection_timeout=0,
        )

    def _headers(self) -> Mapping[str, str]:
        return self._header_source()

    # -- lifecycle -----------------------------------------------------------
    async def start(self, timeout: float = 30.0) -> None:
        """Handshake, subscribe and return once every channel is confirmed."""
        try:
            await asyncio.wait_for(self._open(), timeout)
        except (TimeoutError, Exception) as exc:
            await self.close()
            reason = self.last_error or f"{type(exc).__name__}: {exc}".rstrip(": ")
            raise NotificationChannelLost(
                f"cannot subscribe to {', '.join(self.channels)} at {self.url}: {reason}"
            ) from exc
        self._start_tasks()
        self._supervisor = asyncio.create_task(self._supervise(), name="cometd-supervisor")

    def _start_tasks(self) -> None:
        self._tasks = [
            asyncio.create_task(self._drain(self._client), name="cometd-drain"),
            asyncio.create_task(self._watch_transport(self._client), name="cometd-watch"),
        ]

    async def _open(self) -> None:
        await self._client.open()
        for channel in self.channels:
            await self._client.subscribe(channel)
        await self.up.wait()

    async def _supervise(self) -> None:
        """Replace a client that has not recovered by itself within ``stall_reset``."""
        while True:
            await asyncio.sleep(min(1.0, self._stall_reset / 4))
            if self.up.is_set() or self.outage() < self._stall_reset * (1 + self.resets % 4):
                continue
            self.resets += 1
            log.info("CometD did not recover in %.0f s (%s): starting a new client",
                     self.outage(), self.last_error or "no answer")  # fmt: skip
            await self._stop_client()
            self._client = self._new_client()
            self._confirmed.clear()
            try:
                await asyncio.wait_for(self._open(), self._stall_reset)
            except (TimeoutError, Exception) as exc:
                self.last_error = self.last_error or f"{type(exc).__name__}: {exc}"
                continue
            finally:
                self._start_tasks()

    async def _stop_client(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        client = self._client
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 5)
        transport = client.transport
        if client.closed and transport is not None:
            # after a failed open() the client thinks it is closed, yet its transport
            # still follows reconnect advice in the background: stop it too
            with contextlib.suppress(Exception):
                await asyncio.wait_for(transport.disconnect(), 5)
            with contextlib.suppress(Exception):
                await client._close_http_session()

    async def close(self) -> None:
        self._closing = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._supervisor
        await self._stop_client()
        self.up.clear()

    # -- state ---------------------------------------------------------------
    def _set_up(self, up: bool, reason: str) -> None:
        if up == self.up.is_set() or self._closing:
            return
        if up:
            self.up.set()
            self.down_since = None
        else:
            self.up.clear()
            self.down_since = time.monotonic()
            self.reconnects += 1
        if self._on_state is not None:
            self._on_state(up, reason)

    def _observe(self, message: Message) -> None:
        channel = message.get("channel")
        if not isinstance(channel, str) or not channel.startswith("/meta/"):
            return
        ok = bool(message.get("successful", False))
        if not ok:
            log.debug("CometD %s refused: %s", channel, message)
        if channel == "/meta/handshake":
            if ok:
                self.handshakes += 1
                self._confirmed.clear()
                if self.handshakes > 1:
                    self._set_up(False, "re-handshake: subscriptions must be renewed")
            else:
                self.last_error = str(message.get("error") or "handshake refused")
        elif channel == "/meta/subscribe":
            subs = message.get("subscription")
            names = subs if isinstance(subs, list) else [subs]
            if ok:
                self._confirmed.update(n for n in names if isinstance(n, str))
                if all(c in self._confirmed for c in self.channels):
                    self._set_up(True, "subscribed")
            else:
                self.last_error = str(message.get("error") or "subscribe refused")
        elif channel == "/meta/connect" and ok:
            # a poll that works again on the same Bayeux session keeps its subscriptions
            if self._confirmed and all(c in self._confirmed for c in self.channels):
                self._set_up(True, "long poll restored")
        elif channel == "/meta/connect":
            error = str(message.get("error") or "connect refused")
            self.last_error = error
            advice = message.setdefault("advice", {})
            if isinstance(advice, dict) and error.startswith("402") and "reconnect" not in advice:
                advice["reconnect"] = "handshake"
            self._set_up(False, error)

    async def _watch_transport(self, client: _Client) -> None:
        """A failing long poll (network gap, server restart) also means 'not subscribed'."""
        from aiocometd_noloop.constants import TransportState

        transport = client.transport
        if transport is None:
            return
        while True:
            await transport.wait_for_state(TransportState.CONNECTING)
            if transport.state == TransportState.CONNECTING:
                self._set_up(False, "long poll failed, reconnecting")
                self.last_error = "long poll failed"
            await transport.wait_for_state(TransportState.CONNECTED)

    async def _drain(self, client: _Client) -> None:
        queue = client.queue
        if queue is None:
            return
        while True:
            first = await queue.get()
            batch = [first]
            while not queue.empty():
                batch.append(queue.get_nowait())
            try:
                self._on_messages(batch)
            except Exception:  # a bad message must not kill the channel
                log.exception("error while handling CometD messages")

    def outage(self) -> float:
        """Seconds the channel has been down (0 while it is up)."""
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since
