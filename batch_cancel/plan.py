"""Turns input rows into the journal's plan: one record per row, each classified.

Every row gets a row in the journal, whatever happens to it: ``planned`` (will
be sent), ``rejected`` (with the reason) or ``duplicate`` (of an earlier row with
the same E.164 number, application, campaign and list; never sent). Planning
streams the input in batches, so memory does not grow with the file.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from batch_cancel.config import CHAIN_ATTRIBUTES, RunConfig
from batch_cancel.exceptions import Interrupted
from batch_cancel.inputs import InputFile, read_batches
from batch_cancel.journal import Journal
from batch_cancel.phones import PhoneFormat, normalise, region_ok

__all__ = ["build_plan", "reference_id"]


def reference_id(run_id: str, row: int) -> str:
    """Deterministic, so a resend after a crash matches a late ack from before it."""
    return f"bc-{run_id}-{row}"


def _text(values: list[str | None] | None, i: int) -> str | None:
    if values is None:
        return None
    value = values[i]
    if value is None:
        return None
    value = value.strip()
    return value or None


def build_plan(
    journal: Journal,
    files: Sequence[InputFile],
    config: RunConfig,
    run_id: str,
    *,
    progress: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> Counter[str]:
    """Write the whole plan into the journal; answer the counts by status."""
    d = config.defaults
    fmt = PhoneFormat(d.phone_format)
    counts: Counter[str] = Counter()
    journal.reset_plan()
    for batch in read_batches(files, phone_column=config.phone_column, encoding=config.encoding):
        cols = batch.columns
        phones = cols["phone"]
        apps, camps, lists = cols.get("application_id"), cols.get("campaign"), cols.get("calling_list")
        chains, devices, regions = (
            cols.get("chain_attribute"), cols.get("device_path"), cols.get("region"),
        )  # fmt: skip
        rows: list[list[Any]] = []
        keys: list[tuple[str, int]] = []
        source = str(batch.source)
        for i, raw in enumerate(phones):
            row = batch.first_row + i
            region = (_text(regions, i) or d.default_region).upper()
            app_text = _text(apps, i)
            campaign = _text(camps, i) or d.campaign
            calling_list = _text(lists, i) or d.calling_list
            chain = _text(chains, i) or d.chain_attribute
            device = _text(devices, i) or d.device_path
            problems: list[str] = []
            application_id: int | None = d.application_id
            if app_text is not None:
                try:
                    application_id = int(float(app_text)) if app_text.endswith(".0") else int(app_text)
                except ValueError:
                    problems.append(f"application id {app_text!r} is not a number")
            phone = normalise(raw, region if region_ok(region) else d.default_region, fmt,
                              d.strict_validation)  # fmt: skip
            if regions is not None and _text(regions, i) and not region_ok(region):
                problems.append(f"unknown region {region!r}")
            if phone.error:
                problems.insert(0, phone.error)
            if application_id is None and not any("application id" in p for p in problems):
                problems.append("missing application id")
            if not campaign:
                problems.append("missing campaign")
            if not calling_list:
                problems.append("missing calling list")
            if chain is not None and chain not in CHAIN_ATTRIBUTES:
                problems.append(f"chain attribute {chain!r} is not AllChain or RecordOnly")
            status = "rejected" if problems else "planned"
            ref = None if problems else reference_id(run_id, row)
            if not problems:
                keys.append((f"{phone.e164}|{application_id}|{campaign}|{calling_list}", row))
            rows.append([
                row, source, raw, phone.e164, phone.sent, application_id, campaign, calling_list,
                chain, device, ref, status, 0, None, None, None, "; ".join(problems) or None,
                phone.warning, None, None, None, None,
            ])  # fmt: skip
        with journal.transaction():
            duplicates = journal.claim(keys)
            if duplicates:
                first = batch.first_row
                for row, original in duplicates.items():
                    rec = rows[row - first]
                    rec[10] = None  # a duplicate is never sent, so it has no referenceId
                    rec[11] = "duplicate"
                    rec[18] = original
            journal.add_records(rows)
        for rec in rows:
            counts[rec[11]] += 1
        if progress is not None:
            progress(len(rows))
        if stop is not None and stop.is_set():
            raise Interrupted("interrupted while planning: nothing was sent; run again to plan anew")
    return counts
