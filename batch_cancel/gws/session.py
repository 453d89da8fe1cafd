"""The authenticated HTTP session with GWS (aiohttp).

GWS keeps state per HTTP session: the ``JSESSIONID`` cookie and, when CSRF
protection is on, a token answered on every GET. Both die together, so a
re-login replaces both. Log-ins go through one :class:`~batch_cancel.gws.login_gate.LoginGate`:
single-flight (workers that saw the same stale session wait for one log-in instead
of each starting their own), with a shared back-off while log-ins fail (a node
restarting), bounded by the run's ``--max-outage``.

aiohttp rather than httpx: at 64 requests in flight httpx's connection pool
scans every connection (a poll() syscall each) on every request, and its cookie
and URL models add more; measured on loopback against the simulator, a POST cost
the client about 4.6 ms of CPU with httpx, 1.1 ms with httpx over an aiohttp
transport and 0.35 ms with aiohttp alone (see benchmarks/). The CancelRecord POSTs
themselves go through our own lean client where no proxy is in the way
(gws/record_transport.py: 0.57x of aiohttp's CPU per POST); the session keeps what
they share with every other request: the cookies, the CSRF token, the Basic header.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from multidict import MultiMapping

from batch_cancel.config import DEFAULT_MAX_OUTAGE, GwsConfig
from batch_cancel.exceptions import (
    AuthenticationError,
    GwsUnavailable,
    NotWritten,
    RequestError,
    TransientError,
)
from batch_cancel.gws import json_codec
from batch_cancel.gws.cookies import CookieStore
from batch_cancel.gws.login_gate import LoginGate
from batch_cancel.gws.network import Route, host_port, route_for, tls_probe
from batch_cancel.gws.record_transport import RecordTransport
from batch_cancel.gws.responses import (
    TRANSPORT_ERRORS,
    Reply,
    body_json,
    certificate_problem,
    error_for_response,
    not_the_gws_api,
    probe_verdict,
    translate_transport_error,
)

__all__ = ["Answer", "GwsSession"]

# marks a CancelRecord's POST for the write fence (GwsSession._write_fence)
_RECORD_POST = object()

log = logging.getLogger("batch_cancel.gws")


class Answer:
    """What GWS said to one accepted request."""

    __slots__ = ("body", "http_status", "status_code")

    def __init__(self, http_status: int, status_code: int | None, body: dict[str, Any]) -> None:
        self.http_status = http_status
        self.status_code = status_code
        self.body = body


class GwsSession:
    """Login, CSRF token, cookies and the outbound-records POST."""

    def __init__(self, config: GwsConfig, *, max_connections: int = 16,
                 max_outage: float = DEFAULT_MAX_OUTAGE, gate: LoginGate | None = None,
                 write_gate: Callable[[], bool] | None = None) -> None:  # fmt: skip
        self._config = config
        # a fleet worker's deadline (send/fleet.py), asked once more for each CancelRecord
        # when its connection is in hand, the last moment before aiohttp writes it
        self._write_gate = write_gate
        creds = config.credentials
        token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
        self._basic = f"Basic {token}"
        self._base = config.base_url.rstrip("/")
        self._max_connections = max_connections
        self._timeout = aiohttp.ClientTimeout(
            total=config.request_timeout, sock_connect=min(10.0, config.request_timeout)
        )
        # TLS context and proxy, decided once (a bad CA bundle or key fails here, exit 2)
        self.route: Route = route_for(self._base, config)
        self._client: aiohttp.ClientSession | None = None
        # CancelRecord POSTs on our own lean client where it needs nothing aiohttp has:
        # no proxy; unless asked not to (gws/record_transport.py says why)
        self._own_records = config.record_client == "auto" and self.route.proxy is None
        self._records: RecordTransport | None = None
        self._records_path = urllib.parse.urlsplit(self._base).path + "/api/v2/me/outbound-records"
        self._csrf_header: str | None = None
        self._csrf_token: str | None = None
        self._cookies = CookieStore()
        # per-request headers, rebuilt only when the CSRF token or a cookie changes
        self._get_headers: dict[str, str] = {}
        self._post_headers: dict[str, str] = {"Content-Type": "application/json"}
        self._auth_headers: dict[str, str] = {"Authorization": self._basic}
        # one log-in at a time, backing off while log-ins fail, for up to max_outage s
        self.gate = gate or LoginGate(max_outage=max_outage)
        self._accepted = 0  # requests GWS accepted on the current session
        self.generation = 0  # bumped by every successful login
        self.logins = 0
        self.user: dict[str, Any] = {}
        self.cc_session_started = False

    def _http(self) -> aiohttp.ClientSession:
        # made on first use: aiohttp wants its session created inside the running loop
        if self._client is None:
            self._client = aiohttp.ClientSession(
                # one more than asked for: the CometD long poll rides on this pool too
                # (gws/long_poll.py) and must never queue behind the POSTs for a slot
                connector=aiohttp.TCPConnector(
                    limit=self._max_connections + 1, limit_per_host=0, ssl=self.route.ssl,
                ),
                proxy=self.route.proxy,
                # cookies are kept by CookieStore (one origin): aiohttp's jar filtered
                # itself on every request, and dropped cookies set by an IP-address host
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=self._timeout,
                # Basic on every request, not only the login: a GWS that authenticates
                # per request (no session kept) works too, and one that keeps sessions
                # ignores it while the JSESSIONID is valid
                headers={"Accept": "application/json", "Authorization": self._basic},
                trace_configs=[self._write_fence(self._write_gate)] if self._write_gate else None,
            )  # fmt: skip
        return self._client

    @staticmethod
    def _write_fence(gate: Callable[[], bool]) -> aiohttp.TraceConfig:
        """Stop a record's POST when its connection is acquired (pooled or new) if the gate
        shut meanwhile: from there aiohttp writes the request at once (Python 3.12+: an eager
        task) or in the event loop's next turn (3.11), so a worker frozen between its pacer's
        check and this one (SIGSTOP, a VM pause) and thawed past its lease writes nothing.
        Log-ins and other requests are not stopped."""

        async def check(_session: object, ctx: Any, _params: object) -> None:
            if ctx.trace_request_ctx is _RECORD_POST and not gate():
                raise NotWritten("not written: sending is held (this worker's lease deadline passed)")

        fence = aiohttp.TraceConfig()
        fence.on_connection_reuseconn.append(check)
        fence.on_connection_create_end.append(check)
        return fence

    async def __aenter__(self) -> GwsSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        try:
            await self.gate.aclose()
        finally:  # a cancellation while the log-in stops must not leave the connections open
            try:
                if self._records is not None:
                    records, self._records = self._records, None
                    await records.aclose()
            finally:
                if self._client is not None:
                    client, self._client = self._client, None
                    await client.close()

    async def _request(
        self, method: str, path: str, *, headers: Mapping[str, str] | None = None, data: bytes | None = None,
        trace: object = None,
    ) -> Reply:
        """One request, read in full; transport failures raise aiohttp's errors."""
        async with self._http().request(method, self._base + path, headers=headers, data=data,
                                        trace_request_ctx=trace) as resp:  # fmt: skip
            content = await resp.read()
            for hop in (*resp.history, resp):
                self._take_cookies(hop.headers)
            return Reply(resp.status, resp.reason or "", resp.headers, content)

    def _take_cookies(self, headers: MultiMapping[str]) -> None:
        """An answer's ``Set-Cookie`` headers (either client's), the request headers rebuilt
        only when a cookie changed."""
        if "Set-Cookie" in headers and self._cookies.take(headers.getall("Set-Cookie")):
            self._rebuild_headers()

    def _rebuild_headers(self) -> None:
        cookie = {"Cookie": self._cookies.header} if self._cookies.header else {}
        csrf = {self._csrf_header: self._csrf_token} if self._csrf_header and self._csrf_token else {}
        self._get_headers = cookie
        self._post_headers = {"Content-Type": "application/json", **csrf, **cookie}
        # a new object only when something changed: the CometD transport reuses its
        # request headers for as long as it is handed the same one
        self._auth_headers = {"Authorization": self._basic, **cookie, **csrf}

    # -- session -----------------------------------------------------------
    async def login(self) -> dict[str, Any]:
        """GET /api/v2/me with Basic auth: new session cookie and CSRF token.

        Once, as preflight and the first log-in want it: GWS unreachable is
        :class:`GwsUnavailable` at once, 5xx/429 a :class:`TransientError`.
        """
        try:
            return await self._login_once()
        except TransientError as exc:
            if exc.http_status is None:  # no answer at all: a transport error
                raise GwsUnavailable(str(exc)) from exc
            raise

    async def _login_once(self) -> dict[str, Any]:
        """One log-in; a transport error is a :class:`TransientError` (an outage)."""
        self._cookies.clear()
        self._rebuild_headers()
        try:
            reply = await self._request("GET", "/api/v2/me", headers={"Authorization": self._basic})
        except TRANSPORT_ERRORS as exc:
            problem = certificate_problem(exc, host_port(self._base))
            if problem is None and self.logins == 0 and _bare_disconnect(exc, self._base):
                problem = probe_verdict(await tls_probe(self._base, self.route), host_port(self._base),
                                        self._config.client_cert is not None)  # fmt: skip
            if problem is not None and self.logins == 0:
                # the first login: nothing was sent yet, and no retry will fix a certificate
                raise problem from None
            unreached = translate_transport_error(exc)
            unreached.args = (f"cannot reach GWS at {self._config.base_url}: {unreached}",)
            raise unreached from exc
        not_gws = not_the_gws_api(reply, self._config.base_url)
        if not_gws is not None:
            raise not_gws
        if reply.status in (401, 403):
            raise AuthenticationError(
                f"GWS refused the credentials of user {self._config.credentials.username!r} "
                f"(HTTP {reply.status})"
            )
        error = error_for_response(reply)
        if error is not None:
            if isinstance(error, TransientError):
                raise error
            raise AuthenticationError(f"login failed: {error}")
        self._take_csrf(reply)
        self.user = body_json(reply)
        self.generation += 1
        self.logins += 1
        self._accepted = 0
        if self._config.start_cc_session:
            await self._start_cc_session()
        return self.user

    async def login_within(self, max_outage: float) -> dict[str, Any]:
        """The run's first login, tried again with back-off while GWS answers 5xx or 429;
        ``max_outage`` also bounds every later re-login's outage (:meth:`relogin`).

        A proxy in front of a restarting GWS answers 502/503 for a while; that is an
        outage like any other, so it may last up to ``max_outage`` seconds (then
        :class:`GwsUnavailable`, exit 3). Refused credentials, pages that are not
        the GWS API, certificate problems and an unreachable GWS (a wrong URL, most
        likely, at the start) are not retried.
        """
        self.gate.max_outage = max_outage
        result: dict[str, Any] = await self.gate.run(self.login)
        return result

    async def relogin(self, seen_generation: int) -> None:
        """Log in again unless someone already did since ``seen_generation``.

        Single-flight, through the gate: a failing log-in (503, 429, a proxy's 5xx
        page, GWS unreachable) is tried again after a shared back-off honouring a
        capped Retry-After, until the gate's ``max_outage`` (then
        :class:`GwsUnavailable`); callers that arrive meanwhile wait for the same one.
        """
        if self.generation != seen_generation:
            return
        if not self.gate.in_flight:
            log.info("GWS session expired or CSRF token refused: logging in again")
        await self.gate.run(self._login_once, wasted=self._accepted == 0)

    async def check(self) -> bool:
        """True when the current session is still valid (a GET also refreshes the token)."""
        try:
            reply = await self._request("GET", "/api/v2/me", headers=self._get_headers)
        except TRANSPORT_ERRORS as exc:
            raise translate_transport_error(exc) from exc
        # a proxy's page answering 200 is no live session (and no GWS): say so, don't trust it
        not_gws = not_the_gws_api(reply, self._config.base_url)
        if not_gws is not None:
            raise not_gws
        if reply.status == 200:
            self._take_csrf(reply)
            return True
        return False

    def _take_csrf(self, reply: Reply) -> None:
        header = reply.headers.get("X-CSRF-HEADER")
        token = reply.headers.get("X-CSRF-TOKEN")
        if header and token and (header, token) != (self._csrf_header, self._csrf_token):
            self._csrf_header, self._csrf_token = header, token
            self._rebuild_headers()

    async def _start_cc_session(self) -> None:
        body = {"operationName": "StartContactCenterSession", "channels": ["voice"]}
        answer = await self._post("/api/v2/me", body)
        self.cc_session_started = True
        log.info("contact-center session started (statusCode %s)", answer.status_code)

    async def end_cc_session(self, timeout: float = 10.0) -> bool:
        """EndContactCenterSession, if this session started one: logs the agent out of
        its device (and ends the HTTP session). False if GWS could not be told."""
        if not self.cc_session_started:
            return False
        self.cc_session_started = False
        body = {"operationName": "EndContactCenterSession"}
        try:
            await asyncio.wait_for(self._post("/api/v2/me", body), timeout)
        except (RequestError, TimeoutError) as exc:
            log.warning("could not end the contact-center session: %s", exc)
            return False
        log.info("contact-center session ended")
        return True

    # -- what other layers need --------------------------------------------
    def cookies(self) -> dict[str, str]:
        return self._cookies.as_dict()

    def auth_headers(self) -> Mapping[str, str]:
        """Headers the CometD transport sends so it rides on the same HTTP session
        (Basic auth, the session cookie, the CSRF token); the same object until one changes."""
        return self._auth_headers

    def http_for(self, route: Route) -> aiohttp.ClientSession | None:
        """The REST calls' aiohttp session, for another URL of the run (CometD) whose TLS
        context and proxy are the same as theirs; None when they differ (aiohttp has one
        proxy per session) or before the first request made it."""
        if self._client is None or route.ssl is not self.route.ssl or route.proxy != self.route.proxy:
            return None
        return self._client

    async def devices(self) -> list[dict[str, Any]]:
        try:
            reply = await self._request("GET", "/api/v2/me/devices", headers=self._get_headers)
        except TRANSPORT_ERRORS as exc:
            raise translate_transport_error(exc) from exc
        error = error_for_response(reply)
        if error is not None:
            raise error
        self._take_csrf(reply)
        devices = body_json(reply).get("devices") or []
        return [d for d in devices if isinstance(d, dict)]

    @property
    def record_client(self) -> str:
        """Which HTTP client carries the CancelRecord POSTs (for logs and preflight)."""
        return "batch-cancel's own HTTP/1.1 client" if self._own_records else "aiohttp"

    async def post_record(self, body: Mapping[str, Any]) -> Answer:
        """POST /api/v2/me/outbound-records; raises a RequestError subclass unless accepted."""
        records = self._records
        if records is None:
            if not self._own_records:
                return await self._post("/api/v2/me/outbound-records", body, trace=_RECORD_POST)
            records = self._records = RecordTransport(
                self._base, total_timeout=self._config.request_timeout,
                connect_timeout=min(10.0, self._config.request_timeout),
                max_connections=self._max_connections,
                default_headers={"Accept": "application/json", "Authorization": self._basic},
                write_gate=self._write_gate, tls=_tls_of(self._base, self.route),
            )  # fmt: skip
        # its failures are ours already (TransientError, NotWritten)
        reply = await records.post(self._records_path, self._post_headers, json_codec.dumps(body))
        self._take_cookies(reply.headers)
        return self._answer_of(reply)

    async def _post(self, path: str, body: Mapping[str, Any], trace: object = None) -> Answer:
        payload = json_codec.dumps(body)
        try:
            reply = await self._request("POST", path, headers=self._post_headers, data=payload, trace=trace)
        except TRANSPORT_ERRORS as exc:
            raise translate_transport_error(exc) from exc
        return self._answer_of(reply)

    def _answer_of(self, reply: Reply) -> Answer:
        data = body_json(reply)
        error = error_for_response(reply, data)
        if error is not None:
            raise error
        self._accepted += 1
        code = data.get("statusCode")
        return Answer(reply.status, code if isinstance(code, int) else None, data)


def _tls_of(url: str, route: Route) -> ssl.SSLContext | None:
    """The record client's TLS context: the run's own (None for http://); aiohttp's
    ``ssl=False`` (``--insecure`` without a client certificate) as a context that verifies nothing."""
    if not url.startswith("https://"):
        return None
    if isinstance(route.ssl, ssl.SSLContext):
        return route.ssl
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    return unverified


def _bare_disconnect(exc: BaseException, url: str) -> bool:
    """An https connection dropped without a word: how a refused client certificate looks."""
    return url.startswith("https://") and isinstance(
        exc, (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
    ) and not isinstance(exc, aiohttp.ClientConnectorError)

