"""The one place where HTTP answers and transport exceptions become our exceptions."""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from batch_cancel.exceptions import (
    RequestError,
    RequestRejected,
    SessionExpired,
    TransientError,
)

__all__ = [
    "TRANSPORT_ERRORS",
    "Reply",
    "body_json",
    "error_for_response",
    "parse_retry_after",
    "translate_transport_error",
]

# statusCode 4 is GWS's "internal error"; with 503 it means the voice service is
# briefly away, which is worth waiting for.
_TRANSIENT_STATUS_CODES = {4, 9}

# What a request can raise below HTTP: aiohttp's errors and its timeouts.
TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError)


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer, read in full (GWS answers are small JSON bodies)."""

    status: int
    reason: str
    headers: Mapping[str, str]
    content: bytes


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


def body_json(reply: Reply) -> dict[str, Any]:
    try:
        data = json.loads(reply.content) if reply.content else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def error_for_response(reply: Reply, body: dict[str, Any] | None = None) -> RequestError | None:
    """None when GWS accepted the request; otherwise the error to raise.

    ``body`` is the already-decoded JSON body, when the caller has it.
    """
    if body is None:
        body = body_json(reply)
    raw_code = body.get("statusCode")
    status_code = raw_code if isinstance(raw_code, int) else None
    http = reply.status
    if http < 300 and status_code in (0, None):
        return None
    message = str(body.get("statusMessage") or reply.reason or "")
    kwargs: dict[str, Any] = {"http_status": http, "status_code": status_code}
    text = f"HTTP {http}" + (f" statusCode {status_code}" if status_code is not None else "")
    if message:
        text += f": {message}"
    if http == 401 or status_code == 20:
        return SessionExpired(text, **kwargs)
    if http == 403 and (status_code == 3 or "csrf" in message.lower()):
        return SessionExpired(text, **kwargs)
    if http == 429 or http >= 500 or status_code in _TRANSIENT_STATUS_CODES:
        retry_after = parse_retry_after(reply.headers.get("Retry-After"))
        return TransientError(text, retry_after=retry_after, **kwargs)
    return RequestRejected(text, **kwargs)


def translate_transport_error(exc: BaseException) -> TransientError:
    """Network-level failures: the request may or may not have been processed."""
    name = type(exc).__name__
    if isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ClientError):
        name = "Timeout"  # asyncio's own timeout says nothing by itself
    detail = str(exc)
    error = TransientError(f"{name}: {detail}" if detail else name)
    # nothing reached GWS: such failures measure an outage, not a record's luck
    error.unreachable = isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError))
    return error
