"""Kernel end-to-end throughput: no-op tasks from creation to `completed` through the real
stack (dispatcher + workers + sink as processes, embedded Postgres, fsync on), next to
PGQueuer on the same Postgres server in the same run.

    .venv/bin/python bench/kernel_bench.py [--tasks 10000] [--workers 2] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import asyncpg

import smoke
from trace_platform.adapters.local_keys import load_key_ring
from trace_platform.config import Settings
from trace_platform.db.embedded import ensure_database, stop_embedded
from trace_platform.db.pool import create_pool
from trace_platform.dispatcher.service import TaskService
from trace_platform.ports import LITE_ORG_ID
from trace_platform.stack import Stack, prepare


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def trace_run(settings: Settings, pool: asyncpg.Pool, n: int) -> float:
    service = TaskService(pool, load_key_ring(settings), settings)
    start = await pool.fetchval("SELECT clock_timestamp()")
    ids = await service.create_tasks([{"operator": "noop"}] * n, LITE_ORG_ID)
    while True:
        # Poll lightly (the poll must not steal the CPU it measures); the figure comes from
        # the database clock: last completion minus the moment before creation.
        await asyncio.sleep(0.25)
        row = await pool.fetchrow(
            "SELECT count(*) AS done, max(updated_at) AS last FROM state.tasks"
            " WHERE task_id = ANY($1) AND status = 'completed'",
            ids,
        )
        if row["done"] == n:
            return float((row["last"] - start).total_seconds())


async def pgqueuer_run(dsn: str, n: int, batch_size: int) -> float:
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.models import Job
    from pgqueuer.types import QueueExecutionMode

    conn = await asyncpg.connect(dsn)
    try:
        queries = Queries(AsyncpgDriver(conn))
        await queries.install()
    except asyncpg.DuplicateObjectError:
        pass
    t0 = time.perf_counter()
    for start in range(0, n, 1000):
        k = min(1000, n - start)
        await queries.enqueue(["noop"] * k, [None] * k, [0] * k)
    qm = QueueManager(queries)

    @qm.entrypoint("noop")
    async def noop(job: Job) -> None:
        return None

    await qm.run(
        batch_size=batch_size, mode=QueueExecutionMode.drain, dequeue_timeout=timedelta(seconds=1)
    )
    elapsed = time.perf_counter() - t0
    await conn.close()
    return elapsed


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", type=int, default=10000)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument(
        "--concurrency", type=int, default=None, help="worker concurrency (default: the setting's)"
    )
    ap.add_argument("--pgqueuer-batch", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=1000, help="tasks run first, not counted")
    smoke.add_flag(ap)
    args = ap.parse_args()
    smoke.apply(args, {"tasks": 50, "warmup": 10})
    home = Path(tempfile.mkdtemp(prefix="trace-bench-"))
    settings = Settings.load(
        {
            "home": home,
            "port": free_port(),
            "api_port": free_port(),  # `trace up` refuses a taken port (8090: another stack)
            **({"worker_concurrency": args.concurrency} if args.concurrency else {}),
            "log_level": "warning",
        },
        env={},
    )
    log = (home / "stack.log").open("w")
    stack = Stack(settings, workers=args.workers, out=log)
    try:
        await stack.start()
        try:
            await stack.wait_ready()
            urls = await prepare(settings)
            pool = await create_pool(urls.state, max_size=2)
            await trace_run(settings, pool, args.warmup)  # connections, prepared statements
            trace_s = await trace_run(settings, pool, args.tasks)
            await pool.close()
        finally:
            await stack.stop()
        admin = urls.state.replace("/trace_state", "/postgres")
        await ensure_database(admin, "pgq_bench")
        pgq_dsn = urls.state.replace("/trace_state", "/pgq_bench")
        await pgqueuer_run(pgq_dsn, args.warmup, args.pgqueuer_batch)
        pgq_s = await pgqueuer_run(pgq_dsn, args.tasks, args.pgqueuer_batch)
    finally:
        stop_embedded(home / "postgres")
    trace_rate, pgq_rate = args.tasks / trace_s, args.tasks / pgq_s
    print(
        f"no-op tasks: {args.tasks}, workers {args.workers} x concurrency"
        f" {settings.worker_concurrency}"
    )
    print(f"{'system':<34}{'seconds':>10}{'tasks/s':>12}")
    print(f"{'trace (create -> completed, e2e)':<34}{trace_s:>10.2f}{trace_rate:>12.0f}")
    print(
        f"{'pgqueuer (batch ' + str(args.pgqueuer_batch) + ')':<34}{pgq_s:>10.2f}{pgq_rate:>12.0f}"
    )
    print(f"ratio trace/pgqueuer: {trace_rate / pgq_rate:.2f}   (target >= 1.0)")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
