"""The small parts of the send path that replaced library defaults for speed:
the one-origin cookie store, the JSON codec, and the collector settings of the send phase."""

from __future__ import annotations

import gc
import json
import math

import pytest

from batch_cancel.gws import json_codec
from batch_cancel.gws.cookies import CookieStore
from batch_cancel.send.phase import fewer_gc_pauses


# -- cookies ---------------------------------------------------------------------------
def test_cookies_are_sent_back_in_the_order_they_were_set() -> None:
    jar = CookieStore()
    assert jar.header == ""
    assert jar.take(["JSESSIONID=abc; Path=/; HttpOnly", "AWSALB=lb1; Path=/; Max-Age=604800"])
    assert jar.header == "JSESSIONID=abc; AWSALB=lb1"
    assert jar.as_dict() == {"JSESSIONID": "abc", "AWSALB": "lb1"}


def test_a_new_value_replaces_the_old_and_the_same_value_changes_nothing() -> None:
    jar = CookieStore()
    jar.take(["JSESSIONID=abc; Path=/"])
    assert not jar.take(["JSESSIONID=abc; Path=/"])
    assert jar.take(["JSESSIONID=def; Path=/"])
    assert jar.header == "JSESSIONID=def"


@pytest.mark.parametrize("deletion", [
    "JSESSIONID=; Max-Age=0",
    "JSESSIONID=gone; Max-Age=-1",
    "JSESSIONID=gone; Expires=Thu, 01 Jan 1970 00:00:00 GMT",
])  # fmt: skip
def test_a_server_deletes_a_cookie_by_max_age_or_a_past_expiry(deletion: str) -> None:
    jar = CookieStore()
    jar.take(["JSESSIONID=abc", "OTHER=1"])
    assert jar.take([deletion])
    assert jar.header == "OTHER=1"


def test_a_future_expiry_or_an_unparsable_max_age_keeps_the_cookie() -> None:
    jar = CookieStore()
    jar.take(["A=1; Expires=Fri, 01 Jan 2100 00:00:00 GMT", "B=2; Max-Age=soon"])
    assert jar.as_dict() == {"A": "1", "B": "2"}


def test_a_malformed_cookie_is_ignored_and_clear_forgets_all() -> None:
    jar = CookieStore()
    jar.take(["JSESSIONID=abc"])
    assert not jar.take(["this is not; a [cookie"])
    assert jar.header == "JSESSIONID=abc"
    jar.clear()
    assert jar.header == "" and jar.as_dict() == {}


# -- JSON ------------------------------------------------------------------------------
def test_json_decodes_what_the_standard_library_decodes() -> None:
    text = b'{"statusCode":0,"big":123456789012345678901234567890,"nan":NaN,"s":"\\u00e9"}'
    data = json_codec.loads(text)
    assert data["big"] == 123456789012345678901234567890 and math.isnan(data["nan"])
    assert json_codec.loads('{"a": [1, 2.5, null, true]}') == {"a": [1, 2.5, None, True]}
    for bad in (b"{", b"", b"\xff\xfe", "not json"):
        with pytest.raises(ValueError):
            json_codec.loads(bad)


def test_json_encodes_compact_utf8_like_the_standard_library() -> None:
    body = {"phoneNumber": "+33 1 23 45 67 89", "campaignName": "Été", "applicationId": 134, "x": None}
    assert json_codec.dumps(body) == json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    huge = {"n": 2**70}
    assert json.loads(json_codec.dumps(huge)) == huge


# -- the collector ---------------------------------------------------------------------
def test_the_send_phase_raises_the_young_threshold_and_restores_everything() -> None:
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    with fewer_gc_pauses(young=12_345):
        assert gc.get_threshold()[0] == max(12_345, before[0])
        assert gc.get_freeze_count() >= frozen_before
        with fewer_gc_pauses(young=50):  # nested (two runs in one process): the outer settings stay
            assert gc.get_threshold()[0] == max(12_345, before[0])
        assert gc.get_threshold()[0] == max(12_345, before[0])
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


def test_the_collector_is_restored_when_the_send_phase_fails() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), fewer_gc_pauses():
        raise RuntimeError("boom")
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0


# -- the session's cookies over real HTTP ----------------------------------------------
async def test_the_session_sends_back_what_the_server_set_and_follows_a_rotation() -> None:
    """A GWS (or the load balancer in front of it) may set or rotate cookies on any answer,
    not only at log-in: every later request, REST and CometD alike, carries the new ones."""
    from aiohttp import web

    from batch_cancel.config import Credentials, GwsConfig
    from batch_cancel.gws.session import GwsSession

    seen: list[str] = []

    async def me(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie", ""))
        csrf = {"X-CSRF-HEADER": "X-CSRF-TOKEN", "X-CSRF-TOKEN": "t1"}
        response = web.json_response({"statusCode": 0, "user": {"userName": "agent"}}, headers=csrf)
        if "Authorization" in request.headers and "JSESSIONID" not in request.cookies:
            response.set_cookie("JSESSIONID", "s1", path="/", httponly=True)
            response.set_cookie("AWSALB", "lb1", path="/")
        return response

    async def post(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Cookie", ""))
        assert request.headers.get("X-CSRF-TOKEN") == "t1"
        response = web.json_response({"statusCode": 0})
        if request.cookies.get("JSESSIONID") == "s1":
            response.set_cookie("JSESSIONID", "s2", path="/")  # rotated on an answer
            response.del_cookie("AWSALB", path="/")  # and one deleted
        return response

    app = web.Application()
    app.router.add_get("/api/v2/me", me)
    app.router.add_post("/api/v2/me/outbound-records", post)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    session = GwsSession(GwsConfig(base_url=f"http://127.0.0.1:{port}",
                                   credentials=Credentials("agent", "secret")))  # fmt: skip
    try:
        await session.login()
        assert session.cookies() == {"JSESSIONID": "s1", "AWSALB": "lb1"}
        await session.post_record({"referenceId": "r1"})
        await session.post_record({"referenceId": "r2"})
        assert await session.check()
        assert seen == ["", "JSESSIONID=s1; AWSALB=lb1", "JSESSIONID=s2", "JSESSIONID=s2"]
        assert session.auth_headers()["Cookie"] == "JSESSIONID=s2"  # what CometD sends too
    finally:
        await session.aclose()
        await runner.cleanup()
