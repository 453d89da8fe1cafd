"""The compliance evidence page: one self-contained HTML file per run.

It is what an auditor keeps: who ran what, on which exact files (SHA-256), with
which settings, and what became of every row, counted from the journal (the
same source as the report). The page loads nothing: styles are inline, charts
are inline SVG drawn here, there is no script, and a Content-Security-Policy
forbids any fetch, so it reads the same offline, in ten years, or printed.

The journal is read in one streaming pass; what is kept is bounded (chart
buckets, a latency histogram, the first rows of each problem status), so the
page stays small for a run of millions of rows.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from typing import Any

from batch_cancel import __version__
from batch_cancel.journal.base import JournalBase
from batch_cancel.journal.rows import REPORTED, REPORTED_PENDING, Status
from batch_cancel.object_store import Location
from batch_cancel.report.charts import STATUS_COLOURS, LatencyHistogram, TimeBins, latency_svg, status_svg
from batch_cancel.report.writers import write_aside
from batch_cancel.summary import Summary

__all__ = ["ATTENTION", "STATUSES", "write_html"]

# The report's status vocabulary, in the order the page shows it.
STATUSES = tuple(str(s) for s in REPORTED)
ATTENTION = (str(Status.REJECTED), str(Status.FAILED), str(Status.TIMED_OUT))
_AS_REPORTED = {str(s): str(Status.PENDING) for s in REPORTED_PENDING}
_SECRET_WORDS = ("password", "secret", "token")
_TITLES = {
    "rejected": "Rejected rows (never sent: the input was not usable)",
    "failed": "Failed rows (GWS refused or could not cancel)",
    "timed_out": "Timed-out rows (sent, no acknowledgement in time: outcome unknown)",
}


@dataclass
class _Scan:
    counts: Counter[str] = field(default_factory=Counter)
    per_source: Counter[Any] = field(default_factory=Counter)  # keyed by the journal's source
    bins: TimeBins = field(default_factory=TimeBins)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    examples: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    first_sent: float | None = None
    last_ack: float | None = None
    handles: int = 0
    handle_examples: list[dict[str, Any]] = field(default_factory=list)


# Rows listed with their OCS record handle, and unmatched notifications listed.
_HANDLES_SHOWN = 50
_UNMATCHED_SHOWN = 50


def _scan(journal: JournalBase, limit: int) -> _Scan:
    scan = _Scan(examples={s: [] for s in ATTENTION})
    # locals, not attribute look-ups: this loop runs once per row of a possibly huge run
    counts, per_source, examples = scan.counts, scan.per_source, scan.examples
    add_point, add_latency = scan.bins.add, scan.latency.add
    first_sent, last_ack = math.inf, -math.inf
    for r in journal.iter_rows():
        status = _AS_REPORTED.get(r["status"], r["status"])
        counts[status] += 1
        per_source[r["source"]] += 1
        sent, acked, latency = r["sent_at"], r["acked_at"], r["latency_ms"]
        if sent is not None and sent < first_sent:
            first_sent = sent
        if acked is not None:
            if acked > last_ack:
                last_ack = acked
            if latency is not None:
                add_point(acked, latency)
                add_latency(latency)
        kept = examples.get(status)
        if kept is not None and len(kept) < limit:
            kept.append(r)
        if r.get("record_handle") is not None:
            scan.handles += 1
            if len(scan.handle_examples) < _HANDLES_SHOWN:
                scan.handle_examples.append(r)
    scan.first_sent = first_sent if math.isfinite(first_sent) else None
    scan.last_ack = last_ack if math.isfinite(last_ack) else None
    return scan


def write_html(journal: JournalBase, summary: Summary, path: Location, *,
               limit: int = 200) -> Location:
    """Write the evidence page for the journal's run; answer its path.

    ``limit`` bounds the rows listed per problem status; the page says how many
    there are in all, and the report has every one.
    """
    with journal.reading():  # one moment of the journal, also while workers write
        scan = _scan(journal, limit)
        page = "\n".join(_page(journal, summary, scan, limit))
    # written aside and renamed, like the report: a reader never sees half a page
    return write_aside(path, lambda f: f.write(page.encode("utf-8")))


# -- formatting -----------------------------------------------------------------------------
def _e(value: Any) -> str:
    return "—" if value is None or value == "" else escape(str(value), quote=True)


def _utc(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "—"
    moment = datetime.fromtimestamp(ts, UTC)
    iso = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return f'<time datetime="{iso}">{moment:%Y-%m-%d %H:%M:%S} UTC</time>'


def _kv(rows: list[tuple[str, str]], table_id: str) -> str:
    """Two-column table; the values are already HTML."""
    body = "".join(f"<tr><th scope=row>{escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
    return f'<table class="kv" id="{table_id}"><tbody>{body}</tbody></table>'


class _Withheld:
    pass


_WITHHELD = _Withheld()


def _flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested settings as dotted keys; a key that names a secret keeps its name, not its value."""
    if isinstance(value, Mapping):
        for k in sorted(value, key=str):
            key = f"{prefix}.{k}" if prefix else str(k)
            if any(word in str(k).lower() for word in _SECRET_WORDS):
                yield key, _WITHHELD
            else:
                yield from _flatten(value[k], key)
    else:
        yield prefix, value


