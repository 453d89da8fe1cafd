"""``batch-cancel run``: parse options, build frozen config, run the library, map exits."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import click

from batch_cancel import config as defaults
from batch_cancel.cli._common import (
    JsonLineCommand,
    error_summary,
    guarded,
    hide_secrets,
    log_options,
    read_password,
    split_state,
    tell,
)
from batch_cancel.cli.help_sections import SectionedCommand
from batch_cancel.cli.jobfile import check_env, job_option, job_password
from batch_cancel.cli.param_types import LOCATION, bounded

__all__ = ["gws_options", "run"]

log = logging.getLogger("batch_cancel")

EPILOG = """\b
Examples:
  # the password comes from the environment (or --password-file), never a flag
  export GWS_BASE_URL=https://gws.example.com GWS_USERNAME=svc_dnc GWS_PASSWORD=...
  batch-cancel run dnc_2026-11-26.csv --application-id 134 \\
      --campaign Campaign1 --calling-list CallingList1 --rate 20 --concurrency 8 \\
      --report reports/dnc.csv --state state/dnc.sqlite
\b
  # what would happen, without sending anything:
  batch-cancel run big.parquet --campaign C1 --calling-list L1 --application-id 134 --dry-run
\b
  # options kept in a job file (jobs/*.toml):
  batch-cancel run --job jobs/nightly_dnc_scrub.toml dnc_2026-11-26.csv --rate 2
\b
  # Excel's European CSV (";") is sniffed; force a separator, send foreign numbers whole:
  batch-cancel run export.csv --delimiter ';' --foreign-format e164 ...
\b
  # from object storage, report and evidence page back there (pip install 'batch-cancel[s3]'):
  batch-cancel run s3://dnc-exports/2026-12-06.parquet ... --state state/dnc.sqlite \\
      --report s3://dnc-reports/2026-12-06.csv --html s3://dnc-reports/2026-12-06.html
\b
  # a workbook's second sheet:
  batch-cancel run legal_request.xlsx --sheet Numbers --dry-run ...
\b
  # resume after a crash or a kill (same input, same journal):
  batch-cancel run dnc_2026-11-26.csv ... --state state/dnc.sqlite
\b
Every option also comes from the environment: BATCH_CANCEL_<OPTION> (e.g.
BATCH_CANCEL_RATE=5, BATCH_CANCEL_DRY_RUN=1), or the GWS_* variable named in
its help. Precedence: a flag beats the environment, which beats the job file
(--job), which beats the built-in default.
\b
  # a fleet: start this on as many hosts as you like; they drain one job together,
  # sharing --rate (the job's total); the last to finish writes the report
  export PGPASSWORD=...
  batch-cancel run dnc_2026-11-26.csv ... --run-id dnc-2026-11-26 --rate 100 \\
      --state postgresql://batch@db.example.com:5432/ops --report reports/dnc.csv
