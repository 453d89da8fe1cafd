"""``batch-cancel simulate``: serve the GWS simulator until Ctrl-C or SIGTERM."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from batch_cancel.cli._common import log_options
from batch_cancel.cli.param_types import FiniteFloat

if TYPE_CHECKING:
    from batch_cancel.simulator import SimulatorConfig

__all__ = ["simulate"]

_RATE = FiniteFloat(0.0, 1.0)
_COUNT = click.IntRange(min=0)
_SECONDS = FiniteFloat(min=0.0)


class _StartError(click.ClickException):
    """The simulator could not start (bad combination, port taken): nothing is served."""

    exit_code = 2


class _OneLineErrorCommand(click.Command):
    """Reports option errors as one ``Error: …`` line, without the usage block."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as error:
            # Without a context click prints only the message line.
            error.ctx = None
            raise


def _parse_users(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, str]:
    users: dict[str, str] = {}
    for value in values:
        name, sep, password = value.partition(":")
        if not sep or not name or not password:
            raise click.BadParameter(f"{value!r} is not NAME:PASSWORD", ctx=ctx, param=param)
        users[name] = password
    return users or {"agent": "secret"}


def _parse_retry_after(ctx: click.Context, param: click.Parameter, value: str) -> float | None:
    if value.lower() == "none":
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if seconds < 0:
        raise click.BadParameter(f"{value!r} is neither seconds >= 0 nor 'none'")
    return seconds