def _setting(value: Any) -> str:
    if value is _WITHHELD:
        return '<em class="note">withheld</em>'
    if isinstance(value, str):
        return f'<span class="mono">{escape(value)}</span>'
    return f'<span class="mono">{escape(json.dumps(value, default=str))}</span>'


# -- sections ---------------------------------------------------------------------------------
def _page(journal: JournalBase, summary: Summary, scan: _Scan, limit: int) -> Iterator[str]:
    run_id = journal.get_meta("run_id") or summary.run_id
    yield "<!DOCTYPE html>"
    yield '<html lang="en"><head><meta charset="utf-8">'
    # belt and braces: even a value that looked like markup could not make the page fetch
    yield ("<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
           "style-src 'unsafe-inline'; img-src data:\">")  # fmt: skip
    yield '<meta name="viewport" content="width=device-width, initial-scale=1">'
    yield f'<meta name="generator" content="batch-cancel {escape(__version__)}">'
    yield f"<title>Cancellation evidence: run {_e(run_id)}</title>"
    yield f"<style>{_CSS}</style></head><body>"
    yield '<header><h1>Outbound record cancellation: evidence</h1>'
    yield f'<p class="sub">Run <span class="mono" id="run-id">{_e(run_id)}</span></p></header>'
    yield _verdict(summary, scan)
    yield from _run_section(journal, summary, scan)
    yield from _inputs_section(journal, scan)
    yield from _outcome_section(scan, summary)
    yield from _latency_section(scan)
    for status in ATTENTION:
        yield from _rows_section(status, scan, limit, summary.report)
    yield from _handles_section(scan)
    yield from _unmatched_section(journal)
    yield from _config_section(journal)
    yield from _stats_section(summary)
    yield (f'<footer>Generated {_utc(time.time())} by batch-cancel '
           f'<span id="tool-version" data-version="{escape(__version__)}">{escape(__version__)}</span> '
           "from the run's journal. This page is self-contained: it loads nothing and runs no script."
           "</footer>")  # fmt: skip
    yield "</body></html>"


def _verdict(summary: Summary, scan: _Scan) -> str:
    c = scan.counts
    if summary.dry_run:
        cls, text = "dry", "Dry run: nothing was sent to GWS."
    elif summary.exit_code == 0:
        cls, text = "ok", "Every row was cancelled or is a duplicate of a cancelled row."
    else:
        bad = sum(c[s] for s in ("failed", "timed_out", "rejected", "pending"))
        parts = [f"{c[s]:,} {s.replace('_', ' ')}" for s in ("failed", "timed_out", "rejected", "pending")
                 if c[s]]  # fmt: skip
        if summary.duplicates_of_unsuccessful:
            parts.append(f"{summary.duplicates_of_unsuccessful:,} duplicate(s) of rows not cancelled")
        cls = "attention"
        text = f"{bad:,} row(s) were not cancelled: {', '.join(parts) or 'see below'}."
    return f'<p class="verdict {cls}" id="verdict" data-exit-code="{summary.exit_code}">{escape(text)}</p>'


