"""The simulator as a running aiohttp server: ``async with GwsSimulator(config) as sim``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING

from aiohttp import web

from batch_cancel.simulator.bayeux import SILENT
from batch_cancel.simulator.config import Faults, SimulatorConfig
from batch_cancel.simulator.httputil import (
    BAD_CSRF,
    NOT_AUTHENTICATED,
    csrf_ok,
    gws_error,
    hold_silently,
    login_page,
    session_of,
)
from batch_cancel.simulator.ledger import Ledger
from batch_cancel.simulator.outbound import OutboundRecords
from batch_cancel.simulator.rest import UserResources
from batch_cancel.simulator.state import SimState

if TYPE_CHECKING:
    pass

__all__ = ["LEDGER_PATH", "NOTIFICATIONS_PATH", "GwsSimulator"]

NOTIFICATIONS_PATH = "/api/v2/notifications"
LEDGER_PATH = "/_sim/ledger"


class GwsSimulator:
    """A GWS stand-in serving REST and CometD long-polling on one port."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self._config = config or SimulatorConfig()
        self._state = SimState(self._config)
        self._runner: web.AppRunner | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._port: int | None = None

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application(middlewares=[self._gateway, _json_errors])
        UserResources(self._state).add_routes(app)
        OutboundRecords(self._state).add_routes(app)
        app.router.add_post(NOTIFICATIONS_PATH, self._notifications)
        # CometD clients may append the message type (/handshake, /connect...) to the URL,
        # as the JavaScript client does by default; a CometD servlet accepts both forms
        app.router.add_post(NOTIFICATIONS_PATH + "/{kind:.*}", self._notifications)
        app.router.add_get(LEDGER_PATH, self._ledger_json)
        # A short shutdown grace: held polls are released explicitly before cleanup.
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self._config.host, self._config.port,
                           ssl_context=self._tls_context())  # fmt: skip
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        self._sweeper = asyncio.create_task(self._sweep_forever())

    def _tls_context(self) -> ssl.SSLContext | None:
        cfg = self._config
        if not cfg.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        if cfg.tls_client_ca:
            context.load_verify_locations(cfg.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context

    async def stop(self) -> None:
        self._state.stopping.set()
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        self._state.hub.close()
        self._state.cancel_timers()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> GwsSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


    # -- what tests look at and turn -------------------------------------------------------

    @property
    def config(self) -> SimulatorConfig:
        return self._config

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the simulator is not running")
        return self._port

    @property
    def base_url(self) -> str:
        host = self._config.host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        scheme = "https" if self._config.tls_cert else "http"
        return f"{scheme}://{host}:{self.port}"

    @property
    def ledger(self) -> Ledger:
        return self._state.ledger

    @property
    def faults(self) -> Faults:
        return self._state.faults

    @property
    def cometd_client_count(self) -> int:
        return self._state.hub.client_count

    def set_faults(self, faults: Faults) -> None:
        self._state.set_faults(faults)

    def drop_all_clients(self) -> int:
        """Forget every CometD client now; each gets 402::unknown_client next."""
        return self._state.hub.drop_clients()

    def pause_cometd(self, seconds: float) -> None:
        """Answer 503 on the CometD endpoint for ``seconds``, held polls included."""
        self._state.hub.pause(seconds)

    def serve_login_page(self, status: int, seconds: float = float("inf"), *,
                         everywhere: bool = False) -> None:  # fmt: skip
        """Answer log-ins (``GET /api/v2/me``) with an HTML page of ``status`` for ``seconds``,
        as a reverse proxy does while GWS behind it is down (502/503) or in front of it asks
        for its own login (200); other requests are served as usual. ``everywhere``: every
        ``/api/v2`` request gets the page (POSTs and CometD included), as an SSO gateway
        does once it no longer knows the client; GWS never sees them (no ledger entry)."""
        import time

        self._state.login_page = (status, time.monotonic() + seconds, everywhere)

    @web.middleware
    async def _gateway(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        page = self._state.login_page_status(login=False)
        login = request.method == "GET" and request.path == "/api/v2/me"
        if page is None or not request.path.startswith("/api/v2") or login:
            return await handler(request)  # the log-in page itself is UserResources.get_me's
        await request.read()
        return login_page(page)

    def restart_node(self, seconds: float = 6.0, retry_after: float | None = 2.0) -> None:
        """A GWS node restarts now: every HTTP session and CometD client is lost, and for
        ``seconds`` log-ins answer 503 statusCode 4 with ``Retry-After: retry_after``
        (None: no header; infinity and NaN are sent as such)."""
        self._state.restart(seconds, retry_after)

    def half_open_polls(self, seconds: float) -> None:
        """Long polls held now, and /meta/connect requests arriving in the next
        ``seconds``, are never answered nor reset (a NAT that forgot the connection)."""
        self._state.go_half_open(seconds)

    def expire_all_sessions(self) -> int:
        """End every HTTP session: the next request of each gets 401 statusCode 20."""
        return self._state.sessions.end_all()

    # -- handlers --------------------------------------------------------------------------

    async def _notifications(self, request: web.Request) -> web.Response:
        state = self._state
        hub = state.hub
        if hub.is_paused():
            return _cometd_unavailable()
        session = session_of(state, request)
        if session is None:
            return gws_error(*NOT_AUTHENTICATED)
        if state.half_open() and _has_connect(await request.read()):
            # the server never sees this poll: it gets no answer and no reset
            state.ledger.count("silent_polls")
            return await hold_silently(request, state.stopping)
        if state.config.csrf_on_cometd and not csrf_ok(state, request, session):
            return gws_error(*BAD_CSRF)
        try:
            messages = json.loads(await request.read())
        except (UnicodeDecodeError, json.JSONDecodeError):
            return web.json_response([{"successful": False, "error": "400::bad_json"}], status=400)
        if isinstance(messages, dict):
            messages = [messages]
        if not isinstance(messages, list):
            return web.json_response([{"successful": False, "error": "400::bad_json"}], status=400)

        def still_connected() -> bool:
            transport = request.transport
            return transport is not None and not transport.is_closing()

        replies = await hub.handle(
            messages,
            user=session.user,
            session_id=session.session_id,
            still_connected=still_connected,
        )
        if replies == SILENT:
            state.ledger.count("silent_polls")
            return await hold_silently(request, state.stopping)
        if replies is None:
            return _cometd_unavailable()
        return web.json_response(replies)

    async def _ledger_json(self, request: web.Request) -> web.Response:
        return web.Response(text=self._state.ledger.to_json(), content_type="application/json")

    async def _sweep_forever(self) -> None:
        interval = max(0.05, min(1.0, self._config.max_interval / 4))
        while True:
            await asyncio.sleep(interval)
            self._state.hub.sweep()
            self._state.sessions.sweep()


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Unknown paths and methods answer in GWS's JSON error shape, not aiohttp's text."""
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return gws_error(404, 6, f"Resource not found: {request.path}")
    except web.HTTPMethodNotAllowed:
        return gws_error(405, 10, f"Method not allowed: {request.method}")


def _has_connect(raw: bytes) -> bool:
    try:
        messages = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    if isinstance(messages, dict):
        messages = [messages]
    return isinstance(messages, list) and any(
        isinstance(m, dict) and m.get("channel") == "/meta/connect" for m in messages
    )


def _cometd_unavailable() -> web.Response:
    return gws_error(503, 4, "Notification service is not available at this time")
