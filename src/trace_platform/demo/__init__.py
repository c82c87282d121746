"""`trace demo`: bring the stack up if needed, submit a workload, show progress, summarise."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from trace_platform import logs
from trace_platform.adapters.local_keys import load_key_ring
from trace_platform.chain.devnet import Anvil
from trace_platform.config import Settings
from trace_platform.db.embedded import DatabaseUrls
from trace_platform.db.pool import create_pool
from trace_platform.db.sql import q
from trace_platform.delivery.signing import new_secret
from trace_platform.demo.alerts import SECRET_ENV as DEMO_SECRET_ENV
from trace_platform.demo.alerts import AlertDemoResult, format_alerts, live_alerts
from trace_platform.demo.chain import (
    BLOCKS,
    DEMO_POOL,
    ChainDemoResult,
    format_chain,
    make_traffic,
    start_node,
    sync_and_query,
)
from trace_platform.dispatcher.service import TaskService
from trace_platform.domain.errors import ConfigError
from trace_platform.ops.chains import set_paused
from trace_platform.ops.env import OpsEnv
from trace_platform.ports import BUFFER_DLQ, LITE_ORG_ID
from trace_platform.stack import Stack, prepare

TERMINAL = ("completed", "failed", "canceled")
PAUSE_TIMEOUT = 30.0  # how long the paused demo jobs' ranges in flight may take to finish


@dataclass
class UdfResult:
    language: str
    status: str
    alerts: int
    expected: int
    detail: str = ""


@dataclass
class DemoSummary:
    tasks: int
    completed: int
    failed: int
    rows_published: int
    rows_inserted: int
    dlq: int
    elapsed: float
    udfs: list[UdfResult] = field(default_factory=list)
    chain: ChainDemoResult = field(default_factory=lambda: ChainDemoResult("skipped"))
    alerts: AlertDemoResult = field(default_factory=lambda: AlertDemoResult("skipped"))
    paused_jobs: list[str] = field(default_factory=list)  # chain jobs on the demo's node
    postgres: Path | None = None  # the embedded Postgres left running after the demo's stack
    api_port: int = 8090

    @property
    def duplicates_absorbed(self) -> int:
        return self.rows_published - self.rows_inserted


async def dispatcher_is_up(settings: Settings) -> bool:
    url = settings.resolved_dispatcher_url + "/readyz"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session,
            session.get(url) as resp,
        ):
            return resp.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


def _say(text: str) -> None:
    print(text, flush=True)


async def run_demo(
    settings: Settings, tasks: int, rows_per_task: int, timeout: float
) -> DemoSummary:
    started_stack: Stack | None = None
    node: Anvil | None = None
    chain = ChainDemoResult("skipped")
    hook_secret = new_secret()
    if await dispatcher_is_up(settings):
        _say(f"using the running stack at {settings.resolved_dispatcher_url}")
        chain.detail = "a running stack has no demo node: run the demo with no stack up"
    else:
        try:
            node = start_node()
            settings = settings.replace(rpc_pools=(*settings.rpc_pools, (DEMO_POOL, node.url)))
            _say(f"started a local Ethereum node (anvil) at {node.url}")
        except (ConfigError, OSError, RuntimeError) as exc:
            chain.detail = str(exc.detail if isinstance(exc, ConfigError) else exc)
        # The demo's receiver listens on loopback: the SSRF guard's Lite escape hatch, and a
        # webhook secret for this run, in the environment of the stack's `trace deliver`.
        settings = settings.replace(delivery_allow_private=True)
        os.environ[DEMO_SECRET_ENV] = hook_secret
        log_path = settings.home.resolve() / "logs" / "demo-stack.log"
        _say(f"starting a local stack (logs: {log_path}) ...")
        # The demo's own log events (its stack's supervisor: a child that exited) go to that
        # file too, beside its children's: the terminal shows the demo's progress only.
        logs.configure("demo", "info", log_path)
        started_stack = Stack(settings, workers=1, out=log_path.open("a"))
    try:
        if started_stack is not None:
            await started_stack.start()
            await started_stack.wait_ready()
            _say(f"stack ready: dispatcher {settings.resolved_dispatcher_url}")
        urls = await prepare(settings)
        summary = await _run_parts(
            settings, urls, node, chain, hook_secret, tasks, rows_per_task, timeout
        )
        summary.api_port = settings.api_port
        if started_stack is not None and urls.embedded:
            summary.postgres = settings.home / "postgres"
        return summary
    finally:
        if started_stack is not None:
            _say("stopping the local stack ...")
            await started_stack.stop()
        if node is not None:
            node.stop()


async def _run_parts(
    settings: Settings,
    urls: DatabaseUrls,
    node: Anvil | None,
    chain: ChainDemoResult,
    hook_secret: str,
    tasks: int,
    rows_per_task: int,
    timeout: float,
) -> DemoSummary:
    """The workload, the UDFs, then (with the demo's node) the chain and its live alerts.
    Whatever happened, the chain jobs on the node are paused before it goes."""
    state = await create_pool(urls.state, max_size=2)
    data = await create_pool(urls.data, max_size=2)
    env = OpsEnv(settings, state, data, urls.embedded)
    try:
        summary = await _workload(settings, state, data, tasks, rows_per_task, timeout)
        summary.udfs = await _udf_step(settings, state, data, timeout)
        summary.chain = chain
        summary.alerts = AlertDemoResult("skipped", "needs the demo's chain")
        if node is not None:
            traffic = make_traffic(node, BLOCKS)
            _say(
                f"made traffic on the node: {BLOCKS} blocks, {traffic.whales} whale transfers,"
                f" {traffic.swaps} swaps on {len(traffic.pools)} pools of a factory"
            )
            summary.chain = await sync_and_query(env, traffic, timeout)
            if summary.chain.status == "completed":
                summary.alerts = await live_alerts(env, node, traffic, hook_secret, timeout)
    finally:
        paused = await pause_demo_jobs(env, PAUSE_TIMEOUT) if node is not None else []
        await state.close()
        await data.close()
    summary.paused_jobs = paused
    return summary


async def pause_demo_jobs(env: OpsEnv, timeout: float) -> list[str]:
    """Pause every chain job on the demo's pool: its node stops with the demo, and a job left
    active would show `rpc_pool_missing` at the next `trace up`. The ranges they have in
    flight finish first (for up to `timeout` s), so no task is left to fail for want of it."""
    rows = await env.state.fetch(q("demo", "active_jobs_on_pool"), LITE_ORG_ID, DEMO_POOL)
    names = [str(r["name"]) for r in rows]
    for name in names:
        await set_paused(env, LITE_ORG_ID, name, True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and await env.state.fetchval(
        q("demo", "ranges_in_flight_on_pool"), LITE_ORG_ID, DEMO_POOL
    ):
        await asyncio.sleep(0.1)
    if names:
        _say(f"paused the chain jobs on the demo's node: {', '.join(names)}")
    return names


async def _workload(
    settings: Settings,
    state: asyncpg.Pool,
    data: asyncpg.Pool,
    tasks: int,
    rows_per_task: int,
    timeout: float,
) -> DemoSummary:
    run = secrets.token_hex(3)
    # Every tenth task repeats an earlier seed: the sink must absorb those rows as duplicates.
    unique = max(1, tasks - tasks // 10)
    payloads = [
        {"operator": "emit_alerts", "count": rows_per_task, "seed": f"demo-{run}-{i % unique}"}
        for i in range(tasks)
    ]
    service = TaskService(state, load_key_ring(settings), settings)
    t0 = time.monotonic()
    ids = await service.create_tasks(payloads, LITE_ORG_ID)
    _say(f"submitted {tasks} emit_alerts tasks x {rows_per_task} rows (run {run})")
    expected_rows = unique * rows_per_task
    tty = sys.stdout.isatty()
    last_print = 0.0
    while True:
        counts = await _task_counts(state, ids)
        inserted = await data.fetchval(q("demo", "events_with_prefix"), f"demo-{run}-%")
        done = sum(counts.get(s, 0) for s in TERMINAL)
        elapsed = time.monotonic() - t0
        line = (
            f"[{elapsed:6.1f}s] tasks {done}/{tasks} done"
            f" (running {counts.get('running', 0)}, failed {counts.get('failed', 0)})"
            f" | rows inserted {inserted}/{expected_rows}"
        )
        finished = done == tasks and (inserted >= expected_rows or counts.get("failed", 0))
        if tty:
            print("\r" + line, end="", flush=True)
        elif elapsed - last_print >= 1.0 or finished:
            _say(line)
            last_print = elapsed
        if finished or elapsed > timeout:
            if tty:
                print()
            break
        await asyncio.sleep(0.25)
    published = await state.fetchval(q("demo", "records_published"), ids)
    dlq = await state.fetchval(q("demo", "dead_letters"), BUFFER_DLQ)
    counts = await _task_counts(state, ids)
    return DemoSummary(
        tasks=tasks,
        completed=counts.get("completed", 0),
        failed=counts.get("failed", 0),
        rows_published=int(published),
        rows_inserted=int(inserted),
        dlq=int(dlq),
        elapsed=time.monotonic() - t0,
    )


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"  # shipped in the package


DEMO_TRANSFERS = 1_000_000
DEMO_THRESHOLD = 999 * 10**9  # ~0.1% of the synthetic transfers


def _write_transfers(path: Path, run: str, n: int) -> int:
    """A synthetic chain dataset (Parquet); returns how many transfers beat the threshold."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = [(i * 2_654_435_761) % 10**12 for i in range(n)]
    table = pa.table(
        {
            "tx_hash": [f"0x{run}{i:08x}" for i in range(n)],
            "block_number": pa.array(range(19_000_000, 19_000_000 + n), pa.int64()),
            "value_wei": pa.array(values, pa.int64()),
            "ts": [
                f"2024-05-{1 + i // 86400 % 28:02d}T{i // 3600 % 24:02d}:{i // 60 % 60:02d}:"
                f"{i % 60:02d}Z"
                for i in range(n)
            ],
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=100_000)
    return sum(1 for v in values if v > DEMO_THRESHOLD)


async def _udf_step(
    settings: Settings, state: asyncpg.Pool, data: asyncpg.Pool, timeout: float
) -> list[UdfResult]:
    """The real story: a synthetic chain dataset, registered and granted to two sandboxed alert
    UDFs (Python and TypeScript) that query it through the query service."""
    from trace_platform.adapters.stores import object_store_from_settings
    from trace_platform.bundles import build_bundle, register_bundle
    from trace_platform.datasets import register_dataset
    from trace_platform.domain.errors import TraceError

    run = secrets.token_hex(3)
    t0 = time.monotonic()
    path = settings.home.resolve() / "demo" / f"transfers-{run}.parquet"
    expected = await asyncio.to_thread(_write_transfers, path, run, DEMO_TRANSFERS)
    store = object_store_from_settings(settings)
    reg = await register_dataset(state, store, "demo-transfers", [path], LITE_ORG_ID)
    path.unlink()
    _say(
        f"generated and registered {DEMO_TRANSFERS:,} transfers as dataset demo-transfers "
        f"(version {reg.dataset_version[:8]}) in {time.monotonic() - t0:.1f}s"
    )
    service = TaskService(state, load_key_ring(settings), settings)
    results: list[UdfResult] = []
    for language, folder, entry, prefix in (
        ("python", "udf-python", "handler.handler", "large-transfer:"),
        ("typescript", "udf-typescript", "index.handler", "large-transfer-ts:"),
    ):
        lang = "python" if language == "python" else "node"
        try:
            bundle = build_bundle(EXAMPLES / folder, lang, entry, settings.esbuild)
            breg = await register_bundle(state, store, bundle, lang, entry, LITE_ORG_ID)
        except TraceError as exc:
            results.append(UdfResult(language, "skipped", 0, expected, exc.detail.splitlines()[0]))
            continue
        work = {"threshold_wei": DEMO_THRESHOLD, "dataset": str(reg.dataset_uuid)}
        started = time.monotonic()
        (tid,) = await service.create_tasks(
            [
                {
                    "runtime": "lambda",
                    "udf": {"bundle_id": str(breg.bundle_id)},
                    "inputs": [{"dataset": "demo-transfers"}],
                    "work_payload": work,
                }
            ]
        )
        _say(f"running the {language} alert UDF (sandboxed; it queries the dataset) ...")
        row = None
        while time.monotonic() - started < timeout:
            row = await state.fetchrow(q("demo", "task_outcome"), tid)
            assert row is not None
            if row["status"] == "completed" or (
                row["status"] == "failed" and not row["next_retry_at"]
            ):
                break
            await asyncio.sleep(0.05)
        alerts = 0
        for _ in range(100):  # the sink commits shortly after the task completes
            alerts = await data.fetchval(q("demo", "events_with_prefix"), f"{prefix}0x{run}%")
            if alerts >= expected or row is None or row["status"] != "completed":
                break
            await asyncio.sleep(0.05)
        took = time.monotonic() - started
        detail = (row["last_error"] or "").splitlines()[0] if row and row["last_error"] else ""
        results.append(
            UdfResult(
                language,
                row["status"] if row else "timeout",
                int(alerts),
                expected,
                detail or f"{took:.2f}s end to end",
            )
        )
    return results


async def _task_counts(state: asyncpg.Pool, ids: list[uuid.UUID]) -> dict[str, int]:
    rows = await state.fetch(q("demo", "task_counts"), ids)
    return {r["status"]: int(r["n"]) for r in rows}


def format_summary(s: DemoSummary, trace: str = "trace") -> str:
    """The summary, then what to run next, each command as this user runs `trace` (`trace`
    on PATH, else e.g. `.venv/bin/trace`)."""
    rate = s.tasks / s.elapsed if s.elapsed else 0.0
    lines: list[Any] = [
        "",
        "demo summary",
        f"  tasks completed      {s.completed}/{s.tasks}"
        + (f"  (failed {s.failed})" if s.failed else ""),
        f"  rows published       {s.rows_published}",
        f"  rows inserted        {s.rows_inserted}",
        f"  duplicates absorbed  {s.duplicates_absorbed}",
        f"  DLQ messages         {s.dlq}",
        f"  elapsed              {s.elapsed:.2f}s  ({rate:.0f} tasks/s)",
    ]
    for u in s.udfs:
        line = f"  UDF {u.language:<11}      {u.status}: {u.alerts}/{u.expected} alerts inserted"
        lines.append(line + (f"  ({u.detail})" if u.detail else ""))
    lines += format_chain(s.chain)
    lines += format_alerts(s.alerts)
    if s.paused_jobs:
        lines.append(
            f"  paused               {', '.join(s.paused_jobs)} (their node stopped with the demo)"
        )
    steps = [
        (f"{trace} status", "the whole system: tasks, queues, the DLQ"),
        (f"{trace} chain status", f"the synced chains (`{trace} apply SPEC` syncs one of yours)"),
        (f"{trace} alert list", "the alert rules (`alert deliveries NAME`: their webhooks)"),
        (f"{trace} up", f"keep the stack running; its console: http://127.0.0.1:{s.api_port}/ui"),
        (f"{trace} user create me --role admin", "an API key to log in to the console with"),
    ]
    if s.postgres is not None:
        steps.append(
            (
                f"{trace} db stop",
                f"the embedded Postgres is still running ({s.postgres}): this stops it",
            )
        )
    width = max(len(command) for command, _ in steps)
    lines += ["", "next:"] + [f"  {command:<{width}}  {what}" for command, what in steps]
    return "\n".join(str(x) for x in lines)