def _run_section(journal: JournalBase, summary: Summary, scan: _Scan) -> Iterator[str]:
    made_by = journal.get_meta("version")
    rows = [
        ("Run id", f'<span class="mono">{_e(journal.get_meta("run_id") or summary.run_id)}</span>'),
        ("Operator", f'<span id="operator">{_e(journal.get_meta("operator"))}</span>'),
        ("Started", _utc(journal.get_meta("created_at"))),
        ("Finished", _utc(journal.get_meta("finished_at"))),
        ("First request sent", _utc(scan.first_sent)),
        ("Last acknowledgement", _utc(scan.last_ack)),
        ("Elapsed (last invocation)", f"{summary.elapsed_s:,.1f} s"),
        ("Dry run", "yes" if summary.dry_run else "no"),
        ("Exit code", str(summary.exit_code)),
        ("Report", f'<span class="mono">{_e(summary.report)}</span>'),
        ("Journal", f'<span class="mono">{_e(journal.location)}</span>'),
        ("Tool version", escape(__version__)
         + (f" (journal made by {_e(made_by)})" if made_by and made_by != __version__ else "")),
    ]  # fmt: skip
    yield "<section><h2>Run</h2>"
    yield _kv(rows, "run")
    yield "</section>"


_STORED = (("version_id", "version"), ("etag", "ETag"), ("sheet", "sheet"))


def _inputs_section(journal: JournalBase, scan: _Scan) -> Iterator[str]:
    files = list(journal.get_meta("inputs") or [])
    known = {str(f.get("path")) for f in files}
    # rows from a source the identity does not list would be a bug; show them rather than hide them
    files += [{"path": s} for s in scan.per_source if s not in known]
    yield "<section><h2>Input files</h2>"
    # an object is named by its URL, and by the version (or ETag) its store gave the bytes hashed
    yield ('<table id="inputs"><thead><tr><th>File or URL</th><th class="num">Bytes</th>'
           '<th>SHA-256</th><th>Version / ETag</th><th class="num">Rows</th></tr></thead>'
           "<tbody>")  # fmt: skip
    for f in files:
        p = f.get("path")
        size = f.get("size")
        stored = "; ".join(f"{label} {f[key]}" for key, label in _STORED if f.get(key))
        yield (f'<tr><td class="mono">{_e(p)}</td>'
               f'<td class="num">{"—" if size is None else f"{int(size):,}"}</td>'
               f'<td class="mono sha">{_e(f.get("sha256"))}</td>'
               f'<td class="mono version">{_e(stored or "—")}</td>'
               f'<td class="num" data-rows="{scan.per_source.get(p, 0)}">{scan.per_source.get(p, 0):,}</td>'
               "</tr>")  # fmt: skip
    yield "</tbody></table></section>"


def _outcome_section(scan: _Scan, summary: Summary) -> Iterator[str]:
    total = sum(scan.counts.values())
    extra = sorted(s for s in scan.counts if s not in STATUSES)  # an unknown status is shown, not lost
    yield "<section><h2>Outcome by status</h2>"
    yield '<div class="outcome"><table id="counts" class="counts"><thead><tr><th>Status</th>'
    yield '<th class="num">Rows</th><th class="num">Share</th></tr></thead><tbody>'
    for status in (*STATUSES, *extra):
        n = scan.counts.get(status, 0)
        share = f"{100 * n / total:.1f} %" if total else "—"
        colour = STATUS_COLOURS.get(status, "#555555")
        yield (f'<tr><th scope=row><span class="swatch" style="background:{colour}"></span>'
               f'{escape(status.replace("_", " "))}</th>'
               f'<td class="num" id="count-{escape(status)}" data-count="{escape(status)}" '
               f'data-value="{n}">{n:,}</td><td class="num">{share}</td></tr>')  # fmt: skip
    yield (f'</tbody><tfoot><tr><th scope=row>total</th><td class="num" id="count-total" '
           f'data-count="total" data-value="{total}">{total:,}</td><td class="num">100 %</td></tr>'
           "</tfoot></table>")  # fmt: skip
    yield status_svg([(s, scan.counts.get(s, 0)) for s in (*STATUSES, *extra)])
    yield "</div>"
    claimed = {s: getattr(summary, s) for s in STATUSES}
    if any(claimed[s] != scan.counts.get(s, 0) for s in STATUSES):
        # the page counts the journal as it is now; say so if the run's summary saw otherwise
        yield (f'<p class="note" id="counts-differ">The journal changed after the run\'s summary was '
               f"taken; the summary said {escape(json.dumps(claimed))}.</p>")  # fmt: skip
    yield "</section>"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.1f} ms"


