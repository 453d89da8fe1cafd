"""Every error batch-cancel raises, rooted in one class.

The command line maps each branch to an exit code; a library user catches
``BatchCancelError`` or the branch they care about::

    BatchCancelError
    ├── UsageError                     exit 2: nothing was sent
    │   ├── ConfigError                bad option, job file or credentials source
    │   ├── InputError                 unreadable or malformed input file
    │   ├── JournalMismatch            resuming a journal with other input or settings
    │   ├── JournalUnusable            --state is not a journal of ours, or is corrupt
    │   ├── JournalLocked              another run holds the journal
    │   ├── GwsMisconfigured           not the GWS API there (an HTML page), credentials in the URL
    │   └── TlsCertificateError        a certificate refused (theirs or ours) before anything was sent
    ├── AbortedError                   exit 3: the run stopped, its journal can be resumed
    │   ├── AuthenticationError        log-in refused, or a re-login failed
    │   ├── GwsUnavailable             GWS unreachable for longer than allowed
    │   ├── NotificationChannelLost    CometD could not be (re)subscribed in time
    │   ├── JournalUnwritable          the journal could not be written for longer than allowed
    │   ├── BackgroundTaskFailed       a task the run relies on (watchdog, pacer, …) died
    │   ├── JournalUnavailable         the PostgreSQL journal could not be reached
    │   ├── LeaseLost                  a fleet worker was silent past its lease; it stops
    │   ├── SystematicFailure          the last --breaker outcomes all failed alike
    │   ├── ReportUnwritable           the report or evidence page could not be written (a full disk)
    │   └── Interrupted                SIGINT / SIGTERM
    ├── NotWritten                     a CancelRecord stopped before it was written: sending held
    ├── PollFailed                     one Bayeux request got no usable answer (never escapes the channel)
    └── RequestError                   one CancelRecord request went wrong (never escapes a run)
        ├── RequestRejected            4xx other than 401/403/408/429: the request itself is wrong
        ├── SessionExpired             401 or CSRF 403: log in again, then retry
        └── TransientError             transport error, 5xx, statusCode 4 or 9, 408, 429: retry later

Every ``RequestError`` says whether the attempt **may have been processed**
(``may_have_been_processed``), decided in one place, ``batch_cancel.gws.responses``:

* True: no HTTP answer after the request was (possibly) written (read timeout, server
  disconnected, connection reset); a 408, 500, 502 or 504 whose body is not GWS JSON
  (a proxy or gateway in front of GWS answered; GWS may have done it); statusCode 9
  "processing incomplete".
* False: nothing was sent (connection refused, DNS, connect timeout, TLS refused), or
  GWS itself answered with its JSON error (statusCode 1, 2, 3, 4, 5, 6, 10, 18, 19, 20,
  ...: nothing changed), or a proxy refused without forwarding (its 503/429 page).
"""

from __future__ import annotations

__all__ = [
    "AbortedError",
    "AuthenticationError",
    "BackgroundTaskFailed",
    "BatchCancelError",
    "ConfigError",
    "GwsMisconfigured",
    "GwsUnavailable",
    "InputError",
    "Interrupted",
    "JournalLocked",
    "JournalMismatch",
    "JournalUnavailable",
    "JournalUnusable",
    "JournalUnwritable",
    "LeaseLost",
    "NotWritten",
    "NotificationChannelLost",
    "PollFailed",
    "ReportUnwritable",
    "RequestError",
    "RequestRejected",
    "SessionExpired",
    "SystematicFailure",
    "TlsCertificateError",
    "TransientError",
    "UsageError",
]


class BatchCancelError(Exception):
    """Root of every error raised by batch-cancel."""

    exit_code = 1


class UsageError(BatchCancelError):
    """The user asked for something that cannot run; nothing was sent."""

    exit_code = 2


class ConfigError(UsageError):
    """An option, job file or credential source is wrong."""


class InputError(UsageError):
    """An input file cannot be read as a list of phone numbers."""


