"""The one place where HTTP answers and httpx exceptions become our exceptions."""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import httpx

from batch_cancel.exceptions import (
    RequestError,
    RequestRejected,
    SessionExpired,
    TransientError,
)

__all__ = ["error_for_response", "parse_retry_after", "translate_transport_error"]

# statusCode 4 is GWS's "internal error"; with 503 it means the voice service is
# briefly away, which is worth waiting for.
_TRANSIENT_STATUS_CODES = {4, 9}


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


def body_json(response: httpx.Response) -> dict[str, Any]:
    try:
        data = json.loads(response.content) if response.content else {}
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def error_for_response(response: httpx.Response) -> RequestError | None:
    """None when GWS accepted the request; otherwise the error to raise."""
    body = body_json(response)
    raw_code = body.get("statusCode")
    status_code = raw_code if isinstance(raw_code, int) else None
    message = str(body.get("statusMessage") or response.reason_phrase or "")
    http = response.status_code
    kwargs: dict[str, Any] = {"http_status": http, "status_code": status_code}
    if http < 300 and status_code in (0, None):
        return None
    text = f"HTTP {http}" + (f" statusCode {status_code}" if status_code is not None else "")
    if message:
        text += f": {message}"
    if http == 401 or status_code == 20:
        return SessionExpired(text, **kwargs)
    if http == 403 and (status_code == 3 or "csrf" in message.lower()):
        return SessionExpired(text, **kwargs)
    if http == 429 or http >= 500 or status_code in _TRANSIENT_STATUS_CODES:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return TransientError(text, retry_after=retry_after, **kwargs)
    return RequestRejected(text, **kwargs)


def translate_transport_error(exc: httpx.HTTPError) -> TransientError:
    """Network-level failures: the request may or may not have been processed."""
    name = type(exc).__name__
    error = TransientError(f"{name}: {exc}" if str(exc) else name)
    # nothing reached GWS: such failures measure an outage, not a record's luck
    error.unreachable = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    return error
