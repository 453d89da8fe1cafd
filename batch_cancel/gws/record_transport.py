"""The HTTP client that carries CancelRecord POSTs on a plain-http route: pyreqwest (Rust).

One run posts every record through one client; at 64 requests in flight the client's
own CPU per POST is most of the tool's send phase. Measured on loopback against the
simulator (``python -m benchmarks.http_clients``, 64 in flight, CPU of the client
process per POST), pyreqwest costs about 0.7x of aiohttp's; the other async clients
measured were no better than aiohttp (see the README's Benchmarks section).

Where it is used, and where not (``GwsSession`` decides):

* **plain http only.** Over https the run keeps one TLS stack, OpenSSL's through
  aiohttp: the CA bundle, ``SSL_CERT_FILE``, client certificates and verification are
  read for it, ``preflight`` reports it and a refused certificate becomes our one-line
  error from its exceptions. A second stack (rustls) could accept a certificate the log-in
  refused, or the reverse, in the middle of a run.
* **not for a fleet worker.** Its write fence asks the lease once more when the
  POST's connection is in hand (aiohttp's connection trace); this client has no such hook.
* Log-ins, the CometD long poll and every other request stay on aiohttp.

What it keeps the same as aiohttp's path: the proxy the route chose (never the
environment's: NO_PROXY was decided already), redirects followed (a gateway's login page
is then seen as HTML, as on aiohttp), the run's total and connect timeouts, HTTP/1.1,
no cookie jar (``CookieStore`` owns the cookies; its ``Set-Cookie`` answers are handed
back). pyreqwest's exceptions become ours in ``gws/responses.py``, the one place for that.
"""

from __future__ import annotations

import http
import urllib.parse
from collections.abc import Mapping
from datetime import timedelta

from pyreqwest.client import Client, ClientBuilder
from pyreqwest.http import HeaderMap
from pyreqwest.proxy import ProxyBuilder

from batch_cancel import __version__
from batch_cancel.gws.responses import Reply

__all__ = ["RecordTransport"]


class RecordTransport:
    """POSTs over pyreqwest; made inside the running loop, closed with the session."""

    def __init__(self, *, proxy: str | None, total_timeout: float, connect_timeout: float,
                 max_connections: int, default_headers: Mapping[str, str]) -> None:  # fmt: skip
        builder = (
            ClientBuilder()
            .http1_only()
            .max_connections(max_connections)
            .timeout(timedelta(seconds=total_timeout))
            .connect_timeout(timedelta(seconds=connect_timeout))
            .follow_redirects(True)
            .max_redirects(10)  # aiohttp's default
            .default_cookie_store(False)
            .user_agent(f"batch-cancel/{__version__}")
            .default_headers(_header_map(default_headers))
        )
        builder = builder.proxy(_proxy(proxy)) if proxy is not None else builder.no_proxy()
        self._client: Client = builder.build()
        self._headers_seen: Mapping[str, str] | None = None
        self._header_map = HeaderMap()

    async def post(self, url: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """One POST, read in full; transport failures raise pyreqwest's errors."""
        if headers is not self._headers_seen:
            # the session hands the same dict until the CSRF token or a cookie changes:
            # converted once per change, not once per POST
            self._header_map = _header_map(headers)
            self._headers_seen = headers
        response = await self._client.post(url).headers(self._header_map).body_bytes(body).build().send()
        content = bytes(await response.bytes())
        status = response.status
        # pyreqwest's map is case-insensitive, with getall() for Set-Cookie, as aiohttp's
        return Reply(status, _REASONS.get(status, ""), response.headers, content)

    async def aclose(self) -> None:
        await self._client.close()


_REASONS = {status.value: status.phrase for status in http.HTTPStatus}
# values no repr of a request may show (pyreqwest masks them)
_SENSITIVE = frozenset({"authorization", "cookie", "proxy-authorization"})


def _header_map(headers: Mapping[str, str]) -> HeaderMap:
    header_map = HeaderMap()
    for name, value in headers.items():
        header_map.append(name, value, is_sensitive=name.lower() in _SENSITIVE or "csrf" in name.lower())
    return header_map


def _proxy(url: str) -> ProxyBuilder:
    """The route's proxy for http targets, its credentials (percent-decoded) as Basic."""
    parts = urllib.parse.urlsplit(url)
    proxy = ProxyBuilder.http(url)
    if parts.username is not None:
        proxy = proxy.basic_auth(urllib.parse.unquote(parts.username),
                                 urllib.parse.unquote(parts.password or ""))  # fmt: skip
    return proxy
