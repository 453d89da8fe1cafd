"""Charts for the evidence page, as inline SVG text, plus the bounded statistics behind them.

Everything here is fed one row at a time and keeps a fixed amount of state, so
a run of millions of rows still gives a page of a few tens of kilobytes. The
``<svg>`` elements carry no ``xmlns``: the HTML parser puts them in the SVG
namespace itself, and the page then holds no URL at all.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape

__all__ = ["STATUS_COLOURS", "LatencyHistogram", "TimeBins", "latency_svg", "status_svg"]

# Colour-blind-safe (Okabe-Ito) hues; the labels carry the meaning, never the colour alone.
STATUS_COLOURS = {
    "cancelled": "#009E73",
    "failed": "#D55E00",
    "timed_out": "#E69F00",
    "rejected": "#CC79A7",
    "duplicate": "#999999",
    "pending": "#0072B2",
}
_FONT = 'font-family="DejaVu Sans, Helvetica, Arial, sans-serif"'


class TimeBins:
    """A fixed number of equal-width time buckets whose span doubles to fit every point.

    Rows arrive in input order, not time order, and the time range is not known in
    advance; doubling the width (merging neighbours) keeps the buckets aligned and
    exact without a second pass over the journal.
    """

    def __init__(self, n: int = 240, width: float = 0.001) -> None:
        if n < 2 or n % 2:
            raise ValueError("n must be an even number >= 2")
        self.n = n
        self.width = width
        self.lo: float | None = None
        self.count = [0] * n
        self.total = [0.0] * n
        self.low = [math.inf] * n
        self.high = [-math.inf] * n

    def add(self, t: float, value: float) -> None:
        if not (math.isfinite(t) and math.isfinite(value)):
            return
        if self.lo is None:
            self.lo = t
        while t < self.lo:
            self._grow(left=True)
        while t >= self.lo + self.n * self.width:
            self._grow(left=False)
        # rounding can put a point just inside the top edge at index n
        i = min(int((t - self.lo) / self.width), self.n - 1)
        self.count[i] += 1
        self.total[i] += value
        self.low[i] = min(self.low[i], value)
        self.high[i] = max(self.high[i], value)

    def _grow(self, *, left: bool) -> None:
        assert self.lo is not None
        half = self.n // 2
        pairs = range(0, self.n, 2)
        count = [self.count[i] + self.count[i + 1] for i in pairs]
        total = [self.total[i] + self.total[i + 1] for i in pairs]
        low = [min(self.low[i], self.low[i + 1]) for i in pairs]
        high = [max(self.high[i], self.high[i + 1]) for i in pairs]
        pad_c, pad_t, pad_l, pad_h = [0] * half, [0.0] * half, [math.inf] * half, [-math.inf] * half
        if left:  # the old span becomes the right half of the new one
            self.lo -= self.n * self.width
            self.count, self.total = pad_c + count, pad_t + total
            self.low, self.high = pad_l + low, pad_h + high
        else:
            self.count, self.total = count + pad_c, total + pad_t
            self.low, self.high = low + pad_l, high + pad_h
        self.width *= 2

    def points(self) -> list[tuple[float, float, float, float, int]]:
        """Non-empty buckets as (mid time, mean, min, max, count)."""
        if self.lo is None:
            return []
        return [
            (self.lo + (i + 0.5) * self.width, self.total[i] / c, self.low[i], self.high[i], c)
            for i, c in enumerate(self.count)
            if c
        ]


class LatencyHistogram:
    """Latency quantiles within 1 % from log-spaced buckets (a few hundred at most)."""

    _BASE = math.log(1.02)  # bucket edges 2 % apart: the midpoint is within 1 %

    def __init__(self) -> None:
        self.buckets: Counter[int] = Counter()
        self.n = 0
        self.zero = 0  # latencies <= 0 (clock granularity) have no logarithm
        self.max = -math.inf

    def add(self, value: float) -> None:
        if not math.isfinite(value):
            return
        self.n += 1
        self.max = max(self.max, value)
        if value <= 0:
            self.zero += 1
        else:
            self.buckets[math.floor(math.log(value) / self._BASE)] += 1

    def quantile(self, q: float) -> float | None:
        if not self.n:
            return None
        rank = max(1, math.ceil(q * self.n))
        if rank <= self.zero:
            return 0.0
        seen = self.zero
        for key in sorted(self.buckets):
            seen += self.buckets[key]
            if seen >= rank:
                return min(math.exp((key + 0.5) * self._BASE), self.max)
        return self.max


def status_svg(counts: Sequence[tuple[str, int]], width: int = 640) -> str:
    """Horizontal bars, one per status, each labelled with its count."""
    bar_h, gap, left, right = 22, 8, 110, 80
    height = len(counts) * (bar_h + gap) + gap
    biggest = max((n for _, n in counts), default=0) or 1
    span = width - left - right
    out = [
        f'<svg viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-labelledby="status-chart-title" id="status-chart">',
        '<title id="status-chart-title">Rows by status</title>',
    ]
    for k, (status, n) in enumerate(counts):
        y = gap + k * (bar_h + gap)
        w = span * n / biggest
        colour = STATUS_COLOURS.get(status, "#555555")
        label = escape(status.replace("_", " "))
        out.append(
            f'<text x="{left - 8}" y="{y + bar_h * 0.7:.1f}" text-anchor="end" font-size="13" {_FONT}>'
            f"{label}</text>"
        )
        # a zero count still gets a hairline, so "none" is visibly drawn rather than missing
        out.append(
            f'<rect x="{left}" y="{y}" width="{max(w, 1.0):.1f}" height="{bar_h}" fill="{colour}" '
            f'data-status="{escape(status)}" data-value="{n}"/>'
        )
        out.append(
            f'<text x="{left + max(w, 1.0) + 6:.1f}" y="{y + bar_h * 0.7:.1f}" font-size="13" '
            f"{_FONT}>{n:,}</text>"
        )
    out.append("</svg>")
    return "\n".join(out)


def _nice_step(span: float, ticks: int) -> float:
    """A 1/2/5 × 10^k step giving about `ticks` intervals over `span`."""
    if span <= 0:
        return 1.0
    raw = span / ticks
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _clock(ts: float, span: float) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    if span < 10:
        return moment.strftime("%H:%M:%S.%f")[:-3]
    return moment.strftime("%H:%M:%S")


def latency_svg(points: Sequence[tuple[float, float, float, float, int]], width: int = 900) -> str:
    """Ack latency against ack time: a min–max range per bucket and the bucket mean as a line."""
    height, left, right, top, bottom = 320, 70, 50, 16, 48
    pw, ph = width - left - right, height - top - bottom
    out = [
        f'<svg viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" role="img" aria-labelledby="latency-chart-title" id="latency-chart" '
        f'data-points="{len(points)}">',
        '<title id="latency-chart-title">Acknowledgement latency over time</title>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#bbbbbb"/>',
    ]
    if not points:
        out.append(
            f'<text x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle" font-size="14" '
            f'{_FONT} fill="#666666">no acknowledged rows</text></svg>'
        )
        return "\n".join(out)
    t0, t1 = points[0][0], points[-1][0]
    tspan = (t1 - t0) or 1.0
    step = _nice_step(max(p[3] for p in points), 5)
    ymax = step * math.ceil(max(p[3] for p in points) / step) or step

    def x(t: float) -> float:
        return left + pw * ((t - t0) / tspan if t1 > t0 else 0.5)

    def y(v: float) -> float:
        return top + ph * (1 - v / ymax)

    tick = 0.0
    while tick <= ymax + step / 2:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
                   'stroke="#eeeeee"/>')  # fmt: skip
        out.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end" font-size="11" '
                   f"{_FONT}>{tick:g}</text>")  # fmt: skip
        tick += step
    for k in range(5):
        t = t0 + tspan * k / 4
        out.append(f'<text x="{x(t):.1f}" y="{top + ph + 16}" text-anchor="middle" font-size="11" '
                   f"{_FONT}>{_clock(t, tspan)}</text>")  # fmt: skip
    day = f"{datetime.fromtimestamp(t0, UTC):%Y-%m-%d}"
    out.append(f'<text x="{left + pw / 2}" y="{height - 8}" text-anchor="middle" font-size="12" '
               f"{_FONT}>acknowledged at (UTC, {day})</text>")  # fmt: skip
    out.append(f'<text transform="translate(16 {top + ph / 2}) rotate(-90)" text-anchor="middle" '
               f'font-size="12" {_FONT}>latency (ms)</text>')  # fmt: skip
    for t, _mean, low, high, _n in points:
        out.append(f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{y(low):.1f}" y2="{y(high):.1f}" '
                   'stroke="#9ecae1" stroke-width="3"/>')  # fmt: skip
    line = " ".join(f"{x(t):.1f},{y(mean):.1f}" for t, mean, *_ in points)
    out.append(f'<polyline points="{line}" fill="none" stroke="#08519c" stroke-width="1.5"/>')
    # dots as well: a lone bucket has no line segment and a one-value bucket no range bar
    out.extend(f'<circle cx="{x(t):.1f}" cy="{y(mean):.1f}" r="2.5" fill="#08519c"/>'
               for t, mean, *_ in points)  # fmt: skip
    out.append("</svg>")
    return "\n".join(out)
