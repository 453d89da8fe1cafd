"""Job files: a command's options kept in TOML, given with ``--job FILE``.

A job file is a flat list of ``key = value`` lines whose keys are the options
of the command (``rate``, ``calling_list``; ``calling-list`` is accepted too)
plus ``inputs = [...]`` for the INPUT files. Its values become the command's
``default_map``, so click itself ranks them: command line > environment
variable > job file > built-in default.

Secrets never live in a job file. A key that looks like one (``password``,
``token``, ``secret``...) is refused; the file names the environment variable
to read instead (``password_env``, ``username_env``, ``base_url_env``). Relative
paths are relative to the job file's folder, so a job runs the same from any
working directory (an Airflow worker's, a cron job's).
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click

from batch_cancel.cli.param_types import Where
from batch_cancel.exceptions import ConfigError

__all__ = ["ENV_KEYS", "JobFile", "JobFileError", "check_env", "current_job", "job_option",
           "job_password", "load_job"]  # fmt: skip

F = TypeVar("F", bound=Callable[..., Any])

# key in the job file -> the option whose value the named variable supplies
ENV_KEYS = {"password_env": "password", "username_env": "username", "base_url_env": "base_url"}
_SECRET_WORDS = ("password", "passwd", "pwd", "token", "secret", "apikey", "api_key",
                 "credential", "private_key", "auth")  # fmt: skip
# these name where a secret is, not the secret itself
_NOT_SECRET = frozenset({"password_file", *ENV_KEYS})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# parameters that make no sense in a file: click's own, and the file itself
_NEVER = frozenset({"help", "job", "version"})
_META = "batch_cancel.job"


class JobFileError(click.ClickException):
    """A job file problem, shown as one line in the style of every other error (exit 2)."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"batch-cancel: error: {self.format_message()}", err=True, file=file)


@dataclass(frozen=True)
class JobFile:
    """A loaded, checked job file."""

    path: Path
    values: dict[str, Any]  # parameter name -> value as click takes it (paths resolved)
    env_names: dict[str, str] = field(default_factory=dict)  # option -> environment variable

    def env_value(self, option: str) -> str | None:
        name = self.env_names.get(option)
        return (os.environ.get(name) or None) if name else None

    def unset_env(self) -> list[str]:
        """Environment variables the file names that are not set (or empty)."""
        return sorted(n for n in self.env_names.values() if not os.environ.get(n))


def load_job(path: Path, command: click.Command, ctx: click.Context | None = None) -> JobFile:
    """Read and check ``path`` against ``command``'s parameters; raise ConfigError on any problem."""
    ctx = ctx or click.Context(command)
    data = _read_toml(path)
    params = {p.name: p for p in command.params if p.name and p.name not in _NEVER}
    base = path.expanduser().resolve().parent
    values: dict[str, Any] = {}
    env_names: dict[str, str] = {}
    seen: dict[str, str] = {}
    for raw_key, value in data.items():
        key = raw_key.replace("-", "_")
        if key in seen:
            raise ConfigError(f"job file {path}: {raw_key!r} and {seen[key]!r} are the same key")
        seen[key] = raw_key
        _refuse_secret(path, raw_key, key)
        if key in ENV_KEYS:
            env_names[ENV_KEYS[key]] = _env_name(path, raw_key, value)
            continue
        param = params.get(key)
        if param is None:
            raise ConfigError(_unknown(path, raw_key, value, sorted([*params, *ENV_KEYS]), command))
        values[key] = _convert(path, raw_key, value, param, base, ctx)
    for option, var in env_names.items():
        if option in values:
            raise ConfigError(f"job file {path}: both {option} and {option}_env are set; keep one")
        if option not in params and not (option == "password" and "password_file" in params):
            raise ConfigError(f"job file {path}: {option}_env: this command has no {option}")
        from_env = os.environ.get(var)
        if from_env and option != "password":
            # the variable's value stands where the key would have: file level
            values[option] = _convert(path, f"{option}_env ({var})", from_env, params[option], base, ctx)
    if "base_url" in values:
        _check_url(path, str(values["base_url"]))
    return JobFile(path=path, values=values, env_names=env_names)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.expanduser().open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"job file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"job file {path} is a directory") from None
    except OSError as exc:
        raise ConfigError(f"cannot read job file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"job file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"job file {path} is not UTF-8 text") from None


def _refuse_secret(path: Path, raw_key: str, key: str) -> None:
    folded = key.lower()
    if folded in _NOT_SECRET or not any(word in folded for word in _SECRET_WORDS):
        return
    raise ConfigError(
        f"job file {path}: key {raw_key!r} would keep a secret in the file; job files never hold "
        "secrets: name an environment variable instead (password_env = \"NIGHTLY_GWS_PASSWORD\") "
        "or use password_file"
    )


