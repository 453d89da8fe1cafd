"""Small HTTP pieces shared by the REST and CometD handlers: GWS error bodies, auth checks."""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import socket
import struct
from typing import Any

from aiohttp import web

from batch_cancel.simulator.sessions import SESSION_COOKIE, HttpSession
from batch_cancel.simulator.state import SimState

__all__ = [
    "CSRF_HEADER",
    "basic_credentials",
    "csrf_headers",
    "csrf_ok",
    "drop_connection",
    "gateway_answer",
    "gws_error",
    "gws_ok",
    "hold_silently",
    "json_object",
    "login_page",
    "session_of",
]

CSRF_HEADER = "X-CSRF-TOKEN"

NOT_AUTHENTICATED = (401, 20, "Not authenticated")
BAD_CSRF = (403, 3, "Missing or invalid Csrf token")


def gws_ok(body: dict[str, Any] | None = None, **headers: str) -> web.Response:
    return web.json_response({"statusCode": 0, **(body or {})}, headers=headers or None)


def gws_error(http_status: int, status_code: int, message: str, **headers: str) -> web.Response:
    # No WWW-Authenticate on 401: browsers and some clients would loop on a Basic prompt.
    return web.json_response(
        {"statusCode": status_code, "statusMessage": message},
        status=http_status,
        headers=headers or None,
    )


def login_page(status: int) -> web.Response:
    """Not GWS: the HTML page a reverse proxy or an SSO gateway answers in front of it."""
    html = (f"<!DOCTYPE html><html><head><title>{status}</title></head>"
            f"<body><h1>{status}</h1><p>The proxy says no.</p></body></html>")  # fmt: skip
    return web.Response(status=status, content_type="text/html", text=html)


def gateway_answer(status: int, body: str) -> web.Response:
    """Not GWS: a load balancer's or proxy's own error (502, 504, 408...), an HTML page
    (``body="html"``) or nothing at all (``"empty"``)."""
    if body == "empty":
        return web.Response(status=status)
    html = (f"<html><head><title>{status}</title></head><body><center><h1>{status}</h1>"
            "</center><hr><center>gateway</center></body></html>")  # fmt: skip
    return web.Response(status=status, content_type="text/html", text=html)


# How often a held connection looks whether its client gave up or the server stops.
_HOLD_CHECK = 0.2


async def hold_silently(request: web.Request, stopping: asyncio.Event) -> web.Response:
    """Keep the connection open and never answer, until the client gives up or the
    server stops (then the connection is reset, never answered)."""
    while not stopping.is_set():
        transport = request.transport
        if transport is None or transport.is_closing():
            break
        try:
            await asyncio.wait_for(stopping.wait(), _HOLD_CHECK)
        except TimeoutError:
            continue
    drop_connection(request)
    return web.Response()


def session_of(state: SimState, request: web.Request) -> HttpSession | None:
    return state.sessions.lookup(request.cookies.get(SESSION_COOKIE))


def csrf_ok(state: SimState, request: web.Request, session: HttpSession) -> bool:
    if not state.config.csrf:
        return True
    return request.headers.get(CSRF_HEADER) == session.csrf_token


def csrf_headers(state: SimState, session: HttpSession) -> dict[str, str]:
    if not state.config.csrf:
        return {}
    return {"X-CSRF-HEADER": CSRF_HEADER, CSRF_HEADER: session.csrf_token}


def basic_credentials(request: web.Request) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic`` header; ("", "") if malformed."""
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return ("", "")
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return ("", "")
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else ("", "")


def drop_connection(request: web.Request) -> None:
    """Cut the TCP connection with a reset, so the client gets no answer at all."""
    transport = request.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def json_object(raw: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is anything else."""
    try:
        body = json.loads(raw or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return body if isinstance(body, dict) else None
