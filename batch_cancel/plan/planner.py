"""Turns input rows into the journal's plan: one record per row, each classified.

Every row gets a row in the journal, whatever happens to it: ``planned`` (will
be sent), ``rejected`` (with the reason) or ``duplicate`` (of an earlier row with
the same E.164 number, application, campaign and list; never sent). Planning
streams the input in batches, so memory does not grow with the file.

Speed: a batch is classified column-wise in Arrow (``plan_columns.py``); only
rows that need a decision of their own (odd numbers, bad values) go through the
per-row rules in :func:`classify_row`, which define the outcome for every row.
With ``--shard I/N`` a row is kept when its key (the E.164 number when it
parses, else the trimmed raw text) hashes to shard I; see :func:`shard_of`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from batch_cancel.config import CHAIN_ATTRIBUTES, JobDefaults, RunConfig
from batch_cancel.exceptions import Interrupted
from batch_cancel.input.files import InputFile, read_batches
from batch_cancel.journal import snapshot
from batch_cancel.journal.base import JournalBase
from batch_cancel.journal.rows import Status
from batch_cancel.plan.columns import TEXT, BatchPlan, Const, parse_application_id, plan_batch
from batch_cancel.plan.dedupe import Deduper, partitions_for
from batch_cancel.plan.phones import ForeignFormat, Phone, PhoneFormat, normalise, region_ok

__all__ = ["build_plan", "classify_row", "reference_id", "shard_of"]

# A batch's rows exist as Python objects while they are inserted: 20,000 keeps
# that near 10 MB; larger batches are no faster (measured on 1M rows).
_BATCH_ROWS = 20_000


def reference_id(run_id: str, row: int) -> str:
    """Deterministic, so a resend after a crash matches a late ack from before it."""
    return f"bc-{run_id}-{row}"


def shard_of(key: str, count: int) -> int:
    """The shard of a key: the same on every machine and Python (``hash()`` is salted)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % count


def classify_row(
    d: JobDefaults, fmt: PhoneFormat, raw: str | None, region_text: str | None,
    app_text: str | None, campaign: str | None, calling_list: str | None, chain: str | None,
    normalise: Callable[[str | None, str, PhoneFormat, bool, ForeignFormat | None], Phone] = normalise,
) -> tuple[Phone, str | None]:
    """The rules for one row: its phone and the reasons it cannot be sent, if any.

    ``campaign``, ``calling_list`` and ``chain`` are the effective values
    (the row's own, else the job's default).
    """
    region = (region_text or d.default_region).upper()
    problems: list[str] = []
    parsed = None if app_text is None else parse_application_id(app_text)
    if app_text is not None and parsed is None:
        problems.append(f"application id {app_text!r} is not a number")
    known = region_ok(region)
    foreign = ForeignFormat(d.foreign_format) if d.foreign_format else None
    phone = normalise(raw, region if known else d.default_region, fmt, d.strict_validation, foreign)
    if region_text and not known:
        problems.append(f"unknown region {region!r}")
    if phone.error:
        problems.insert(0, phone.error)
    if app_text is None and d.application_id is None:
        problems.append("missing application id")
    if not campaign:
        problems.append("missing campaign")
    if not calling_list and d.operation != "DoNotCallRecord":
        # DoNotCallRecord by phone number needs no calling list (its API page)
        problems.append("missing calling list")
    if chain is not None and chain not in CHAIN_ATTRIBUTES:
        problems.append(f"chain attribute {chain!r} is not AllChain or RecordOnly")
    return phone, "; ".join(problems) or None


def _settle_slow_rows(plan: BatchPlan, d: JobDefaults, fmt: PhoneFormat) -> None:
    answers: dict[str, list[str | None]] = {"phone_e164": [], "phone_sent": [], "error": [],
                                            "warnings": []}
    # Junk repeats ("n/a", "0"), and phonenumbers takes ~100 µs to refuse it each time.
    cached = functools.lru_cache(maxsize=4096)(normalise)
    for raw, region, app, campaign, calling_list, chain in plan.slow_rows():
        phone, error = classify_row(d, fmt, raw, region, app, campaign, calling_list, chain,
                                    cached)
        answers["phone_e164"].append(phone.e164)
        answers["phone_sent"].append(phone.sent)
        answers["error"].append(error)
        answers["warnings"].append(phone.warning)
    plan.settle(answers)


def _shard_mask(plan: BatchPlan, shard: tuple[int, int]) -> pa.Array:
    index, count = shard
    e164, raw = (plan.columns[c] for c in ("phone_e164", "phone_number"))
    assert isinstance(e164, pa.Array) and isinstance(raw, pa.Array)
    keys = pc.coalesce(e164, raw, "").to_pylist()
    return pa.array([shard_of(key, count) == index for key in keys], pa.bool_())


def _journal_args(plan: BatchPlan) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """PLAN_COLUMNS for Journal.add_plan: per-row lists ("" for NULL text), and constants."""
    columns: dict[str, list[Any]] = {}
    constants: dict[str, Any] = {"source": plan.source}
    for name, values in plan.columns.items():
        if isinstance(values, Const):
            constants[name] = values.value
        elif name in TEXT and values.null_count == len(values):
            columns[name] = [""] * len(values)  # one shared object, not a string per row
        elif name in TEXT:
            columns[name] = pc.fill_null(values, "").to_pylist()
        else:
            columns[name] = values.to_pylist()
    return columns, constants


