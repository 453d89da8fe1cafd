"""The cookies of the one GWS origin a run talks to (JSESSIONID, a load balancer's).

aiohttp's cookie jar is made for a browser's many origins: on every request it
filters the whole jar by domain, path, expiry and security, then rebuilds the
``Cookie`` header through ``http.cookies``. A run talks to one origin (its base
URL), so that work is the same every time; at 64 requests in flight it cost about
a tenth of the client's CPU per POST (measured with py-spy, see benchmarks/). This
store keeps the cookies that origin set, in the order it set them, and answers a
ready ``Cookie`` header that changes only when a response sets a cookie.

What it leaves out, on purpose: ``Domain`` and ``Path`` scoping (every request
goes to the same origin, under ``/api/v2``) and ``Secure`` (sending a cookie back
over the scheme it came on). It honours deletion (``Max-Age`` zero or less, or an
``Expires`` in the past) and a later ``Max-Age``/``Expires`` without a clock of its
own: an expiring session is noticed by GWS answering "not authenticated", which a
re-login mends.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from email.utils import parsedate_to_datetime
from http.cookies import CookieError, SimpleCookie

__all__ = ["CookieStore"]


class CookieStore:
    """Name -> value for one origin, and the ``Cookie`` header that sends them back."""

    __slots__ = ("_header", "_values")

    def __init__(self) -> None:
        self._values: dict[str, str] = {}
        self._header = ""

    @property
    def header(self) -> str:
        """``name=value; name=value`` ("" when there is none)."""
        return self._header

    def as_dict(self) -> dict[str, str]:
        return dict(self._values)

    def clear(self) -> None:
        self._values.clear()
        self._header = ""

    def take(self, set_cookie_headers: Iterable[str], *, now: float | None = None) -> bool:
        """Apply ``Set-Cookie`` header values; answers whether anything changed."""
        changed = False
        for raw in set_cookie_headers:
            parsed = SimpleCookie()
            try:
                parsed.load(raw)
            except CookieError:
                continue  # a malformed cookie is ignored, as browsers do
            for name, morsel in parsed.items():
                if _expired(morsel["max-age"], morsel["expires"], now):
                    changed |= self._values.pop(name, None) is not None
                elif self._values.get(name) != morsel.value:
                    self._values[name] = morsel.value
                    changed = True
        if changed:
            self._header = "; ".join(f"{k}={v}" for k, v in self._values.items())
        return changed


def _expired(max_age: str, expires: str, now: float | None) -> bool:
    if max_age:
        try:
            return int(max_age) <= 0
        except ValueError:
            return False  # RFC 6265: an unparsable Max-Age is ignored
    if expires:
        try:
            when = parsedate_to_datetime(expires).timestamp()
        except (TypeError, ValueError, IndexError):
            return False
        return when <= (time.time() if now is None else now)
    return False
