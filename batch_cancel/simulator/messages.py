"""The CometD message bodies GWS publishes for outbound-record operations.

Success shapes follow the CancelRecord API page sample field for field. GWS documents no
failure shape, so two plausible ones are offered (``failure_style``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from batch_cancel.simulator.config import FailureStyle

__all__ = [
    "OPERATIONS",
    "RecordRequest",
    "device_event",
    "error_event",
    "failure_message",
    "foreign_messages",
    "success_message",
]

# operationName -> notificationType of its acknowledgement
OPERATIONS: dict[str, str] = {
    "CancelRecord": "RecordCancelAcknowledge",
    "DoNotCallRecord": "DoNotCallAcknowledge",
}
_FAILURE_TYPES: dict[str, str] = {
    "CancelRecord": "RecordCancelError",
    "DoNotCallRecord": "DoNotCallError",
}
# Not documented for outbound failures; GWS's "not found" statusCode is the least
# surprising stand-in.
_NOT_FOUND_CODE = 6
_NOT_FOUND_TEXT = "Record not found"
# OCS's own number for that error in its desktop protocol; the simulator's choice, as
# the GWS documentation lists none.
_OCS_NOT_FOUND_NUMBER = 103

@dataclass(frozen=True)
class RecordRequest:
    """A validated outbound-record request body."""

    operation: str
    application_id: int
    campaign_name: str
    # DoNotCallRecord by phone number needs no calling list.
    calling_list: str | None
    phone_number: str
    device_path: str
    chain_attribute: str | None
    reference_id: str | None

    @property
    def device_id(self) -> str:
        return self.device_path.rsplit("/", 1)[-1]


def _record(req: RecordRequest) -> dict[str, Any]:
    record: dict[str, Any] = {"devicePath": req.device_path}
    if req.calling_list is not None:
        record["callingList"] = req.calling_list
    record["applicationId"] = req.application_id
    record["campaignName"] = req.campaign_name
    return record


def _metrics(started: float) -> dict[str, Any]:
    now = time.time()
    return {
        "eventProcessing": {
            "serverGenerationTimestamp": int(now * 1000),
            "nodeProcessingTimeNanos": max(0, int((now - started) * 1e9)),
            "serverProcessingTimeTotalMs": max(0, int((now - started) * 1000)),
        }
    }


def _user_data(req: RecordRequest, user_event: str) -> dict[str, Any]:
    data: dict[str, Any] = {
        "GSW_CHAIN_ATTR": req.chain_attribute or "RecordOnly",
        "GSW_APPLICATION_ID": req.application_id,
        "GSW_USER_EVENT": user_event,
    }
    if req.calling_list is not None:
        data["GSW_CALLING_LIST"] = req.calling_list
    data["GSW_PHONE"] = req.phone_number
    data["GSW_CAMPAIGN_NAME"] = req.campaign_name
    return data


def _with_reference(body: dict[str, Any], req: RecordRequest) -> dict[str, Any]:
    # GWS echoes a referenceId only when the request carried one.
    if req.reference_id is not None:
        body["referenceId"] = req.reference_id
    return body


def success_message(req: RecordRequest) -> dict[str, Any]:
    return _with_reference(
        {
            "record": _record(req),
            "notificationType": OPERATIONS[req.operation],
            "messageType": "OutboundRecordMessage",
        },
        req,
    )


def device_event(req: RecordRequest, record_handle: int, started: float) -> dict[str, Any]:
    """The ``/me/internal`` companion of an acknowledgement; it carries no referenceId."""
    user_data = _user_data(req, OPERATIONS[req.operation])
    user_data["GSW_RECORD_HANDLE"] = record_handle
    return {
        "metrics": _metrics(started),
        "userData": user_data,
        "deviceId": req.device_id,
        "messageType": "DeviceUserEventMessage",
    }


def error_event(req: RecordRequest, started: float) -> dict[str, Any]:
    """OCS's desktop-protocol error for a request, as GWS relays it on ``/me/internal``.

    OCS answers a desktop request that failed with the event of that request carrying
    ``GSW_ERROR`` and ``GSW_ERROR_NUMBER``; the event name itself is not documented, so
    it is the acknowledgement's name here: a client must look at GSW_ERROR, not at the
    name, to tell a failure from a success.
    """
    user_data = _user_data(req, OPERATIONS[req.operation])
    user_data["GSW_ERROR"] = _NOT_FOUND_TEXT
    user_data["GSW_ERROR_NUMBER"] = _OCS_NOT_FOUND_NUMBER
    return {
        "metrics": _metrics(started),
        "userData": user_data,
        "deviceId": req.device_id,
        "messageType": "DeviceUserEventMessage",
    }


def foreign_messages(device_id: str, n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """What else a GWS user hears: (a user event on ``/me/internal``, an outbound
    notification on ``/v2/me/outbound`` whose referenceId no client sent)."""
    user_event = {
        "userData": {"GSW_USER_EVENT": "CampaignStatusChanged", "GSW_CAMPAIGN_NAME": f"Other{n}"},
        "deviceId": device_id,
        "messageType": "DeviceUserEventMessage",
    }
    outbound = {
        "record": {"devicePath": f"/devices/{device_id}", "applicationId": 0, "campaignName": f"Other{n}"},
        "notificationType": "RecordCancelAcknowledge",
        "messageType": "OutboundRecordMessage",
        "referenceId": f"foreign-{n}",
    }
    return user_event, outbound


def failure_message(req: RecordRequest, style: FailureStyle) -> dict[str, Any]:
    if style == "error_message":
        body: dict[str, Any] = {
            "messageType": "ErrorMessage",
            "errorCode": _NOT_FOUND_CODE,
            "errorMessage": _NOT_FOUND_TEXT,
        }
    else:
        body = {
            "record": _record(req),
            "notificationType": _FAILURE_TYPES[req.operation],
            "messageType": "OutboundRecordMessage",
            "errorMessage": _NOT_FOUND_TEXT,
        }
    return _with_reference(body, req)
