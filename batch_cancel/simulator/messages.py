"""The CometD message bodies GWS publishes for outbound-record operations.

Success shapes follow the CancelRecord API page sample field for field. GWS documents no
failure shape, so two plausible ones are offered (``failure_style``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from batch_cancel.simulator.config import FailureStyle

__all__ = ["OPERATIONS", "RecordRequest", "device_event", "failure_message", "success_message"]

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


@dataclass(frozen=True)
class RecordRequest:
    """A validated outbound-record request body."""

    operation: str
    application_id: int
    campaign_name: str
    calling_list: str
    phone_number: str
    device_path: str
    chain_attribute: str | None
    reference_id: str | None

    @property
    def device_id(self) -> str:
        return self.device_path.rsplit("/", 1)[-1]


def _record(req: RecordRequest) -> dict[str, Any]:
    return {
        "devicePath": req.device_path,
        "callingList": req.calling_list,
        "applicationId": req.application_id,
        "campaignName": req.campaign_name,
    }


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
    now = time.time()
    return {
        "metrics": {
            "eventProcessing": {
                "serverGenerationTimestamp": int(now * 1000),
                "nodeProcessingTimeNanos": max(0, int((now - started) * 1e9)),
                "serverProcessingTimeTotalMs": max(0, int((now - started) * 1000)),
            }
        },
        "userData": {
            "GSW_CHAIN_ATTR": req.chain_attribute or "RecordOnly",
            "GSW_APPLICATION_ID": req.application_id,
            "GSW_RECORD_HANDLE": record_handle,
            "GSW_USER_EVENT": OPERATIONS[req.operation],
            "GSW_CALLING_LIST": req.calling_list,
            "GSW_PHONE": req.phone_number,
            "GSW_CAMPAIGN_NAME": req.campaign_name,
        },
        "deviceId": req.device_id,
        "messageType": "DeviceUserEventMessage",
    }


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
