"""The path a user takes, next to the kernel benchmark in the same run: `trace up` with
default settings, then `trace task create --count N` from the command line (CLI start-up
included), until every task is completed — versus bench/kernel_bench.py's measurement
(tasks created in-process on a stack tuned for the benchmark). Target: within 15%.

    .venv/bin/python bench/default_path_bench.py [--tasks 10000]
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

from kernel_bench import free_port, trace_run
from trace_platform.config import Settings
from trace_platform.db.embedded import stop_embedded
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


async def user_path(n: int) -> float:
    home = Path(tempfile.mkdtemp(prefix="trace-default-"))
    settings = Settings.load(
        {"home": home, "port": free_port(), "query_port": free_port(), "log_level": "warning"},
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
        subprocess.run(
            [*cli, "--count", "1000"], env=env, check=True, capture_output=True
        )  # warm-up
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


async def kernel_path(n: int) -> float:
    home = Path(tempfile.mkdtemp(prefix="trace-kernel-"))
    settings = Settings.load(
        {
            "home": home,
            "port": free_port(),
            "query_port": free_port(),
            "log_level": "warning",
        },
        env={},
    )

    async def go() -> float:
        urls = await prepare(settings)
        pool = await create_pool(urls.state, max_size=2)
        await trace_run(settings, pool, 1000)
        elapsed = await trace_run(settings, pool, n)
        await pool.close()
        return elapsed

    return await stack_run(settings, go)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tasks", type=int, default=10_000)
    args = ap.parse_args()
    user = await user_path(args.tasks)
    kernel = await kernel_path(args.tasks)
    print(f"no-op tasks: {args.tasks}")
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
