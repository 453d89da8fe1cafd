"""aiocometd-noloop, adapted to what GWS and CometD servers need.

* the run's TLS context and proxy (``gws/network.py``) on the HTTP session aiocometd
  would otherwise build with defaults, so long polls go where the REST calls go;
* a cookie jar that keeps cookies from IP-address hosts (CometD servers that find
  their session by cookie, like the CometD project's own, answer 402 otherwise),
  and never lets a stale copy of a session cookie we send ourselves win;
* ``advice: {timeout: 0}`` on the first ``/meta/connect`` after each handshake, so
  opening (and re-opening) takes milliseconds instead of a whole long poll;
* ``advice.interval`` converted from Bayeux's milliseconds to the seconds aiocometd
  sleeps, the last poll timeout kept, and a back-off while the server refuses us;
* a ``402`` without advice treated as "handshake again", and a subscription that a
  402 refused kept, so a lost session is always re-established and re-subscribed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from aiocometd_noloop import Client
from aiocometd_noloop.extensions import Extension

from batch_cancel.gws.network import Route

__all__ = ["CometdClient", "Message", "SessionExtension"]

Message = dict[str, Any]


class CometdClient(Client):  # type: ignore[misc]
    """aiocometd's client with our TLS context, proxy and a cookie jar that accepts IP hosts."""

    def __init__(self, *args: Any, verify_tls: bool = True, route: Route | None = None,
                 **kwargs: Any) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self._route = route or Route(ssl=bool(verify_tls))

    async def _get_http_session(self) -> aiohttp.ClientSession:
        session: aiohttp.ClientSession | None = self.__dict__.get("_http_session")
        if session is None:
            session = aiohttp.ClientSession(
                cookie_jar=aiohttp.CookieJar(unsafe=True),
                json_serialize=self._json_dumps,
                connector=aiohttp.TCPConnector(ssl=self._route.ssl),
                proxy=self._route.proxy,
            )
            self._http_session = session
        return session

    def forget_cookies(self, names: set[str]) -> None:
        """aiohttp lets its jar override a Cookie header: drop the jar's copies of the
        session cookies we send ourselves, or a stale JSESSIONID would win after a re-login."""
        session: aiohttp.ClientSession | None = self.__dict__.get("_http_session")
        if session is not None and names:
            session.cookie_jar.clear(lambda morsel: morsel.key in names)

    async def _negotiate_transport(self) -> Any:
        transport = await super()._negotiate_transport()
        _quiet_when_cancelled(transport)
        return transport

    @property
    def queue(self) -> asyncio.Queue[Message] | None:
        return self._incoming_queue  # type: ignore[no-any-return]

    @property
    def transport(self) -> Any:
        return self._transport


def _quiet_when_cancelled(transport: Any) -> None:
    """aiocometd's transport reads the result of its connect task in a done callback
    that catches ``Exception`` only; closing the client cancels that task, and the
    ``CancelledError`` then escapes into asyncio's "Exception in callback" log with a
    traceback on every normal shutdown. A cancelled connect has no advice to follow."""
    follow = transport._connect_done

    def connect_done(future: asyncio.Future[Any]) -> None:
        if not future.cancelled():
            follow(future)

    transport._connect_done = connect_done


def _cookie_names(header: str) -> set[str]:
    return {part.split("=", 1)[0].strip() for part in header.split(";") if "=" in part}


class SessionExtension(Extension):  # type: ignore[misc]
    """Adds our session headers, tells the owner about every message, paces reconnects."""

    def __init__(
        self,
        client: Callable[[], CometdClient],
        headers: Callable[[], Mapping[str, str]],
        observe: Callable[[Message], None],
    ) -> None:
        self._client = client
        self._headers = headers
        self._observe = observe
        self._fresh_handshake = False
        self._failures = 0
        self._timeout: float | None = None

    async def outgoing(self, payload: list[Message], headers: dict[str, str]) -> None:
        fresh = dict(self._headers())
        headers.update(fresh)
        if "Cookie" in fresh:
            self._client().forget_cookies(_cookie_names(fresh["Cookie"]))
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
            self._observe(message)
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
