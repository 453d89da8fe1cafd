"""``--help`` in sections: a command maps each option's name to a section title.

The options stay declared where they are (decorators, shared groups such as
``gws_options``); only their place in the help is decided here, by one line per
option in the command's ``SECTIONS``. An option nobody mapped still shows, under
"Other options", and a test fails until it gets a section.
"""

from __future__ import annotations

from typing import Any, ClassVar

import click

__all__ = ["OTHER", "SectionedCommand"]

OTHER = "Other options"


class SectionedCommand(click.Command):
    """A click command whose options are listed in titled sections, each option once."""

    SECTIONS: ClassVar[dict[str, str]] = {}  # parameter name -> section title
    ORDER: ClassVar[tuple[str, ...]] = ()  # section titles, in the order shown

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            # the environment variable of every option shows in the help; options that
            # name their own (GWS_*) say it in their text already
            if isinstance(param, click.Option) and param.envvar is None:
                param.show_envvar = True

    def section_of(self, param: click.Parameter) -> str:
        if isinstance(param, click.Argument):
            return self.ORDER[0] if self.ORDER else OTHER  # INPUT files head the first section
        if isinstance(param, click.Option) and param.opts == ["--help"]:
            return self.ORDER[-1] if self.ORDER else OTHER  # click's own, last, as usual
        return self.SECTIONS.get(param.name or "", OTHER)

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {title: [] for title in self.ORDER}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                sections.setdefault(self.section_of(param), []).append(record)
        for title, rows in sections.items():
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
