"""aiocometd-noloop, adapted to what GWS and CometD servers need.

* the run's TLS context and proxy (``gws/network.py``) on the HTTP session aiocometd
  would otherwise build with defaults, so long polls go where the REST calls go;
* a cookie jar that keeps cookies from IP-address hosts (CometD servers that find
  their session by cookie, like the CometD project's own, answer 402 otherwise),
  and never lets a stale copy of a session cookie we send ourselves win;
* ``advice: {timeout: 0}`` on the first ``/meta/connect`` after each handshake, so
  opening (and re-opening) takes milliseconds instead of a whole long poll;
* ``advice.interval`` converted from Bayeux's milliseconds to the seconds aiocometd
  sleeps, and a back-off while the server refuses us;
* every request bounded by :class:`PollBound` (a long poll: the server's advised
  ``timeout``, or a default when it gives none, plus a margin; any other request: the
  margin), so a poll over a half-open connection (a NAT that forgot it: no answer, no
  reset) ends as a transport error and the client polls again; and the time the last
  poll completed kept, so the owner can tell a silent channel from a quiet one.
  aiocometd's own bound (1.2 x an advised timeout, none without advice) is taken out;
* a ``402`` without advice treated as "handshake again", and a subscription that a
  402 refused kept, so a lost session is always re-established and re-subscribed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Any, TypeGuard

import aiohttp
from aiocometd_noloop import Client
from aiocometd_noloop.exceptions import TransportError
from aiocometd_noloop.extensions import Extension

from batch_cancel.gws.network import Route

__all__ = ["DEFAULT_POLL_MARGIN", "DEFAULT_POLL_TIMEOUT", "CometdClient", "Message", "PollBound",
           "SessionExtension"]  # fmt: skip

Message = dict[str, Any]

# CometD's own conventions: a server holds a long poll for 30 s unless it advises
# otherwise, and its JavaScript client allows a request maxNetworkDelay (10 s) on top
DEFAULT_POLL_TIMEOUT = 30.0
DEFAULT_POLL_MARGIN = 10.0


class PollBound:
    """How long a Bayeux request may take, and when a long poll last completed.

    A ``/meta/connect`` is held by the server for the ``timeout`` it asks (``advice``
    in the message itself, as after a handshake), else for the server's advised
    timeout, else for ``default_timeout``; then ``margin`` seconds for the network.
    Any other request (handshake, subscribe) is answered at once: ``margin``.
    ``last_completed`` is the monotonic time of the last poll the server answered
    successfully: whatever it published before then was delivered.
    """

    def __init__(self, *, margin: float = DEFAULT_POLL_MARGIN,
                 default_timeout: float = DEFAULT_POLL_TIMEOUT,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.margin = margin
        self.default_timeout = default_timeout
        self.advised: float | None = None  # seconds: the server's last advice.timeout
        self._clock = clock
        self.last_completed = clock()
        self.polls_cut = 0  # polls given up after their bound

    @property
    def poll(self) -> float:
        """The bound of a long poll that asks for no timeout of its own."""
        held = self.default_timeout if self.advised is None else self.advised
        return held + self.margin

    def of(self, payload: list[Message]) -> float:
        """The bound of one request carrying ``payload``."""
        for message in payload:
            if message.get("channel") != "/meta/connect":
                continue
            advice = message.get("advice")
            asked = advice.get("timeout") if isinstance(advice, dict) else None
            if _is_number(asked):
                return max(0.0, asked / 1000.0) + self.margin
            return self.poll
        return self.margin

    def advice(self, advice: Message) -> None:
        """Keep a server's ``advice.timeout`` (milliseconds)."""
        timeout = advice.get("timeout")
        if _is_number(timeout) and timeout >= 0:
            self.advised = timeout / 1000.0

    def completed(self) -> None:
        self.last_completed = self._clock()

    def silent_for(self) -> float:
        """Seconds since a poll last completed."""
        return self._clock() - self.last_completed


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and value == value  # not NaN


class CometdClient(Client):  # type: ignore[misc]
    """aiocometd's client with our TLS context, proxy and a cookie jar that accepts IP hosts."""

    def __init__(self, *args: Any, verify_tls: bool = True, route: Route | None = None,
                 bound: PollBound | None = None, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        self._route = route or Route(ssl=bool(verify_tls))
        self.bound = bound or PollBound()

    async def _get_http_session(self) -> aiohttp.ClientSession:
        session: aiohttp.ClientSession | None = self.__dict__.get("_http_session")
        if session is None:
            session = aiohttp.ClientSession(
                cookie_jar=aiohttp.CookieJar(unsafe=True),
                json_serialize=self._json_dumps,
                connector=aiohttp.TCPConnector(ssl=self._route.ssl),
                proxy=self._route.proxy,
                timeout=aiohttp.ClientTimeout(total=None),  # PollBound bounds every request
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
        _bound_requests(transport, self.bound)
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


def _bound_requests(transport: Any, bound: PollBound) -> None:
    """Every request of ``transport`` ends within ``bound.of(payload)`` seconds: one that
    has not is a :class:`TransportError`, as a reset would be, so aiocometd polls again
    (over a new connection: the cancelled request's is closed)."""
    send = transport._send_final_payload

    async def bounded(payload: list[Message], *, headers: Any) -> Any:
        limit = bound.of(payload)
        try:
            async with asyncio.timeout(limit):
                response = await send(payload, headers=headers)
        except TimeoutError as exc:
            if any(m.get("channel") == "/meta/connect" for m in payload):
                bound.polls_cut += 1
            raise TransportError(f"no answer within {limit:g} s (a half-open connection?)") from exc
        if response.get("channel") == "/meta/connect" and response.get("successful"):
            bound.completed()
        return response

    transport._send_final_payload = bounded


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
                advice = message.get("advice")
                if isinstance(advice, dict) and "timeout" in advice:
                    # ours to bound the polls with (PollBound), not aiocometd's (1.2 x it)
                    self._client().bound.advice(advice)
                    del advice["timeout"]
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
        interval = advice.get("interval")
        seconds = interval / 1000.0 if isinstance(interval, (int, float)) else 0.0
        if self._failures > 1:
            seconds = max(seconds, min(5.0, 0.05 * 2 ** (self._failures - 1)))
        advice["interval"] = seconds
