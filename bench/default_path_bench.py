"""The path a user takes, next to the kernel benchmark in the same run: `trace up` with
default settings, then `trace task create --count N` from the command line (CLI start-up
included), until every task is completed — versus bench/kernel_bench.py's measurement
(tasks created in-process on the same defaults). Target: within 15%.

    .venv/bin/python bench/default_path_bench.py [--tasks 10000] [--database-url URL]

--database-url: an external PostgreSQL server (postgresql://user:password@host:port/db, a
role that may create databases): each path gets fresh state and data databases there
(TRACE_STATE_DATABASE_URL / TRACE_DATA_DATABASE_URL) instead of the embedded server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

import smoke
from kernel_bench import free_port, trace_run
from trace_platform.config import Settings
from trace_platform.db.embedded import ensure_database, stop_embedded
from trace_platform.db.pool import create_pool
from trace_platform.stack import Stack, prepare


async def stack_run(settings: Settings, fn: object) -> float:
    stack = Stack(settings, workers=1, out=(settings.home / "stack.log").open("w"))
    await stack.start()
    try:
        await stack.wait_ready()
        return float(await fn())  # type: ignore[operator]
    finally:
        await stack.stop()
        stop_embedded(settings.home / "postgres")
        shutil.rmtree(settings.home, ignore_errors=True)


async def external(url: str | None, tag: str) -> dict[str, str]:
    """Fresh state and data databases for one path on an external server (none: embedded)."""
    if not url:
        return {}
    base, _, _db = url.rpartition("/")
    admin = await asyncpg.connect(url)
    try:
        for kind in ("state", "data"):
            await admin.execute(f'DROP DATABASE IF EXISTS "bench_{tag}_{kind}" WITH (FORCE)')
    finally:
        await admin.close()
    urls = {}
    for kind in ("state", "data"):
        await ensure_database(url, f"bench_{tag}_{kind}")
        urls[f"{kind}_database_url"] = f"{base}/bench_{tag}_{kind}"
    return urls


async def user_path(n: int, database_url: str | None, warmup: int) -> float:
    home = Path(tempfile.mkdtemp(prefix="trace-default-"))
    settings = Settings.load(
        {
            "home": home,
            "port": free_port(),
            "query_port": free_port(),
            "api_port": free_port(),  # `trace up` refuses a taken port (8090: another stack)
            "log_level": "warning",
            **await external(database_url, "user"),
        },
        env={},
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACE_")}
    env.update(settings.child_env())

    async def go() -> float:
        urls = await prepare(settings)
        pool = await create_pool(urls.state, max_size=1)
        cli = [
            sys.executable,
            "-m",
            "trace_platform",
            "task",
            "create",
            "--payload",
            '{"operator": "noop"}',
        ]
        if warmup:
            subprocess.run([*cli, "--count", str(warmup)], env=env, check=True, capture_output=True)
        while await pool.fetchval("SELECT count(*) FROM state.tasks WHERE status <> 'completed'"):
            await asyncio.sleep(0.25)
        before = await pool.fetchval("SELECT count(*) FROM state.tasks")
        t0 = time.time()
        subprocess.run([*cli, "--count", str(n)], env=env, check=True, capture_output=True)
        while True:
            await asyncio.sleep(0.25)
            row = await pool.fetchrow(
                "SELECT count(*) FILTER (WHERE status = 'completed') AS done,"
                " extract(epoch FROM max(updated_at)) AS last FROM state.tasks"
            )
            if row["done"] == before + n:
                await pool.close()
                return float(row["last"]) - t0

    return await stack_run(settings, go)


async def kernel_path(n: int, database_url: str | None, warmup: int) -> float:
    home = Path(tempfile.mkdtemp(prefix="trace-kernel-"))
    settings = Settings.load(
        {
            "home": home,
            "port": free_port(),
            "query_port": free_port(),
            "api_port": free_port(),  # `trace up` refuses a taken port (8090: another stack)
            "log_level": "warning",
            **await external(database_url, "kernel"),
        },
        env={},
    )

    async def go() -> float:
        urls = await prepare(settings)
        pool = await create_pool(urls.state, max_size=2)
        if warmup:
            await trace_run(settings, pool, warmup)
        elapsed = await trace_run(settings, pool, n)
        await pool.close()
        return elapsed

    return await stack_run(settings, go)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", type=int, default=10_000)
    ap.add_argument("--database-url", help="an external PostgreSQL server for both paths")
    ap.add_argument("--warmup", type=int, default=1000, help="tasks run first, not counted")
    smoke.add_flag(ap)
    args = ap.parse_args()
    smoke.apply(args, {"tasks": 50, "warmup": 0})
    user = await user_path(args.tasks, args.database_url, args.warmup)
    kernel = await kernel_path(args.tasks, args.database_url, args.warmup)
    where = "an external server" if args.database_url else "embedded Postgres"
    print(f"no-op tasks: {args.tasks}, {where}")
    print(f"{'path':<58}{'seconds':>9}{'tasks/s':>10}")
    print(
        f"{'trace up (defaults) + `trace task create --count N` (CLI)':<58}{user:>9.2f}{args.tasks / user:>10.0f}"
    )
    print(
        f"{'kernel_bench (in-process create, same defaults)':<58}{kernel:>9.2f}{args.tasks / kernel:>10.0f}"
    )
    print(f"ratio user/kernel: {kernel / user:.2f}   (target >= 0.85)")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    asyncio.run(main())
