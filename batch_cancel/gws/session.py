"""The authenticated HTTP session with GWS (httpx).

GWS keeps state per HTTP session: the ``JSESSIONID`` cookie and, when CSRF
protection is on, a token answered on every GET. Both die together, so a
re-login replaces both. Re-logins are single-flight: workers that saw the same
stale session wait for one login instead of each starting their own.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import Mapping
from typing import Any

import httpx

from batch_cancel.config import GwsConfig
from batch_cancel.exceptions import (
    AuthenticationError,
    GwsUnavailable,
    RequestError,
    SessionExpired,
    TransientError,
)
from batch_cancel.gws.errors import body_json, error_for_response, translate_transport_error

__all__ = ["Answer", "GwsSession"]

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

    def __init__(
        self,
        config: GwsConfig,
        *,
        max_connections: int = 16,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._config = config
        creds = config.credentials
        token = base64.b64encode(f"{creds.username}:{creds.password}".encode()).decode()
        self._basic = f"Basic {token}"
        self._client = httpx.AsyncClient(
            base_url=config.base_url.rstrip("/"),
            verify=config.verify_tls,
            timeout=httpx.Timeout(config.request_timeout, connect=min(10.0, config.request_timeout)),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
            headers={"Accept": "application/json"},
        )
        self._csrf_header: str | None = None
        self._csrf_token: str | None = None
        self._login_lock = asyncio.Lock()
        self.generation = 0  # bumped by every successful login
        self.logins = 0
        self.user: dict[str, Any] = {}

    async def __aenter__(self) -> GwsSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- session -----------------------------------------------------------
    async def login(self) -> dict[str, Any]:
        """GET /api/v2/me with Basic auth: new session cookie and CSRF token."""
        self._client.cookies.clear()
        try:
            response = await self._client.get("/api/v2/me", headers={"Authorization": self._basic})
        except httpx.HTTPError as exc:
            raise GwsUnavailable(
                f"cannot reach GWS at {self._config.base_url}: {translate_transport_error(exc)}"
            ) from exc
        if response.status_code in (401, 403):
            raise AuthenticationError(
                f"GWS refused the credentials of user {self._config.credentials.username!r} "
                f"(HTTP {response.status_code})"
            )
        error = error_for_response(response)
        if error is not None:
            if isinstance(error, TransientError):
                raise error
            raise AuthenticationError(f"login failed: {error}")
        self._take_csrf(response)
        self.user = body_json(response)
        self.generation += 1
        self.logins += 1
        if self._config.start_cc_session:
            await self._start_cc_session()
        return self.user

    async def relogin(self, seen_generation: int) -> None:
        """Log in again unless someone already did since ``seen_generation``."""
        async with self._login_lock:
            if self.generation != seen_generation:
                return
            log.info("GWS session expired or CSRF token refused: logging in again")
            await self.login()

    async def check(self) -> bool:
        """True when the current session is still valid (a GET also refreshes the token)."""
        try:
            response = await self._client.get("/api/v2/me")
        except httpx.HTTPError as exc:
            raise translate_transport_error(exc) from exc
        if response.status_code == 200:
            self._take_csrf(response)
            return True
        return False

    def _take_csrf(self, response: httpx.Response) -> None:
        header = response.headers.get("X-CSRF-HEADER")
        token = response.headers.get("X-CSRF-TOKEN")
        if header and token:
            self._csrf_header, self._csrf_token = header, token

    async def _start_cc_session(self) -> None:
        body = {"operationName": "StartContactCenterSession", "channels": ["voice"]}
        answer = await self._post("/api/v2/me", body)
        log.info("contact-center session started (statusCode %s)", answer.status_code)

    # -- what other layers need --------------------------------------------
    def cookies(self) -> dict[str, str]:
        return {c.name: c.value for c in self._client.cookies.jar if c.value is not None}

    def auth_headers(self) -> dict[str, str]:
        """Headers the CometD transport sends so it rides on the same HTTP session."""
        headers = {"Authorization": self._basic}
        cookie = "; ".join(f"{k}={v}" for k, v in self.cookies().items())
        if cookie:
            headers["Cookie"] = cookie
        if self._csrf_header and self._csrf_token:
            headers[self._csrf_header] = self._csrf_token
        return headers

    async def devices(self) -> list[dict[str, Any]]:
        try:
            response = await self._client.get("/api/v2/me/devices")
        except httpx.HTTPError as exc:
            raise translate_transport_error(exc) from exc
        error = error_for_response(response)
        if error is not None:
            raise error
        self._take_csrf(response)
        devices = body_json(response).get("devices") or []
        return [d for d in devices if isinstance(d, dict)]

    async def post_record(self, body: Mapping[str, Any]) -> Answer:
        """POST /api/v2/me/outbound-records; raises a RequestError subclass unless accepted."""
        return await self._post("/api/v2/me/outbound-records", body)

    async def _post(self, path: str, body: Mapping[str, Any]) -> Answer:
        headers = {}
        if self._csrf_header and self._csrf_token:
            headers[self._csrf_header] = self._csrf_token
        try:
            response = await self._client.post(path, json=dict(body), headers=headers)
        except httpx.HTTPError as exc:
            raise translate_transport_error(exc) from exc
        error = error_for_response(response)
        if error is not None:
            raise error
        data = body_json(response)
        code = data.get("statusCode")
        return Answer(response.status_code, code if isinstance(code, int) else None, data)


def is_session_error(exc: BaseException) -> bool:
    return isinstance(exc, SessionExpired)


def is_retryable(exc: BaseException) -> bool:
    return isinstance(exc, (TransientError, SessionExpired)) and isinstance(exc, RequestError)
