"""What every sub-command shares: logging, secrets, and exceptions → exit codes."""

from __future__ import annotations

import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar, overload

import click

from batch_cancel.exceptions import BatchCancelError, ConfigError

__all__ = ["JsonLineCommand", "error_summary", "exit_with", "guarded", "hide_secrets", "json_logs",
           "log_options", "read_password", "read_state_password", "setup_logging", "split_state",
           "tell"]  # fmt: skip

F = TypeVar("F", bound=Callable[..., Any])


class _Secrets(logging.Filter):
    """Last line of defence: a secret that reaches a log line is blanked."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def add(self, secrets: list[str]) -> None:
        self._secrets.extend(s for s in secrets if s and s not in self._secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            text = record.getMessage()
            if any(s in text for s in self._secrets):
                for s in self._secrets:
                    text = text.replace(s, "***")
                record.msg, record.args = text, ()
        return True


def setup_logging(verbose: int = 0, quiet: bool = False, secrets: list[str] | None = None,
                  log_format: str = "text") -> None:  # fmt: skip
    from batch_cancel.log_records import JsonFormatter

    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_Secrets(secrets or []))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # in JSON, a Python warning on stderr would be the one line a log shipper cannot parse
    logging.captureWarnings(log_format == "json")
    # the storage SDKs say where they found credentials at INFO
    for noisy in ("asyncio", "httpx", "httpcore", "aiohttp", "botocore",
                  "aiobotocore", "s3fs", "fsspec", "gcsfs", "adlfs", "azure"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL if not verbose else logging.INFO)


def hide_secrets(secrets: list[str]) -> None:
    """Add secrets (known only once options are read) to the log filter set up already."""
    for handler in logging.getLogger().handlers:
        for f in handler.filters:
            if isinstance(f, _Secrets):
                f.add(secrets)


def json_logs() -> bool:
    """True when stderr carries JSON lines: then every message to the user is a log line."""
    from batch_cancel.log_records import JsonFormatter

    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)


_LOG_OPTIONS = (
    click.option("--log-format", type=click.Choice(["text", "json"]), default="text",
                 show_default=True, envvar="BATCH_CANCEL_LOG_FORMAT",
                 help="Logs on stderr as text, or one JSON object per line (env BATCH_CANCEL_LOG_FORMAT)."),
    click.option("-v", "--verbose", count=True, help="More logging: debug lines, the libraries' too."),
    click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only."),
)  # fmt: skip


@overload
def log_options(fn: F) -> F: ...
@overload
def log_options(*, quiet_by_default: bool = False) -> Callable[[F], F]: ...
def log_options(fn: F | None = None, *, quiet_by_default: bool = False) -> Any:
    """``--log-format``, ``-v`` and ``-q``, set up before the command body runs.

    ``quiet_by_default``: the command's own output is what matters (``preflight``), so
    logging stays at warnings unless ``-v`` asks for more.
    """
    import functools

    if fn is None:
        return functools.partial(log_options, quiet_by_default=quiet_by_default)

    @functools.wraps(fn)
    def wrapper(*args: Any, log_format: str, verbose: int, quiet: bool, **kwargs: Any) -> Any:
        setup_logging(verbose, quiet or (quiet_by_default and not verbose), log_format=log_format)
        return fn(*args, **kwargs)

    command: Any = wrapper
    for option in reversed(_LOG_OPTIONS):
        command = option(command)
    return command


def read_password(password_file: Path | None) -> str | None:
    """The password comes from a file or GWS_PASSWORD, never from a flag value."""
    if password_file is not None:
        try:
            text = password_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot read password file {password_file}: {exc.strerror}") from exc
        password = text.rstrip("\r\n")
        if not password:
            raise ConfigError(f"password file {password_file} is empty")
        return password
    return os.environ.get("GWS_PASSWORD") or None


def read_state_password(password_file: Path | None) -> str | None:
    """A PostgreSQL journal's password from --state-password-file; without one, libpq
    reads PGPASSWORD or ~/.pgpass itself."""
    if password_file is None:
        return None
    try:
        password = password_file.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"cannot read --state-password-file {password_file}: {exc.strerror}") from exc
    if not password:
        raise ConfigError(f"--state-password-file {password_file} is empty")
    return password


def split_state(value: str | None, password_file: Path | None) -> tuple[Path | None, Any]:
    """``--state``: a SQLite path, or a ``postgresql://`` URL (answered as a StateDb)."""
    if value is None:
        if password_file is not None:
            raise ConfigError("--state-password-file is for --state postgresql://… only")
        return None, None
    if value.split("://", 1)[0].lower() in ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "http", "https"):
        raise ConfigError(f"--state {value}: the journal is a local SQLite file or a postgresql:// "
                          "URL, not an object: it is locked and updated in place, which object "
                          "storage cannot do (inputs and reports may be s3://, gs://, az://)")  # fmt: skip
    if value.startswith("file://"):
        from batch_cancel.object_store import location

        value = str(location(value))
    if value.startswith(("postgresql://", "postgres://")):  # psycopg is imported only then
        from batch_cancel.journal.postgres import parse_state_url

        return None, parse_state_url(value, read_state_password(password_file))
    if password_file is not None:
        raise ConfigError("--state-password-file is for --state postgresql://… only")
    return Path(value), None


