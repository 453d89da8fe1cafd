"""The one place where HTTP answers and transport exceptions become our exceptions.

Besides its class (what to do next), every :class:`RequestError` made here says whether
the attempt **may have been processed** (``may_have_been_processed``), per the protocol
notes: no HTTP answer after the request was (possibly) written, a proxy's or gateway's
408/500/502/504 that is not GWS JSON, and statusCode 9 may have been; a refused
connection, GWS's own JSON error and a proxy's refusal (503/429 page) have not.
statusCode 7 "partial success" is an acceptance: the outcome comes over CometD.
``Retry-After`` is read here too, finite and capped (``RETRY_AFTER_CAP``), so no caller
can pause forever or log a non-finite number.
"""

from __future__ import annotations

import email.utils
import math
import ssl
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import MultiMapping

from batch_cancel.exceptions import (
    GwsMisconfigured,
    RequestError,
    RequestRejected,
    SessionExpired,
    TlsCertificateError,
    TransientError,
)
from batch_cancel.gws import json_codec

__all__ = [
    "RETRY_AFTER_CAP",
    "TRANSPORT_ERRORS",
    "Reply",
    "body_json",
    "certificate_problem",
    "error_for_response",
    "not_the_gws_api",
    "parse_retry_after",
    "probe_verdict",
    "translate_transport_error",
    "transport_failure",
]

# statusCode 4 is GWS's "internal error"; with 503 it means the voice service is
# briefly away, which is worth waiting for.
_TRANSIENT_STATUS_CODES = {4, 9}
_PARTIAL_SUCCESS = 7
_PROCESSING_INCOMPLETE = 9
# What a load balancer, SSO gateway or proxy answers when GWS behind it was too slow or
# its connection broke (or, 500, an error page thrown mid-way): the request may have
# reached GWS and been carried out. Their 503 and 429 say the request was not forwarded.
_GATEWAY_MAYBE_PROCESSED = frozenset({408, 500, 502, 504})
# The longest pause a Retry-After may ask for: a server that asks for more (or for
# "inf") is asked again after this long, within the run's --max-outage.
RETRY_AFTER_CAP = 60.0

# What a request can raise below HTTP: aiohttp's errors and its timeouts.
TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError)


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 3x (one per POST)
class Reply:
    """An HTTP answer, read in full (GWS answers are small JSON bodies)."""

    status: int
    reason: str
    headers: MultiMapping[str]  # case-insensitive; getall("Set-Cookie")
    content: bytes


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), within
    0..RETRY_AFTER_CAP; None when absent or unreadable (NaN included)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds):
        return None
    return min(max(0.0, seconds), RETRY_AFTER_CAP)


def body_json(reply: Reply) -> dict[str, Any]:
    try:
        data = json_codec.loads(reply.content) if reply.content else {}
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
    status_code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
    http = reply.status
    if status_code == _PARTIAL_SUCCESS:
        return None  # accepted; what became of the record comes over CometD
    if http < 300 and status_code in (0, None):
        if not body and _is_html(reply):
            # a proxy or an SSO gateway in front of GWS answered (its login page, often
            # HTTP 200, after a redirect): GWS never saw the request, so it is no
            # acceptance. As a lost session: the re-login tells whether GWS is back
            # (the request then goes again, same referenceId) or still hidden (exit 2).
            # A JSON object under a wrong content type is still GWS speaking.
            return SessionExpired(f"HTTP {http}: an HTML page answered, not the GWS API",
                                  http_status=http)  # fmt: skip
        return None
    message = str(body.get("statusMessage") or reply.reason or "")
    kwargs: dict[str, Any] = {"http_status": http, "status_code": status_code}
    text = f"HTTP {http}" + (f" statusCode {status_code}" if status_code is not None else "")
    if message:
        text += f": {message}"
    if 300 <= http < 400 and status_code is None:
        # a redirect not followed (the record POSTs' own client follows none): a gateway
        # sending us to its login page, so no acceptance; as a lost session, like the
        # login page itself (above)
        where = reply.headers.get("Location", "")
        return SessionExpired(f"HTTP {http}: redirected{' to ' + where if where else ''}, not the GWS API "
                              "answering", http_status=http)  # fmt: skip
    if status_code == _PROCESSING_INCOMPLETE:
        return TransientError(text + " (GWS may have carried it out)", may_have_been_processed=True,
                              retry_after=parse_retry_after(reply.headers.get("Retry-After")),
                              **kwargs)  # fmt: skip
    if http == 401 or status_code == 20:
        return SessionExpired(text, **kwargs)
    if http == 403 and (status_code == 3 or "csrf" in message.lower()):
        return SessionExpired(text, **kwargs)
    if status_code is None and http in _GATEWAY_MAYBE_PROCESSED:
        # no GWS JSON: a proxy or gateway in front of GWS answered, after GWS may have
        # done the work
        return TransientError(f"{text} (not GWS answering: a proxy or gateway; GWS may have "
                              "carried it out)", may_have_been_processed=True,
                              retry_after=parse_retry_after(reply.headers.get("Retry-After")),
                              **kwargs)  # fmt: skip
    if http in (408, 429) or http >= 500 or status_code in _TRANSIENT_STATUS_CODES:
        retry_after = parse_retry_after(reply.headers.get("Retry-After"))
        return TransientError(text, retry_after=retry_after, **kwargs)
    return RequestRejected(text, **kwargs)


def _is_html(reply: Reply) -> bool:
    return reply.headers.get("Content-Type", "").split(";")[0].strip().lower() == "text/html"