@click.command(cls=_OneLineErrorCommand)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8090,
    show_default=True,
    help="Port to listen on (0: any free port).",
)
@click.option(
    "--user",
    "users",
    multiple=True,
    callback=_parse_users,
    metavar="NAME:PASSWORD",
    help="A user that may log in (repeatable). Default: agent:secret.",
)
@click.option(
    "--fail-number",
    "fail_numbers",
    multiple=True,
    metavar="NUMBER",
    help="Phone number whose cancel fails over CometD (repeatable).",
)
@click.option(
    "--fail-list",
    "fail_lists",
    multiple=True,
    metavar="NAME",
    help="Calling list whose cancels all fail (repeatable).",
)
@click.option(
    "--failure-style",
    type=click.Choice(["error_message", "outbound_notification", "user_event"]),
    default="error_message",
    show_default=True,
    help="Shape of a failure: ErrorMessage, OutboundRecordMessage RecordCancelError, or only "
    "an OCS error (GSW_ERROR) as DeviceUserEventMessage on /me/internal.",
)
@click.option("--no-csrf", is_flag=True, help="Turn CSRF protection off.")
@click.option("--csrf-on-cometd", is_flag=True, help="Also require the CSRF header on CometD requests.")
@click.option(
    "--require-cc-session",
    is_flag=True,
    help="Refuse outbound records until StartContactCenterSession.",
)
@click.option(
    "--service-time",
    type=_SECONDS,
    default=0.0,
    show_default=True,
    metavar="S",
    help="Seconds each outbound-record request takes before GWS answers it (benchmarks).",
)
@click.option(
    "--long-poll-timeout",
    type=_SECONDS,
    default=30.0,
    show_default=True,
    metavar="S",
    help="Seconds a CometD /meta/connect is held.",
)
@click.option(
    "--max-interval",
    type=_SECONDS,
    default=10.0,
    show_default=True,
    metavar="S",
    help="Seconds without a poll before a CometD client is forgotten.",
)
@click.option(
    "--answer-first-connect",
    is_flag=True,
    help="Answer a client's first /meta/connect at once (as CometD Java does).",
)
@click.option(
    "--session-timeout",
    type=_SECONDS,
    default=1800.0,
    show_default=True,
    metavar="S",
    help="Seconds of inactivity before an HTTP session expires.",
)
@click.option("--seed", type=int, default=None, help="Seed for every fault decision.")
@click.option("--fault-503-rate", type=_RATE, default=0.0, help="Share answered 503.")
@click.option("--fault-429-rate", type=_RATE, default=0.0, help="Share answered 429.")
@click.option(
    "--fault-retry-after",
    default="1",
    show_default=True,
    metavar="S|none",
    callback=_parse_retry_after,
    help="Retry-After of a 429 ('none': no header).",
)
@click.option(
    "--fault-reset-before-rate",
    type=_RATE,
    default=0.0,
    help="Share whose connection is reset before processing.",
)
@click.option(
    "--fault-reset-after-rate",
    type=_RATE,
    default=0.0,
    help="Share processed, then reset without an answer.",
)
@click.option(
    "--fault-ack-drop-rate",
    type=_RATE,
    default=0.0,
    help="Share whose CometD outcome is never published.",
)
@click.option(
    "--fault-ack-duplicate-rate",
    type=_RATE,
    default=0.0,
    help="Share whose CometD outcome is published twice.",
)
@click.option(
    "--fault-ack-delay",
    type=(_SECONDS, _SECONDS),
    default=(0.0, 0.0),
    show_default=True,
    metavar="MIN MAX",
    help="Seconds before an outcome is published.",
)
@click.option(
    "--fault-ack-before-http-rate",
    type=_RATE,
    default=0.0,
    help="Share whose outcome is published before the HTTP answer.",
)
@click.option(
    "--fault-ack-before-http-delay",
    type=_SECONDS,
    default=0.05,
    show_default=True,
    metavar="S",
    help="How long such an HTTP answer is held back.",
)
@click.option(
    "--fault-session-expiry-every",
    type=_COUNT,
    default=0,
    metavar="N",
    help="End the HTTP session after every N outbound requests.",
)
@click.option(
    "--fault-csrf-invalidate-every",
    type=_COUNT,
    default=0,
    metavar="N",
    help="Rotate the CSRF token after every N outbound requests.",
)
@click.option(
    "--fault-drop-cometd-every",
    type=_COUNT,
    default=0,
    metavar="N",
    help="Forget all CometD clients after every N outbound requests.",
)
@click.option(
    "--fault-hang-before-rate",
    type=_RATE,
    default=0.0,
    help="Share accepted and never answered, not processed.",
)
@click.option(
    "--fault-hang-after-rate",
    type=_RATE,
    default=0.0,
    help="Share processed (outcome published) and never answered.",
)
@click.option(
    "--fault-foreign-every",
    type=_COUNT,
    default=0,
    metavar="N",
    help="After every N outbound requests, publish messages that answer none of them.",
)
@click.option(
    "--dos-max-requests-per-sec",
    type=FiniteFloat(min=0.0),
    default=0.0,
    metavar="R",
    help="Jetty DoSFilter per session: requests over R/s wait their turn (0: off).",
)
@click.option(
    "--dos-max-wait",
    type=_SECONDS,
    default=2.0,
    show_default=True,
    metavar="S",
    help="A request the DoS filter would hold longer than this is answered 429.",
)
@click.option("--login-page", type=click.IntRange(100, 599), metavar="STATUS",
              help="Answer log-ins (GET /api/v2/me) with an HTML page of this status, as a proxy "
                   "in front of GWS does (502 while GWS is down, 200 for an SSO page).")
@click.option("--login-page-for", type=FiniteFloat(min=0.0, min_open=True), metavar="S",
              help="... for the first S seconds only (default: as long as the simulator runs).")
@click.option("--login-page-everywhere", is_flag=True,
              help="... on every /api/v2 request, POSTs and CometD included, as an SSO gateway "
                   "that no longer knows the client does (GWS never sees them).")
@click.option("--repeat-answer", type=click.Choice(["ack", "failure", "http_error"]), default="ack",
              show_default=True,
              help="How a CancelRecord for a record already cancelled (same referenceId or not) is "
                   "answered: a second acknowledgement, 'Record not found' over CometD, or a 404 "
                   "statusCode 6 JSON answer. Nothing changes either way.")
@click.option("--fault-gateway-after-rate", type=_RATE, default=0.0,
              help="Share processed by GWS, then answered by a gateway in front of it (no GWS JSON).")
