"""Log-in, CSRF, sessions and request validation of the simulated REST API."""

from __future__ import annotations

import asyncio

import httpx
from simhelpers import NOTIFICATIONS, GwsTestClient, MakeClient, StartSim

from batch_cancel.simulator import GwsSimulator


async def test_login_sets_cookie_and_csrf_token_and_post_is_accepted(
    sim: GwsSimulator, make_client: MakeClient
) -> None:
    client = GwsTestClient(sim)
    try:
        response = await client.login()
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("application/json")
        body = response.json()
        assert body["statusCode"] == 0
        assert body["user"]["userName"] == "agent"
        assert "ROLE_AGENT" in body["user"]["roles"]
        assert response.headers["X-CSRF-HEADER"] == "X-CSRF-TOKEN"
        assert len(response.headers["X-CSRF-TOKEN"]) == 36
        assert "JSESSIONID" in response.cookies

        posted = await client.post_record(client.record(referenceId="r-ok"))
        assert posted.status_code == 200
        assert posted.json() == {"statusCode": 0}
        assert sim.ledger.login_count == 1
        [entry] = sim.ledger.requests_for("r-ok")
        assert (entry.http_status, entry.processed, entry.fault) == (200, True, None)
    finally:
        await client.aclose()


async def test_cookie_alone_keeps_the_session_and_answers_the_same_token(
    sim: GwsSimulator, make_client: MakeClient
) -> None:
    client = await make_client(sim)
    again = await client.http.get("/api/v2/me")
    assert again.status_code == 200
    assert again.headers["X-CSRF-TOKEN"] == client.token
    # A fresh Basic log-in on a live session keeps that session (no new cookie).
    relogin = await client.http.get("/api/v2/me", auth=("agent", "secret"))
    assert "set-cookie" not in relogin.headers
    assert relogin.headers["X-CSRF-TOKEN"] == client.token


async def test_bad_password_is_401_status_20_without_basic_challenge(sim: GwsSimulator) -> None:
    async with httpx.AsyncClient(base_url=sim.base_url) as http:
        response = await http.get("/api/v2/me", auth=("agent", "wrong"))
        assert response.status_code == 401
        assert response.json() == {"statusCode": 20, "statusMessage": "Not authenticated"}
        assert "www-authenticate" not in response.headers
        assert "JSESSIONID" not in response.cookies
        anonymous = await http.get("/api/v2/me")
        assert anonymous.status_code == 401


async def test_post_without_or_with_stale_csrf_token_is_403(
    sim: GwsSimulator, make_client: MakeClient
) -> None:
    client = await make_client(sim)
    missing = await client.http.post("/api/v2/me/outbound-records", json=client.record(referenceId="r-none"))
    assert missing.status_code == 403
    assert missing.json() == {"statusCode": 3, "statusMessage": "Missing or invalid Csrf token"}

    other = await make_client(sim)  # its own session, so its token is stale for ours
    stale = await client.post_record(client.record(referenceId="r-stale"), token=other.token)
    assert stale.status_code == 403
    assert [e.fault for e in sim.ledger.entries] == ["csrf", "csrf"]
    assert not any(e.processed for e in sim.ledger.entries)


async def test_no_csrf_mode_accepts_posts_without_token(start_sim: StartSim, make_client: MakeClient) -> None:
    sim = await start_sim(csrf=False)
    client = await make_client(sim)
    assert client.token is None
    response = await client.http.post("/api/v2/me/outbound-records", json=client.record())
    assert response.status_code == 200


async def test_missing_parameter_is_400_status_1_naming_it(
    sim: GwsSimulator, make_client: MakeClient
) -> None:
    client = await make_client(sim)
    response = await client.post_record(client.record(phoneNumber=None, referenceId="r-miss"))
    assert response.status_code == 400
    assert response.json() == {"statusCode": 1, "statusMessage": "Missing parameter: phoneNumber"}
    [entry] = sim.ledger.requests_for("r-miss")
    assert (entry.fault, entry.status_code, entry.processed) == ("missing_parameter", 1, False)


