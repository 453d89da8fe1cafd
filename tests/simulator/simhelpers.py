"""The test-side GWS client: each protocol step spelled out, over real sockets."""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from batch_cancel.simulator import GwsSimulator, SimulatorConfig

__all__ = [
    "BASE_CONFIG",
    "FAILING_LIST",
    "FAILING_NUMBER",
    "NOTIFICATIONS",
    "GwsTestClient",
    "MakeClient",
    "StartSim",
]

FAILING_NUMBER = "2125550199"
FAILING_LIST = "BadList"
NOTIFICATIONS = "/api/v2/notifications"

BASE_CONFIG = SimulatorConfig(
    users={"agent": "secret", "other": "pw2"},
    failing_numbers=frozenset({FAILING_NUMBER}),
    failing_lists=frozenset({FAILING_LIST}),
    # Short, so a test that forgets advice.timeout=0 costs 2 s, not 30.
    long_poll_timeout=2.0,
)


class GwsTestClient:
    """What a batch-cancel-like client does, spelled out, so tests read as protocol steps."""

    def __init__(self, sim: GwsSimulator, user: str = "agent", password: str = "secret") -> None:
        self.sim = sim
        self.user = user
        self.password = password
        self.http = httpx.AsyncClient(base_url=sim.base_url, timeout=10.0)
        self.token: str | None = None
        self.device_path: str | None = None
        self.client_id: str | None = None
        self._ids = itertools.count(1)
        self._refs = itertools.count(1)

    async def login(self) -> httpx.Response:
        response = await self.http.get("/api/v2/me", auth=(self.user, self.password))
        self.token = response.headers.get("X-CSRF-TOKEN")
        if response.status_code == 200 and self.device_path is None:
            devices = (await self.http.get("/api/v2/me/devices")).json()["devices"]
            self.device_path = f"/devices/{devices[0]['id']}"
        return response

    def record(self, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "operationName": "CancelRecord",
            "applicationId": 134,
            "campaignName": "Campaign1",
            "callingList": "CallingList1",
            "phoneNumber": "4100180988",
            "devicePath": self.device_path,
            "chainAttribute": "AllChain",
            "referenceId": f"ref-{next(self._refs)}",
        }
        body.update(overrides)
        return {k: v for k, v in body.items() if v is not None}

    async def post_record(self, body: dict[str, Any], *, token: str | None = None) -> httpx.Response:
        headers = {"X-CSRF-TOKEN": token or self.token or ""}
        return await self.http.post("/api/v2/me/outbound-records", json=body, headers=headers)

    async def bayeux(self, *messages: dict[str, Any]) -> httpx.Response:
        for message in messages:
            message.setdefault("id", str(next(self._ids)))
            if self.client_id is not None and message["channel"] != "/meta/handshake":
                message.setdefault("clientId", self.client_id)
        return await self.http.post(NOTIFICATIONS, json=list(messages))

    async def handshake(self) -> dict[str, Any]:
        self.client_id = None
        reply: dict[str, Any] = (
            await self.bayeux(
                {
                    "channel": "/meta/handshake",
                    "version": "1.0",
                    "supportedConnectionTypes": ["long-polling"],
                }
            )
        ).json()[0]
        self.client_id = reply.get("clientId")
        return reply

    async def subscribe(self, *channels: str) -> list[dict[str, Any]]:
        messages = [{"channel": "/meta/subscribe", "subscription": c} for c in channels]
        replies: list[dict[str, Any]] = (await self.bayeux(*messages)).json()
        return replies

    async def connect(self, timeout_ms: int | None = None) -> list[dict[str, Any]]:
        message: dict[str, Any] = {"channel": "/meta/connect", "connectionType": "long-polling"}
        if timeout_ms is not None:
            message["advice"] = {"timeout": timeout_ms}
        replies: list[dict[str, Any]] = (await self.bayeux(message)).json()
        return replies

    async def ready(self, *channels: str) -> None:
        """Log in, handshake, subscribe and make the first (immediate) connect."""
        assert (await self.login()).status_code == 200
        assert (await self.handshake())["successful"]
        for reply in await self.subscribe(*(channels or ("/v2/me/outbound", "/me/internal"))):
            assert reply["successful"], reply
        await self.connect(timeout_ms=0)

    async def collect(self, want: int, timeout_ms: int = 1000, rounds: int = 5) -> list[Any]:
        """Poll until ``want`` event messages arrived (or give up after ``rounds``)."""
        events: list[dict[str, Any]] = []
        for _ in range(rounds):
            replies = await self.connect(timeout_ms=timeout_ms)
            events += [r for r in replies if not r["channel"].startswith("/meta/")]
            if len(events) >= want:
                break
        return events

    async def aclose(self) -> None:
        await self.http.aclose()


# Signatures of the factory fixtures in conftest.py (kept here: test modules import this
# file by name, while several conftest.py files share the module name "conftest").
StartSim = Callable[..., Awaitable[GwsSimulator]]
MakeClient = Callable[..., Awaitable[GwsTestClient]]