def _span(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.3g} ms"
    if seconds < 120:
        return f"{seconds:.3g} s"
    if seconds < 7200:
        return f"{seconds / 60:.3g} min"
    return f"{seconds / 3600:.3g} h"


def _latency_section(scan: _Scan) -> Iterator[str]:
    h = scan.latency
    points = scan.bins.points()
    yield "<section><h2>Acknowledgement latency</h2>"
    yield latency_svg(points)
    yield (f'<p class="note">From each request to its acknowledgement on the CometD channel, '
           f"for {h.n:,} acknowledged row(s). The dark line is the mean and the pale bars the range "
           f"within each of {len(points)} time slice(s) of {_span(scan.bins.width)}.</p>")  # fmt: skip
    yield _kv([
        ("Median", _ms(h.quantile(0.5))), ("95th percentile", _ms(h.quantile(0.95))),
        ("99th percentile", _ms(h.quantile(0.99))), ("Maximum", _ms(h.max if h.n else None)),
    ], "latency")  # fmt: skip
    yield '<p class="note">Percentiles are within 1 %; the maximum is exact.</p></section>'


def _rows_section(status: str, scan: _Scan, limit: int, report: str) -> Iterator[str]:
    total = scan.counts.get(status, 0)
    shown = scan.examples[status]
    yield (f'<section id="rows-{status}" data-total="{total}" data-shown="{len(shown)}">'
           f"<h2>{escape(_TITLES[status])}: {total:,}</h2>")  # fmt: skip
    if not total:
        yield '<p class="note">None.</p></section>'
        return
    if total > len(shown):
        yield (f'<p class="note">The first {len(shown):,} of {total:,} in input order; every row is '
               f'in the report <span class="mono">{_e(report)}</span>.</p>')  # fmt: skip
    yield ('<table class="rows"><thead><tr><th class="num">Row</th><th>Phone number</th><th>Reason</th>'
           '<th class="num">HTTP</th><th class="num">Attempts</th><th>Reference id</th></tr></thead><tbody>')
    for r in shown:
        yield (f'<tr data-row="{_e(r.get("row"))}"><td class="num">{_e(r.get("row"))}</td>'
               f'<td class="mono phone">{_e(r.get("phone_number"))}</td>'
               f'<td class="reason">{_e(r.get("error"))}</td>'
               f'<td class="num">{_e(r.get("http_status"))}</td>'
               f'<td class="num">{_e(r.get("attempts"))}</td>'
               f'<td class="mono">{_e(r.get("reference_id"))}</td></tr>')  # fmt: skip
    yield "</tbody></table></section>"


def _handles_section(scan: _Scan) -> Iterator[str]:
    cancelled = scan.counts.get("cancelled", 0)
    yield (f'<section id="record-handles" data-total="{scan.handles}">'
           f"<h2>OCS record handles: {scan.handles:,} of {cancelled:,} cancelled row(s)</h2>")  # fmt: skip
    yield ('<p class="note">The OCS record each acknowledgement cancelled (GSW_RECORD_HANDLE in its '
           "companion user event on /me/internal): the server's own account of the record. The "
           "report's record_handle column has every one.</p>")  # fmt: skip
    if not scan.handle_examples:
        yield "</section>"
        return
    yield ('<table class="rows"><thead><tr><th class="num">Row</th><th>Phone number</th>'
           '<th>Reference id</th><th class="num">Record handle</th></tr></thead><tbody>')  # fmt: skip
    for r in scan.handle_examples:
        yield (f'<tr data-row="{_e(r.get("row"))}"><td class="num">{_e(r.get("row"))}</td>'
               f'<td class="mono phone">{_e(r.get("phone_number"))}</td>'
               f'<td class="mono">{_e(r.get("reference_id"))}</td>'
               f'<td class="num record-handle">{_e(r.get("record_handle"))}</td></tr>')  # fmt: skip
    yield "</tbody></table></section>"


