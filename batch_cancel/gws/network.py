"""How a connection to GWS is made: the TLS context and the proxy, for REST and CometD alike.

Trust store, in order: ``--ca-bundle`` (env ``GWS_CA_BUNDLE``), which *replaces* the
default store as curl's ``--cacert`` does; else ``SSL_CERT_FILE`` / ``SSL_CERT_DIR``
(OpenSSL reads them when the default store is loaded); else the system's store.
A client certificate (``--client-cert``/``--client-key``) is offered to servers that
ask for one (mutual TLS); an encrypted key's passphrase comes from the environment
(``GWS_CLIENT_KEY_PASSWORD``), never a prompt, since nobody answers one under cron.

Proxy: ``--proxy URL``, else the environment as curl reads it: ``https_proxy`` /
``HTTPS_PROXY`` for https URLs, ``http_proxy`` for http URLs (lower case only: curl
ignores ``HTTP_PROXY``, which a CGI-style environment lets a request header set),
``all_proxy`` / ``ALL_PROXY`` for both, and ``no_proxy`` / ``NO_PROXY``
(comma-separated hosts, domain suffixes, ``*``) to bypass it.
Credentials (``http://user:pass@proxy:3128``) come from the environment only; every
description of a proxy that reaches a log or ``preflight`` shows them as ``***``.

The decisions are made here, explicitly, rather than by aiohttp's ``trust_env``:
``preflight`` can then say which proxy and which trust store a run uses, and the
CometD long polls (``gws/long_poll.py``) get exactly the same.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from batch_cancel.config import GwsConfig
from batch_cancel.exceptions import ConfigError

__all__ = [
    "KEY_PASSWORD_ENV",
    "Route",
    "host_port",
    "mask_proxy",
    "proxy_for",
    "proxy_secrets",
    "route_for",
    "tls_context",
    "tls_probe",
    "trust_store",
]

KEY_PASSWORD_ENV = "GWS_CLIENT_KEY_PASSWORD"


@dataclass(frozen=True)
class Route:
    """How to reach one URL: the TLS setting and the proxy (None: straight there)."""

    ssl: ssl.SSLContext | bool
    proxy: str | None = field(default=None, repr=False)  # may carry credentials
    proxy_source: str = ""  # "--proxy", "HTTPS_PROXY", ...

    @property
    def proxy_shown(self) -> str:
        """The proxy as logs may show it: credentials masked."""
        if self.proxy is None:
            return "none (direct)"
        return f"{mask_proxy(self.proxy)} (from {self.proxy_source})"


def host_port(url: str) -> str:
    """``https://gws.example.com/api`` → ``gws.example.com:443``: how errors name a server."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def mask_proxy(url: str) -> str:
    """``http://user:pass@host:3128`` → ``http://***@host:3128``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, "***@" + host, parts.path, parts.query, parts.fragment))


def proxy_for(url: str, explicit: str | None = None,
              environ: Mapping[str, str] | None = None) -> tuple[str | None, str]:  # fmt: skip
    """The proxy for ``url`` and where it came from; ``(None, reason)`` for a direct connection.

    ``explicit`` (``--proxy``) wins over the environment, and NO_PROXY applies to
    the environment's proxies only (curl's ``--proxy`` also ignores NO_PROXY unless
    ``--noproxy`` is given; a proxy named on purpose is used on purpose).
    """
    if explicit:
        return explicit, "--proxy"
    env = os.environ if environ is None else environ
    scheme = urlsplit(url).scheme.lower()
    host = urlsplit(url).hostname or ""
    # lower case first, as curl reads them
    names = ["https_proxy", "HTTPS_PROXY"] if scheme == "https" else ["http_proxy"]
    names += ["all_proxy", "ALL_PROXY"]
    for name in names:
        value = env.get(name)
        if not value:
            continue
        if _bypassed(host, env):
            return None, "NO_PROXY"
        return value, name
    return None, ""


def proxy_secrets(explicit: str | None = None) -> list[str]:
    """Passwords in any proxy URL a run may use: the log filter blanks them, come what may."""
    # HTTP_PROXY too: it is never used, but a password in it must not reach a log either
    names = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")
    urls = [explicit or "", *(os.environ.get(n, "") for n in names)]
    out = []
    for url in urls:
        try:
            password = urlsplit(url).password
        except ValueError:
            continue
        if password:
            out.append(password)
    return out


def _bypassed(host: str, env: Mapping[str, str]) -> bool:
    no_proxy = env.get("no_proxy") or env.get("NO_PROXY") or ""
    if not no_proxy:
        return False
    # the standard library's reading of NO_PROXY: hosts, domain suffixes, '*'
    # (public in urllib.request, though missing from its type stubs); imported here:
    # 25 ms of every run's start-up otherwise
    import urllib.request

    return bool(urllib.request.proxy_bypass_environment(host, {"no": no_proxy}))  # type: ignore[attr-defined]


def trust_store(config: GwsConfig) -> str:
    """Which certificates a run trusts, in words (for preflight and logs)."""
    if not config.verify_tls:
        return "none: certificates are not verified (--insecure)"
    if config.ca_bundle is not None:
        return f"{config.ca_bundle} (--ca-bundle)"
    paths = ssl.get_default_verify_paths()
    if os.environ.get(paths.openssl_cafile_env):
        return f"{os.environ[paths.openssl_cafile_env]} ({paths.openssl_cafile_env})"
    if os.environ.get(paths.openssl_capath_env):
        return f"{os.environ[paths.openssl_capath_env]} ({paths.openssl_capath_env})"
    return f"the system's ({paths.cafile or paths.capath or paths.openssl_cafile})"


def tls_context(config: GwsConfig) -> ssl.SSLContext | bool:
    """The context every connection to GWS uses; ``False`` only with ``--insecure``.

    Unreadable or mismatched files are a configuration error (exit 2), found before
    anything is sent.
    """
    if not config.verify_tls and config.client_cert is None:
        return False
    try:
        if config.ca_bundle is not None:
            _readable(config.ca_bundle, "--ca-bundle")
            context = ssl.create_default_context(cafile=str(config.ca_bundle))
        else:
            context = ssl.create_default_context()
    except ssl.SSLError as exc:
        raise ConfigError(f"--ca-bundle {config.ca_bundle}: no usable certificate ({exc.reason})") from None
    if not config.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.client_key is not None and config.client_cert is None:
        raise ConfigError("--client-key needs --client-cert")
    if config.client_cert is not None:
        _readable(config.client_cert, "--client-cert")
        if config.client_key is not None:
            _readable(config.client_key, "--client-key")
        passphrase = os.environ.get(KEY_PASSWORD_ENV, "")
        try:
            context.load_cert_chain(
                str(config.client_cert),
                str(config.client_key) if config.client_key else None,
                # a callable, so OpenSSL never prompts on a terminal for an encrypted key
                password=lambda: passphrase,
            )
        except ssl.SSLError as exc:
            raise ConfigError(
                f"--client-cert {config.client_cert}: cannot load the certificate and key "
                f"({exc.reason or exc}); an encrypted key's passphrase goes in {KEY_PASSWORD_ENV}"
            ) from None
    return context


def _readable(path: Path, flag: str) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: {exc.strerror or exc}") from None


def route_for(url: str, config: GwsConfig, context: ssl.SSLContext | bool | None = None) -> Route:
    """TLS and proxy for one of the run's URLs (REST base URL or CometD URL)."""
    proxy, source = proxy_for(url, config.proxy)
    if proxy is not None and not proxy.startswith(("http://", "https://")):
        shown = mask_proxy(proxy)
        raise ConfigError(f"proxy {shown} (from {source}) must be an http:// or https:// URL")
    return Route(ssl=tls_context(config) if context is None else context, proxy=proxy,
                 proxy_source=source)  # fmt: skip


