"""Every error of ``GwsSession.post_record`` says whether GWS may have carried the attempt
out (``may_have_been_processed``): table-driven on answers, then over real HTTP against
the simulator, whose ledger says what really happened."""

from __future__ import annotations

import math
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest

from batch_cancel.config import Credentials, GwsConfig
from batch_cancel.exceptions import RequestError, RequestRejected, SessionExpired, TransientError
from batch_cancel.gws.responses import (
    RETRY_AFTER_CAP,
    Reply,
    error_for_response,
    parse_retry_after,
    translate_transport_error,
)
from batch_cancel.gws.session import GwsSession
from batch_cancel.simulator import Faults, GwsSimulator, SimulatorConfig

JSON = {"Content-Type": "application/json"}
HTML = {"Content-Type": "text/html"}
GATEWAY_PAGE = b"<html><body><h1>502 Bad Gateway</h1></body></html>"


def _gws(code: int, message: str = "x") -> bytes:
    return f'{{"statusCode":{code},"statusMessage":"{message}"}}'.encode()


# (HTTP status, headers, body) -> (class, may have been processed)
_ANSWERS: list[tuple[int, dict[str, str], bytes, type[RequestError], bool]] = [
    # a proxy or gateway in front of GWS, after GWS may have done it
    (502, HTML, GATEWAY_PAGE, TransientError, True),
    (504, HTML, GATEWAY_PAGE, TransientError, True),
    (408, HTML, GATEWAY_PAGE, TransientError, True),
    (502, {}, b"", TransientError, True),
    (504, {}, b"", TransientError, True),
    (408, {}, b"", TransientError, True),
    (500, HTML, b"<html>Internal Server Error</html>", TransientError, True),
    # statusCode 9, whatever the HTTP status
    (500, JSON, _gws(9, "Processing incomplete"), TransientError, True),
    (200, JSON, _gws(9, "Processing incomplete"), TransientError, True),
    # GWS's own JSON error: nothing changed
    (503, JSON, _gws(4, "Voice service is not available at this time"), TransientError, False),
    (429, JSON, _gws(4, "Too many requests"), TransientError, False),
    (502, JSON, _gws(4, "Bad gateway"), TransientError, False),
    (400, JSON, _gws(1, "Missing parameter"), RequestRejected, False),
    (400, JSON, _gws(2, "Invalid for current state"), RequestRejected, False),
    (403, JSON, _gws(3, "Missing or invalid Csrf token"), SessionExpired, False),
    (403, JSON, _gws(5, "No permission"), RequestRejected, False),
    (404, JSON, _gws(6, "Record not found"), RequestRejected, False),
    (400, JSON, _gws(10, "Validation error"), RequestRejected, False),
    (409, JSON, _gws(18, "Already exists"), RequestRejected, False),
    (409, JSON, _gws(19, "In use"), RequestRejected, False),
    (401, JSON, _gws(20, "Not authenticated"), SessionExpired, False),
    # a proxy that refused without forwarding
    (503, HTML, b"<html>Service Unavailable</html>", TransientError, False),
    (429, {}, b"", TransientError, False),
    (200, HTML, b"<html><form>Sign in</form></html>", SessionExpired, False),
]


@pytest.mark.parametrize(("status", "headers", "body", "kind", "maybe"), _ANSWERS)
def test_each_answer_says_whether_it_may_have_been_processed(
    status: int, headers: dict[str, str], body: bytes, kind: type[RequestError], maybe: bool
) -> None:
    error = error_for_response(Reply(status, "", headers, body))
    assert type(error) is kind, error
    assert error.may_have_been_processed is maybe, error


@pytest.mark.parametrize("status", [200, 202])
def test_partial_success_is_an_acceptance(status: int) -> None:
    assert error_for_response(Reply(status, "", JSON, _gws(7, "Partial success"))) is None


def test_request_error_defaults_to_not_processed() -> None:
    assert RequestError("x").may_have_been_processed is False
    assert TransientError("x", may_have_been_processed=True).may_have_been_processed is True


def _connection_key() -> Any:
    from aiohttp.client_reqrep import ConnectionKey

    return ConnectionKey("gws.example", 443, True, True, None, None, None)