def not_the_gws_api(reply: Reply, base_url: str) -> GwsMisconfigured | TransientError | None:
    """A log-in answer that is not GWS speaking, or None.

    A reverse proxy or an SSO gateway in front of GWS answers with an HTML page:
    its error page while GWS is down (5xx: worth waiting for, so transient), its own
    login form or a maintenance page (any other status: no retry will change that).
    A success whose body is no JSON object is not GWS either. Taking such a page for
    a login would fail later as a puzzling "HTTP 401".
    """
    kind = reply.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if not _is_html(reply) and (reply.status >= 300 or isinstance(_json_or_none(reply), dict)):
        return None
    message = (f"the server at {base_url} answered {kind or 'no content type'}, not the GWS API "
               f"(status {reply.status})")  # fmt: skip
    if reply.status >= 500:
        return TransientError(message, http_status=reply.status)
    return GwsMisconfigured(message)


def _json_or_none(reply: Reply) -> Any:
    try:
        return json_codec.loads(reply.content)
    except ValueError:
        return None


def translate_transport_error(exc: BaseException) -> TransientError:
    """aiohttp's network-level failures: processed maybe, unless no connection was made."""
    name = type(exc).__name__
    if isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ClientError):
        name = "Timeout"  # asyncio's own timeout says nothing by itself
    detail = str(exc)
    # nothing reached GWS (no connection was made): such failures measure an outage,
    # not a record's luck, and cannot have been processed
    unreachable = isinstance(exc, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError))
    # anything else broke after the request was (possibly) written: a reset, a server
    # that disconnected, a read timeout; GWS may have carried it out
    unanswered = not unreachable and isinstance(exc, TimeoutError)
    if unanswered:
        return transport_failure("no HTTP answer within the request timeout", unreachable=False,
                                 unanswered=True)  # fmt: skip
    return transport_failure(f"{name}: {detail}" if detail else name, unreachable=unreachable)


def transport_failure(text: str, *, unreachable: bool, unanswered: bool = False) -> TransientError:
    """A request that got no HTTP answer. ``unreachable``: no connection was made, so
    nothing was written (an outage's sign, never processed); otherwise the request may
    have been written and carried out, and ``unanswered`` says it was never answered."""
    error = TransientError(text, may_have_been_processed=not unreachable)
    error.unreachable = unreachable
    error.unanswered = unanswered and not unreachable
    return error


# OpenSSL's X509_V_ERR_* codes, in the words an operator looks for
_VERIFY_REASONS = {
    2: "unknown CA", 18: "unknown CA", 19: "unknown CA", 20: "unknown CA", 21: "unknown CA",
    9: "not yet valid", 10: "expired", 62: "wrong name", 64: "wrong name",
}  # fmt: skip
_HINTS = {
    "unknown CA": "give the issuing CA with --ca-bundle (or GWS_CA_BUNDLE)",
    "wrong name": "the URL's host is not a name the certificate was issued for",
}
# alerts a server sends when it refuses the client certificate (mutual TLS)
_CLIENT_CERT_ALERTS = {
    "CERTIFICATE_REQUIRED": "the server requires a client certificate (--client-cert, --client-key)",
    "HANDSHAKE_FAILURE": "the server refused the TLS handshake (a client certificate may be required)",
    "BAD_CERTIFICATE": "the server refused our client certificate",
    "UNKNOWN_CA": "the server does not trust the CA of our client certificate",
    "CERTIFICATE_UNKNOWN": "the server refused our client certificate",
    "CERTIFICATE_EXPIRED": "the server says our client certificate has expired",
}


def certificate_problem(exc: BaseException, url_host: str) -> TlsCertificateError | None:
    """The certificate failure behind a transport error, as one line naming the host and why.

    ``url_host`` (host:port) names the server when the exception does not. None when
    the error has nothing to do with certificates.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    host = url_host
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, aiohttp.ClientConnectorCertificateError):
            host = f"{current.host}:{current.port}"
            current = current.certificate_error
            continue
        if isinstance(current, ssl.SSLCertVerificationError):
            detail = current.verify_message or current.reason or str(current)
            reason = _VERIFY_REASONS.get(current.verify_code, "not trusted")
            hint = _HINTS.get(reason)
            return TlsCertificateError(
                f"TLS certificate of {host} refused: {reason} ({detail})" + (f"; {hint}" if hint else "")
            )
        if isinstance(current, ssl.SSLError):
            text = f"{current.reason or ''} {current}".upper()
            for alert, words in _CLIENT_CERT_ALERTS.items():
                if f"ALERT_{alert}" in text:
                    return TlsCertificateError(f"TLS with {host} refused: {words} ({current.reason})")
        inner = current.os_error if isinstance(current, aiohttp.ClientConnectorError) else None
        current = inner if inner is not None and inner is not current else (
            current.__cause__ or current.__context__
        )
    return None


def probe_verdict(outcome: BaseException | str | None, host: str,
                  client_cert: bool) -> TlsCertificateError | None:  # fmt: skip
    """What :func:`batch_cancel.gws.network.tls_probe` found, as our error (None: not TLS)."""
    if isinstance(outcome, BaseException):
        return certificate_problem(outcome, host)
    if outcome == "closed":
        why = ("refuses our client certificate" if client_cert
               else "requires a client certificate (--client-cert, --client-key)")  # fmt: skip
        return TlsCertificateError(
            f"TLS with {host} refused: the server closed the connection right after the TLS "
            f"handshake, before any request: it {why}"
        )
    return None
