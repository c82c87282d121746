"""Where a query's answer of bytes (Arrow IPC stream, CSV, Parquet) goes from the CLI
(`trace dataset query --format`, `trace query run --format`), chunk by chunk as it arrives,
locally from the executor or remotely from the API: never held whole, so its size is
bounded by TRACE_QUERY_MAX_EXPORT_ROWS only, not by memory."""

from __future__ import annotations

import sys
from pathlib import Path
from types import TracebackType
from typing import BinaryIO

import click

from trace_platform.domain.errors import ValidationError
from trace_platform.domain.query_formats import FORMATS

# The options of every command that answers a query in a chosen format.
format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default="json",
    help="json (a table, or --json), or an arrow, csv or parquet body (exact types).",
)
output_option = click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write an arrow, csv or parquet answer to FILE (else stdout, when not a terminal).",
)


class ExportOutput:
    """`--output FILE` or stdout. FILE is written as `FILE.part` and renamed to FILE once
    the answer is complete; an answer refused or cut part-way leaves no FILE (its part is
    removed). A binary format goes to stdout only when stdout is no terminal (checked
    before anything runs)."""

    def __init__(self, fmt: str, output: Path | None) -> None:
        if output is None and fmt != "csv" and sys.stdout.isatty():
            raise ValidationError(f"{fmt} is binary: give --output FILE or pipe stdout to a file")
        self.output = output
        # a device or a pipe (`-o /dev/stdout`) is written as it is
        regular = output is not None and (not output.exists() or output.is_file())
        self._part = output.with_name(output.name + ".part") if regular and output else output
        self._fh: BinaryIO | None = None

    def __enter__(self) -> ExportOutput:
        self._fh = self._part.open("wb") if self._part is not None else sys.stdout.buffer
        return self

    def write(self, chunk: bytes) -> None:
        assert self._fh is not None, "write inside `with ExportOutput(...)`"
        self._fh.write(chunk)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        fh, self._fh = self._fh, None
        if fh is None:
            return
        if self._part is None:
            fh.flush()
            return
        fh.close()
        if self._part == self.output:
            return
        if exc_type is None and self.output is not None:
            self._part.replace(self.output)
        else:
            self._part.unlink(missing_ok=True)


def truncated_note(truncated: bool) -> None:
    """On stderr, when rows were left out."""
    if truncated:
        click.echo(
            "truncated: rows were left out (past --limit or TRACE_QUERY_MAX_EXPORT_ROWS);"
            " give a larger --limit for more",
            err=True,
        )
