"""What the simulator is told to be: users, failing records, timeouts and fault knobs.

Both classes are frozen so a running simulator can hand them to any task or thread
without copying; faults change at run time by swapping the whole ``Faults`` object.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Literal

__all__ = ["FailureStyle", "Faults", "GatewayBody", "RepeatAnswer", "SimulatorConfig"]

# "user_event": the failure is told only as OCS's desktop-protocol error, a
# DeviceUserEventMessage on /me/internal with GSW_ERROR and no referenceId.
FailureStyle = Literal["error_message", "outbound_notification", "user_event"]
# What GWS answers to a CancelRecord for a record it already cancelled (the same
# referenceId again, or the same number under another one): the protocol notes call it
# unknown. "ack": a second acknowledgement; "failure": "Record not found" over CometD,
# shaped as failure_style says; "http_error": a 404 statusCode 6 "Record not found" JSON
# answer. Either way nothing changes on the server.
RepeatAnswer = Literal["ack", "failure", "http_error"]
# What a proxy or gateway in front of GWS puts in the body of its own error answer.
GatewayBody = Literal["html", "empty"]

_DEFAULT_USERS: Mapping[str, str] = {"agent": "secret"}


@dataclass(frozen=True)
class Faults:
    """Misbehaviour knobs. Rates are probabilities per outbound-record request.

    Every draw comes from one ``random.Random(seed)``, so a run with the same seed and
    the same request order makes the same decisions. The ``*_every`` knobs count
    outbound-record requests that reached the server (0 switches them off).
    """

    seed: int | None = None
    http_503_rate: float = 0.0
    http_429_rate: float = 0.0
    # Seconds for the Retry-After header of a 429; None sends no header at all, which
    # is what a Jetty DoS filter may well do.
    retry_after: float | None = 1.0
    reset_before_rate: float = 0.0
    reset_after_rate: float = 0.0
    ack_drop_rate: float = 0.0
    ack_duplicate_rate: float = 0.0
    ack_delay: tuple[float, float] = (0.0, 0.0)
    ack_before_http_rate: float = 0.0
    # How long the HTTP answer waits after an early outcome, so the CometD delivery
    # really reaches the client first.
    ack_before_http_delay: float = 0.05
    session_expiry_every: int = 0
    csrf_invalidate_every: int = 0
    drop_cometd_every: int = 0
    # Requests accepted on the socket and never answered: "hang_before" ones are never
    # processed, "hang_after" ones are processed (their outcome is published) first.
    hang_before_rate: float = 0.0
    hang_after_rate: float = 0.0
    # After every N processed requests, publish messages that match no request of the
    # client's: a user event of the agent's device and an outbound notification with
    # a referenceId nobody sent (0: never).
    foreign_every: int = 0
    # Jetty's DoSFilter, per HTTP session (by JSESSIONID, else by client address):
    # at most dos_max_requests_per_sec outbound-record requests start within any one
    # second; the excess waits its turn, and a request that would wait more than
    # dos_max_wait seconds is answered 429 without Retry-After (0: filter off).
    dos_max_requests_per_sec: float = 0.0
    dos_max_wait: float = 2.0
    repeat_answer: RepeatAnswer = "ack"
    # A proxy or gateway in front of GWS answers a share of POSTs itself, with one of
    # gateway_statuses (drawn) and no GWS JSON: "after" ones were processed by GWS first
    # (their outcome is published), "before" ones never reached it.
    gateway_after_rate: float = 0.0
    gateway_before_rate: float = 0.0
    gateway_statuses: tuple[int, ...] = (502, 504, 408)
    gateway_body: GatewayBody = "html"
    # statusCode 7 "partial success" (HTTP 200): processed, the outcome comes over CometD.
    partial_success_rate: float = 0.0
    # statusCode 9 "processing incomplete" (HTTP 500): of those, a share
    # (incomplete_processed_rate) was processed all the same and its outcome published.
    incomplete_rate: float = 0.0
    incomplete_processed_rate: float = 0.0
    # A GWS node restart after every N outbound requests: every HTTP session ends, every
    # CometD client is forgotten, and for restart_for seconds log-ins answer 503
    # statusCode 4 with Retry-After: restart_retry_after (None: no header).
    restart_every: int = 0
    restart_for: float = 6.0
    restart_retry_after: float | None = 2.0
    # After every N outbound requests, long polls go half-open for half_open_for seconds:
    # a /meta/connect held or arriving then is never answered nor reset (a NAT or
    # firewall that silently forgot the connection); the server never sees the client
    # poll, so it forgets it after max_interval, as CometD does.
    half_open_every: int = 0
    half_open_for: float = 20.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_rate") and not 0.0 <= value <= 1.0:
                raise ValueError(f"{f.name} must be within 0..1, got {value!r}")
            if f.name.endswith("_every") and value < 0:
                raise ValueError(f"{f.name} must be >= 0, got {value!r}")
        low, high = self.ack_delay
        if low < 0 or high < low:
            raise ValueError(f"ack_delay must be (min, max) with 0 <= min <= max, got {self.ack_delay!r}")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError(f"retry_after must be >= 0, got {self.retry_after!r}")
        if self.ack_before_http_delay < 0:
            raise ValueError("ack_before_http_delay must be >= 0")
        if self.dos_max_requests_per_sec < 0 or self.dos_max_wait < 0:
            raise ValueError("dos_max_requests_per_sec and dos_max_wait must be >= 0")
        if self.repeat_answer not in ("ack", "failure", "http_error"):
            raise ValueError(f"unknown repeat_answer {self.repeat_answer!r}")
        if self.gateway_body not in ("html", "empty"):
            raise ValueError(f"unknown gateway_body {self.gateway_body!r}")
        if not self.gateway_statuses or not all(400 <= s <= 599 for s in self.gateway_statuses):
            raise ValueError(f"gateway_statuses must be HTTP error statuses, got {self.gateway_statuses!r}")
        # NaN and infinity pass on purpose: a client must survive "Retry-After: inf"
        if self.restart_retry_after is not None and self.restart_retry_after < 0:
            raise ValueError(f"restart_retry_after must be >= 0, got {self.restart_retry_after!r}")
        if self.restart_for < 0 or self.half_open_for < 0:
            raise ValueError("restart_for and half_open_for must be >= 0")


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulated GWS is set up; defaults follow the GWS 8.5 sample configuration."""

    host: str = "127.0.0.1"
    port: int = 0
    users: Mapping[str, str] = field(default_factory=lambda: dict(_DEFAULT_USERS))
    csrf: bool = True
    failing_numbers: frozenset[str] = frozenset()
    failing_lists: frozenset[str] = frozenset()
    # GWS documents no failure shape for CancelRecord, so both plausible ones exist.
    failure_style: FailureStyle = "error_message"
    long_poll_timeout: float = 30.0
    # A CometD client that has not polled for this long after its last poll ended is
    # forgotten (CometD's maxInterval).
    max_interval: float = 10.0
    # The CometD Java server answers a client's first /meta/connect at once; the Node
    # server (measured against here) holds it like any other unless advice.timeout is 0.
    hold_first_connect: bool = True
    # Whether connect and handshake replies carry advice.timeout; a server that gives
    # none still holds each poll for long_poll_timeout, the client just is not told.
    advise_timeout: bool = True
    session_timeout: float = 1800.0
    require_cc_session: bool = False
    # GWS documents CSRF for "every POST"; whether its CometD servlet sits behind that
    # filter is unknown, so requiring the token on /api/v2/notifications is optional.
    csrf_on_cometd: bool = False
    # Whether an HTTP session ending also forgets the CometD clients it handshook;
    # GWS does not document it, so both are possible.
    session_end_drops_clients: bool = False
    # Seconds GWS spends on each outbound-record request before it answers (and before
    # the outcome is published): a server's own service time, for benchmarks.
    service_time: float = 0.0
    # Bounded so a client that never polls cannot grow memory without limit; beyond
    # it the oldest messages are lost, as with a CometD server's maxQueue.
    client_queue_limit: int = 100_000
    # TLS: serve https with this PEM certificate chain and key; with a client CA,
    # also require a client certificate issued by it (mutual TLS)
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    faults: Faults = field(default_factory=Faults)

    def __post_init__(self) -> None:
        if self.failure_style not in ("error_message", "outbound_notification", "user_event"):
            raise ValueError(f"unknown failure_style {self.failure_style!r}")
        if not self.users:
            raise ValueError("at least one user is needed")
        for name, value in (
            ("long_poll_timeout", self.long_poll_timeout),
            ("max_interval", self.max_interval),
            ("session_timeout", self.session_timeout),
            ("service_time", self.service_time),
        ):
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        if self.client_queue_limit < 1:
            raise ValueError("client_queue_limit must be >= 1")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls_client_ca needs tls_cert (mutual TLS is TLS first)")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be within 0..65535, got {self.port!r}")
