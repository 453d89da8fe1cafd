"""JSON on the wire to GWS: orjson, with the standard library's judgement kept.

Every POST is encoded and its answer decoded, and every CometD long poll brings a
batch of messages to decode: with the standard ``json`` module that was about a
twentieth of the client's CPU at 64 in flight (py-spy, benchmarks/). orjson does
the same work several times faster. Where the two disagree (orjson refuses
``NaN`` and integers beyond 64 bits, which ``json`` accepts), a document orjson
refuses is handed to ``json``, so what decodes is exactly what decoded before.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps", "loads"]


def loads(text: str | bytes) -> Any:
    """Decode like ``json.loads`` (raises ``ValueError`` on what it refuses)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON (``json.dumps(value, separators=(",", ":"))``, as bytes)."""
    try:
        return orjson.dumps(value)
    except TypeError:  # what orjson will not encode (an int beyond 64 bits): the stdlib's verdict
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
