"""``batch-cancel preflight``: check that a run would work, step by step."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import click

from batch_cancel.cli._common import guarded, hide_secrets, log_options, read_password, tell
from batch_cancel.cli.param_types import LOCATION, bounded
from batch_cancel.cli.run import build_gws, gws_options, network_options

__all__ = ["preflight"]


@click.command(context_settings={"auto_envvar_prefix": "BATCH_CANCEL"}, epilog="""\b
Example:
  export GWS_BASE_URL=https://gws.example.com GWS_USERNAME=svc_dnc GWS_PASSWORD=...
  batch-cancel preflight dnc.csv --rate 20
  # and send one real CancelRecord for a test number first:
  batch-cancel preflight --canary-number 4100180988 --application-id 134 \\
      --campaign Campaign1 --calling-list CallingList1
\b
Exit codes: 0 every step passed; 2 usage error, or a step failed in a way no
retry fixes (a certificate refused, a page that is not the GWS API); 3 a step
failed (it is named).
""")  # fmt: skip
@click.argument("inputs", nargs=-1, type=LOCATION)
@click.option("--canary-number", metavar="NUMBER",
              help="Send one CancelRecord for this number and wait for its acknowledgement.")
@click.option("--application-id", type=int)
@click.option("--campaign")
@click.option("--calling-list")
@click.option("--device-path")
@click.option("--chain-attribute", type=click.Choice(["AllChain", "RecordOnly"]))
@click.option("--rate", type=bounded("rate"), default=10.0, show_default=True,
              help="Rate used for the ETA of INPUT files.")
@click.option("--ack-timeout", type=bounded("ack_timeout"), default=30.0,
              show_default=True, metavar="SECONDS")
@gws_options
@log_options(quiet_by_default=True)
@guarded
def preflight(inputs: tuple[Any, ...], **opts: Any) -> None:
    """Log in, check CSRF and devices, subscribe to CometD, estimate the run.

    Nothing is cancelled unless --canary-number is given.
    """
    from batch_cancel.config import JobDefaults
    from batch_cancel.gws.network import proxy_secrets
    from batch_cancel.preflight import preflight as check

    password = read_password(opts["password_file"])
    hide_secrets(([password] if password else []) + proxy_secrets(opts["proxy"]))
    gws = build_gws(opts["base_url"], opts["username"], opts["password_file"], opts["insecure"],
                    opts["start_cc_session"], cometd_url=opts["cometd_url"],
                    **network_options(opts))  # fmt: skip
    defaults = JobDefaults(
        application_id=opts["application_id"], campaign=opts["campaign"],
        calling_list=opts["calling_list"], device_path=opts["device_path"],
        chain_attribute=opts["chain_attribute"],
    )  # fmt: skip
    steps = asyncio.run(check(gws, defaults, canary=opts["canary_number"], inputs=inputs,
                            rate=opts["rate"], ack_timeout=opts["ack_timeout"]))  # fmt: skip
    for step in steps:
        mark = "ok  " if step.ok else "FAIL"
        tell(f"{mark} {step.name:<8} {step.detail} ({step.seconds:.2f} s)", "preflight_step",
             **step.__dict__)  # fmt: skip
    failed = next((s for s in steps if not s.ok), None)
    click.echo(json.dumps({"ready": failed is None, "failed_step": failed.name if failed else None,
                           "steps": [s.__dict__ for s in steps]}))  # fmt: skip
    raise SystemExit(0 if failed is None else failed.exit_code)
