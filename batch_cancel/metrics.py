"""``--metrics-file``: the run's figures in the Prometheus text format, for node_exporter.

node_exporter's textfile collector reads every ``*.prom`` file of a folder; a file must
be replaced whole (written beside it, then renamed), never written in place, or a
scrape can read half of it. prometheus-client's ``write_to_textfile`` does exactly
that, from a registry of our own (the process-wide default one would add Python's
process metrics, which are not this job's).

The figures come from where the summary's come from: the journal's counts when the
run starts, the send phase's live counters (:meth:`Engine.counts`, :meth:`Engine.stats`)
while it runs, and the :class:`Summary` itself at the end, so the last file and the
last stdout line agree. Counters (``*_total``) count this process's attempt: a resumed
run starts them again from zero, which Prometheus's ``rate()`` reads as a restart.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Histogram, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from batch_cancel.exceptions import ConfigError
from batch_cancel.summary import Summary

__all__ = ["DEFAULT_INTERVAL", "LATENCY_BUCKETS", "STATUSES", "LiveRun", "RunMetrics"]

log = logging.getLogger("batch_cancel.metrics")

DEFAULT_INTERVAL = 5.0
STATUSES = ("cancelled", "failed", "timed_out", "rejected", "duplicate", "pending")
# POST -> acknowledgement, in seconds: GWS acks in tens of milliseconds when healthy,
# seconds when OCS is loaded; past the ack timeout a record is timed out instead
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class LiveRun(Protocol):
    """What the metrics read from a sending run (the send phase's Engine)."""

    def counts(self) -> dict[str, int]: ...
    def stats(self) -> dict[str, float]: ...
    def gauges(self) -> dict[str, float]: ...


class RunMetrics(Collector):
    """A run's metrics; :meth:`write` replaces the file atomically."""

    def __init__(self, path: Path, run_id: str, journal_counts: Mapping[str, int], *,
                 retry_timed_out: bool = False, rate_limit: float = 0.0,
                 interval: float = DEFAULT_INTERVAL, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.path = path
        self.run_id = run_id
        self.interval = interval
        self._clock = clock
        self._wall = wall
        base = dict(journal_counts)
        if retry_timed_out:  # they are sent again: pending until they have a new outcome
            base["planned"] = base.get("planned", 0) + base.pop("timed_out", 0)
        self._base = base
        self._total = sum(base.values())
        self.rows: dict[str, int] = self._rows({})
        self.stats: dict[str, float] = {}
        self.gauges: dict[str, float] = {"rate_limit": rate_limit}
        self.send_rate = 0.0
        self.finished = False
        self._last: tuple[float, float] | None = None  # (clock, requests) at the last sample
        self._failed_writes = 0
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram(
            "batch_cancel_ack_latency_seconds", "Time from a CancelRecord POST to its outcome over CometD.",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.registry.register(self)

    # -- feeding ---------------------------------------------------------------
    def observe_latency(self, seconds: float) -> None:
        self.latency.observe(seconds)

    def _rows(self, outcomes: Mapping[str, int]) -> dict[str, int]:
        rows = {s: self._base.get(s, 0) + outcomes.get(s, 0) for s in ("cancelled", "failed", "timed_out")}
        rows["rejected"] = self._base.get("rejected", 0)
        rows["duplicate"] = self._base.get("duplicate", 0)
        rows["pending"] = max(0, self._total - sum(rows.values()))
        return rows

    def sample(self, run: LiveRun) -> None:
        """Take the live figures of a sending run."""
        self.rows = self._rows(run.counts())
        self.stats = run.stats()
        self.gauges = run.gauges()
        now, requests = self._clock(), float(self.stats.get("requests", 0))
        if self._last is not None and now > self._last[0]:
            self.send_rate = (requests - self._last[1]) / (now - self._last[0])
        self._last = (now, requests)

    def final(self, summary: Summary) -> None:
        """The figures of the summary itself, so the last file and the last stdout line agree."""
        self.rows = {s: int(getattr(summary, s)) for s in STATUSES}
        self._total = summary.total
        self.stats = dict(summary.stats) or self.stats
        self.gauges = {**self.gauges, "in_flight": 0.0, "awaiting_ack": 0.0}
        self.send_rate = 0.0
        self.finished = True

    # -- the exposition ----------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        rows = GaugeMetricFamily("batch_cancel_rows", "Input rows by status.", labels=["status"])
        for status in STATUSES:
            rows.add_metric([status], self.rows.get(status, 0))
        yield rows
        yield GaugeMetricFamily("batch_cancel_input_rows", "Input rows in the run.", value=self._total)
        for name, key, text in (
            ("batch_cancel_requests", "requests", "CancelRecord POSTs sent by this process."),
            ("batch_cancel_retries", "retries", "POSTs sent again after a failed attempt."),
            ("batch_cancel_throttle_pauses", "throttle_pauses", "Pauses of all senders after GWS throttled."),
            ("batch_cancel_cometd_reconnects", "cometd_reconnects", "Times the CometD subscription broke."),
        ):  # fmt: skip
            yield CounterMetricFamily(name, text, value=float(self.stats.get(key, 0)))
        yield GaugeMetricFamily("batch_cancel_send_rate", "POSTs per second since the last update.",
                                value=round(self.send_rate, 3))  # fmt: skip
        limit = float(self.gauges.get("rate_limit", 0.0))
        yield GaugeMetricFamily("batch_cancel_rate_limit", "The rate limit now, per second (0: none).",
                                value=limit if math.isfinite(limit) else 0.0)  # fmt: skip
        yield GaugeMetricFamily("batch_cancel_in_flight", "POSTs waiting for their HTTP answer.",
                                value=float(self.gauges.get("in_flight", 0)))  # fmt: skip
        yield GaugeMetricFamily("batch_cancel_awaiting_ack", "Records sent whose outcome has not arrived.",
                                value=float(self.gauges.get("awaiting_ack", 0)))  # fmt: skip
        info = GaugeMetricFamily("batch_cancel_run_info", "The run this file describes.", labels=["run_id"])
        info.add_metric([self.run_id], 1)
        yield info
        yield GaugeMetricFamily("batch_cancel_run_finished", "1 once the run has ended.",
                                value=1 if self.finished else 0)  # fmt: skip
        yield GaugeMetricFamily("batch_cancel_last_update_timestamp_seconds",
                                "When this file was written (stale: the job is stuck or gone).",
                                value=self._wall())  # fmt: skip

    # -- the file ----------------------------------------------------------------
    def write(self, *, strict: bool = False) -> None:
        """Replace the file whole; ``strict``: a failure is a configuration error (exit 2).

        Later failures (a full disk mid-run) are logged, not fatal: the run matters more.
        """
        try:
            write_to_textfile(str(self.path), self.registry)
        except OSError as exc:
            if strict:
                raise ConfigError(f"--metrics-file {self.path}: cannot write it "
                                  f"({exc.strerror or exc})") from None  # fmt: skip
            self._failed_writes += 1
            if self._failed_writes == 1:
                log.warning("cannot write the metrics file %s: %s", self.path, exc.strerror or exc)

    async def follow(self, run: LiveRun) -> None:
        """Sample and rewrite every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(self.interval)
            self.sample(run)
            # a temp file and a rename: off the event loop, as any file write
            await asyncio.to_thread(self.write)
