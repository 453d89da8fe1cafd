"""The least a CancelRecord sender can do, as a yardstick for batch-cancel's own speed.

    python -m benchmarks.lean_baseline NUMBERS.csv --base-url URL --username U \\
        [--concurrency 64] [--http aiohttp|httpx] [--internal]   (password from env GWS_PASSWORD)

Log in, subscribe to ``/v2/me/outbound`` over a hand-rolled Bayeux long poll, POST
every number with ``concurrency`` requests in flight, and count the acknowledgements
whose referenceId it sent. No journal, no retries, no report, no rate limit: only what
any client must do. ``--internal`` also subscribes to ``/me/internal``, where GWS
relays OCS's errors without a referenceId (the protocol notes since the second
round: "subscribe to it"), and fails the record in flight whose number an event
with ``GSW_ERROR`` names; the acknowledgements' companions are read and dropped.
``--http aiohttp`` is the HTTP stack batch-cancel uses (so the difference is the
tool's own work); ``--http httpx`` is stock httpx, what a first script would likely
use. The last stdout line is JSON: records, acked, errors, seconds (first POST to last
ack).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["main", "run"]

NOTIFICATIONS = "/api/v2/notifications"
SUCCESS = "RecordCancelAcknowledge"

# (method, path, headers, json body) -> (status, headers, json answer)
Fetch = Callable[[str, str, dict[str, str], Any], Awaitable[tuple[int, dict[str, str], Any]]]


Close = Callable[[], Awaitable[None]]


async def _open_http(kind: str, base_url: str, connections: int) -> tuple[Fetch, Close]:
    if kind == "httpx":
        import httpx

        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        client = httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60.0)

        async def fetch_httpx(method: str, path: str, headers: dict[str, str],
                              body: Any) -> tuple[int, dict[str, str], Any]:  # fmt: skip
            answer = await client.request(method, path, headers=headers, json=body)
            return answer.status_code, dict(answer.headers), answer.json()

        return fetch_httpx, client.aclose
    import aiohttp

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections),
        cookie_jar=aiohttp.CookieJar(unsafe=True),  # the simulator listens on 127.0.0.1
        timeout=aiohttp.ClientTimeout(total=60.0),
    )

    async def fetch_aiohttp(method: str, path: str, headers: dict[str, str],
                            body: Any) -> tuple[int, dict[str, str], Any]:  # fmt: skip
        async with session.request(method, base_url + path, headers=headers, json=body) as answer:
            return answer.status, dict(answer.headers), await answer.json(content_type=None)

    return fetch_aiohttp, session.close


class Bayeux:
    """Handshake, one subscription, and a connect loop handing every message on."""

    def __init__(self, fetch: Fetch, headers: dict[str, str]) -> None:
        self._fetch = fetch
        self._headers = headers
        self._id = 0
        self.client_id = ""

    async def _send(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        self._id += 1
        message["id"] = str(self._id)
        if self.client_id:
            message["clientId"] = self.client_id
        status, _, replies = await self._fetch("POST", NOTIFICATIONS, self._headers, [message])
        if status != 200:
            raise RuntimeError(f"Bayeux answered HTTP {status}")
        return list(replies)

    async def open(self, *channels: str) -> None:
        shake = await self._send({"channel": "/meta/handshake", "version": "1.0",
                                  "supportedConnectionTypes": ["long-polling"]})  # fmt: skip
        self.client_id = shake[0]["clientId"]
        # advice timeout 0: the first poll answers at once instead of being held
        await self._send({"channel": "/meta/connect", "connectionType": "long-polling",
                          "advice": {"timeout": 0}})  # fmt: skip
        for channel in channels:
            replies = await self._send({"channel": "/meta/subscribe", "subscription": channel})
            if not any(r.get("channel") == "/meta/subscribe" and r.get("successful") for r in replies):
                raise RuntimeError(f"subscribe refused: {replies}")

    async def poll(self) -> list[dict[str, Any]]:
        return await self._send({"channel": "/meta/connect", "connectionType": "long-polling"})


async def run(numbers: list[str], *, base_url: str, username: str, password: str,
              concurrency: int, http: str = "aiohttp", internal: bool = False,
              ack_timeout: float = 30.0) -> dict[str, Any]:  # fmt: skip
    import base64

    fetch, close = await _open_http(http, base_url, concurrency + 2)
    try:
        basic = "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode()
        status, headers, _ = await fetch("GET", "/api/v2/me", {"Authorization": basic}, None)
        if status != 200:
            raise RuntimeError(f"login answered HTTP {status}")
        lower = {k.lower(): v for k, v in headers.items()}
        csrf = {lower["x-csrf-header"]: lower["x-csrf-token"]} if "x-csrf-header" in lower else {}
        _, _, answer = await fetch("GET", "/api/v2/me/devices", {}, None)
        device = f"/devices/{answer['devices'][0]['id']}"
        return await _send_all(numbers, fetch, csrf, device, concurrency, ack_timeout, internal)
    finally:
        await close()


async def _send_all(numbers: list[str], fetch: Fetch, csrf: dict[str, str], device: str,
                    concurrency: int, ack_timeout: float, internal: bool) -> dict[str, Any]:  # fmt: skip
    waiting: set[str] = set()
    by_number: dict[str, str] = {}  # number in flight -> its referenceId (--internal)
    numbers_of: dict[str, str] = {}  # referenceId -> number (--internal)
    acked = errors = 0
    done = asyncio.Event()
    sent_all = False
    last_ack = 0.0

    def on_messages(messages: list[dict[str, Any]]) -> None:
        nonlocal acked, last_ack
        for message in messages:
            data = message.get("data")
            if not isinstance(data, dict):
                continue
            ref = data.get("referenceId")
            if ref is None and internal:
                user_data = data.get("userData")
                if isinstance(user_data, dict) and "GSW_ERROR" in user_data:
                    ref = by_number.get(str(user_data.get("GSW_PHONE")))
            if ref in waiting:
                waiting.discard(ref)
                if internal:
                    by_number.pop(numbers_of.pop(ref, ""), None)
                if data.get("notificationType") == SUCCESS:
                    acked += 1
                    last_ack = time.monotonic()
        if sent_all and not waiting:
            done.set()

    bayeux = Bayeux(fetch, csrf)
    await bayeux.open("/v2/me/outbound", *(["/me/internal"] if internal else []))

    async def listen() -> None:
        while True:
            on_messages(await bayeux.poll())

    listener = asyncio.create_task(listen())
    todo = iter(numbers)

    async def worker() -> None:
        nonlocal errors
        for number in todo:
            ref = uuid.uuid4().hex
            waiting.add(ref)
            if internal:
                by_number[number] = ref
                numbers_of[ref] = number
            body = {"operationName": "CancelRecord", "applicationId": 134,
                    "campaignName": "Campaign1", "callingList": "CallingList1",
                    "phoneNumber": number, "devicePath": device, "referenceId": ref}  # fmt: skip
            status, _, _ = await fetch("POST", "/api/v2/me/outbound-records", csrf, body)
            if status != 200:
                errors += 1
                waiting.discard(ref)

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    sent_all = True
    if waiting:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), ack_timeout)
    listener.cancel()
    end = last_ack or time.monotonic()
    return {"records": len(numbers), "acked": acked, "errors": errors,
            "unmatched": len(waiting), "seconds": round(end - started, 4)}  # fmt: skip


def read_numbers(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f.readlines()[1:] if line.strip()]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("numbers")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--username", required=True)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--http", choices=["aiohttp", "httpx"], default="aiohttp")
    parser.add_argument("--internal", action="store_true",
                        help="also subscribe to /me/internal and fail records its errors name")
    args = parser.parse_args(argv)
    result = asyncio.run(run(read_numbers(args.numbers), base_url=args.base_url, username=args.username,
                             password=os.environ["GWS_PASSWORD"], concurrency=args.concurrency,
                             http=args.http, internal=args.internal))  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
