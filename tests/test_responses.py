"""What an HTTP answer means (gws/responses.py): the translation every request goes through."""

from __future__ import annotations

import pytest

from batch_cancel.exceptions import RequestRejected, SessionExpired, TransientError
from batch_cancel.gws.responses import Reply, error_for_response

JSON = {"Content-Type": "application/json"}
HTML = {"Content-Type": "text/html; charset=utf-8"}
PAGE = b"<!DOCTYPE html><html><body><form action='/sso/login'>Sign in</form></body></html>"


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [(200, JSON, b'{"statusCode":0}'), (200, {}, b""), (204, JSON, b""),
     (200, HTML, b'{"statusCode":0}')],  # JSON under a wrong content type: still GWS speaking
)  # fmt: skip
def test_what_gws_accepted(status: int, headers: dict[str, str], body: bytes) -> None:
    assert error_for_response(Reply(status, "OK", headers, body)) is None


def test_an_html_page_with_200_is_no_acceptance() -> None:
    # an SSO gateway's login page (after a followed redirect): GWS never saw the request
    error = error_for_response(Reply(200, "OK", HTML, PAGE))
    assert isinstance(error, SessionExpired) and "HTML page" in str(error)
    assert error.http_status == 200 and error.status_code is None


@pytest.mark.parametrize("status", [301, 302, 303, 307])
def test_a_redirect_not_followed_is_no_acceptance(status: int) -> None:
    # the record POSTs' own client follows no redirect: a gateway sending us to its login
    # page is a lost session (the re-login then finds whether GWS is behind it), never
    # an acceptance nor a rejection of the record
    error = error_for_response(Reply(status, "Found", {"Location": "/sso/login"}, b""))
    assert isinstance(error, SessionExpired) and "redirected to /sso/login" in str(error)
    assert (error.http_status, error.may_have_been_processed) == (status, False)


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [(401, b'{"statusCode":20,"statusMessage":"Not authenticated"}', SessionExpired),
     (403, b'{"statusCode":3,"statusMessage":"Missing or invalid Csrf token"}', SessionExpired),
     (503, b'{"statusCode":4,"statusMessage":"Voice service is not available at this time"}', TransientError),
     (429, b"", TransientError),
     (400, b'{"statusCode":1,"statusMessage":"Missing parameter: phoneNumber"}', RequestRejected),
     (200, b'{"statusCode":2,"statusMessage":"Invalid for current state"}', RequestRejected)],
)  # fmt: skip
def test_what_each_error_means(status: int, body: bytes, kind: type[Exception]) -> None:
    error = error_for_response(Reply(status, "", JSON, body))
    assert type(error) is kind, error
