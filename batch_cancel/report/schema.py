"""The report's one schema: its columns, in order, and their Arrow types.

Every writer (CSV, Parquet, JSONL), the plan snapshot and ``merge`` take their
columns from here, so there is nothing to keep equal by hand.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["PARQUET_SCHEMA", "REPORT_COLUMNS", "REPORT_SCHEMA", "TIMESTAMPS"]

REPORT_SCHEMA = pa.schema([
    ("row", pa.int64()), ("phone_number", pa.string()), ("phone_e164", pa.string()),
    ("application_id", pa.int64()), ("campaign", pa.string()), ("calling_list", pa.string()),
    ("reference_id", pa.string()), ("status", pa.string()), ("attempts", pa.int64()),
    ("http_status", pa.int64()), ("status_code", pa.int64()), ("notification_type", pa.string()),
    ("error", pa.string()), ("sent_at", pa.string()), ("acked_at", pa.string()),
    ("latency_ms", pa.float64()),
    # beyond the contract's columns, appended so positional readers keep working
    ("phone_sent", pa.string()), ("warnings", pa.string()),
    ("duplicate_of", pa.int64()), ("source", pa.string()),
    # OCS's record handle from the acknowledgement's /me/internal companion
    ("record_handle", pa.int64()),
])  # fmt: skip

REPORT_COLUMNS: tuple[str, ...] = tuple(REPORT_SCHEMA.names)

# The times are ISO 8601 text ("2026-11-29T17:13:01.123Z") in CSV and JSONL, where
# that is what every reader understands; Parquet stores them typed.
TIMESTAMPS = ("sent_at", "acked_at")
PARQUET_SCHEMA = pa.schema([
    pa.field(f.name, pa.timestamp("ms", tz="UTC")) if f.name in TIMESTAMPS else f for f in REPORT_SCHEMA
])