\b
Exit codes (the last stdout line is the JSON summary; its "exit_code" is always
the process's, and "error" says why whenever it is not 0 or 1):
  0  every row cancelled (or a duplicate of a cancelled row)
  1  finished; some rows failed, timed out or were rejected (see the report)
  2  no retry can fix it, found before sending: a bad option (NaN, infinity,
     out of range; flag, env or job file), an unreadable input, an output that
     is an input or another output, an existing file batch-cancel did not
     write (left untouched), under a file or not writable, a --state
     that is not our journal (left untouched) or is damaged, the journal in use
     by another run (host, pid, since; --wait-lock waits), credentials in the
     URL, a TLS certificate refused, a login answered by a page that is not the
     GWS API. Part-way only if another run took the journal's lock over or a
     re-login met such a page; the counts then say what was done.
  3  aborted, resumable with the same --state: authentication lost, GWS or
     CometD unreachable (or unanswering) past --max-outage, log-ins failing
     (503, 429, 5xx pages, unreachable) past --max-outage, SIGINT or SIGTERM,
     the --breaker (the last N outcomes all failed alike: fix the cause,
     resume, --retry-failed), the report or evidence page unwritable (a full
     disk; the counts say what was done), an internal error
  A fleet worker (--state postgresql://…) exits 0 or 1 only when the whole job
  is complete (its JSON "report" is empty unless it was the last to finish), 3
  when it stopped with rows left.
"""


def gws_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Where GWS is and who we are (shared by run and preflight)."""
    for option in reversed([
        click.option("--base-url", envvar="GWS_BASE_URL", metavar="URL",
                     help="GWS base URL, e.g. https://gws.example.com (env GWS_BASE_URL)."),
        click.option("--username", envvar="GWS_USERNAME",
                     help="GWS user (env GWS_USERNAME); the password comes from env "
                          "GWS_PASSWORD or --password-file."),
        click.option("--password-file", type=click.Path(path_type=Path, dir_okay=False),
                     help="File holding the password (first line)."),
        click.option("--cometd-url", envvar="GWS_COMETD_URL", metavar="URL",
                     help="CometD endpoint, when not <base-url>/api/v2/notifications (env GWS_COMETD_URL)."),
        click.option("--insecure", is_flag=True,
                     help="Do not verify the server's TLS certificate (explicit opt-out)."),
        click.option("--ca-bundle", envvar="GWS_CA_BUNDLE", metavar="PATH",
                     type=click.Path(path_type=Path, dir_okay=False),
                     help="PEM file of the CAs to trust instead of the default store (env "
                          "GWS_CA_BUNDLE; without it SSL_CERT_FILE, else the system's store)."),
        click.option("--client-cert", envvar="GWS_CLIENT_CERT", metavar="PATH",
                     type=click.Path(path_type=Path, dir_okay=False),
                     help="PEM client certificate for mutual TLS (env GWS_CLIENT_CERT); may hold the key."),
        click.option("--client-key", envvar="GWS_CLIENT_KEY", metavar="PATH",
                     type=click.Path(path_type=Path, dir_okay=False),
                     help="PEM key of --client-cert (env GWS_CLIENT_KEY; an encrypted key's "
                          "passphrase in env GWS_CLIENT_KEY_PASSWORD)."),
        click.option("--proxy", envvar="GWS_PROXY", metavar="URL",
                     help="HTTP proxy for REST and CometD, e.g. http://proxy:3128 (env GWS_PROXY); "
                          "default: HTTPS_PROXY/http_proxy/NO_PROXY as curl reads them. Proxy "
                          "credentials only from the environment (user:pass@ in GWS_PROXY or HTTPS_PROXY)."),
        click.option("--start-cc-session", is_flag=True,
                     help="Start a contact-center session after login (some GWS set-ups need it)."),
        click.option("--record-client", type=click.Choice(["auto", "aiohttp"]), default="auto",
                     show_default=True,
                     help="HTTP client of the CancelRecord POSTs: auto = batch-cancel's own lean "
                          "HTTP/1.1 client on plain http without a proxy (less CPU per POST), "
                          "aiohttp otherwise; aiohttp = aiohttp always, as every other request."),
    ]):  # fmt: skip
        fn = option(fn)
    return fn


def parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        index, count = (int(x) for x in value.split("/"))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not I/N (e.g. 0/4)", param_hint="--shard") from None
    if count < 1 or not 0 <= index < count:
        raise click.BadParameter(f"{value!r}: need 0 <= I < N", param_hint="--shard")
    return index, count


def parse_run_id(value: str | None) -> str | None:
    if value is not None and not _RUN_ID.fullmatch(value):
        raise click.BadParameter(f"{value!r}: use 1 to 64 of A-Z a-z 0-9 _ . -", param_hint="--run-id")
    return value


_RUN_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}


def parse_delimiter(value: str | None) -> str | None:
    if value is None:
        return None
    char = _DELIMITER_NAMES.get(value.lower(), value)
    if len(char) != 1 or char in "\"\r\n" or char.isalnum():
        raise click.BadParameter(f"{value!r}: give one character such as ';' or '|', or 'tab'",
                                 param_hint="--delimiter")
    return char


def network_options(opts: dict[str, Any]) -> dict[str, Any]:
    """TLS and proxy options for build_gws; a proxy password given as a flag value is refused."""
    from batch_cancel.exceptions import ConfigError

    proxy = opts.get("proxy")
    if proxy:
        ctx = click.get_current_context(silent=True)
        source = ctx.get_parameter_source("proxy") if ctx is not None else None
        authority = proxy.split("://", 1)[-1].split("/", 1)[0]
        if "@" in authority and source is not click.core.ParameterSource.ENVIRONMENT:
            raise ConfigError("--proxy carries credentials (user:pass@): a flag value or a job "
                              "file is no place for them; set GWS_PROXY or HTTPS_PROXY instead")
        if not proxy.startswith(("http://", "https://")):
            raise ConfigError("--proxy must start with http:// or https://")
    return {"ca_bundle": opts.get("ca_bundle"), "client_cert": opts.get("client_cert"),
            "client_key": opts.get("client_key"), "proxy": proxy or None,
            "record_client": opts.get("record_client") or "auto"}  # fmt: skip


def build_gws(base_url: str | None, username: str | None, password_file: Path | None,
              insecure: bool, start_cc_session: bool, password: str | None = None, *,
              cometd_url: str | None = None, ca_bundle: Path | None = None,
              client_cert: Path | None = None, client_key: Path | None = None,
              proxy: str | None = None,
              request_timeout: float = defaults.DEFAULT_REQUEST_TIMEOUT,
              record_client: str = "auto") -> Any:  # fmt: skip
    from batch_cancel.config import Credentials, GwsConfig, refuse_url_credentials
    from batch_cancel.exceptions import ConfigError

    refuse_url_credentials(base_url, "--base-url")  # first: every later message repeats the URL
    refuse_url_credentials(cometd_url, "--cometd-url")
    missing = [n for n, v in (("--base-url", base_url), ("--username", username)) if not v]
    # a job file's password_env comes last: --password-file, then GWS_PASSWORD, then it
    password = read_password(password_file) or password
    if password is None:
        missing.append("a password (env GWS_PASSWORD or --password-file)")
    if missing:
        raise ConfigError("missing " + ", ".join(missing))
    assert base_url and username and password
    if not base_url.startswith(("http://", "https://")):
        raise ConfigError(f"--base-url {base_url!r} must start with http:// or https://")
    if cometd_url is not None and not cometd_url.startswith(("http://", "https://")):
        raise ConfigError(f"--cometd-url {cometd_url!r} must start with http:// or https://")
    return GwsConfig(base_url=base_url.rstrip("/"), credentials=Credentials(username, password),
                     verify_tls=not insecure, start_cc_session=start_cc_session,
                     cometd_url=cometd_url, ca_bundle=ca_bundle, client_cert=client_cert,
                     client_key=client_key, proxy=proxy,
                     request_timeout=request_timeout, record_client=record_client)  # fmt: skip


class RunCommand(SectionedCommand, JsonLineCommand):
    """``run``'s help in sections; every option also read from BATCH_CANCEL_<NAME>."""

    # option -> section of `run --help`; an option added later needs one line here
    # (tests/test_cli_env_help.py fails for an option that has none)
    SECTIONS: ClassVar[dict[str, str]] = {
        "job": "Input", "phone_column": "Input", "encoding": "Input", "delimiter": "Input",
        "sheet": "Input",
        "shard": "Input",
        "dry_run": "Input",
        "base_url": "GWS connection", "username": "GWS connection",
        "password_file": "GWS connection", "cometd_url": "GWS connection",
        "insecure": "GWS connection", "ca_bundle": "GWS connection",
        "client_cert": "GWS connection", "client_key": "GWS connection",
        "proxy": "GWS connection", "start_cc_session": "GWS connection",
        "record_client": "GWS connection",
        "check_first": "GWS connection",
        "application_id": "Record defaults", "campaign": "Record defaults",
        "calling_list": "Record defaults", "device_path": "Record defaults",
        "chain_attribute": "Record defaults", "default_region": "Record defaults",
        "phone_format": "Record defaults", "foreign_format": "Record defaults",
        "strict_validation": "Record defaults",
        "operation": "Record defaults",
        "rate": "Speed", "concurrency": "Speed", "adaptive_rate": "Speed", "ack_timeout": "Speed",
        "max_attempts": "Speed", "max_outage": "Speed", "grace": "Speed",
        "request_timeout": "Speed", "breaker": "Speed",
        "report": "Outputs", "html": "Outputs", "metrics_file": "Outputs", "metrics_interval": "Outputs",
        "log_format": "Outputs",
        "verbose": "Outputs", "quiet": "Outputs",
        "state": "Resume", "state_password_file": "Resume", "run_id": "Resume",
        "force": "Resume", "retry_timed_out": "Resume", "retry_failed": "Resume",
        "wait_lock": "Resume",
    }  # fmt: skip
    ORDER: ClassVar[tuple[str, ...]] = (
        "Input", "GWS connection", "Record defaults", "Speed", "Outputs", "Resume",
    )


@click.command(cls=RunCommand, epilog=EPILOG,
               context_settings={"auto_envvar_prefix": "BATCH_CANCEL"})  # fmt: skip
@click.argument("inputs", nargs=-1, required=True, type=LOCATION)
@job_option
@click.option("--phone-column", metavar="NAME",
              help="Column holding the numbers (default: phone_number, phoneNumber or phone).")
@click.option("--encoding", default="utf-8", show_default=True,
              help="Encoding of CSV inputs (a UTF-16 or UTF-32 byte-order mark is recognised anyway).")
@click.option("--delimiter", metavar="CHAR", callback=lambda c, p, v: parse_delimiter(v),
              help="Column separator of CSV inputs: one character, or 'tab' "
                   "(default: sniffed from each file's header line among , ; tab |).")
@click.option("--sheet", metavar="NAME|INDEX",
              help="Workbook inputs (.xlsx, .xls, .ods): the sheet to read, by name or 0-based "
                   "index (default: the first).")
@click.option("--application-id", type=int, help="OCS application id for rows without one.")
@click.option("--campaign", help="Campaign name for rows without one.")
@click.option("--calling-list", help="Calling list for rows without one.")
@click.option("--device-path", help="Device path (/devices/<id>); default: the user's first device.")
@click.option("--chain-attribute", type=click.Choice(["AllChain", "RecordOnly"]))
@click.option("--default-region", default="US", show_default=True, metavar="CC",
              help="Region for numbers without a country code.")
@click.option("--phone-format", type=click.Choice(["national", "e164", "digits", "as-is"]),
              default="national", show_default=True, help="Form of the number sent to GWS.")
@click.option("--foreign-format", type=click.Choice(["reject", "e164", "digits", "international"]),
              help="A number whose country code is not its row's region's (+44 in a US row): its "
                   "national form would dial another number, so it is rejected (default with "
                   "national) or sent whole: e164 +442079460958, digits 442079460958, international "
                   "011442079460958 (the region's own prefix). Default: as --phone-format keeps the "
                   "country (e164, digits; as-is when the text says +44 or 011 44), else reject.")
@click.option("--strict-validation", is_flag=True,
              help="Reject numbers that parse but are not valid for their region.")
@click.option("--operation", type=click.Choice(["CancelRecord", "DoNotCallRecord"]),
              default="CancelRecord", show_default=True)
@click.option("--rate", type=bounded("rate"), default=defaults.DEFAULT_RATE,
              show_default=True, help="Max requests per second (0: unlimited).")
@click.option("--concurrency", type=bounded("concurrency"),
              default=defaults.DEFAULT_CONCURRENCY, show_default=True,
              help="Max requests in flight.")
@click.option("--ack-timeout", type=bounded("ack_timeout"),
              default=defaults.DEFAULT_ACK_TIMEOUT, show_default=True, metavar="SECONDS")
@click.option("--max-attempts", type=bounded("max_attempts"),
              default=defaults.DEFAULT_MAX_ATTEMPTS, show_default=True)
@click.option("--max-outage", type=bounded("max_outage"),
              default=defaults.DEFAULT_MAX_OUTAGE, show_default=True, metavar="SECONDS",
              help="Abort (exit 3) when GWS or CometD stays unreachable, or the journal "
                   "unwritable, this long.")
@click.option("--grace", type=bounded("grace"), default=defaults.DEFAULT_GRACE,
              show_default=True, metavar="SECONDS",
              help="After SIGINT/SIGTERM, wait this long for outstanding HTTP answers and acks; "
                   "requests still unanswered then stay in flight for a resume.")
@click.option("--report", type=LOCATION, metavar="PATH|URL",
              help="Report path or object URL (s3://, gs://, az://): .csv, .parquet or .jsonl "
                   "(default reports/<run id>.csv).")
@click.option("--state", metavar="PATH|URL",
              help="Journal: a SQLite path (an existing journal is resumed; default "
                   "state/<run id>.sqlite), or postgresql://USER@HOST:PORT/DB[?schema=S&lease=SECONDS] "
                   "for a job that several workers drain together (needs --run-id; the password from "
                   "PGPASSWORD, ~/.pgpass or --state-password-file).")
@click.option("--state-password-file", type=click.Path(path_type=Path, dir_okay=False),
              help="File holding the PostgreSQL journal's password.")
@click.option("--dry-run", is_flag=True, help="Plan and report what would be sent; no network.")
@click.option("--force", is_flag=True, help="Resume a journal even if input or settings changed.")
@click.option("--retry-timed-out", is_flag=True, help="On resume, send timed-out records again.")
@click.option("--retry-failed", is_flag=True,
              help="On resume, send failed records again, each with a new referenceId "
                   "(<old>-r1, -r2…) so a late message of the failed round cannot be taken "
                   "for the new one's outcome.")
@click.option("--breaker", type=bounded("breaker"), default=defaults.DEFAULT_BREAKER,
              show_default=True, metavar="N",
              help="Stop sending (exit 3, resumable) when the last N outcomes all failed with "
                   "the same status code or error text (0: never).")
@click.option("--request-timeout", type=bounded("request_timeout"),
              default=defaults.DEFAULT_REQUEST_TIMEOUT, show_default=True, metavar="SECONDS",
              help="Give up waiting for one POST's HTTP answer after this long (retried with the "
                   "same referenceId; counts towards --max-outage).")
@click.option("--run-id", metavar="ID", callback=lambda c, p, v: parse_run_id(v),
              help="Run id for a new journal (default: time + random); shards of one job share it, "
                   "so `batch-cancel merge` can tell their reports belong together.")
@click.option("--shard", metavar="I/N", callback=lambda c, p, v: parse_shard(v),
              help="Take only the rows whose number hashes to shard I of N (0-based); "
                   "--rate is then this shard's share.")
@click.option("--adaptive-rate", is_flag=True,
              help="Lower the rate when GWS throttles and raise it slowly again (never above --rate).")
@click.option("--metrics-file", type=click.Path(path_type=Path, dir_okay=False), metavar="PATH",
              help="Prometheus text file (node_exporter textfile collector: name it *.prom), "
                   "replaced atomically every --metrics-interval seconds and at the end.")
@click.option("--metrics-interval", type=bounded("metrics_interval"), default=5.0, show_default=True,
              metavar="SECONDS", help="How often --metrics-file is rewritten.")
@click.option("--html", type=LOCATION, metavar="PATH|URL",
              help="Also write a self-contained HTML evidence report here (a path or an object URL).")
@click.option("--wait-lock", type=bounded("wait_lock"), default=0.0, metavar="SECONDS",
              help="When another run holds the journal, wait up to this long for it, then "
                   "resume (default: exit 2 at once, naming the holder).")
@click.option("--preflight", "check_first", is_flag=True, envvar="BATCH_CANCEL_PREFLIGHT", show_envvar=True,
              help="Run the preflight checks first (login, CSRF, devices, CometD); exit 3 if one fails.")
@gws_options
@log_options
@guarded(json_line=True)
def run(inputs: tuple[Any, ...], **opts: Any) -> None:
    """Cancel the outbound records of the phone numbers in INPUT files.

    INPUT files are .csv, .csv.gz, .parquet or workbooks (.xlsx, .xls, .ods),
    local paths or object URLs (s3://, gs://, az://; credentials as each cloud's
    SDK finds them, an S3-compatible endpoint from AWS_ENDPOINT_URL). Every input
    row ends in the report as cancelled, failed, timed_out, rejected, duplicate or
    pending.
    """
    from batch_cancel.config import JobDefaults, RunConfig
    from batch_cancel.exceptions import ConfigError
    from batch_cancel.plan.phones import region_ok

    password = None if opts["dry_run"] else read_password(opts["password_file"]) or job_password()
    from batch_cancel.gws.network import proxy_secrets

    hide_secrets(([password] if password else []) + proxy_secrets(opts["proxy"]))
    if not region_ok(opts["default_region"]):
        raise ConfigError(f"--default-region {opts['default_region']!r} is not a known region code")
    job = JobDefaults(
        application_id=opts["application_id"], campaign=opts["campaign"],
        calling_list=opts["calling_list"], device_path=opts["device_path"],
        chain_attribute=opts["chain_attribute"], default_region=opts["default_region"].upper(),
        phone_format=opts["phone_format"], foreign_format=opts["foreign_format"],
        strict_validation=opts["strict_validation"],
        operation=opts["operation"],
    )  # fmt: skip
    state, state_db = split_state(opts["state"], opts["state_password_file"])
    cfg = RunConfig(
        inputs=tuple(inputs), defaults=job, phone_column=opts["phone_column"],
        encoding=opts["encoding"], delimiter=opts["delimiter"], sheet=opts["sheet"], rate=opts["rate"],
        concurrency=opts["concurrency"],
        ack_timeout=opts["ack_timeout"], max_attempts=opts["max_attempts"],
        max_outage=opts["max_outage"], grace=opts["grace"], report=opts["report"],
        state=state, state_db=state_db, dry_run=opts["dry_run"], force=opts["force"],
        retry_timed_out=opts["retry_timed_out"], retry_failed=opts["retry_failed"],
        breaker=opts["breaker"], shard=opts["shard"], run_id=opts["run_id"],
        adaptive_rate=opts["adaptive_rate"], html=opts["html"],
        metrics_file=opts["metrics_file"], metrics_interval=opts["metrics_interval"],
        wait_lock=opts["wait_lock"],
    )  # fmt: skip
    gws = None
    if not cfg.dry_run:
        check_env(opts, password)
        gws = build_gws(opts["base_url"], opts["username"], opts["password_file"],
                        opts["insecure"], opts["start_cc_session"], password,
                        cometd_url=opts["cometd_url"], request_timeout=opts["request_timeout"],
                        **network_options(opts))  # fmt: skip
    if opts["check_first"] and gws is not None:
        asyncio.run(check_first(cfg, gws))
    summary = asyncio.run(execute(cfg, gws))
    print_summary(summary)
    raise SystemExit(summary.exit_code)


async def check_first(cfg: Any, gws: Any) -> None:
    """``run --preflight``: the preflight steps, so a broken set-up fails before planning."""
    from batch_cancel.exceptions import AbortedError, UsageError
    from batch_cancel.preflight import preflight

    steps = await preflight(gws, cfg.defaults, rate=cfg.rate, ack_timeout=min(cfg.ack_timeout, 30.0))
    for step in steps:
        log.info("preflight %s: %s %s", step.name, "ok" if step.ok else "FAILED", step.detail)
    failed = next((s for s in steps if not s.ok), None)
    if failed is not None:
        message = f"preflight failed at {failed.name}: {failed.detail}"
        raise UsageError(message) if failed.exit_code == 2 else AbortedError(message)


async def execute(cfg: Any, gws: Any) -> Any:
    from batch_cancel.cli.progress import make_progress
    from batch_cancel.job import run_job

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = {"count": 0}

    def on_signal(signum: int) -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            # committed journal state is consistent at every instant; leave now, and
            # still end stdout with the JSON line a scheduler reads
            print(json.dumps(error_summary("interrupted by a second signal: stopped at once; "
                                           "the run can be resumed with --state", 3)), flush=True)
            os._exit(3)
        log.warning("%s received: no new requests; waiting up to %.1f s for outstanding acks",
                    signal.Signals(signum).name, cfg.grace)  # fmt: skip
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    views: list[Any] = []

    def progress(total: int) -> Any:
        views.append(make_progress(total))
        return views[-1]

    try:
        return await run_job(cfg, gws, stop=stop, progress=progress)
    finally:
        for view in views:
            view.close()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def print_summary(summary: Any) -> None:
    from batch_cancel.log_records import event
    from batch_cancel.plan.phones import mask

    log.info(
        "run %s: %d rows: %d cancelled, %d failed, %d timed out, %d rejected, %d duplicate, "
        "%d pending; report %s", summary.run_id, summary.total, summary.cancelled,
        summary.failed, summary.timed_out, summary.rejected, summary.duplicate,
        summary.pending, summary.report, extra=event("summary", **summary.as_json()),
    )  # fmt: skip
    # in JSON every stderr line is a log object; in text these stay plain lines for people
    def say(text: str) -> None:
        tell(text, "rejected_rows", run_id=summary.run_id)

    if summary.dry_run:
        say(f"dry run: {summary.total - summary.rejected - summary.duplicate} would be "
            f"sent, {summary.rejected} rejected, {summary.duplicate} duplicate")  # fmt: skip
    for row, phone, reason in summary.first_rejected:
        say(f"  rejected row {row}: {mask(phone)}: {reason}")
    click.echo(json.dumps({k: v for k, v in summary.as_json().items()}, default=str))
