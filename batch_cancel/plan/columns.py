"""Column-wise classification of one input batch, for :mod:`batch_cancel.plan.planner`.

A row is settled here, without Python code of its own, when nothing about it
needs a decision: its number is a clean, valid NANPA number
(:mod:`batch_cancel.plan.nanp`) and its application id, campaign, calling
list, chain attribute and region are all usable. Every other row is listed in
``BatchPlan.slow`` for ``plan.classify_row``, so the rules live in one place.
Per-value work on the other columns (parsing an id, checking a region) runs once
per distinct value of the batch, not once per row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from batch_cancel.config import CHAIN_ATTRIBUTES, JobDefaults
from batch_cancel.input.files import RowBatch
from batch_cancel.plan.nanp import fast_nanpa
from batch_cancel.plan.phones import NANPA_REGIONS, PhoneFormat, region_ok

__all__ = ["TEXT", "BatchPlan", "Const", "parse_application_id", "plan_batch"]

Mask: TypeAlias = "pa.Array | bool"  # per row, or the same for every row


@dataclass(frozen=True)
class Const:
    """One value for every row of the batch."""

    value: Any


Column: TypeAlias = "pa.Array | Const"
# The journal's text columns (PLAN_COLUMNS less row, application_id and source).
TEXT = ("phone_number", "phone_e164", "phone_sent", "campaign", "calling_list",
        "chain_attribute", "device_path", "error", "warnings")


@dataclass
class BatchPlan:
    """One batch's journal rows, column-wise (names of journal.PLAN_COLUMNS)."""

    source: str
    columns: dict[str, Column]  # "row" and every PLAN_COLUMNS name but "source"
    slow: pa.Array  # indices of the rows plan.classify_row must settle, ascending
    # the row's own region and application id text, for the slow rows only
    slow_region: list[str | None] = field(default_factory=list)
    slow_app: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.columns["row"])  # type: ignore[arg-type]

    def slow_rows(self) -> Iterator[tuple[str | None, str | None, str | None, Any, Any, Any]]:
        """(raw, region, application id text, campaign, calling list, chain) of each slow row."""
        picked = [self._pick(name) for name in ("phone_number", "campaign", "calling_list",
                                                 "chain_attribute")]
        yield from zip(picked[0], self.slow_region, self.slow_app, *picked[1:], strict=True)

    def _pick(self, name: str) -> list[Any]:
        column = self.columns[name]
        if isinstance(column, Const):
            return [column.value] * len(self.slow)
        values: list[Any] = pc.take(column, self.slow).to_pylist()
        return values

    def settle(self, answers: dict[str, list[str | None]]) -> None:
        """Put the slow rows' answers (name -> a value per slow row) into the columns."""
        if not len(self.slow):
            return
        mask = np.zeros(len(self), dtype=bool)
        mask[self.slow.to_numpy()] = True
        where = pa.array(mask)
        for name, values in answers.items():
            column = self.columns[name]
            assert not isinstance(column, Const)
            self.columns[name] = pc.replace_with_mask(column, where, pa.array(values, pa.string()))

    def keep(self, mask: pa.Array) -> None:
        """Drop the rows where ``mask`` is false (after settle)."""
        for name, column in self.columns.items():
            if not isinstance(column, Const):
                self.columns[name] = column.filter(mask)


def _per_value(arr: pa.Array, fn: Callable[[str], Any], type_: pa.DataType) -> pa.Array:
    """fn of every value (null stays null), computed once per distinct value."""
    encoded = arr.dictionary_encode()
    mapped = pa.array([fn(v) for v in encoded.dictionary.to_pylist()], type_)
    return pc.take(mapped, encoded.indices)


def _or(a: Mask, b: Mask) -> Mask:
    if a is True or b is True:
        return True
    if a is False:
        return b
    if b is False:
        return a
    return pc.or_(a, b)