def _arrow(plan: BatchPlan, name: str, type_: pa.DataType) -> pa.Array:
    values = plan.columns[name]
    if isinstance(values, Const):
        return pa.repeat(pa.scalar(values.value, type_), len(plan))
    return values.cast(type_)


def _dedupe_keys(plan: BatchPlan) -> list[pa.Array]:
    """Key columns and row numbers of the sendable rows, for the Deduper."""
    sendable = pc.is_null(plan.columns["error"])
    return [_arrow(plan, name, type_).filter(sendable)
            for name, type_ in (("phone_e164", pa.string()), ("application_id", pa.int64()),
                                ("campaign", pa.string()), ("calling_list", pa.string()),
                                ("row", pa.int64()))]


def _estimated_rows(files: Sequence[InputFile]) -> int:
    # A CSV row of a phone list is rarely under 16 bytes, or 4 gzipped ones.
    return sum(f.rows if f.rows is not None else f.size * (4 if f.format == "csv.gz" else 1) // 16
               for f in files)


class _BatchWriter:
    """Inserts each batch's plan into the journal on a thread of its own, while the
    planner classifies the next batch.

    The insert is most of planning's time, and SQLite works without the interpreter
    lock, as Arrow's kernels do: the two overlap. One batch at most waits here (its
    rows as Python lists, ~10 MB), and the thread makes no Arrow allocations of its
    own, so the peak RSS barely moves. A failed insert is raised by the next
    :meth:`write` or by :meth:`finish`; the journal is never used by both threads at
    once (the planner touches it again only after :meth:`finish`).
    """

    def __init__(self, journal: JournalBase, prefix: str) -> None:
        self._journal = journal
        self._prefix = prefix
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="plan-writer")
        self._pending: Future[None] | None = None

    def __enter__(self) -> _BatchWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self._pending is not None:  # leaving on an error: the insert ends first
                with contextlib.suppress(Exception):
                    self._pending.result()
        finally:
            self._pool.shutdown()

    def write(self, columns: dict[str, list[Any]], constants: dict[str, Any], first_row: int,
              blob: bytes) -> None:
        self.finish()
        self._pending = self._pool.submit(self._insert, columns, constants, first_row, blob)

    def finish(self) -> None:
        """Wait for the batch being inserted; raise what stopped it."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def _insert(self, columns: dict[str, list[Any]], constants: dict[str, Any], first_row: int,
                blob: bytes) -> None:
        with self._journal.transaction():
            self._journal.add_plan(columns, constants, self._prefix)
            self._journal.add_snapshot(first_row, blob)


def build_plan(
    journal: JournalBase,
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
    prefix = reference_id(run_id, 0).removesuffix("0")
    counts: Counter[str] = Counter()
    journal.reset_plan()
    with journal.planning(), Deduper(journal.spill_dir,
                                     partitions_for(_estimated_rows(files))) as deduper, \
            _BatchWriter(journal, prefix) as writer:
        for batch in read_batches(files, phone_column=config.phone_column,
                                  encoding=config.encoding, batch_rows=_BATCH_ROWS):
            plan = plan_batch(batch, d, fmt)
            _settle_slow_rows(plan, d, fmt)
            if config.shard:
                plan.keep(_shard_mask(plan, config.shard))
            if len(plan):
                columns, constants = _journal_args(plan)
                writer.write(columns, constants, batch.first_row,
                             snapshot.encode(plan.columns, plan.source))
                deduper.add(_dedupe_keys(plan))
                error = plan.columns["error"]
                assert isinstance(error, pa.Array)
                rejected = len(error) - error.null_count
                counts[Status.REJECTED] += rejected
                counts[Status.PLANNED] += len(plan) - rejected
            # mimalloc (pyarrow's default) keeps freed pages for reuse; handing them
            # back per batch keeps the peak RSS ~50 MB lower, for no measurable time
            pa.default_memory_pool().release_unused()
            if progress is not None:
                progress(len(batch))
            if stop is not None and stop.is_set():
                raise Interrupted("interrupted while planning: nothing was sent; "
                                  "run again to plan anew")
        writer.finish()
        info: dict[str, Any] = {"ref_prefix": prefix}
        with journal.transaction():
            found = snapshot.Duplicates()
            for pairs in deduper.duplicates():
                repeats = journal.mark_duplicates(pairs)
                counts[Status.DUPLICATE] += repeats
                counts[Status.PLANNED] -= repeats
                found.add(pairs)
            if found.count == counts[Status.DUPLICATE]:  # each pair marked: the blob tells the truth
                journal.add_snapshot(snapshot.DUPLICATES_KEY, found.encode())
                info["duplicates"] = snapshot.DUPLICATES_KEY
    counts = +counts  # no zero counts, as before
    # the counts go with the snapshot: while it stands, they are the records' (base.counts)
    journal.seal_snapshot({**info, "counts": dict(counts)})
    return counts
