"""The user-level REST resources: log-in (``/api/v2/me``), devices, contact-center session."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from batch_cancel.simulator.httputil import (
    BAD_CSRF,
    NOT_AUTHENTICATED,
    basic_credentials,
    csrf_headers,
    csrf_ok,
    gws_error,
    gws_ok,
    json_object,
    login_page,
    session_of,
)
from batch_cancel.simulator.sessions import SESSION_COOKIE, HttpSession
from batch_cancel.simulator.state import SimState

__all__ = ["UserResources"]


class UserResources:
    def __init__(self, state: SimState) -> None:
        self._state = state

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/api/v2/me", self.get_me)
        app.router.add_post("/api/v2/me", self.post_me)
        app.router.add_get("/api/v2/me/devices", self.get_devices)

    async def get_me(self, request: web.Request) -> web.Response:
        state = self._state
        credentials = basic_credentials(request)
        if credentials is not None:
            state.ledger.count("login_attempts")
        page = state.login_page_status()
        if page is not None:
            # not GWS: the HTML page a reverse proxy or an SSO gateway answers in front of it
            state.ledger.count("login_pages")
            return login_page(page)
        if state.restarting():
            # a node coming back behind its load balancer: no session can be made yet
            state.ledger.count("login_unavailable")
            retry_after = state.restart_retry_after
            headers = {} if retry_after is None else {"Retry-After": f"{retry_after:g}"}
            return gws_error(503, 4, "Service is starting, not available at this time", **headers)
        session = session_of(state, request)
        new_session = False
        if credentials is not None:
            user, password = credentials
            if state.config.users.get(user) != password or not user:
                return gws_error(*NOT_AUTHENTICATED)
            state.ledger.count("logins")
            if session is None or session.user != user:
                session = state.sessions.create(user)
                new_session = True
        if session is None:
            return gws_error(*NOT_AUTHENTICATED)
        response = gws_ok({"user": self._user_json(session.user)}, **csrf_headers(state, session))
        if new_session:
            response.set_cookie(SESSION_COOKIE, session.session_id, path="/", httponly=True)
        return response

    async def get_devices(self, request: web.Request) -> web.Response:
        session = session_of(self._state, request)
        if session is None:
            return gws_error(*NOT_AUTHENTICATED)
        device = self._state.devices[session.user]
        body = {
            "devices": [
                {
                    "id": device.device_id,
                    "deviceState": "Active",
                    "userState": {"state": "Ready"},
                    "phoneNumber": device.phone_number,
                    "e164Number": device.phone_number,
                    "telephonyNetwork": "Private",
                    "doNotDisturb": "Off",
                    "voiceEnvironmentUri": "http://localhost/api/v2/system/environments/1",
                    "capabilities": [],
                    "calls": [],
                }
            ]
        }
        return gws_ok(body, **csrf_headers(self._state, session))

    async def post_me(self, request: web.Request) -> web.Response:
        state = self._state
        session = session_of(state, request)
        if session is None:
            return gws_error(*NOT_AUTHENTICATED)
        if not csrf_ok(state, request, session):
            return gws_error(*BAD_CSRF)
        body = json_object(await request.read())
        if body is None:
            return gws_error(400, 10, "Request body is not a JSON object")
        operation = body.get("operationName")
        if operation is None:
            return gws_error(400, 1, "Missing parameter: operationName")
        if operation == "StartContactCenterSession":
            channels = body.get("channels")
            if not isinstance(channels, list) or not channels:
                return gws_error(400, 1, "Missing parameter: channels")
            session.cc_session = True
            state.ledger.count("cc_session_starts")
            return gws_ok()
        if operation == "EndContactCenterSession":
            state.ledger.count("cc_session_ends")
            self._end(session)
            return gws_ok()
        return gws_error(400, 10, f"Invalid operationName: {operation}")

    def _end(self, session: HttpSession) -> None:
        self._state.sessions.end(session)

    def _user_json(self, user: str) -> dict[str, Any]:
        user_id = self._state.user_ids[user]
        return {
            "id": user_id,
            "userName": user,
            "firstName": user.capitalize(),
            "lastName": "Simulated",
            "roles": ["ROLE_AGENT"],
            "enabled": True,
            "changePasswordOnFirstLogin": False,
            "path": f"/users/{user_id}",
            "uri": f"/api/v2/users/{user_id}",
        }
