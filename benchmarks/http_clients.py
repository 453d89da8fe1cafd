"""Client CPU per CancelRecord POST, HTTP client against HTTP client: ``python -m benchmarks.http_clients``.

    python -m benchmarks.http_clients [--posts 4000] [--rounds 5] [--concurrency 64]

One process per client and round (a fresh interpreter, so no client warms another's
caches), against one simulator in a process of its own; each posts ``--posts`` real
CancelRecord bodies with ``--concurrency`` in flight after a warm-up, and reports its
own CPU (every thread of it: a Rust client's runtime threads too) per POST. Rounds
alternate the clients' order; the figures are medians, with each client's ratio to
aiohttp paired by round. Compared: aiohttp as batch-cancel used it (its settings:
no cookie jar, default headers, a total timeout), batch-cancel's own record client
(``gws/record_transport.py``), and any of pyreqwest, rnet, httpr that is installed
(``pip install pyreqwest rnet httpr`` to include them; they are not dependencies).
This is the client alone: inside the tool what counts is the send phase
(``python -m benchmarks``), where a client whose answers arrive from another thread
pays a wake-up of the event loop for each.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib.util
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.sim import PASSWORD, USER, SimProcess

__all__ = ["main"]

CLIENTS = ("aiohttp", "record-transport", "pyreqwest", "rnet", "httpr")
PATH = "/api/v2/me/outbound-records"


async def _session(base: str) -> tuple[dict[str, str], str]:
    """Log in as the tool does: the session's headers and the device path."""
    import aiohttp

    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
        async with http.get(base + "/api/v2/me", headers={"Authorization": basic}) as answer:
            cookie = "; ".join(f"{c.key}={c.value}" for c in answer.cookies.values())
            h = answer.headers
            csrf = {h["X-CSRF-HEADER"]: h["X-CSRF-TOKEN"]} if "X-CSRF-HEADER" in h else {}
        async with http.get(base + "/api/v2/me/devices", headers={"Cookie": cookie, **csrf}) as answer:
            device = (await answer.json())["devices"][0]["id"]
    headers = {"Accept": "application/json", "Authorization": basic, "Content-Type": "application/json",
               **csrf, "Cookie": cookie}  # fmt: skip
    return headers, f"/devices/{device}"


Post = Callable[[bytes], Awaitable[int]]


async def _client(kind: str, base: str, headers: dict[str, str], concurrency: int,
                  ) -> tuple[Post, Callable[[], Awaitable[None]]]:  # fmt: skip
    url = base + PATH
    if kind == "aiohttp":
        import aiohttp

        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=concurrency + 1, limit_per_host=0),
            cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=60, sock_connect=10),
        )  # fmt: skip

        async def post_aiohttp(body: bytes) -> int:
            async with session.request("POST", url, headers=headers, data=body) as answer:
                await answer.read()
                return answer.status

        return post_aiohttp, session.close
    if kind == "record-transport":
        from batch_cancel.gws.record_transport import RecordTransport

        transport = RecordTransport(base, total_timeout=60, connect_timeout=10,
                                    max_connections=concurrency + 1, default_headers={})  # fmt: skip

        async def post_own(body: bytes) -> int:
            return (await transport.post(PATH, headers, body)).status

        return post_own, transport.aclose
    if kind == "pyreqwest":
        from pyreqwest.client import ClientBuilder
        from pyreqwest.http import HeaderMap

        client = ClientBuilder().max_connections(concurrency + 1).http1_only().no_proxy().build()
        header_map = HeaderMap(headers)

        async def post_reqwest(body: bytes) -> int:
            answer = await client.post(url).headers(header_map).body_bytes(body).build().send()
            await answer.bytes()
            return answer.status

        return post_reqwest, client.close
    if kind == "rnet":
        import rnet

        rnet_client = rnet.Client()

        async def post_rnet(body: bytes) -> int:
            answer = await rnet_client.post(url, headers=headers, body=body)
            await answer.bytes()
            return int(str(answer.status).split()[0])

        return post_rnet, _nothing
    import httpr

    httpr_client = httpr.AsyncClient()

    async def post_httpr(body: bytes) -> int:
        return int((await httpr_client.post(url, headers=headers, content=body)).status_code)

    return post_httpr, _nothing


async def _nothing() -> None:
    return None


async def _measure(kind: str, base: str, posts: int, concurrency: int) -> dict[str, Any]:
    headers, device = await _session(base)
    post, close = await _client(kind, base, headers, concurrency)

    def body(i: int) -> bytes:
        return json.dumps({"operationName": "CancelRecord", "applicationId": 134, "campaignName": "Campaign1",
                           "callingList": "CallingList1", "phoneNumber": f"+1202555{i % 10000:04d}",
                           "devicePath": device, "referenceId": uuid.uuid4().hex}).encode()  # fmt: skip

    try:
        await asyncio.gather(*(post(body(i)) for i in range(concurrency * 2)))  # connections made, warm
        bodies = iter([body(i) for i in range(posts)])
        statuses: dict[int, int] = {}

        async def worker() -> None:
            for b in bodies:
                status = await post(b)
                statuses[status] = statuses.get(status, 0) + 1

        cpu, wall = time.process_time(), time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    finally:
        await close()
    return {"kind": kind, "cpu_us": cpu / posts * 1e6, "per_s": posts / wall, "statuses": statuses}


def _child(kind: str, base: str, posts: int, concurrency: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.http_clients", "--child", kind, "--base-url", base,
           "--posts", str(posts), "--concurrency", str(concurrency)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        return {"kind": kind, "error": f"exit {out.returncode}: {out.stderr.strip()[-300:]}"}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("--posts", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--child", choices=CLIENTS, help=argparse.SUPPRESS)
    parser.add_argument("--base-url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(asyncio.run(_measure(args.child, args.base_url, args.posts, args.concurrency))))
        return
    kinds = [k for k in CLIENTS if k in ("aiohttp", "record-transport")
             or importlib.util.find_spec(k) is not None]  # fmt: skip
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    with SimProcess() as sim:
        for i in range(args.rounds):
            for kind in kinds if i % 2 == 0 else reversed(kinds):
                result = _child(kind, sim.base_url, args.posts, args.concurrency)
                runs[kind].append(result)
                shown = (f"{result['cpu_us']:7.1f} us/POST  {result['per_s']:7.0f}/s  {result['statuses']}"
                         if "error" not in result else result["error"])  # fmt: skip
                print(f"  round {i + 1}/{args.rounds} {kind:<17} {shown}", file=sys.stderr)
    print(f"client CPU per POST, {args.concurrency} in flight, {args.posts} POSTs a run, medians of "
          f"{args.rounds} rounds (order flipped each round); ratio to aiohttp paired by round")
    for kind in kinds:
        good = [r for r in runs[kind] if "error" not in r]
        if not good:
            print(f"  {kind:<17} failed: {runs[kind][0]['error']}")
            continue
        pairs = [r["cpu_us"] / a["cpu_us"] for r, a in zip(runs[kind], runs["aiohttp"], strict=True)
                 if "error" not in r and "error" not in a]  # fmt: skip
        failed = len(runs[kind]) - len(good)
        note = f"   ({failed} run(s) failed)" if failed else ""
        print(f"  {kind:<17} {statistics.median(r['cpu_us'] for r in good):7.1f} us/POST   "
              f"x aiohttp {statistics.median(pairs):5.2f}{note}")


if __name__ == "__main__":
    main()
