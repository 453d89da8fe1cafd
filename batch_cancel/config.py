"""Frozen configuration values, with named defaults.

The CLI (or a library caller) builds these once; nothing downstream mutates them.
Secrets live only in :class:`Credentials`, whose password never appears in a repr.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from batch_cancel.exceptions import ConfigError, GwsMisconfigured

if TYPE_CHECKING:
    from batch_cancel.object_store import Location

__all__ = [
    "BOUNDS",
    "DEFAULT_ACK_TIMEOUT",
    "DEFAULT_BREAKER",
    "DEFAULT_CONCURRENCY",
    "DEFAULT_GRACE",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_OUTAGE",
    "DEFAULT_RATE",
    "DEFAULT_REQUEST_TIMEOUT",
    "Credentials",
    "GwsConfig",
    "JobDefaults",
    "RunConfig",
    "StateDb",
    "refuse_url_credentials",
]

DEFAULT_RATE = 10.0
DEFAULT_CONCURRENCY = 8
DEFAULT_ACK_TIMEOUT = 30.0
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_MAX_OUTAGE = 300.0
DEFAULT_GRACE = 2.0
# A POST unanswered this long is given up on (and counted as unanswered); GWS answers
# in milliseconds, so 15 s is an outage, not a slow server.
DEFAULT_REQUEST_TIMEOUT = 15.0
# Stop sending when this many outcomes in a row failed alike (0: never).
DEFAULT_BREAKER = 25
CHAIN_ATTRIBUTES = ("AllChain", "RecordOnly")

_DAY = 86_400.0
# (lowest, highest, lowest excluded) of each numeric setting. Floats must also be
# finite: NaN passes every comparison (a NaN timeout never fires, a NaN rate never
# limits) and a huge timeout overflows the event loop's timers. The CLI builds its
# option types from this table, so flags, env variables, job files and library
# callers all meet the same bounds.
BOUNDS: dict[str, tuple[float, float, bool]] = {
    "rate": (0.0, 1_000_000.0, False),
    "concurrency": (1, 1024, False),
    "ack_timeout": (0.0, _DAY, True),
    "max_attempts": (1, 100, False),
    "max_outage": (0.0, 7 * _DAY, True),
    "grace": (0.0, _DAY, False),
    "wait_lock": (0.0, 7 * _DAY, False),
    "metrics_interval": (0.0, _DAY, True),
    "breaker": (0, 1_000_000, False),
    "request_timeout": (0.0, _DAY, True),
}


def _check_bounds(owner: object, names: tuple[str, ...]) -> None:
    for name in names:
        value: Any = getattr(owner, name)
        low, high, low_open = BOUNDS[name]
        whole = isinstance(low, int)
        ok = False
        if isinstance(value, int | float) and not isinstance(value, bool):
            ok = (not whole or isinstance(value, int)) and math.isfinite(value) and (
                value > low if low_open else value >= low) and value <= high
        if not ok:
            what = "a whole number" if whole else "a finite number"
            shown = f"{'>' if low_open else '>='} {low:g} and <= {high:g}"
            raise ConfigError(f"{name.replace('_', '-')} must be {what} {shown}, not {value!r}")


def refuse_url_credentials(url: str | None, name: str) -> None:
    """``https://user:password@host`` would put the password in logs, journals and reports;
    say where credentials go instead (the URL itself is not repeated: it holds the secret)."""
    if url is None:
        return
    authority = url.split("://", 1)[-1].split("/", 1)[0]
    if "@" in authority:
        raise GwsMisconfigured(f"{name} carries credentials (user:password@host); give the user in "
                               "GWS_USERNAME (or --username) and the password in GWS_PASSWORD "
                               "(or --password-file) instead")  # fmt: skip


@dataclass(frozen=True)
class StateDb:
    """A PostgreSQL journal: where (``conninfo`` without a password) and how it is shared.

    The password is never part of the URL: libpq reads PGPASSWORD or ~/.pgpass by
    itself, or ``password`` comes from --state-password-file; it is never in a repr.
    ``schema`` holds one installation's tables (several jobs, by run id); a worker's
    claims on rows expire ``lease`` seconds after its last renewal.
    """

    conninfo: str
    display: str
    schema: str = "batch_cancel"
    lease: float = 30.0
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def __str__(self) -> str:
        return f"{self.username}:***"


RECORD_CLIENTS = ("auto", "aiohttp")


@dataclass(frozen=True)
class GwsConfig:
    """Where GWS is and how to talk to it."""

    base_url: str
    credentials: Credentials
    verify_tls: bool = True
    start_cc_session: bool = False
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    notifications_path: str = "/api/v2/notifications"
    # /me/internal carries OCS's user events: record handles and errors without referenceId
    ack_channels: tuple[str, ...] = ("/v2/me/outbound", "/me/internal")
    # where CometD is served when not beside the REST API (another host or port)
    cometd_url: str | None = None
    # TLS: a CA bundle that replaces the default trust store, and a client
    # certificate for servers that require mutual TLS (see gws/network.py)
    ca_bundle: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    # an explicit proxy URL (else the environment's, as curl reads it); it may carry
    # credentials taken from the environment, so it stays out of the repr
    proxy: str | None = field(default=None, repr=False)
    # CometD liveness (gws/bayeux.py PollBound): how long a long poll is assumed to
    # be held when the server advises no timeout, and the margin allowed on top of any
    poll_timeout: float = 30.0
    poll_margin: float = 10.0
    # which HTTP client carries CancelRecord POSTs: "auto" (our own lean client when no
    # proxy is in the way, else aiohttp: gws/record_transport.py) or "aiohttp" always
    record_client: str = "auto"

    def __post_init__(self) -> None:
        refuse_url_credentials(self.base_url, "the GWS base URL")
        refuse_url_credentials(self.cometd_url, "the CometD URL")
        timeout = self.request_timeout
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and 0 < timeout <= _DAY):
            raise ConfigError(f"request_timeout must be a finite number of seconds > 0, not {timeout!r}")
        if self.record_client not in RECORD_CLIENTS:
            raise ConfigError(f"record client must be one of {', '.join(RECORD_CLIENTS)}, "
                              f"not {self.record_client!r}")  # fmt: skip
        for name in ("poll_timeout", "poll_margin"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and 0 < value <= _DAY):
                raise ConfigError(f"{name} must be a finite number of seconds > 0, not {value!r}")

    @property
    def notifications_url(self) -> str:
        return self.cometd_url or self.base_url.rstrip("/") + self.notifications_path


@dataclass(frozen=True)
class JobDefaults:
    """Values for rows whose input has no column of their own."""

    application_id: int | None = None
    campaign: str | None = None
    calling_list: str | None = None
    device_path: str | None = None
    chain_attribute: str | None = None
    default_region: str = "US"
    phone_format: str = "national"
    # a number of another country than its row's region: reject | e164 | digits |
    # international; None: as phone_format allows (plan/phones.py ForeignFormat)
    foreign_format: str | None = None
    strict_validation: bool = False
    operation: str = "CancelRecord"


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides what a run sends and how fast."""

    inputs: tuple[Location, ...]  # local paths or object URLs (object_store.py)
    defaults: JobDefaults = JobDefaults()
    phone_column: str | None = None
    encoding: str = "utf-8"
    delimiter: str | None = None  # CSV inputs; None: sniffed from each file's header line
    sheet: str | None = None  # workbook inputs: a sheet's name or 0-based index; None: the first
    rate: float = DEFAULT_RATE
    concurrency: int = DEFAULT_CONCURRENCY
    ack_timeout: float = DEFAULT_ACK_TIMEOUT
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_outage: float = DEFAULT_MAX_OUTAGE
    grace: float = DEFAULT_GRACE
    report: Location | None = None
    state: Path | None = None
    dry_run: bool = False
    force: bool = False
    retry_timed_out: bool = False
    retry_failed: bool = False
    breaker: int = DEFAULT_BREAKER
    run_id: str | None = None
    shard: tuple[int, int] | None = None  # (index, count), index in 0..count-1
    adaptive_rate: bool = False
    html: Location | None = None
    # seconds to wait for another run's lock on the journal (0: exit 2 at once)
    wait_lock: float = 0.0
    # Prometheus textfile (node_exporter), rewritten every metrics_interval seconds
    metrics_file: Path | None = None
    metrics_interval: float = 5.0
    # a PostgreSQL journal that a fleet of workers shares, instead of the SQLite ``state``
    state_db: StateDb | None = None

    def __post_init__(self) -> None:
        _check_bounds(self, ("rate", "concurrency", "ack_timeout", "max_attempts", "max_outage",
                             "grace", "wait_lock", "metrics_interval", "breaker"))  # fmt: skip

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed run must share with the run that made the journal.

        Speed knobs (rate, concurrency, timeouts) may change between attempts;
        what is sent, and to whom, may not.
        """
        d = dataclasses.asdict(self.defaults)
        d["phone_column"] = self.phone_column
        d["encoding"] = self.encoding
        d["delimiter"] = self.delimiter
        if self.sheet is not None:  # absent from journals made before workbooks were read
            d["sheet"] = self.sheet
        d["shard"] = list(self.shard) if self.shard else None
        return d

    def public(self) -> dict[str, Any]:
        """The effective configuration as plain JSON values (there are no secrets here)."""
        d = dataclasses.asdict(self)
        d["inputs"] = [str(p) for p in self.inputs]
        d["report"] = str(self.report) if self.report else None
        d["state"] = str(self.state) if self.state else None
        d["html"] = str(self.html) if self.html else None
        d["metrics_file"] = str(self.metrics_file) if self.metrics_file else None
        d["state_db"] = self.state_db.display if self.state_db else None
        return d
