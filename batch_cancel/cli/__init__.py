"""The ``batch-cancel`` command line: a thin click layer over the library.

Each sub-command lives in its own module and is imported only when it runs, so
``batch-cancel --help`` stays fast (no pyarrow, aiohttp or httpx import).
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from batch_cancel import __version__

__all__ = ["cli", "main"]

# name -> (module, attribute, one-line help shown by `batch-cancel --help`)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "run": ("batch_cancel.cli.run", "run", "Cancel the outbound records of the numbers in INPUT files."),
    "demo": ("batch_cancel.cli.demo", "demo", "Run the job on sample_data/ against the embedded simulator."),
    "status": ("batch_cancel.cli.status", "status", "Show a run's counts and what a resume would do."),
    "simulate": ("batch_cancel.cli.simulate", "simulate", "Serve the GWS simulator (REST + CometD)."),
    "validate-job": ("batch_cancel.cli.validate_job", "validate_job",
                     "Check a job file (keys, types, inputs) without sending anything."),
    "merge": ("batch_cancel.cli.merge", "merge", "Combine the reports of a sharded run into one."),
    "report": ("batch_cancel.cli.report", "report", "Write a job's report from its journal, at any time."),
    "preflight": ("batch_cancel.cli.preflight", "preflight", "Check that a run would work, step by step."),
}


class LazyGroup(click.Group):
    """A group whose sub-commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        spec = _COMMANDS.get(cmd_name)
        if spec is None:
            return None
        module = importlib.import_module(spec[0])
        command: click.Command = getattr(module, spec[1])
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, spec[2]) for name, spec in sorted(_COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="batch-cancel")
def cli() -> None:
    """Cancel outbound records in Genesys Web Services for lists of phone numbers.

    \b
    Example:
      export GWS_PASSWORD=...            # never on the command line
      batch-cancel run numbers.csv --base-url https://gws.example.com \\
          --username svc_dnc --application-id 134 --campaign Campaign1 \\
          --calling-list CallingList1 --rate 20
    """


def main(argv: list[str] | None = None, **kwargs: Any) -> None:
    _without_pandas()
    cli.main(args=argv, prog_name="batch-cancel", **kwargs)


class _NoPandas:
    """A finder that answers "no such module" for pandas (see ``_without_pandas``)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError(f"No module named {name!r} (kept out of batch-cancel)", name=name)


def _without_pandas() -> None:
    """Keep pandas out of the CLI's process: pyarrow imports it, when it is installed, the
    first time it converts a Python value (``pa.scalar("")``, ``pa.array(list)``), to see
    whether the value is a DataFrame. The tool never hands pyarrow one nor asks for one,
    and that import was 0.3 s of a 10-row dry run's 0.83 s of CPU. pyarrow's shim takes
    the ImportError as "no pandas". (``None`` in sys.modules does not do: Cython's import
    hands the None back.) Only in the console script's entry: a program that imports
    batch_cancel keeps its pandas."""
    if "pandas" not in sys.modules:
        sys.meta_path.insert(0, _NoPandas())
