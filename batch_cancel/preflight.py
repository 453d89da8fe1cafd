"""Pre-flight: is everything ready for a run? Each step says what it checked.

Logs in, checks the CSRF token, lists devices, handshakes and subscribes to the
ack channel, optionally sends one canary CancelRecord for a number the user
names, and estimates how long the input will take at the configured rate.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from batch_cancel.config import GwsConfig, JobDefaults
from batch_cancel.exceptions import BatchCancelError
from batch_cancel.gws.ack_channel import AckChannel
from batch_cancel.gws.network import route_for, trust_store
from batch_cancel.gws.session import GwsSession
from batch_cancel.object_store import Location
from batch_cancel.send.outcomes import SUCCESS, describe_failure, error_text

__all__ = ["Step", "preflight"]


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0
    # a failed step's exit code: 2 when no retry can fix it (a certificate, a page that is
    # not the GWS API), 3 otherwise
    exit_code: int = 3


@dataclass
class _Steps:
    steps: list[Step] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str, started: float, exit_code: int = 3) -> bool:
        self.steps.append(Step(name, ok, detail, round(time.monotonic() - started, 3),
                               2 if exit_code == 2 else 3))
        return ok


async def preflight(
    gws: GwsConfig,
    defaults: JobDefaults,
    *,
    canary: str | None = None,
    inputs: Sequence[Location] = (),
    rate: float = 10.0,
    ack_timeout: float = 30.0,
) -> list[Step]:
    """Run every check that can run; stop at the first that fails."""
    out = _Steps()
    if inputs and not _estimate(out, inputs, rate):
        return out.steps
    t = time.monotonic()
    try:
        session = GwsSession(gws, max_connections=2)
        cometd_route = route_for(gws.notifications_url, gws, session.route.ssl)
    except BatchCancelError as exc:
        out.add("network", False, str(exc), t, exc.exit_code)
        return out.steps
    same = cometd_route.proxy == session.route.proxy
    out.add("network", True, f"proxy {session.route.proxy_shown}"
            + ("" if same else f", CometD proxy {cometd_route.proxy_shown}")
            + f"; trust store {trust_store(gws)}; record POSTs on {session.record_client}", t)  # fmt: skip
    async with session:
        t = time.monotonic()
        try:
            user = await session.login()
        except BatchCancelError as exc:
            out.add("login", False, str(exc), t, exc.exit_code)
            return out.steps
        name = (user.get("user") or {}).get("userName") if isinstance(user.get("user"), dict) else None
        out.add("login", True, f"logged in as {name or gws.credentials.username}", t)
        t = time.monotonic()
        token = session.auth_headers().keys() - {"Authorization", "Cookie"}
        out.add("csrf", True, "CSRF token received" if token else "no CSRF token (protection off)", t)
        t = time.monotonic()
        try:
            devices = await session.devices()
        except BatchCancelError as exc:
            out.add("devices", False, str(exc), t, exc.exit_code)
            return out.steps
        paths = [f"/devices/{d.get('id')}" for d in devices if d.get("id")]
        device = defaults.device_path or (paths[0] if paths else None)
        if device is None:
            out.add("devices", False, "the user has no device and no --device-path was given", t)
            return out.steps
        if defaults.device_path and paths and defaults.device_path not in paths:
            out.add("devices", False, f"{defaults.device_path} is not one of the user's devices", t)
            return out.steps
        out.add("devices", True, f"{len(paths)} device(s); using {device}", t)
        messages: list[dict[str, Any]] = []
        arrived = asyncio.Event()

        def collect(batch: list[dict[str, Any]]) -> None:
            messages.extend(batch)
            arrived.set()

        t = time.monotonic()
        channel = AckChannel(
            gws.notifications_url, channels=gws.ack_channels,
            headers=session.auth_headers, on_messages=collect, route=cometd_route,
            http=lambda: session.http_for(cometd_route),
        )  # fmt: skip
        try:
            await channel.start(timeout=min(30.0, ack_timeout))
        except BatchCancelError as exc:
            out.add("cometd", False, str(exc), t, exc.exit_code)
            return out.steps
        try:
            out.add("cometd", True, f"subscribed to {', '.join(gws.ack_channels)}", t)
            if canary:
                await _canary(out, session, defaults, device, canary, messages, arrived, ack_timeout)
        finally:
            await channel.close()
            await session.end_cc_session()
    return out.steps


async def _canary(
    out: _Steps, session: GwsSession, d: JobDefaults, device: str, number: str,
    messages: list[dict[str, Any]], arrived: asyncio.Event, ack_timeout: float,
) -> None:  # fmt: skip
    t = time.monotonic()
    needed: list[tuple[str, object]] = [("--application-id", d.application_id),
                                        ("--campaign", d.campaign)]
    if d.operation != "DoNotCallRecord":  # DoNotCallRecord by phone number needs no list
        needed.append(("--calling-list", d.calling_list))
    missing = [n for n, v in needed if v is None]
    if missing:
        out.add("canary", False, "a canary needs " + ", ".join(missing), t)
        return
    ref = f"bc-preflight-{secrets.token_hex(4)}"
    body: dict[str, Any] = {
        "operationName": d.operation, "applicationId": d.application_id, "campaignName": d.campaign,
        "phoneNumber": number, "devicePath": device, "referenceId": ref,
    }  # fmt: skip
    if d.calling_list:
        body["callingList"] = d.calling_list
    if d.chain_attribute:
        body["chainAttribute"] = d.chain_attribute
    try:
        await session.post_record(body)
    except BatchCancelError as exc:
        # the very words a run would put in the row's error column
        out.add("canary", False, str(exc), t)
        return
    deadline = time.monotonic() + ack_timeout
    while (left := deadline - time.monotonic()) > 0:
        for m in messages:
            data = m.get("data")
            if isinstance(data, dict) and data.get("referenceId") == ref:
                ok = data.get("notificationType") == SUCCESS.get(d.operation)
                out.add("canary", ok, "acknowledged" if ok else describe_failure(data), t)
                return
            if isinstance(data, dict) and _error_event_for(data, number):
                out.add("canary", False, error_text(data["userData"]), t)
                return
        arrived.clear()
        try:
            await asyncio.wait_for(arrived.wait(), left)
        except TimeoutError:
            break
    out.add("canary", False, f"no acknowledgement within {ack_timeout:g} s", t)


def _error_event_for(data: dict[str, Any], number: str) -> bool:
    """An OCS error user event (on /me/internal, no referenceId) naming the canary."""
    user_data = data.get("userData")
    if not isinstance(user_data, dict) or "GSW_ERROR" not in user_data:
        return False
    def digits(v: object) -> str:
        return "".join(c for c in str(v or "") if c.isdigit())
    return digits(user_data.get("GSW_PHONE")) == digits(number)


def _estimate(out: _Steps, inputs: Sequence[Location], rate: float) -> bool:
    from batch_cancel.input.files import inspect_inputs, read_batches

    t = time.monotonic()
    # unreadable input is a usage error (exit 2), raised to the caller
    files = inspect_inputs(inputs)
    rows = sum(len(b.columns["phone"]) for b in read_batches(files))
    eta = f"about {_duration(rows / rate)} at {rate:g}/s" if rate > 0 else "rate unlimited"
    return out.add("input", True, f"{rows} row(s) in {len(files)} file(s); {eta}", t)


def _duration(total: float) -> str:
    seconds = round(total)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"
