"""`trace bundle ...`: build, upload and list UDF bundles (the calls behind /v1/bundles)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import click

from trace_platform.cli import render
from trace_platform.cli.common import (
    emit,
    handle_errors,
    json_option,
    org_of,
    org_option,
    run_ops,
    settings_from,
)
from trace_platform.ops import bundles as ops

LANGUAGES = click.Choice(["python", "node"])


@click.group()
def bundle() -> None:
    """Build, upload and list UDF bundles (Python or Node/TypeScript)."""


@bundle.command("build")
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--language", type=LANGUAGES, required=True)
@click.option(
    "--entrypoint",
    default=None,
    help="module.function [python: handler.handler, node: index.handler].",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Zip to write [default: SOURCE.zip].",
)
@click.pass_context
@handle_errors
def bundle_build(
    ctx: click.Context, source: Path, language: str, entrypoint: str | None, output: Path | None
) -> None:
    """Build a Lambda-style zip: TypeScript compiled with esbuild, dependencies vendored."""
    from trace_platform.bundles import build_bundle

    entry = entrypoint or ("handler.handler" if language == "python" else "index.handler")
    data = build_bundle(source, language, entry, settings_from(ctx).esbuild)
    out = output or source.with_suffix(".zip")
    out.write_bytes(data)
    click.echo(f"{out}  {len(data)} bytes  sha256 {hashlib.sha256(data).hexdigest()}")


@bundle.command("upload")
@click.argument("zip_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--language", type=LANGUAGES, required=True)
@click.option("--entrypoint", required=True, help="module.function, e.g. handler.handler")
@org_option
@click.pass_context
@handle_errors
def bundle_upload(
    ctx: click.Context, zip_path: Path, language: str, entrypoint: str, org_id: uuid.UUID | None
) -> None:
    """Store a bundle (content-addressed, immutable) and print its bundle_id."""
    data = zip_path.read_bytes()
    reg = run_ops(
        ctx, lambda env: ops.upload_bundle(env, org_of(org_id), data, language, entrypoint)
    )
    note = "" if reg.created else "  (already registered)"
    click.echo(f"{reg.bundle_id}{note}")
    click.echo(f"sha256 {reg.sha256}  {reg.size_bytes} bytes  {reg.storage_uri}", err=True)


@bundle.command("list")
@click.option("--limit", type=click.IntRange(1, 10000), default=100, show_default=True)
@org_option
@json_option
@click.pass_context
@handle_errors
def bundle_list(ctx: click.Context, limit: int, org_id: uuid.UUID | None, as_json: bool) -> None:
    """The org's bundles, newest first."""
    items = run_ops(ctx, lambda env: ops.list_bundles(env, org_of(org_id), limit))
    emit(items, as_json, render.bundles)