@pytest.mark.parametrize(
    ("exc", "maybe", "unreachable"),
    [
        (aiohttp.ClientConnectorError(_connection_key(), ConnectionRefusedError(111, "no")), False, True),
        (aiohttp.ClientConnectorDNSError(_connection_key(), OSError(-2, "no such host")), False, True),
        (aiohttp.ConnectionTimeoutError("connect timeout"), False, True),
        (aiohttp.ServerDisconnectedError(), True, False),
        (aiohttp.ClientOSError(104, "Connection reset by peer"), True, False),
        (aiohttp.ClientPayloadError("truncated"), True, False),
        (aiohttp.SocketTimeoutError("read timeout"), True, False),
        (TimeoutError(), True, False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_transport_errors_say_whether_the_request_may_have_been_written(
    exc: BaseException, maybe: bool, unreachable: bool
) -> None:
    error = translate_transport_error(exc)
    assert isinstance(error, TransientError)
    assert (error.may_have_been_processed, error.unreachable) == (maybe, unreachable)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("2", 2.0), ("0", 0.0), ("-5", 0.0), ("inf", RETRY_AFTER_CAP), ("Infinity", RETRY_AFTER_CAP),
     ("1e308", RETRY_AFTER_CAP), ("1e400", RETRY_AFTER_CAP), ("nan", None), ("NaN", None),
     ("soon", None), (None, None), ("Fri, 31 Dec 2999 23:59:59 GMT", RETRY_AFTER_CAP)],
)  # fmt: skip
def test_retry_after_is_finite_and_capped(header: str | None, seconds: float | None) -> None:
    value = parse_retry_after(header)
    assert value == seconds
    assert value is None or math.isfinite(value)


# -- over real HTTP ------------------------------------------------------------------------


Post = Callable[..., Awaitable[BaseException | int | None]]


# both clients a record POST can go through on plain http: ours (gws/record_transport.py)
# and aiohttp (--record-client aiohttp, and every https or proxied route)
@pytest.fixture(params=["auto", "aiohttp"], ids=["own-client", "aiohttp"])
async def post(request: pytest.FixtureRequest) -> AsyncIterator[Post]:
    """``await post(faults=..., **config)`` -> the error post_record raised (or the
    statusCode of an accepted answer), against a fresh simulator; ``times=2`` posts the
    same record twice (under two referenceIds) and says what the second one got."""
    async with AsyncExitStack() as stack:

        async def run(request_timeout: float = 5.0, times: int = 1,
                      **config: Any) -> BaseException | int | None:  # fmt: skip
            sim = await stack.enter_async_context(GwsSimulator(SimulatorConfig(**config)))
            gws = GwsConfig(base_url=sim.base_url, credentials=Credentials("agent", "secret"),
                            request_timeout=request_timeout, record_client=request.param)  # fmt: skip
            session = await stack.enter_async_context(GwsSession(gws, max_connections=4))
            assert session.record_client.endswith("own HTTP/1.1 client") == (request.param == "auto")
            await session.login()
            device = (await session.devices())[0]["id"]
            body = {"operationName": "CancelRecord", "applicationId": 1, "campaignName": "C",
                    "callingList": "L", "phoneNumber": "2125550100", "devicePath": f"/devices/{device}",
                    "referenceId": "ref-1"}  # fmt: skip
            stack.push_async_callback(sim.stop)  # hung requests must let go before the session closes
            for n in range(1, times):
                await session.post_record({**body, "referenceId": f"ref-{n}"})
            try:
                answer = await session.post_record({**body, "referenceId": f"ref-{times}"})
            except RequestError as exc:
                return exc
            return answer.status_code

        yield run


@pytest.mark.parametrize(
    ("faults", "maybe", "processed"),
    [
        (Faults(gateway_after_rate=1.0), True, True),
        (Faults(gateway_after_rate=1.0, gateway_body="empty", gateway_statuses=(504,)), True, True),
        (Faults(gateway_after_rate=1.0, gateway_statuses=(408,)), True, True),
        (Faults(gateway_before_rate=1.0), True, False),  # the client cannot tell it from "after"
        (Faults(reset_after_rate=1.0), True, True),
        (Faults(reset_before_rate=1.0), True, False),  # nor a reset before from one after
        (Faults(incomplete_rate=1.0, incomplete_processed_rate=1.0), True, True),
        (Faults(incomplete_rate=1.0), True, False),
        (Faults(http_503_rate=1.0), False, False),
        (Faults(http_429_rate=1.0), False, False),
    ],
    ids=["502-after", "504-empty", "408", "gateway-before", "reset-after", "reset-before",
         "status-9-done", "status-9-not-done", "503-json", "429-json"],
)
async def test_post_record_over_http(post: Post, faults: Faults, maybe: bool, processed: bool) -> None:
    error = await post(faults=faults)
    assert isinstance(error, TransientError), error
    assert error.may_have_been_processed is maybe, error
    # a "False" is a promise: it must never be given for a request GWS carried out
    assert maybe or not processed


async def test_an_unanswered_post_may_have_been_processed(post: Post) -> None:
    error = await post(faults=Faults(hang_after_rate=1.0), request_timeout=0.5)
    assert isinstance(error, TransientError)
    assert (error.may_have_been_processed, error.unanswered) == (True, True)


async def test_a_repeat_refused_with_gws_json_was_not_processed(post: Post) -> None:
    error = await post(faults=Faults(repeat_answer="http_error"), times=2)
    assert isinstance(error, RequestRejected), error
    assert (error.status_code, error.may_have_been_processed) == (6, False)


async def test_partial_success_over_http_is_accepted(post: Post) -> None:
    assert await post(faults=Faults(partial_success_rate=1.0)) == 7


async def test_connection_refused_was_not_processed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # nothing listens there now
    gws = GwsConfig(base_url=f"http://127.0.0.1:{port}", credentials=Credentials("agent", "secret"))
    async with GwsSession(gws) as session:
        with pytest.raises(TransientError) as caught:
            await session.post_record({"operationName": "CancelRecord"})
    assert (caught.value.may_have_been_processed, caught.value.unreachable) == (False, True)