async def tls_probe(url: str, route: Route, timeout: float = 3.0) -> BaseException | str | None:
    """Why a server drops our TLS connections, when a request failed with a bare disconnect.

    A TLS 1.3 server that wants a client certificate says so in an alert sent *after*
    the handshake; a client that has already written its request usually sees only a
    reset, the alert lost with it. This opens one connection (through the proxy, when
    there is one), completes the handshake, sends nothing and reads: the alert then
    arrives intact (an ``ssl.SSLError``), or the server closes at once (``"closed"``).
    ``None``: the server kept the connection open, so TLS is not the problem.
    """
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or 443
    context = route.ssl if isinstance(route.ssl, ssl.SSLContext) else ssl.create_default_context()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            if route.proxy is None:
                reader, writer = await asyncio.open_connection(host, port, ssl=context)
            else:
                proxy = urlsplit(route.proxy)
                if proxy.scheme != "http":
                    return None
                reader, writer = await asyncio.open_connection(proxy.hostname, proxy.port or 80)
                auth = ""
                if proxy.username is not None:
                    token = base64.b64encode(f"{proxy.username}:{proxy.password or ''}".encode()).decode()
                    auth = f"Proxy-Authorization: Basic {token}\r\n"
                writer.write(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n{auth}\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                if head.split(b" ", 2)[1:2] != [b"200"]:
                    return None
                await writer.start_tls(context, server_hostname=host)
            data = await reader.read(1)
        return "closed" if not data else None
    except ssl.SSLError as exc:
        return exc
    except (TimeoutError, OSError, asyncio.IncompleteReadError, IndexError):
        return None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
