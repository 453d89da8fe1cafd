"""The whole job where the CometD side is the CometD project's own Node server.

A minimal GWS REST stand-in (login with JSESSIONID + CSRF, devices, CancelRecord)
publishes each outcome through cometd-nodejs-server; the job runs as a real
subprocess with ``--cometd-url`` pointing at that server. This is the shape of a
deployment we did not write: its 402 is ``402::session_unknown``, it finds sessions
by its own BAYEUX_BROWSER cookie, and a restart loses every queued message.
"""

from __future__ import annotations

import asyncio
import base64
import csv
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import CometDNodeServer

pytestmark = pytest.mark.interop

USER, PASSWORD = "agent", "node-interop-pw"
FAILING = "2125550199"


@dataclass
class StubGws:
    """Just enough GWS REST to drive the job; outcomes go out through the Node server."""

    cometd: CometDNodeServer
    after_each: Any = None  # async hook(count) run after each accepted request
    sessions: set[str] = field(default_factory=set)
    token: str = field(default_factory=lambda: str(uuid.uuid4()))
    requests: list[dict[str, Any]] = field(default_factory=list)
    published: list[tuple[str, int]] = field(default_factory=list)  # (referenceId, subscribers)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/api/v2/me", self.me)
        app.router.add_get("/api/v2/me/devices", self.devices)
        app.router.add_post("/api/v2/me/outbound-records", self.outbound)
        return app

    async def me(self, request: web.Request) -> web.Response:
        expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        session = request.cookies.get("JSESSIONID")
        if session not in self.sessions:
            if request.headers.get("Authorization") != expected:
                return web.json_response({"statusCode": 20, "statusMessage": "Not authenticated"}, status=401)
            session = uuid.uuid4().hex
            self.sessions.add(session)
        response = web.json_response({"statusCode": 0, "user": {"userName": USER}})
        response.set_cookie("JSESSIONID", session, path="/")
        response.headers["X-CSRF-HEADER"] = "X-CSRF-TOKEN"
        response.headers["X-CSRF-TOKEN"] = self.token
        return response

    async def devices(self, request: web.Request) -> web.Response:
        return web.json_response({"statusCode": 0, "devices": [{"id": "dev-1", "deviceState": "Active"}]})

    async def outbound(self, request: web.Request) -> web.Response:
        if request.cookies.get("JSESSIONID") not in self.sessions:
            return web.json_response({"statusCode": 20, "statusMessage": "Not authenticated"}, status=401)
        if request.headers.get("X-CSRF-TOKEN") != self.token:
            return web.json_response({"statusCode": 3, "statusMessage": "Missing or invalid Csrf token"},
                                     status=403)  # fmt: skip
        body = await request.json()
        self.requests.append(body)
        asyncio.get_running_loop().create_task(self._outcome(body))
        return web.json_response({"statusCode": 0})

    async def _outcome(self, body: dict[str, Any]) -> None:
        ref = body["referenceId"]
        if body["phoneNumber"] == FAILING:
            data = {"messageType": "ErrorMessage", "errorCode": 6, "errorMessage": "Record not found",
                    "referenceId": ref}  # fmt: skip
        else:
            data = {"messageType": "OutboundRecordMessage", "notificationType": "RecordCancelAcknowledge",
                    "referenceId": ref, "record": {"devicePath": body["devicePath"],
                    "callingList": body["callingList"], "applicationId": body["applicationId"],
                    "campaignName": body["campaignName"]}}  # fmt: skip
        self.published.append((ref, await self.cometd.publish(data)))
        if self.after_each is not None:
            await self.after_each(len(self.requests))


@pytest.fixture
async def stub(cometd_server: CometDNodeServer) -> AsyncIterator[tuple[StubGws, str]]:
    gws = StubGws(cometd_server)
    runner = web.AppRunner(gws.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield gws, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def _run_job(
    base_url: str, cometd_url: str, tmp: Path, count: int
) -> tuple[int, dict[str, Any], str]:
    src = tmp / "in.csv"
    with src.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phone_number"])
        w.writerows([[f"212{2000000 + i:07d}"] for i in range(count)] + [[FAILING]])
    args = [sys.executable, "-m", "batch_cancel", "run", str(src), "--base-url", base_url,
            "--cometd-url", cometd_url, "--username", USER, "--application-id", "134",
            "--campaign", "C1", "--calling-list", "L1", "--rate", "0", "--concurrency", "8",
            "--ack-timeout", "3", "--state", str(tmp / "s.sqlite"),
            "--report", str(tmp / "r.csv")]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *args, env={**os.environ, "GWS_PASSWORD": PASSWORD},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode is not None
    return proc.returncode, json.loads(out.decode().strip().splitlines()[-1]), err.decode()


def _statuses(tmp: Path) -> dict[str, str]:
    with (tmp / "r.csv").open(newline="") as f:
        return {row["phone_number"]: row["status"] for row in csv.DictReader(f)}


async def test_full_run_through_cometd_node_server(
    stub: tuple[StubGws, str], cometd_server: CometDNodeServer, tmp_path: Path
) -> None:
    gws, base_url = stub
    code, summary, err = await _run_job(base_url, cometd_server.bayeux_url("127.0.0.1"), tmp_path, 60)
    assert code == 1, err  # the one failing number
    assert summary["cancelled"] == 60 and summary["failed"] == 1 and summary["pending"] == 0
    assert _statuses(tmp_path)[FAILING] == "failed"
    # every outcome was published while the job was subscribed
    assert all(subscribers == 1 for _, subscribers in gws.published)


async def test_server_restart_mid_run_loses_nothing(
    stub: tuple[StubGws, str], cometd_server: CometDNodeServer, tmp_path: Path
) -> None:
    gws, base_url = stub

    restarted: list[int] = []

    async def restart_once(count: int) -> None:
        if count >= 40 and not restarted:
            restarted.append(count)
            await cometd_server.drop()

    gws.after_each = restart_once
    _, summary, err = await _run_job(base_url, cometd_server.bayeux_url("127.0.0.1"), tmp_path, 120)
    assert summary["cancelled"] == 120 and summary["failed"] == 1, err
    assert summary["timed_out"] == 0 and summary["pending"] == 0
    lost = {ref for ref, subscribers in gws.published if subscribers == 0}
    assert restarted  # (whether outcomes fell into the gap depends on timing: both ways must end well)
    # outcomes published into the gap were asked for again with the same referenceId
    sent = [r["referenceId"] for r in gws.requests]
    assert all(sent.count(ref) >= 2 for ref in lost)
    stats = await cometd_server.stats()
    assert stats["generation"] >= 1
    assert summary["stats"]["cometd_handshakes"] >= 2  # it re-handshook and re-subscribed
    print("restart:", len(lost), "outcome(s) published into the gap;", summary["stats"])