def _env_name(path: Path, key: str, value: Any) -> str:
    if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
        example = "NIGHTLY_GWS_" + ENV_KEYS[key.replace("-", "_")].upper()
        raise ConfigError(f"job file {path}: {key} must name an environment variable, "
                          f"e.g. {key} = \"{example}\"")  # fmt: skip
    return value


def _unknown(path: Path, key: str, value: Any, known: list[str], command: click.Command) -> str:
    if isinstance(value, dict):
        return f"job file {path}: [{key}] is a table; a job file is a flat list of key = value lines"
    hint = difflib.get_close_matches(key.replace("-", "_"), known, n=1)
    more = f" (did you mean {hint[0]!r}?)" if hint else ""
    return f"job file {path}: unknown key {key!r}{more}; the keys are the options of `{command.name}`"


def _kind(param: click.Parameter) -> tuple[str, tuple[type, ...]]:
    """What TOML type a parameter takes: TOML is typed, so "20" for a rate is a mistake to name."""
    if isinstance(param, click.Option) and param.is_flag and not param.count:
        return "true or false", (bool,)
    if (isinstance(param, click.Option) and param.count) or isinstance(param.type, click.types.IntParamType):
        return "a whole number", (int,)
    if isinstance(param.type, click.types.FloatParamType):
        return "a number", (int, float)
    return "a string", (str,)


def _convert(path: Path, key: str, value: Any, param: click.Parameter, base: Path,
             ctx: click.Context) -> Any:  # fmt: skip
    what, types = _kind(param)
    many = param.nargs == -1 or (isinstance(param, click.Option) and param.multiple)
    # `inputs = "a.csv"` is as clear as a one-item list
    items = value if many and isinstance(value, list) else [value]
    for item in items:
        # bool is an int to Python, but `rate = true` is a mistake
        if not isinstance(item, types) or (isinstance(item, bool) and bool not in types):
            shown = "a list of " + what.removeprefix("a ") + "s" if many else what
            raise ConfigError(f"job file {path}: {key} must be {shown}, not {_toml_type(item)}")
    # --state is a path or a postgresql:// URL, inputs and reports paths or object URLs (URLs
    # stay as they are)
    if isinstance(param.type, (click.Path, Where)) or param.name == "state":
        items = [_resolve(base, str(item)) for item in items]
    result: Any = items if many else items[0]
    try:
        cast = param.type_cast_value(ctx, tuple(result) if many else result)
        if param.callback is not None:
            param.callback(ctx, param, cast)
    except click.BadParameter as exc:
        raise ConfigError(f"job file {path}: {key} = {value!r}: {exc.message}") from None
    return result


def _toml_type(value: Any) -> str:
    names = {bool: "true/false", int: "a whole number", float: "a decimal number", str: "a string",
             list: "a list", dict: "a table"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


def _resolve(base: Path, value: str) -> str:
    if value == "-" or "://" in value:  # postgresql://, s3://, file:///abs...
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else base / p)


def _check_url(path: Path, url: str) -> None:
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"job file {path}: base_url {url!r} must start with http:// or https://")
    authority = url.split("://", 1)[1].split("/", 1)[0]
    if "@" in authority:
        raise ConfigError(f"job file {path}: base_url carries credentials (user:password@); "
                          "use username_env and password_env instead")  # fmt: skip


# --- the click side: --job, and what a command body asks of the loaded file ---


def _load_into_context(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    if value is None or ctx.resilient_parsing:
        return
    try:
        job = load_job(value, ctx.command, ctx)
    except ConfigError as exc:
        raise JobFileError(str(exc)) from None
    ctx.default_map = {**(ctx.default_map or {}), **job.values}
    ctx.meta[_META] = job


def job_option(fn: F) -> F:
    """Add ``--job FILE``: eager, so its values are in place before any other option is read."""
    decorator = click.option(
        "--job", type=click.Path(path_type=Path, dir_okay=False), is_eager=True, expose_value=False,
        callback=_load_into_context, metavar="FILE",
        help="TOML job file with any of these options (see jobs/); secrets are named by env "
             "variable, never stored.",
    )  # fmt: skip
    return decorator(fn)


def current_job() -> JobFile | None:
    ctx = click.get_current_context(silent=True)
    job = ctx.meta.get(_META) if ctx is not None else None
    return job if isinstance(job, JobFile) else None


def job_password() -> str | None:
    """The password from the variable the job file names (after --password-file and GWS_PASSWORD)."""
    job = current_job()
    return job.env_value("password") if job is not None else None


def check_env(opts: Mapping[str, Any], password: str | None) -> None:
    """Before sending: a variable the job file names must be set when nothing else gave its value."""
    job = current_job()
    if job is None:
        return
    given = {**opts, "password": password}
    for option, var in sorted(job.env_names.items()):
        if not given.get(option) and not os.environ.get(var):
            raise ConfigError(f"job file {job.path}: {option}_env names {var}, which is not set "
                              f"(export {var}=...)")  # fmt: skip
