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

__all__ = ["exit_with", "guarded", "read_password", "setup_logging"]

F = TypeVar("F", bound=Callable[..., Any])


class _Secrets(logging.Filter):
    """Last line of defence: a secret that reaches a log line is blanked."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s]

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            text = record.getMessage()
            if any(s in text for s in self._secrets):
                for s in self._secrets:
                    text = text.replace(s, "***")
                record.msg, record.args = text, ()
        return True


def setup_logging(verbose: int = 0, quiet: bool = False, secrets: list[str] | None = None) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_Secrets(secrets or []))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # the CometD client logs every reconnect attempt; ours says it once, with a reason
    for noisy in ("aiocometd_noloop", "asyncio", "httpx", "httpcore", "aiohttp"):
        logging.getLogger(noisy).setLevel(logging.CRITICAL if not verbose else logging.INFO)


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


def exit_with(error: BatchCancelError, summary_json: dict[str, Any] | None = None) -> NoReturn:
    click.echo(f"batch-cancel: error: {error}", err=True)
    if summary_json is not None:
        click.echo(json.dumps(summary_json, default=str))
    sys.exit(error.exit_code)


_EMPTY_COUNTS = ("total", "cancelled", "failed", "timed_out", "rejected", "duplicate", "pending")


def error_summary(exc: BatchCancelError) -> dict[str, Any]:
    """The JSON line of a run that stopped before it had a summary of its own."""
    data: dict[str, Any] = {"run_id": None, **dict.fromkeys(_EMPTY_COUNTS, 0), "report": None}
    data.update(error=str(exc), exit_code=exc.exit_code)
    return data


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
                exit_with(exc, summary.as_json())
            exit_with(exc, error_summary(exc) if json_line else None)
        except (click.exceptions.Exit, click.ClickException, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("batch-cancel: interrupted", err=True)
            sys.exit(3)
        except Exception as exc:  # a bug: the journal is consistent, so the run can resume
            logging.getLogger("batch_cancel").debug("internal error", exc_info=True)
            last = traceback.extract_tb(exc.__traceback__)[-1]
            click.echo(
                f"batch-cancel: internal error: {type(exc).__name__}: {exc} "
                f"(at {Path(last.filename).name}:{last.lineno}; run with -v for the traceback)",
                err=True,
            )
            sys.exit(3)

    return wrapper
