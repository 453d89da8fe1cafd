"""The Bayeux transport (gws/long_poll.py) over real HTTP, against a small aiohttp server that
sets cookies, answers what a test tells it, or never answers: the headers and cookies a request
carries, the shared session, and every failure becoming PollFailed within its bound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from batch_cancel.exceptions import PollFailed
from batch_cancel.gws.long_poll import LongPollTransport
from batch_cancel.gws.network import Route

PATH = "/api/v2/notifications"
HANDSHAKE = [{"channel": "/meta/handshake", "id": "1"}]


class Server:
    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        self.answer: tuple[int, Any] = (200, [{"channel": "/meta/handshake", "successful": True}])
        self.set_cookies: list[str] = []
        self.hang = False

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(dict(request.headers))
        if self.hang:
            await asyncio.sleep(1.5)  # past every bound the tests use
        status, body = self.answer
        response = web.json_response(body, status=status)
        for cookie in self.set_cookies:
            response.headers.add("Set-Cookie", cookie)
        return response


@pytest.fixture
async def server() -> AsyncIterator[tuple[Server, str]]:
    state = Server()
    app = web.Application()
    app.router.add_post(PATH, state.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)  # an IP-address host, as CometD URLs can be
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield state, f"http://127.0.0.1:{port}{PATH}"
    finally:
        await runner.cleanup()


async def test_the_owners_session_cookie_wins_and_the_endpoints_own_cookies_come_back(
    server: tuple[Server, str],
) -> None:
    state, url = server
    headers = {"Authorization": "Basic x", "Cookie": "JSESSIONID=fresh", "X-CSRF-TOKEN": "t1"}
    transport = LongPollTransport(url, route=Route(ssl=False), headers=lambda: headers)
    try:
        # the endpoint sets its own cookie and a (stale) copy of the session cookie
        state.set_cookies = ["BAYEUX_BROWSER=b1; Path=/", "JSESSIONID=stale; Path=/"]
        assert await transport.send(HANDSHAKE, 2.0) == state.answer[1]
        state.set_cookies = []
        await transport.send(HANDSHAKE, 2.0)
        first, second = state.seen
        assert first["Cookie"] == "JSESSIONID=fresh"
        assert second["Cookie"] == "JSESSIONID=fresh; BAYEUX_BROWSER=b1"  # never the stale copy
        assert second["X-CSRF-TOKEN"] == "t1" and second["Authorization"] == "Basic x"
        assert second["Content-Type"] == "application/json"
        # a re-login: new cookie and token, used from the next request on
        headers = {"Authorization": "Basic x", "Cookie": "JSESSIONID=new", "X-CSRF-TOKEN": "t2"}
        await transport.send(HANDSHAKE, 2.0)
        assert state.seen[-1]["Cookie"] == "JSESSIONID=new; BAYEUX_BROWSER=b1"
        assert state.seen[-1]["X-CSRF-TOKEN"] == "t2"
    finally:
        await transport.close()


async def test_the_requests_ride_on_the_session_given_and_close_leaves_it_open(
    server: tuple[Server, str],
) -> None:
    state, url = server
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(),
                                     timeout=aiohttp.ClientTimeout(total=0.5)) as shared:  # fmt: skip
        transport = LongPollTransport(url, route=Route(ssl=False), headers=dict, shared=lambda: shared)
        state.hang = False
        await transport.send(HANDSHAKE, 2.0)
        assert transport._own is None  # no session of its own was made
        await transport.close()
        assert not shared.closed


async def test_what_is_not_a_bayeux_answer_fails(server: tuple[Server, str]) -> None:
    state, url = server
    transport = LongPollTransport(url, route=Route(ssl=False), headers=dict)
    try:
        state.answer = (401, {"statusCode": 20, "statusMessage": "not authenticated"})
        with pytest.raises(PollFailed, match=r"not a Bayeux answer \(HTTP 401\)"):
            await transport.send(HANDSHAKE, 2.0)
        state.answer = (503, "<html>down</html>")
        with pytest.raises(PollFailed, match="HTTP 503"):
            await transport.send(HANDSHAKE, 2.0)
        # a Bayeux refusal is an answer, whatever its HTTP status
        state.answer = (400, [{"channel": "/meta/connect", "successful": False, "error": "402::unknown"}])
        assert (await transport.send(HANDSHAKE, 2.0))[0]["error"] == "402::unknown"
    finally:
        await transport.close()


async def test_no_answer_within_the_bound_is_a_cut_poll(server: tuple[Server, str]) -> None:
    state, url = server
    transport = LongPollTransport(url, route=Route(ssl=False), headers=dict)
    try:
        state.hang = True
        started = time.monotonic()
        with pytest.raises(PollFailed) as caught:
            await transport.send(HANDSHAKE, 0.3)
        assert caught.value.timed_out and time.monotonic() - started < 1.0
        state.hang = False
        await transport.send(HANDSHAKE, 2.0)  # and the next request works
    finally:
        await transport.close()


async def test_nobody_listening_is_a_failed_request() -> None:
    transport = LongPollTransport("http://127.0.0.1:9/api/v2/notifications", route=Route(ssl=False),
                                  headers=dict)  # fmt: skip
    try:
        with pytest.raises(PollFailed) as caught:
            await transport.send(HANDSHAKE, 2.0)
        assert not caught.value.timed_out
    finally:
        await transport.close()
