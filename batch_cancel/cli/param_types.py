"""Click parameter types shared by the commands.

``FiniteFloat`` exists because click's ``FloatRange`` lets NaN through (every
comparison with NaN is false, so NaN is "within" any range) and infinities
through an open-ended range: ``--ack-timeout nan`` waited forever, ``--rate nan``
sent without limit. The same type reads the command line, environment variables
and job files (``jobfile.py`` casts a file's values with the parameter's type), so
one check covers all three.
"""

from __future__ import annotations

import math
from typing import Any

import click

from batch_cancel.config import BOUNDS

__all__ = ["LOCATION", "FiniteFloat", "Where", "bounded"]


class FiniteFloat(click.types.FloatParamType):
    """A finite float within [min, max] (``min_open``: strictly above min).

    A ``FloatParamType`` still, so whatever asks "is this option a number?" (the
    job-file reader, help) keeps answering yes.
    """

    def __init__(self, min: float | None = None, max: float | None = None, *,
                 min_open: bool = False) -> None:  # fmt: skip
        self.min = min
        self.max = max
        self.min_open = min_open

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, bool):
            self.fail(f"{value!r} is not a number", param, ctx)
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        low_ok = self.min is None or (number > self.min if self.min_open else number >= self.min)
        if not low_ok or (self.max is not None and number > self.max):
            self.fail(f"{value!r} is not in the range {self._describe()}", param, ctx)
        return number

    def _describe(self) -> str:
        low = "" if self.min is None else f"{self.min:g}{'<' if self.min_open else '<='}"
        high = "" if self.max is None else f"<={self.max:g}"
        return f"{low}x{high}"

    def __repr__(self) -> str:
        return f"FiniteFloat({self._describe()})"


def bounded(name: str) -> click.ParamType[Any]:
    """The option type of the numeric setting ``name``, with the bounds ``config.BOUNDS`` gives it."""
    low, high, low_open = BOUNDS[name]
    if isinstance(low, int):
        return click.IntRange(int(low), int(high))
    return FiniteFloat(low, high, min_open=low_open)


class Where(click.ParamType):  # type: ignore[type-arg]
    """A local path, ``file://`` URL or object URL (``s3://``, ``gs://``, ``az://``)."""

    name = "path|url"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from batch_cancel.exceptions import ConfigError
        from batch_cancel.object_store import location

        try:
            return location(value)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


LOCATION = Where()
