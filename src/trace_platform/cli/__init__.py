"""The one CLI: a sub-command per process and per admin verb.

Global settings come first: `trace --lease-seconds 5 dispatcher`. Each has a TRACE_* env var.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from trace_platform.config import SETTINGS


def _settings_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Every setting as a global flag. They work before any sub-command but stay out of the
    first screen: `trace config` lists them with their sources and effective values. A boolean
    setting is an on/off pair taking no value; unset (None), the environment decides."""
    for s in reversed(SETTINGS):
        help_text = f"{s.help} [env {s.env}]"
        if s.kind is bool:
            fn = click.option("/".join(s.flags), s.name, default=None, hidden=True, help=help_text)(
                fn
            )
            continue
        kind: Any = click.Path(path_type=Path) if s.kind is Path else s.kind
        fn = click.option(s.flag, s.name, type=kind, default=None, hidden=True, help=help_text)(fn)
    return fn


COMMAND_GROUPS = (
    (
        "Run the stack",
        (
            "up",
            "demo",
            "dispatcher",
            "worker",
            "sink",
            "deliver",
            "query-service",
            "api",
            "migrate",
            "db",
        ),
    ),
    (
        "Operate",
        (
            "status",
            "apply",
            "chain",
            "dag",
            "alert",
            "delivery",
            "user",
            "task",
            "dataset",
            "query",
            "dlq",
            "config",
        ),
    ),
    ("Build and deploy", ("bundle", "tools", "deploy")),
)


# name -> (module of trace_platform.cli, attribute): each command is imported when it runs
# (or when help lists it), so `trace task create` loads the task verbs, not the whole
# platform (half a second of imports otherwise).
COMMANDS: dict[str, tuple[str, str]] = {
    "migrate": ("processes", "migrate"),
    "db": ("processes", "db"),
    "dispatcher": ("processes", "dispatcher"),
    "worker": ("processes", "worker"),
    "sink": ("processes", "sink"),
    "deliver": ("processes", "deliver"),
    "api": ("processes", "api"),
    "query-service": ("processes", "query_service"),
    "up": ("processes", "up"),
    "demo": ("processes", "demo"),
    "status": ("admin", "status"),
    "config": ("admin", "config_command"),
    "tools": ("admin", "tools"),
    "apply": ("chains", "apply"),
    "chain": ("chains", "chain"),
    "dag": ("dags", "dag"),
    "alert": ("alerts", "alert"),
    "delivery": ("alerts", "delivery"),
    "user": ("users", "user"),
    "task": ("tasks", "task"),
    "dataset": ("datasets", "dataset"),
    "query": ("queries", "query"),
    "dlq": ("dlq", "dlq"),
    "bundle": ("bundles", "bundle"),
    "deploy": ("deploy", "deploy"),
}


class TraceGroup(click.Group):
    """Commands first, in groups; settings are documented once, by `trace config`."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attr = COMMANDS[cmd_name]
            command = getattr(importlib.import_module(f"trace_platform.cli.{module}"), attr)
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        listed: set[str] = set()
        for title, names in COMMAND_GROUPS:
            rows = []
            for name in names:
                cmd = self.get_command(ctx, name)
                if cmd is not None and not cmd.hidden:
                    rows.append((name, cmd.get_short_help_str(limit=80)))
                    listed.add(name)
            if rows:
                with formatter.section(title):
                    formatter.write_dl(rows)
        rest = [
            (n, c.get_short_help_str(limit=80))
            for n in self.list_commands(ctx)
            if n not in listed and (c := self.get_command(ctx, n)) is not None and not c.hidden
        ]
        if rest:
            with formatter.section("Other"):
                formatter.write_dl(rest)

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        formatter.write_paragraph()
        formatter.write_text(
            "Settings: every TRACE_* environment variable also has a global flag that goes"
            " before the command (trace --lease-seconds 5 worker). `trace config` lists them"
            " all with their source and effective value. `trace COMMAND --help` for a command."
        )


@click.group(
    cls=TraceGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@_settings_options
@click.version_option(package_name="trace-platform")
@click.pass_context
def cli(ctx: click.Context, /, **overrides: Any) -> None:
    """Trace: sync chains into Parquet datasets, run reliable ETL tasks and sandboxed UDFs
    and SQL over them.

    Quick start: `trace demo` (a local stack, a sample workload and a synced devnet chain),
    then `trace up` to keep the stack running and `trace status` to look at it.
    """
    ctx.obj = overrides


def main() -> None:
    cli(prog_name="trace")


if __name__ == "__main__":
    main()
