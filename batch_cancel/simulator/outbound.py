"""``POST /api/v2/me/outbound-records``: validation, fault injection and the CometD outcome.

The order of checks mirrors a GWS behind Jetty: the connection can die first, a gateway
in front can answer itself, the DoS filter (delay, then 429) acts before authentication,
then session and CSRF, then the voice service (503), then the contact-center session
(statusCode 2), then the request. A request can also hang: accepted on the socket and
never answered, processed or not. After GWS processed a request its answer can still be
lost (reset), replaced by a gateway's 502/504/408, or be statusCode 7 or 9.
A repeat for a record already cancelled changes nothing; ``Faults.repeat_answer`` says
how it is answered.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

from aiohttp import web

from batch_cancel.simulator.channels import INTERNAL_CHANNEL, OUTBOUND_CHANNEL
from batch_cancel.simulator.httputil import (
    BAD_CSRF,
    NOT_AUTHENTICATED,
    csrf_ok,
    drop_connection,
    gateway_answer,
    gws_error,
    gws_ok,
    hold_silently,
    json_object,
    session_of,
)
from batch_cancel.simulator.ledger import PublishEvent, PublishKind, RequestEntry
from batch_cancel.simulator.messages import (
    OPERATIONS,
    RecordRequest,
    device_event,
    error_event,
    failure_message,
    foreign_messages,
    success_message,
)
from batch_cancel.simulator.sessions import SESSION_COOKIE, HttpSession
from batch_cancel.simulator.state import SimState

__all__ = ["OutboundRecords"]

_REQUIRED = ("applicationId", "campaignName", "callingList", "phoneNumber", "devicePath")
# DoNotCallRecord by phone number does not need a calling list (its API page).
_OPTIONAL_BY_OPERATION = {"DoNotCallRecord": frozenset({"callingList"})}
_CHAIN_ATTRIBUTES = frozenset({"AllChain", "RecordOnly"})


class _Refusal(Exception):
    """A GWS error answer, with the ledger's name for why it was given."""

    def __init__(self, http_status: int, status_code: int, message: str, fault: str, **headers: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.status_code = status_code
        self.fault = fault
        self.response = gws_error(http_status, status_code, message, **headers)


class OutboundRecords:
    def __init__(self, state: SimState) -> None:
        self._state = state

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/api/v2/me/outbound-records", self.post)
        app.router.add_post("/api/v2/me/outbound-records/", self.post)

    async def post(self, request: web.Request) -> web.StreamResponse:
        state = self._state
        entry = state.ledger.begin_request()
        body = json_object(await request.read())
        _describe(entry, body or {})
        faults = state.faults
        if state.chance(faults.reset_before_rate):
            drop_connection(request)
            state.ledger.finish_request(entry, http_status=None, status_code=None, fault="reset_before")
            return web.Response()
        if state.chance(faults.gateway_before_rate):
            return self._gateway(entry, "gateway_before")  # GWS never saw it
        wait = state.dos_filter.admit(
            _dos_key(request), faults.dos_max_requests_per_sec, faults.dos_max_wait
        )
        if wait is None:
            # Jetty's DoSFilter sends no Retry-After with its 429.
            state.ledger.finish_request(entry, http_status=429, status_code=4, fault="dos_429")
            return gws_error(429, 4, "Too many requests")
        if wait > 0:
            entry.dos_wait = wait
            await asyncio.sleep(wait)
        if state.chance(faults.hang_before_rate):
            return await self._hang(request, entry, "hang_before")
        try:
            session, req = self._admit(request, body)
        except _Refusal as refusal:
            state.ledger.finish_request(
                entry,
                http_status=refusal.http_status,
                status_code=refusal.status_code,
                fault=refusal.fault,
            )
            return refusal.response
        entry.user = session.user
        if state.config.service_time > 0:
            await asyncio.sleep(state.config.service_time)
        incomplete = state.chance(faults.incomplete_rate)
        if incomplete and not state.chance(faults.incomplete_processed_rate):
            # statusCode 9 before GWS did anything
            return self._incomplete(entry)
        repeat_refused = self._process(entry, req)
        if repeat_refused is not None:
            state.ledger.finish_request(entry, http_status=repeat_refused.http_status,
                                        status_code=repeat_refused.status_code,
                                        fault=repeat_refused.fault)  # fmt: skip
            return repeat_refused.response
        entry.listeners = state.hub.listeners(session.user, "/v2/me/outbound")
        early = state.chance(faults.ack_before_http_rate)
        reset_after = state.chance(faults.reset_after_rate)
        self._schedule_outcome(entry, session.user, req, early=early)
        self._count_and_degrade(session)
        self._maybe_foreign(session.user)
        if state.chance(faults.hang_after_rate):
            return await self._hang(request, entry, "hang_after")
        if early:
            await asyncio.sleep(faults.ack_before_http_delay)
        if reset_after:
            drop_connection(request)
            state.ledger.finish_request(entry, http_status=None, status_code=None, fault="reset_after")
            return web.Response()
        if incomplete:
            return self._incomplete(entry)  # statusCode 9, yet GWS did it
        if state.chance(faults.gateway_after_rate):
            return self._gateway(entry, "gateway_after")
        if state.chance(faults.partial_success_rate):
            state.ledger.finish_request(entry, http_status=200, status_code=7, fault="partial_success")
            return web.json_response({"statusCode": 7, "statusMessage": "Partial success"})
        state.ledger.finish_request(
            entry, http_status=200, status_code=0, fault="ack_before_http" if early else None
        )
        return gws_ok()

    def _gateway(self, entry: RequestEntry, fault: str) -> web.Response:
        """A proxy in front of GWS answers with its own error, not GWS JSON."""
        state = self._state
        status = state.rng.choice(state.faults.gateway_statuses)
        state.ledger.finish_request(entry, http_status=status, status_code=None, fault=fault)
        return gateway_answer(status, state.faults.gateway_body)

    def _incomplete(self, entry: RequestEntry) -> web.Response:
        self._state.ledger.finish_request(entry, http_status=500, status_code=9, fault="incomplete")
        return gws_error(500, 9, "Processing incomplete")

    def _admit(self, request: web.Request, body: dict[str, Any] | None) -> tuple[HttpSession, RecordRequest]:
        state = self._state
        faults = state.faults
        if state.chance(faults.http_429_rate):
            headers = {}
            if faults.retry_after is not None:
                headers["Retry-After"] = f"{faults.retry_after:g}"
            raise _Refusal(429, 4, "Too many requests", "429", **headers)
        session = session_of(state, request)
        if session is None:
            had_cookie = SESSION_COOKIE in request.cookies
            fault = "session_expired" if had_cookie else "not_authenticated"
            raise _Refusal(*NOT_AUTHENTICATED, fault)
        if not csrf_ok(state, request, session):
            raise _Refusal(*BAD_CSRF, "csrf")
        if state.chance(faults.http_503_rate):
            message = "Voice service is not available at this time"
            raise _Refusal(503, 4, message, "503")
        if state.config.require_cc_session and not session.cc_session:
            message = "Contact center session is not started"
            raise _Refusal(400, 2, message, "no_cc_session")
        return session, self._validate(session, body)

    def _validate(self, session: HttpSession, body: dict[str, Any] | None) -> RecordRequest:
        if body is None:
            raise _Refusal(400, 10, "Request body is not a JSON object", "bad_body")
        operation = body.get("operationName")
        if operation is None:
            raise _Refusal(400, 1, "Missing parameter: operationName", "missing_parameter")
        if operation not in OPERATIONS:
            raise _Refusal(400, 10, f"Invalid operationName: {operation}", "invalid_parameter")
        optional = _OPTIONAL_BY_OPERATION.get(operation, frozenset())
        for name in _REQUIRED:
            if name not in optional and body.get(name) in (None, ""):
                raise _Refusal(400, 1, f"Missing parameter: {name}", "missing_parameter")
        app_id = body["applicationId"]
        if isinstance(app_id, str) and app_id.isdigit():
            app_id = int(app_id)
        if not isinstance(app_id, int) or isinstance(app_id, bool):
            raise _Refusal(400, 10, "Invalid parameter: applicationId", "invalid_parameter")
        chain = body.get("chainAttribute")
        if chain is not None and chain not in _CHAIN_ATTRIBUTES:
            raise _Refusal(400, 10, "Invalid parameter: chainAttribute", "invalid_parameter")
        texts = {n: body.get(n) for n in _REQUIRED[1:]}
        if texts["callingList"] == "":
            texts["callingList"] = None
        if not all(isinstance(v, str) for n, v in texts.items() if v is not None or n not in optional):
            raise _Refusal(400, 10, "Invalid parameter type", "invalid_parameter")
        if body["devicePath"] != self._state.devices[session.user].path:
            raise _Refusal(404, 6, f"Device not found: {body['devicePath']}", "device_not_found")
        ref = body.get("referenceId")
        calling_list = texts["callingList"]
        return RecordRequest(
            operation=operation,
            application_id=app_id,
            campaign_name=str(texts["campaignName"]),
            calling_list=None if calling_list is None else str(calling_list),
            phone_number=str(texts["phoneNumber"]),
            device_path=str(texts["devicePath"]),
            chain_attribute=chain,
            reference_id=None if ref is None else str(ref),
        )

    def _process(self, entry: RequestEntry, req: RecordRequest) -> _Refusal | None:
        """Do what GWS does with a valid request; a refusal when a repeat is answered
        as a JSON error (nothing changed, so not processed)."""
        state = self._state
        config = state.config
        ref = req.reference_id
        entry.repeat = ref is not None and ref in state.processed_refs
        key = (req.operation, req.calling_list, req.phone_number)
        if req.phone_number in config.failing_numbers or req.calling_list in config.failing_lists:
            entry.effect = entry.outcome = "failed"
        elif key not in state.done:
            state.done[key] = ref if ref is not None else f"#{entry.seq}"
            entry.effect = entry.outcome = "cancelled"
        else:
            # already cancelled (by this referenceId or another): nothing changes
            entry.effect = "already"
            answer = state.faults.repeat_answer
            if answer == "http_error":
                return _Refusal(404, 6, "Record not found", "repeat_not_found")
            entry.outcome = "failed" if answer == "failure" else "cancelled"
        entry.processed = True
        if ref is not None:
            state.processed_refs.add(ref)
        return None

    def _schedule_outcome(self, entry: RequestEntry, user: str, req: RecordRequest, *, early: bool) -> None:
        state = self._state
        faults = state.faults
        failed = entry.outcome == "failed"
        started = entry.t_start
        if state.chance(faults.ack_drop_rate):
            for channel, kind in _parts(failed, state.config.failure_style):
                state.ledger.record_publish(
                    reference_id=req.reference_id,
                    channel=channel,
                    kind=kind,
                    queued_to=0,
                    dropped=True,
                )
            return
        copies = 2 if state.chance(faults.ack_duplicate_rate) else 1
        delay = 0.0 if early else state.rng.uniform(*faults.ack_delay)
        for copy in range(copies):
            publish = partial(self._publish, user, req, failed, started, duplicate=copy > 0)
            if early and copy == 0:
                publish()
            else:
                # A duplicate trails its original a little, so it may land in a later poll.
                extra = state.rng.uniform(0.0, 0.1) if copy else 0.0
                state.call_later(delay + extra, publish)

    def _publish(
        self, user: str, req: RecordRequest, failed: bool, started: float, *, duplicate: bool
    ) -> None:
        state = self._state
        items: list[tuple[str, Any, PublishEvent | None]] = []
        for channel, kind in _parts(failed, state.config.failure_style):
            event = state.ledger.record_publish(
                reference_id=req.reference_id,
                channel=channel,
                kind=kind,
                queued_to=0,
                duplicate=duplicate,
            )
            if kind == "failure":
                data = failure_message(req, state.config.failure_style)
            elif kind == "error_event":
                data = error_event(req, started)
            elif kind == "ack":
                data = success_message(req)
            else:
                handle = state.record_handle(req.calling_list or "", req.phone_number)
                data = device_event(req, handle, started)
            items.append((channel, data, event))
        state.hub.publish(user, items)

    def _count_and_degrade(self, session: HttpSession) -> None:
        state = self._state
        faults = state.faults
        state.authenticated_requests += 1
        n = state.authenticated_requests
        if faults.session_expiry_every and n % faults.session_expiry_every == 0:
            state.ledger.count("session_expiries")
            state.sessions.end(session)
        if faults.csrf_invalidate_every and n % faults.csrf_invalidate_every == 0:
            state.ledger.count("csrf_rotations")
            state.sessions.rotate_csrf(session)
        if faults.drop_cometd_every and n % faults.drop_cometd_every == 0:
            state.hub.drop_clients()
        if faults.restart_every and n % faults.restart_every == 0:
            state.restart(faults.restart_for, faults.restart_retry_after)
        if faults.half_open_every and n % faults.half_open_every == 0:
            state.go_half_open(faults.half_open_for)


    def _maybe_foreign(self, user: str) -> None:
        state = self._state
        every = state.faults.foreign_every
        if not every or state.authenticated_requests % every:
            return
        n = state.authenticated_requests // every
        user_event, outbound = foreign_messages(state.devices[user].device_id, n)
        items: list[tuple[str, Any, PublishEvent | None]] = []
        for channel, data in ((INTERNAL_CHANNEL, user_event), (OUTBOUND_CHANNEL, outbound)):
            event = state.ledger.record_publish(
                reference_id=None, channel=channel, kind="foreign", queued_to=0
            )
            items.append((channel, data, event))
        state.hub.publish(user, items)

    async def _hang(self, request: web.Request, entry: RequestEntry, fault: str) -> web.StreamResponse:
        """Keep the connection open and never answer, until the client gives up or we stop."""
        self._state.ledger.finish_request(entry, http_status=None, status_code=None, fault=fault)
        return await hold_silently(request, self._state.stopping)


def _dos_key(request: web.Request) -> str:
    session_id = request.cookies.get(SESSION_COOKIE)
    return f"session:{session_id}" if session_id else f"addr:{request.remote}"


def _parts(failed: bool, style: str = "error_message") -> list[tuple[str, PublishKind]]:
    if failed and style == "user_event":
        return [(INTERNAL_CHANNEL, "error_event")]
    if failed:
        return [(OUTBOUND_CHANNEL, "failure")]
    return [(OUTBOUND_CHANNEL, "ack"), (INTERNAL_CHANNEL, "device_event")]


def _describe(entry: RequestEntry, body: dict[str, Any]) -> None:
    """Copy what the request says into the ledger, even if it is refused later."""
    ref = body.get("referenceId")
    entry.reference_id = None if ref is None else str(ref)
    entry.operation = _text(body.get("operationName"))
    entry.phone_number = _text(body.get("phoneNumber"))
    app_id = body.get("applicationId")
    entry.application_id = app_id if isinstance(app_id, int) else None
    entry.campaign_name = _text(body.get("campaignName"))
    entry.calling_list = _text(body.get("callingList"))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None
