"""UDF invoke → complete latency through the real dispatcher, fully sandboxed (bubblewrap
namespaces, uid drop, rlimits), for a trivial Python and TypeScript handler, next to the bare
process spawn costs measured in the same run.

    .venv/bin/python bench/runner_bench.py [--runs 30]
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import smoke
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.bundles import build_bundle, deterministic_zip, register_bundle
from trace_platform.config import Settings
from trace_platform.db.embedded import stop_embedded
from trace_platform.db.pool import create_pool
from trace_platform.ports import LITE_ORG_ID
from trace_platform.sandbox import python_runtime
from trace_platform.stack import Stack, prepare

ROW = (
    '{"alert_definition_id": "9a1f2b3c-4d5e-4f60-8a7b-1c2d3e4f5a6b", "dedupe_key": "k",'
    ' "event_time": "2024-01-01T00:00:00Z"}'
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn_ms(cmd: list[str], runs: int = 20) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


async def latencies(pool, settings: Settings, bundle_id, runs: int) -> list[float]:  # type: ignore[no-untyped-def]
    from trace_platform.adapters.local_keys import load_key_ring
    from trace_platform.dispatcher.service import TaskService

    service = TaskService(pool, load_key_ring(settings), settings)
    out = []
    for _ in range(runs):
        (tid,) = await service.create_tasks(
            [{"runtime": "lambda", "udf": {"bundle_id": str(bundle_id)}, "work_payload": {}}]
        )
        while True:
            row = await pool.fetchrow(
                "SELECT status, created_at, updated_at, last_error FROM state.tasks"
                " WHERE task_id = $1",
                tid,
            )
            if row["status"] in ("completed", "failed"):
                break
            await asyncio.sleep(0.002)
        if row["status"] != "completed":
            raise SystemExit(f"handler failed: {row['last_error']}")
        out.append((row["updated_at"] - row["created_at"]).total_seconds() * 1000)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--runs", type=int, default=30)
    smoke.add_flag(ap)
    args = ap.parse_args()
    smoke.apply(args, {"runs": 2})
    home = Path(tempfile.mkdtemp(prefix="trace-runner-bench-"))
    settings = Settings.load(
        {
            "home": home,
            "port": free_port(),
            "query_port": free_port(),
            "api_port": free_port(),  # `trace up` refuses a taken port (8090: another stack)
            "log_level": "warning",
        },
        env={},
    )
    stack = Stack(settings, workers=0, out=(home / "stack.log").open("w"))
    results: dict[str, list[float]] = {}
    try:
        await stack.start()
        await stack.wait_ready()
        urls = await prepare(settings)
        pool = await create_pool(urls.state, max_size=2)
        store = object_store_from_settings(settings)
        for records in (0, 1):
            body = f"[{ROW}]" if records else "[]"
            py = deterministic_zip(
                [("handler.py", f"def handler(e, c):\n    return {body}\n".encode())]
            )
            reg = await register_bundle(pool, store, py, "python", "handler.handler", LITE_ORG_ID)
            await latencies(pool, settings, reg.bundle_id, 3)  # warm-up
            results[f"python, {records} record(s)"] = await latencies(
                pool, settings, reg.bundle_id, args.runs
            )
            src = home / f"ts{records}"
            src.mkdir()
            (src / "index.ts").write_text(
                textwrap.dedent(f"""
                export async function handler(event: unknown): Promise<object[]> {{
                  return {body};
                }}""")
            )
            ts = build_bundle(src, "node", "index.handler")
            reg = await register_bundle(pool, store, ts, "node", "index.handler", LITE_ORG_ID)
            await latencies(pool, settings, reg.bundle_id, 3)
            results[f"typescript, {records} record(s)"] = await latencies(
                pool, settings, reg.bundle_id, args.runs
            )
        await pool.close()
    finally:
        await stack.stop()
        stop_embedded(home / "postgres")
    prefix, exe = python_runtime()
    bwrap = [
        "bwrap",
        "--unshare-net",
        "--unshare-pid",
        "--die-with-parent",
        "--ro-bind",
        "/usr",
        "/usr",
        "--ro-bind-try",
        "/lib",
        "/lib",
        "--ro-bind-try",
        "/lib64",
        "/lib64",
        "--ro-bind",
        prefix,
        prefix,
        "--proc",
        "/proc",
        "--dev",
        "/dev",
    ]
    base = {
        "python -I -S -c pass": spawn_ms([exe, "-I", "-S", "-c", "pass"]),
        "node -e 0": spawn_ms(["node", "-e", "0"]),
        "bwrap + python -I -S -c pass": spawn_ms([*bwrap, exe, "-I", "-S", "-c", "pass"]),
    }
    print(
        f"invoke -> complete through the dispatcher (task created -> completed), {args.runs} runs"
    )
    print(f"{'handler':<28}{'p50 ms':>9}{'p90 ms':>9}")
    for name, vals in results.items():
        q = statistics.quantiles(vals, n=10)
        print(f"{name:<28}{statistics.median(vals):>9.1f}{q[8]:>9.1f}")
    print("baselines (median spawn, same run):")
    for name, ms in base.items():
        print(f"  {name:<32}{ms:>7.1f} ms")
    print("targets: python <= 60 ms p50, node <= 120 ms p50")
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
