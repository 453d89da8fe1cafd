"""OCS's desktop-protocol user events, as GWS relays them on ``/me/internal``.

They carry no referenceId: ``userData`` names the record by ``GSW_PHONE``,
``GSW_CAMPAIGN_NAME`` and ``GSW_CALLING_LIST``, and ``GSW_APPLICATION_ID`` when the
event carries it (the same list and campaign names may exist in two OCS applications). Two kinds matter here:

- an acknowledgement's companion (``GSW_RECORD_HANDLE``, no ``GSW_ERROR``): the OCS
  record that was cancelled, kept with the row as the strongest evidence there is;
- an error (``GSW_ERROR``, ``GSW_ERROR_NUMBER``): the event's name is not documented,
  so any event with ``GSW_ERROR`` is one, even one named like an acknowledgement.

A row is found by its number, campaign and list among the records in flight (and,
for a companion that trails its acknowledgement, the rows cancelled lately). When
the same number is in flight twice the event cannot be pinned on one row: it is
kept as evidence only.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from batch_cancel.journal.rows import Status

if TYPE_CHECKING:
    from batch_cancel.send.outcomes import Record

__all__ = ["EventMatch", "UserEventIndex", "UserEventVerdict", "error_text", "whole_number"]

_Key = tuple[str, str, str]
# Rows cancelled lately whose companion may still be on its way; a companion is
# published with its acknowledgement, so a few seconds' worth of rows is plenty.
_SETTLED_KEPT = 50_000


class UserEventVerdict(StrEnum):
    HANDLE = "record_handle"  # the companion of a row's acknowledgement
    ERROR = "error"  # a row's failure
    AMBIGUOUS = "ambiguous"  # names a number in flight more than once
    UNMATCHED = "unmatched"  # names no row of ours (or carries nothing we know)


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs 3x (one per event)
class EventMatch:
    verdict: UserEventVerdict
    record: Record | None = None
    handle: int | str | None = None
    error: str | None = None
    error_number: int | None = None
    note: str = ""


def error_text(user_data: dict[str, Any]) -> str:
    """The row's error as the server told it: GSW_ERROR with its number and event."""
    number = user_data.get("GSW_ERROR_NUMBER")
    text = str(user_data.get("GSW_ERROR") or "")
    head = f"GSW_ERROR_NUMBER {number}: " if number is not None else ""
    return head + text


def _digits(phone: object) -> str:
    text = str(phone or "")
    # most numbers are sent as bare digits: nothing to strip
    return text if text.isdigit() else "".join(filter(str.isdigit, text))


def whole_number(value: object) -> int | None:
    """An id OCS sends as an int (GSW_APPLICATION_ID, GSW_RECORD_HANDLE), which may come as
    text; None when absent or not a whole number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _key(phone: object, campaign: object, calling_list: object) -> _Key:
    return (_digits(phone), str(campaign or ""), str(calling_list or ""))


class UserEventIndex:
    """Records in flight (and lately cancelled) by number, campaign and list."""

    def __init__(self) -> None:
        self._live: dict[_Key, list[Record]] = {}
        self._settled: OrderedDict[_Key, list[Record]] = OrderedDict()
        self._settled_count = 0

    def _rec_key(self, rec: Record) -> _Key:
        # asked on track, settle and match: the record's fields do not change in flight
        if rec.event_key is None:
            rec.event_key = _key(rec.phone_sent, rec.campaign, rec.calling_list)
        return rec.event_key

    def track(self, rec: Record) -> None:
        key = self._rec_key(rec)
        live = self._live.get(key)
        if live is None:
            self._live[key] = [rec]  # the common case: the number is in flight once
        elif not any(r is rec for r in live):
            live.append(rec)

    def settled(self, rec: Record) -> None:
        """The row has its outcome; a cancelled one waits a while for its companion."""
        key = self._rec_key(rec)
        live = self._live.get(key)
        if live is not None:
            if len(live) == 1 and live[0] is rec:
                del self._live[key]
            else:
                live[:] = [r for r in live if r is not rec]
                if not live:
                    del self._live[key]
        if rec.status == Status.CANCELLED and rec.record_handle is None:
            self._settled.setdefault(key, []).append(rec)
            self._settled.move_to_end(key)
            self._settled_count += 1
            while self._settled_count > _SETTLED_KEPT and self._settled:
                _, old = self._settled.popitem(last=False)
                self._settled_count -= len(old)

    def match(self, data: dict[str, Any]) -> EventMatch:
        user_data = data.get("userData")
        if not isinstance(user_data, dict) or "GSW_PHONE" not in user_data:
            return EventMatch(UserEventVerdict.UNMATCHED, note="no GSW_PHONE")
        key = _key(
            user_data.get("GSW_PHONE"),
            user_data.get("GSW_CAMPAIGN_NAME"),
            user_data.get("GSW_CALLING_LIST"),
        )
        app = whole_number(user_data.get("GSW_APPLICATION_ID"))
        live = [r for r in self._live.get(key, ()) if not r.final and app in (None, r.application_id)]
        if "GSW_ERROR" in user_data:
            number = user_data.get("GSW_ERROR_NUMBER")
            text = error_text(user_data)
            code = number if isinstance(number, int) else None
            if len(live) == 1:
                return EventMatch(UserEventVerdict.ERROR, live[0], error=text, error_number=code)
            if live:
                return EventMatch(UserEventVerdict.AMBIGUOUS, error=text,
                                  note=f"error for a number in flight {len(live)} times")  # fmt: skip
            return EventMatch(UserEventVerdict.UNMATCHED, error=text, note="error for no row in flight")
        handle = user_data.get("GSW_RECORD_HANDLE")
        if handle is None:
            return EventMatch(UserEventVerdict.UNMATCHED, note="user event without record handle")
        settled = [r for r in self._settled.get(key, []) if app in (None, r.application_id)]
        candidates = settled + live
        if len(candidates) == 1:
            rec = candidates[0]
            if settled:
                self._forget_settled(key, rec)
            return EventMatch(UserEventVerdict.HANDLE, rec, handle=handle)
        if candidates:
            note = f"record handle for a number in flight {len(candidates)} times"
            return EventMatch(UserEventVerdict.AMBIGUOUS, handle=handle, note=note)
        return EventMatch(UserEventVerdict.UNMATCHED, handle=handle, note="record handle for no row of ours")

    def _forget_settled(self, key: _Key, rec: Record) -> None:
        rest = [r for r in self._settled.get(key, []) if r is not rec]
        self._settled_count -= 1
        if rest:
            self._settled[key] = rest
        else:
            self._settled.pop(key, None)
