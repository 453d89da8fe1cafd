"""What an operator would write first: one request at a time, waiting for each outcome.

    python -m benchmarks.sequential_baseline NUMBERS.csv --base-url URL --username U
    (password from env GWS_PASSWORD)

Blocking httpx, no threads: log in, subscribe, then for every number POST it and
long-poll ``/meta/connect`` until its acknowledgement (or a failure) comes back.
The last stdout line is JSON: records, acked, errors, seconds (first POST to last ack).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import uuid
from typing import Any

import httpx

from benchmarks.lean_baseline import NOTIFICATIONS, SUCCESS, read_numbers

__all__ = ["main", "run"]


def run(numbers: list[str], *, base_url: str, username: str, password: str) -> dict[str, Any]:
    with httpx.Client(base_url=base_url, timeout=60.0) as http:
        me = http.get("/api/v2/me", auth=(username, password))
        me.raise_for_status()
        csrf = {}
        if "X-CSRF-HEADER" in me.headers:
            csrf[me.headers["X-CSRF-HEADER"]] = me.headers["X-CSRF-TOKEN"]
        device = f"/devices/{http.get('/api/v2/me/devices').json()['devices'][0]['id']}"
        seq = 0

        def bayeux(message: dict[str, Any]) -> list[dict[str, Any]]:
            nonlocal seq
            seq += 1
            replies: list[dict[str, Any]] = http.post(NOTIFICATIONS, json=[{**message, "id": str(seq)}],
                                                      headers=csrf).json()  # fmt: skip
            return replies

        client_id = bayeux({"channel": "/meta/handshake", "version": "1.0",
                            "supportedConnectionTypes": ["long-polling"]})[0]["clientId"]  # fmt: skip
        bayeux({"channel": "/meta/connect", "clientId": client_id, "connectionType": "long-polling",
                "advice": {"timeout": 0}})  # fmt: skip
        bayeux({"channel": "/meta/subscribe", "clientId": client_id, "subscription": "/v2/me/outbound"})
        acked = errors = 0
        started = time.monotonic()
        for number in numbers:
            ref = uuid.uuid4().hex
            body = {"operationName": "CancelRecord", "applicationId": 134, "campaignName": "Campaign1",
                    "callingList": "CallingList1", "phoneNumber": number, "devicePath": device,
                    "referenceId": ref}  # fmt: skip
            if http.post("/api/v2/me/outbound-records", json=body, headers=csrf).status_code != 200:
                errors += 1
                continue
            outcome = None
            while outcome is None:
                for message in bayeux({"channel": "/meta/connect", "clientId": client_id,
                                       "connectionType": "long-polling"}):  # fmt: skip
                    data = message.get("data")
                    if isinstance(data, dict) and data.get("referenceId") == ref:
                        outcome = data.get("notificationType")
            acked += outcome == SUCCESS
        return {"records": len(numbers), "acked": acked, "errors": errors,
                "seconds": round(time.monotonic() - started, 4)}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("numbers")
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--username", required=True)
    args = parser.parse_args(argv)
    result = run(read_numbers(args.numbers), base_url=args.base_url, username=args.username,
                 password=os.environ["GWS_PASSWORD"])  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