@click.option("--fault-gateway-before-rate", type=_RATE, default=0.0,
              help="Share answered by a gateway in front of GWS, never reaching it.")
@click.option("--fault-gateway-status", "gateway_statuses", multiple=True,
              type=click.IntRange(400, 599), metavar="STATUS",
              help="Status of such gateway answers (repeatable, drawn). Default: 502, 504, 408.")
@click.option("--fault-gateway-body", type=click.Choice(["html", "empty"]), default="html",
              show_default=True, help="Body of such gateway answers.")
@click.option("--fault-partial-success-rate", type=_RATE, default=0.0,
              help="Share answered statusCode 7 (partial success, HTTP 200); outcome over CometD.")
@click.option("--fault-incomplete-rate", type=_RATE, default=0.0,
              help="Share answered statusCode 9 (processing incomplete, HTTP 500).")
@click.option("--fault-incomplete-processed-rate", type=_RATE, default=0.0,
              help="Of those, the share GWS processed all the same (outcome published).")
@click.option("--fault-restart-every", type=_COUNT, default=0, metavar="N",
              help="A GWS node restart after every N outbound requests: sessions and CometD "
                   "clients lost, log-ins answer 503 for a while.")
@click.option("--fault-restart-for", type=_SECONDS, default=6.0, show_default=True, metavar="S",
              help="Seconds log-ins answer 503 after such a restart.")
@click.option("--fault-restart-retry-after", default="2", show_default=True, metavar="S|none",
              callback=_parse_retry_after,
              help="Retry-After of those 503s ('none': no header; 'inf' is sent as such).")
@click.option("--fault-half-open-every", type=_COUNT, default=0, metavar="N",
              help="After every N outbound requests, long polls go half-open: never answered "
                   "nor reset.")
@click.option("--fault-half-open-for", type=_SECONDS, default=20.0, show_default=True, metavar="S",
              help="Seconds such a half-open window lasts.")
@click.option("--no-timeout-advice", is_flag=True,
              help="Send no advice.timeout to CometD clients (polls are still held "
                   "--long-poll-timeout seconds).")
@click.option("--tls-cert", metavar="PEM", help="Serve https with this certificate chain.")
@click.option("--tls-key", metavar="PEM", help="Key of --tls-cert (when not in the same file).")
@click.option("--tls-client-ca", metavar="PEM",
              help="Require a client certificate issued by this CA (mutual TLS).")
@log_options
def simulate(**options: Any) -> None:
    """Serve a simulated GWS (REST + CometD long-polling) until Ctrl-C.

    Outbound-record requests are counted per server (the *-every knobs count
    those that passed authentication). GET /_sim/ledger answers what the
    simulator was asked and what it published, as JSON.

    \b
    Example: 10% of requests answer 503, 5% of acks are lost, acks lag 0-0.5 s
      batch-cancel simulate --port 8090 --user agent:secret \\
          --fail-number 2125550199 --fail-list BadList --seed 7 \\
          --fault-503-rate 0.1 --fault-ack-drop-rate 0.05 --fault-ack-delay 0 0.5
    \b
    Example: a GWS behind Jetty's DoS filter (25/s per session, then delay), which
    tells failures only on /me/internal and leaves 2% of requests unanswered
      batch-cancel simulate --dos-max-requests-per-sec 25 --dos-max-wait 2 \\
          --failure-style user_event --fault-hang-before-rate 0.02
    \b
    Example: GWS as the protocol notes leave it open: a repeat for a cancelled
    record fails "Record not found", a proxy answers 502/504/408 after GWS did
    the work, and a node restarts after every 1000 requests (6 s of 503 log-ins)
      batch-cancel simulate --repeat-answer failure --fault-gateway-after-rate 0.01 \\
          --fault-restart-every 1000 --fault-restart-for 6 --fault-restart-retry-after 2
    \b
    Then point the job at it:
      GWS_PASSWORD=secret batch-cancel run numbers.csv \\
          --base-url http://127.0.0.1:8090 --username agent ...
    """
    import asyncio

    config = _config(options)
    page = options["login_page"]
    login_page = ((page, options["login_page_for"] or float("inf"), options["login_page_everywhere"])
                  if page else None)  # fmt: skip
    try:
        asyncio.run(_serve(config, login_page))
    except OSError as error:
        raise _StartError(
            f"cannot listen on {config.host}:{config.port}: {error.strerror or error}"
        ) from None


