"""`trace dag ...`: DAGs of SQL jobs (SPEC §19) — list, status, pause, resume, rollback,
purge, delete. A DAG is created and changed by applying its spec (`trace apply FILE`)."""

from __future__ import annotations

import time
import uuid

import click

from trace_platform.cli import render
from trace_platform.cli.common import (
    emit,
    from_json,
    handle_errors,
    json_option,
    org_of,
    org_option,
    run_ops,
)
from trace_platform.ops import dags as ops


@click.group()
def dag() -> None:
    """DAGs of SQL jobs over synced chains: list, status, pause, resume, rollback, purge,
    delete."""


@dag.command("list")
@org_option
@json_option
@click.pass_context
@handle_errors
def dag_list(ctx: click.Context, org_id: uuid.UUID | None, as_json: bool) -> None:
    """Every DAG of the org: state, jobs, ranges committed / in flight / failed."""
    rows = run_ops(
        ctx,
        lambda env: ops.list_dags(env, org_of(org_id)),
        remote=lambda api: from_json(list[ops.DagSummary], api.dags()),
    )
    emit(rows, as_json, render.dags)


@dag.command("status")
@click.argument("name")
@org_option
@json_option
@click.option("--watch", is_flag=True, help="Refresh every second until interrupted.")
@click.pass_context
@handle_errors
def dag_status(
    ctx: click.Context, name: str, org_id: uuid.UUID | None, as_json: bool, watch: bool
) -> None:
    """Per job of DAG NAME: status, generation, ranges committed / in flight / failed, rows,
    progress and lag behind its inputs in blocks, last error."""
    while True:
        status = run_ops(
            ctx,
            lambda env: ops.dag_status(env, org_of(org_id), name),
            remote=lambda api: from_json(ops.DagStatus, api.dag(name)),
        )
        if watch and not as_json:
            click.clear()
        emit(status, as_json, render.dag_status)
        if not watch:
            return
        time.sleep(1.0)


def _set_paused(ctx: click.Context, name: str, org_id: uuid.UUID | None, paused: bool) -> None:
    done = run_ops(
        ctx,
        lambda env: ops.set_dag_paused(env, org_of(org_id), name, paused),
        remote=lambda api: from_json(
            ops.DagPaused, api.pause_dag(name) if paused else api.resume_dag(name)
        ),
    )
    click.echo(f"{done.name}: {'paused' if done.paused else 'resumed'}")


@dag.command("pause")
@click.argument("name")
@org_option
@click.pass_context
@handle_errors
def dag_pause(ctx: click.Context, name: str, org_id: uuid.UUID | None) -> None:
    """Schedule no new range of DAG NAME (ranges in flight finish)."""
    _set_paused(ctx, name, org_id, True)


@dag.command("resume")
@click.argument("name")
@org_option
@click.pass_context
@handle_errors
def dag_resume(ctx: click.Context, name: str, org_id: uuid.UUID | None) -> None:
    """Schedule ranges of DAG NAME again, from where each job was."""
    _set_paused(ctx, name, org_id, False)


@dag.command("rollback")
@click.argument("name")
@org_option
@json_option
@click.pass_context
@handle_errors
def dag_rollback(ctx: click.Context, name: str, org_id: uuid.UUID | None, as_json: bool) -> None:
    """Readers of DAG NAME see its previous generation again, in one transaction: its
    partitions were kept, nothing is recomputed. A generation being built is abandoned."""
    done = run_ops(
        ctx,
        lambda env: ops.rollback_dag(env, org_of(org_id), name),
        remote=lambda api: from_json(ops.DagSwitched, api.rollback_dag(name)),
    )
    emit(
        done,
        as_json,
        lambda d: (
            f"{d.name}: generation {d.from_generation} -> {d.to_generation}"
            f" ({d.jobs} jobs switched)"
        ),
    )


@dag.command("purge")
@click.argument("name")
@click.option("--generation", "generation", type=click.IntRange(min=1), required=True)
@org_option
@json_option
@click.pass_context
@handle_errors
def dag_purge(
    ctx: click.Context, name: str, generation: int, org_id: uuid.UUID | None, as_json: bool
) -> None:
    """Delete kept generation G of DAG NAME (its rows, partitions and files); the current
    and the building generation are refused."""
    done = run_ops(
        ctx,
        lambda env: ops.purge_dag(env, org_of(org_id), name, generation),
        remote=lambda api: from_json(ops.DagPurged, api.purge_dag(name, generation)),
    )
    emit(
        done,
        as_json,
        lambda d: (
            f"{d.name}: generation {d.generation} purged ({d.jobs} jobs,"
            f" {d.partitions} partitions, {d.files} files)"
        ),
    )


@dag.command("delete")
@click.argument("name")
@org_option
@click.pass_context
@handle_errors
def dag_delete(ctx: click.Context, name: str, org_id: uuid.UUID | None) -> None:
    """Stop DAG NAME and forget its spec: its ranges in flight are canceled; its output
    datasets stay readable. Applying the spec again resumes it where it was."""
    run_ops(
        ctx,
        lambda env: ops.delete_dag(env, org_of(org_id), name),
        remote=lambda api: api.delete_dag(name),
    )
    click.echo(f"{name}: deleted (its datasets stay readable; apply its spec again to resume)")
