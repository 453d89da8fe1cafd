"""Bayeux requests over HTTP: one bounded POST per payload, on the run's aiohttp session.

The long polls ride on the REST calls' aiohttp session (``GwsSession.http_for``) when
the CometD URL takes the same TLS context and proxy (aiohttp has one proxy per
session), so they go where the REST calls go, through the same pool; otherwise, and
when the owner has no REST session (preflight's and the tests' channels can), a
session of its own with the same settings.

Cookies: aiohttp's jar is not used (the REST session has none: ``gws/cookies.py``
says why; a jar would also drop cookies an IP-address host sets, and a CometD server
that finds its session by cookie then answers ``402``). The cookies the Bayeux
endpoint sets are kept here and sent after the owner's own (``JSESSIONID``); a name
the owner sends always wins, so a stale Bayeux copy of a session cookie never
replaces the one a re-login got. The headers of a request are rebuilt only when the
owner's headers or these cookies change: a long poll costs no dict of its own.

Whatever goes wrong with one request (no answer within its bound, a reset, a TLS
failure, an HTTP error page, a body that is not Bayeux) becomes :class:`PollFailed`,
here and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp

from batch_cancel.exceptions import PollFailed
from batch_cancel.gws import json_codec
from batch_cancel.gws.bayeux import Message
from batch_cancel.gws.cookies import CookieStore
from batch_cancel.gws.network import Route

__all__ = ["LongPollTransport"]

# the bound of every request is ours (asyncio.timeout around it): the REST session's
# own total timeout (--request-timeout) must not cut a long poll
_UNBOUNDED = aiohttp.ClientTimeout(total=None)


class LongPollTransport:
    """POSTs Bayeux payloads to ``url`` and answers the decoded replies."""

    def __init__(self, url: str, *, route: Route, headers: Callable[[], Mapping[str, str]],
                 shared: Callable[[], aiohttp.ClientSession | None] | None = None) -> None:  # fmt: skip
        self.url = url
        self._route = route
        self._header_source = headers
        self._shared = shared
        self._own: aiohttp.ClientSession | None = None
        self._cookies = CookieStore()  # what the Bayeux endpoint set
        self._seen_headers: Mapping[str, str] | None = None
        self._seen_cookies: str | None = None
        self._headers: dict[str, str] = {}

    def _http(self) -> aiohttp.ClientSession:
        shared = self._shared() if self._shared is not None else None
        if shared is not None and not shared.closed:
            return shared
        if self._own is None or self._own.closed:
            self._own = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._route.ssl),
                proxy=self._route.proxy,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=_UNBOUNDED,
            )
        return self._own

    def _request_headers(self) -> dict[str, str]:
        source = self._header_source()
        mine = self._cookies.header
        if source is self._seen_headers and mine is self._seen_cookies:
            return self._headers
        headers = {**source, "Content-Type": "application/json"}
        theirs = source.get("Cookie", "")
        if mine:
            sent = {part.split("=", 1)[0].strip() for part in theirs.split(";") if "=" in part}
            kept = [f"{k}={v}" for k, v in self._cookies.as_dict().items() if k not in sent]
            if kept:
                headers["Cookie"] = "; ".join(([theirs] if theirs else []) + kept)
        self._seen_headers, self._seen_cookies, self._headers = source, mine, headers
        return headers

    async def send(self, payload: list[Message], bound: float) -> list[Any]:
        """POST ``payload``; the replies, or :class:`PollFailed` within ``bound`` seconds."""
        body = json_codec.dumps(payload)
        try:
            async with asyncio.timeout(bound):
                async with self._http().post(self.url, data=body, headers=self._request_headers(),
                                             timeout=_UNBOUNDED) as resp:  # fmt: skip
                    content = await resp.read()
                    status = resp.status
                    if "Set-Cookie" in resp.headers:
                        self._cookies.take(resp.headers.getall("Set-Cookie"))
        except TimeoutError as exc:
            # a poll over a half-open connection (a NAT that forgot it: no answer, no
            # reset) ends here; the request's connection is closed with it
            raise PollFailed(f"no answer within {bound:g} s (a half-open connection?)",
                             timed_out=True) from exc  # fmt: skip
        except (aiohttp.ClientError, OSError) as exc:
            raise PollFailed(f"{type(exc).__name__}: {exc}".rstrip(": ")) from exc
        try:
            replies = json_codec.loads(content) if content else None
        except ValueError:
            replies = None
        if isinstance(replies, dict):
            replies = [replies]
        # a Bayeux answer is read whatever its status (servers put 402s in 200s, some
        # not); anything else (a 401 JSON body, a proxy's page) is a failed request
        # (the first message tells: checking every one would cost a step per ack)
        bayeux = isinstance(replies, list) and (
            not replies or (isinstance(replies[0], dict) and "channel" in replies[0])
        )
        if not bayeux or not isinstance(replies, list):
            raise PollFailed("not a Bayeux answer" + (f" (HTTP {status})" if status != 200 else ""))
        return replies

    async def close(self) -> None:
        """Close the session this transport made (a shared one is its owner's)."""
        own, self._own = self._own, None
        if own is not None:
            await own.close()