def tell(text: str, name: str, level: int = logging.WARNING, /, **figures: Any) -> None:
    """A line for the person at the terminal: plain on stderr, or a log object with
    --log-format json (where every stderr line must parse)."""
    if json_logs():
        from batch_cancel.log_records import event

        logging.getLogger("batch_cancel").log(level, "%s", text, extra=event(name, **figures))
    else:
        click.echo(text, err=True)


def exit_with(error: BatchCancelError, summary_json: dict[str, Any] | None = None) -> NoReturn:
    run_id = summary_json.get("run_id") if summary_json else None
    tell(f"batch-cancel: error: {error}", "error", logging.ERROR, exit_code=error.exit_code, run_id=run_id)
    if summary_json is not None:
        click.echo(json.dumps(summary_json, default=str))
    sys.exit(error.exit_code)


_EMPTY_COUNTS = ("total", "cancelled", "failed", "timed_out", "rejected", "duplicate", "pending")
# what a run ends with when it stopped for a bug: the journal is consistent at every
# instant, so a later run can resume it (exit 3, as for every resumable abort)
INTERNAL_ERROR_EXIT = 3


def error_summary(error: BaseException | str, exit_code: int | None = None) -> dict[str, Any]:
    """The JSON line of a run that stopped before it had a summary of its own."""
    if exit_code is None:
        exit_code = error.exit_code if isinstance(error, BatchCancelError) else INTERNAL_ERROR_EXIT
    data: dict[str, Any] = {"run_id": None, **dict.fromkeys(_EMPTY_COUNTS, 0), "report": None}
    data.update(error=str(error), exit_code=exit_code)
    return data


def _aborted_summary(summary: Any, error: BatchCancelError) -> dict[str, Any]:
    """A run that stopped part-way: its counts, and the exit code the process really ends with.

    The summary's own ``exit_code`` judges only the counts (1 while rows are pending);
    the error decides how the process ends, and the JSON line must say the same.
    """
    data: dict[str, Any] = summary.as_json()
    data.update(error=str(error), exit_code=error.exit_code)
    return data


class JsonLineCommand(click.Command):
    """A command whose stdout always ends with the JSON summary line, usage errors included.

    Click reports a bad option (``--concurrency 0``, an unknown flag, a job file
    that does not load) before the command body runs, so ``guarded`` never sees
    it; a scheduler reading the last stdout line must still find one, with
    ``exit_code`` 2 and the reason.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.ClickException as exc:
            exc.exit_code = 2  # type: ignore[misc]  # a usage error, whatever click calls it
            show, line = exc.show, json.dumps(error_summary(exc.format_message(), 2))

            def show_then_json(file: Any = None) -> None:
                show(file)
                click.echo(line)

            exc.show = show_then_json  # type: ignore[method-assign]
            raise


@overload
def guarded(fn: F) -> F: ...
@overload
def guarded(*, json_line: bool = False) -> Callable[[F], F]: ...
@overload
def guarded(fn: F, *, json_line: bool) -> F: ...
def guarded(fn: F | None = None, *, json_line: bool = False) -> Any:
    """Map our exceptions to exit codes with a one-line message; no traceback for users.

    With ``json_line`` (the ``run`` command) an error still ends stdout with the
    JSON summary line that Airflow reads.
    """
    import functools

    if fn is None:
        return functools.partial(guarded, json_line=json_line)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BatchCancelError as exc:
            summary = getattr(exc, "summary", None)
            if summary is not None:
                exit_with(exc, _aborted_summary(summary, exc))
            exit_with(exc, error_summary(exc) if json_line else None)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            tell("batch-cancel: interrupted", "error", logging.ERROR, exit_code=3)
            if json_line:
                click.echo(json.dumps(error_summary("interrupted", 3)))
            sys.exit(3)
        except Exception as exc:  # a bug: the journal is consistent, so the run can resume
            logging.getLogger("batch_cancel").debug("internal error", exc_info=True)
            last = traceback.extract_tb(exc.__traceback__)[-1]
            message = (f"internal error: {type(exc).__name__}: {exc} "
                       f"(at {Path(last.filename).name}:{last.lineno})")  # fmt: skip
            tell(f"batch-cancel: {message}; run with -v for the traceback", "error", logging.ERROR,
                 exit_code=INTERNAL_ERROR_EXIT)
            if json_line:
                click.echo(json.dumps(error_summary(message, INTERNAL_ERROR_EXIT)))
            sys.exit(INTERNAL_ERROR_EXIT)

    return wrapper