def _config(options: dict[str, Any]) -> SimulatorConfig:
    from batch_cancel.simulator import Faults, SimulatorConfig

    try:
        faults = Faults(
            seed=options["seed"],
            http_503_rate=options["fault_503_rate"],
            http_429_rate=options["fault_429_rate"],
            retry_after=options["fault_retry_after"],
            reset_before_rate=options["fault_reset_before_rate"],
            reset_after_rate=options["fault_reset_after_rate"],
            ack_drop_rate=options["fault_ack_drop_rate"],
            ack_duplicate_rate=options["fault_ack_duplicate_rate"],
            ack_delay=tuple(options["fault_ack_delay"]),
            ack_before_http_rate=options["fault_ack_before_http_rate"],
            ack_before_http_delay=options["fault_ack_before_http_delay"],
            session_expiry_every=options["fault_session_expiry_every"],
            csrf_invalidate_every=options["fault_csrf_invalidate_every"],
            drop_cometd_every=options["fault_drop_cometd_every"],
            hang_before_rate=options["fault_hang_before_rate"],
            hang_after_rate=options["fault_hang_after_rate"],
            foreign_every=options["fault_foreign_every"],
            dos_max_requests_per_sec=options["dos_max_requests_per_sec"],
            dos_max_wait=options["dos_max_wait"],
            repeat_answer=options["repeat_answer"],
            gateway_after_rate=options["fault_gateway_after_rate"],
            gateway_before_rate=options["fault_gateway_before_rate"],
            gateway_statuses=tuple(options["gateway_statuses"]) or (502, 504, 408),
            gateway_body=options["fault_gateway_body"],
            partial_success_rate=options["fault_partial_success_rate"],
            incomplete_rate=options["fault_incomplete_rate"],
            incomplete_processed_rate=options["fault_incomplete_processed_rate"],
            restart_every=options["fault_restart_every"],
            restart_for=options["fault_restart_for"],
            restart_retry_after=options["fault_restart_retry_after"],
            half_open_every=options["fault_half_open_every"],
            half_open_for=options["fault_half_open_for"],
        )
        return SimulatorConfig(
            host=options["host"],
            port=options["port"],
            users=options["users"],
            csrf=not options["no_csrf"],
            csrf_on_cometd=options["csrf_on_cometd"],
            require_cc_session=options["require_cc_session"],
            failing_numbers=frozenset(options["fail_numbers"]),
            failing_lists=frozenset(options["fail_lists"]),
            failure_style=options["failure_style"],
            long_poll_timeout=options["long_poll_timeout"],
            service_time=options["service_time"],
            max_interval=options["max_interval"],
            hold_first_connect=not options["answer_first_connect"],
            advise_timeout=not options["no_timeout_advice"],
            session_timeout=options["session_timeout"],
            tls_cert=options["tls_cert"], tls_key=options["tls_key"],
            tls_client_ca=options["tls_client_ca"],
            faults=faults,
        )
    except ValueError as error:
        raise _StartError(str(error)) from None


async def _serve(config: SimulatorConfig, login_page: tuple[int, float, bool] | None = None) -> None:
    import asyncio
    import signal

    from batch_cancel.simulator import GwsSimulator

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with GwsSimulator(config) as sim:
            if login_page is not None:
                status, seconds, everywhere = login_page
                sim.serve_login_page(status, seconds, everywhere=everywhere)
            click.echo(f"GWS simulator listening on {sim.base_url}  (Ctrl-C to stop)")
            await stop.wait()
            click.echo("GWS simulator stopped")
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