def _unmatched_section(journal: JournalBase) -> Iterator[str]:
    total = journal.unmatched_count()
    shown = journal.first_unmatched(_UNMATCHED_SHOWN)
    yield (f'<section id="unmatched" data-total="{total}" data-shown="{len(shown)}">'
           f"<h2>Notifications that matched no row: {total:,}</h2>")  # fmt: skip
    if not total:
        yield '<p class="note">None: every notification GWS sent matched a row.</p></section>'
        return
    yield ('<p class="note">Kept in the journal (table <span class="mono">unmatched</span>) with their '
           "time and channel: messages for other referenceIds, user events naming no row in flight, "
           "and events that named a number in flight more than once (evidence only).</p>")  # fmt: skip
    yield ('<table class="rows"><thead><tr><th>Time</th><th>Channel</th><th>Why</th>'
           "<th>Message</th></tr></thead><tbody>")
    for at, channel, note, data in shown:
        text = data if len(data) <= 400 else data[:400] + "…"
        yield (f"<tr><td>{_utc(at)}</td><td class=\"mono\">{_e(channel)}</td><td>{_e(note)}</td>"
               f'<td class="mono unmatched-data">{_e(text)}</td></tr>')  # fmt: skip
    yield "</tbody></table></section>"


def _config_section(journal: JournalBase) -> Iterator[str]:
    config = journal.get_meta("config")
    yield "<section><h2>Effective configuration</h2>"
    if not config:
        yield '<p class="note">Not recorded in the journal.</p></section>'
        return
    yield _kv([(k, _setting(v)) for k, v in _flatten(config)], "config")
    yield "</section>"


def _stats_section(summary: Summary) -> Iterator[str]:
    if not summary.stats:
        return
    rows = [(k.replace("_", " "), f'<span class="mono">{_e(v)}</span>')
            for k, v in sorted(summary.stats.items())]  # fmt: skip
    yield "<section><h2>Transport statistics</h2>"
    yield _kv(rows, "stats")
    yield "</section>"


_CSS = """
:root{color-scheme:light}
body{font:14px/1.45 "DejaVu Sans",Helvetica,Arial,sans-serif;color:#1a1a1a;background:#fff;
  max-width:1000px;margin:24px auto;padding:0 16px}
h1{font-size:22px;margin:0 0 2px}
h2{font-size:16px;border-bottom:2px solid #1a1a1a;padding-bottom:2px;margin:28px 0 8px}
.sub{color:#555;margin:0}
table{border-collapse:collapse;width:100%;margin:6px 0}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #ddd;vertical-align:top}
thead th{background:#f2f2f2;font-weight:600}
tbody th{font-weight:600}
table.kv th{width:30%}
.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.mono{font-family:"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12.5px}
.sha{word-break:break-all}
td.phone{white-space:nowrap}
.verdict{padding:10px 14px;border-left:6px solid;margin:16px 0 0;font-weight:600}
.verdict.ok{border-color:#009E73;background:#e7f5ef}
.verdict.attention{border-color:#D55E00;background:#fbeee5}
.verdict.dry{border-color:#0072B2;background:#e5eff7}
.outcome{display:flex;gap:24px;align-items:flex-start;flex-wrap:wrap}
.outcome table{width:auto;min-width:280px}
.swatch{display:inline-block;width:10px;height:10px;margin-right:6px}
.note{color:#555;font-size:12.5px}
svg{max-width:100%;height:auto}
footer{margin-top:32px;border-top:1px solid #ddd;padding-top:8px;color:#666;font-size:12px}
@page{margin:14mm}
@media print{
  body{max-width:none;margin:0;padding:0;font-size:10pt}
  h2{break-after:avoid}
  tr,svg,.verdict{break-inside:avoid}
  thead{display:table-header-group}
  *{print-color-adjust:exact;-webkit-print-color-adjust:exact}
}
"""