class JournalMismatch(UsageError):
    """An existing journal belongs to other input or other settings."""


class JournalUnusable(UsageError):
    """The --state file is not a journal of ours (or is corrupt); it is left untouched."""


class JournalLocked(UsageError):
    """Another run holds the journal's lock (its host, pid and since when are in the message)."""


class GwsMisconfigured(UsageError):
    """What answers at the configured URL is not a GWS API (an HTML page), or the URL carries
    credentials: retrying won't change that."""


class TlsCertificateError(UsageError):
    """A TLS certificate was refused before anything was sent: GWS's (unknown CA,
    expired, wrong name) or ours (mutual TLS). A retry cannot fix it, so exit 2."""


class AbortedError(BatchCancelError):
    """The run stopped before every record had an outcome; resume it."""

    exit_code = 3


class AuthenticationError(AbortedError):
    """GWS refused the credentials (at start or on a re-login)."""


class GwsUnavailable(AbortedError):
    """GWS could not be reached for longer than the allowed outage."""


class JournalUnavailable(AbortedError):
    """The PostgreSQL journal server could not be reached (a later run can resume)."""


class LeaseLost(AbortedError):
    """A fleet worker missed its heartbeats past the lease: its rows may be with others."""


class NotificationChannelLost(AbortedError):
    """The CometD channel could not be (re)subscribed within the allowed outage."""


class JournalUnwritable(AbortedError):
    """The journal could not be written for longer than allowed; nothing committed is lost."""

    def __init__(self, message: str, *, location: str) -> None:
        super().__init__(message)
        self.location = location


class BackgroundTaskFailed(AbortedError):
    """A task the run relies on (journal writer, watchdog, CometD supervisor, …) failed."""

    def __init__(self, task: str, error: BaseException) -> None:
        super().__init__(f"{task} failed: {type(error).__name__}: {error}".rstrip(": "))
        self.task = task


class SystematicFailure(AbortedError):
    """Every recent request failed the same way (``--breaker``): sending stopped."""


class ReportUnwritable(AbortedError):
    """The report or the evidence page could not be written; every outcome is in the
    journal, so running again with it (nothing is sent again) writes them."""


class Interrupted(AbortedError):
    """SIGINT or SIGTERM stopped the run."""


class NotWritten(BatchCancelError):
    """A CancelRecord POST was stopped before any of it was written (a fleet worker's
    sending was held meanwhile, its lease's deadline passed): GWS never saw it, so it is
    no attempt, and the row is not in doubt. Never escapes a run."""


class PollFailed(BatchCancelError):
    """One Bayeux request (a long poll, a handshake, a subscribe) got no usable answer:
    a transport error, no answer within its bound, or a body that is not Bayeux. The
    ack channel polls again; it never escapes a run."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out  # cut at its bound (a half-open connection?)


class RequestError(BatchCancelError):
    """One HTTP request to GWS failed; carries what GWS answered."""

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        status_code: int | None = None,
        retry_after: float | None = None,
        may_have_been_processed: bool = False,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.status_code = status_code
        # seconds, finite and capped (gws.responses.RETRY_AFTER_CAP); None: not given
        self.retry_after = retry_after
        # GWS may have carried the request out (see the module docstring): the attempt
        # is no proof that nothing changed, so its record must not be called failed,
        # and its number must not get another referenceId
        self.may_have_been_processed = may_have_been_processed
        # nothing reached GWS (connect failed): measures an outage
        self.unreachable = False
        # sent, and no HTTP answer came within --request-timeout: the outcome is unknown
        self.unanswered = False


class RequestRejected(RequestError):
    """GWS said the request is wrong (400, 404, …): retrying will not help."""


class SessionExpired(RequestError):
    """The HTTP session or its CSRF token is no longer valid (401, 403)."""


class TransientError(RequestError):
    """The request may succeed later: network error, 5xx, statusCode 4 or 9, 408, 429."""