async def test_bad_values_are_rejected(sim: GwsSimulator, make_client: MakeClient) -> None:
    client = await make_client(sim)
    unknown_device = await client.post_record(client.record(devicePath="/devices/nope"))
    assert (unknown_device.status_code, unknown_device.json()["statusCode"]) == (404, 6)
    bad_chain = await client.post_record(client.record(chainAttribute="Everything"))
    assert (bad_chain.status_code, bad_chain.json()["statusCode"]) == (400, 10)
    bad_app = await client.post_record(client.record(applicationId="abc"))
    assert (bad_app.status_code, bad_app.json()["statusCode"]) == (400, 10)
    bad_op = await client.post_record(client.record(operationName="DeleteEverything"))
    assert bad_op.status_code == 400
    assert sim.ledger.processed_count() == 0


async def test_devices_answer_the_path_to_use(sim: GwsSimulator, make_client: MakeClient) -> None:
    client = await make_client(sim)
    body = (await client.http.get("/api/v2/me/devices")).json()
    [device] = body["devices"]
    assert body["statusCode"] == 0
    assert device["deviceState"] == "Active"
    assert client.device_path == f"/devices/{device['id']}"


async def test_expired_session_gives_401_then_login_again_works(
    start_sim: StartSim, make_client: MakeClient
) -> None:
    sim = await start_sim(session_timeout=0.2)
    client = await make_client(sim)
    await asyncio.sleep(0.3)
    expired = await client.post_record(client.record(referenceId="r-late"))
    assert (expired.status_code, expired.json()["statusCode"]) == (401, 20)
    assert sim.ledger.requests_for("r-late")[0].fault == "session_expired"
    await client.login()
    assert (await client.post_record(client.record())).status_code == 200


async def test_expire_all_sessions(sim: GwsSimulator, make_client: MakeClient) -> None:
    first, second = await make_client(sim), await make_client(sim, user="other", password="pw2")
    assert sim.expire_all_sessions() == 2
    for client in (first, second):
        assert (await client.post_record(client.record())).status_code == 401


async def test_contact_center_session_required_when_configured(
    start_sim: StartSim, make_client: MakeClient
) -> None:
    sim = await start_sim(require_cc_session=True)
    client = await make_client(sim)
    refused = await client.post_record(client.record())
    assert (refused.status_code, refused.json()["statusCode"]) == (400, 2)
    start = {"operationName": "StartContactCenterSession", "channels": ["voice"]}
    headers = {"X-CSRF-TOKEN": client.token or ""}
    assert (await client.http.post("/api/v2/me", json=start, headers=headers)).status_code == 200
    assert (await client.post_record(client.record())).status_code == 200

    end = {"operationName": "EndContactCenterSession"}
    assert (await client.http.post("/api/v2/me", json=end, headers=headers)).status_code == 200
    assert (await client.http.get("/api/v2/me")).status_code == 401


async def test_unknown_resource_answers_gws_json(sim: GwsSimulator, make_client: MakeClient) -> None:
    client = await make_client(sim)
    missing = await client.http.get("/api/v2/nothing-here")
    assert (missing.status_code, missing.json()["statusCode"]) == (404, 6)
    wrong_method = await client.http.delete("/api/v2/me/devices")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["statusCode"] == 10


async def test_a_gateway_everywhere_answers_every_api_request_and_gws_sees_none(
    sim: GwsSimulator, make_client: MakeClient
) -> None:
    client = await make_client(sim)
    sim.serve_login_page(200, everywhere=True)
    answers = [
        await client.post_record(client.record(referenceId="r-gw")),
        await client.http.post("/api/v2/me", json={"operationName": "StartContactCenterSession"}),
        await client.http.post(NOTIFICATIONS, json=[{"channel": "/meta/connect"}]),
        await client.http.get("/api/v2/me/devices"),
        await client.http.get("/api/v2/me", auth=("agent", "secret")),  # the log-in itself too
    ]
    for answer in answers:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/html")
    assert sim.ledger.requests_for("r-gw") == [] and sim.ledger.login_page_count == 1
    ledger = await client.http.get("/_sim/ledger")  # the simulator's own endpoint is not behind it
    assert ledger.headers["content-type"].startswith("application/json")