def _effective(arr: pa.Array | None, default: Any) -> tuple[pa.Array | Const, Mask]:
    """The row's value else the default, and where that is missing."""
    if arr is None:
        return Const(default), not default
    if not default:
        return arr, pc.is_null(arr)  # the reader turns blank cells into nulls
    return pc.fill_null(arr, default), False


def _region(arr: pa.Array | None, d: JobDefaults) -> tuple[Mask, Mask]:
    """Whether each row's region is +1, and where a region is unknown."""
    default_nanpa = d.default_region.strip().upper() in NANPA_REGIONS
    if arr is None:
        return default_nanpa, False

    def nanpa(v: str) -> bool:
        return region_ok(v.upper()) and v.strip().upper() in NANPA_REGIONS

    unknown = pc.fill_null(_per_value(arr, lambda v: not region_ok(v.upper()), pa.bool_()), False)
    return pc.fill_null(_per_value(arr, nanpa, pa.bool_()), default_nanpa), unknown


def parse_application_id(text: str) -> int | None:
    """The id a cell holds ("134", "134.0"), None when it is not a number."""
    try:
        value = int(float(text)) if text.endswith(".0") else int(text)
    except (ValueError, OverflowError):
        return None
    return value if -(2**63) <= value < 2**63 else None  # SQLite's INTEGER


def _application(arr: pa.Array | None, d: JobDefaults) -> tuple[pa.Array | Const, Mask]:
    if arr is None:
        return Const(d.application_id), d.application_id is None
    parsed = _per_value(arr, parse_application_id, pa.int64())
    bad = pc.and_(pc.is_valid(arr), pc.is_null(parsed))
    if d.application_id is None:
        return parsed, pc.or_(bad, pc.is_null(arr))
    return pc.fill_null(parsed, d.application_id), bad


def plan_batch(batch: RowBatch, d: JobDefaults, fmt: PhoneFormat) -> BatchPlan:
    """Settle what can be settled column-wise; list the rest in ``slow``."""
    a, n = batch.arrays, len(batch)
    raw = a["phone"]
    nanpa, problem = _region(a.get("region"), d)
    app, app_problem = _application(a.get("application_id"), d)
    problem = _or(problem, app_problem)
    columns: dict[str, Column] = {"application_id": app}
    for name in ("campaign", "calling_list", "chain_attribute", "device_path"):
        columns[name], missing = _effective(a.get(name), getattr(d, name))
        # DoNotCallRecord by phone number needs no calling list (its API page)
        if name == "campaign" or (name == "calling_list" and d.operation != "DoNotCallRecord"):
            problem = _or(problem, missing)
    chain = columns["chain_attribute"]
    if isinstance(chain, Const):
        problem = _or(problem, chain.value is not None and chain.value not in CHAIN_ATTRIBUTES)
    else:
        allowed = pc.is_in(chain, pa.array(CHAIN_ATTRIBUTES))
        problem = _or(problem, pc.and_(pc.is_valid(chain), pc.invert(allowed)))
    fast = fast_nanpa(raw, nanpa, fmt)
    if problem is True:
        simple: pa.Array = pa.array(np.zeros(n, dtype=bool))
    else:
        simple = fast.ok if problem is False else pc.and_(fast.ok, pc.invert(problem))
    slow = pc.indices_nonzero(pc.invert(simple))
    nothing = pa.nulls(n, pa.string())
    columns.update({
        "row": pa.array(np.arange(batch.first_row, batch.first_row + n, dtype=np.int64)),
        "phone_number": raw, "phone_e164": fast.e164, "phone_sent": fast.sent,
        "error": nothing, "warnings": nothing,
    })  # fmt: skip
    return BatchPlan(source=str(batch.source), columns=columns, slow=slow,
                     slow_region=_take(a.get("region"), slow),
                     slow_app=_take(a.get("application_id"), slow))


def _take(arr: pa.Array | None, indices: pa.Array) -> list[str | None]:
    if arr is None:
        return [None] * len(indices)
    values: list[str | None] = pc.take(arr, indices).to_pylist()
    return values
