"""User API and console benchmarks with 1,000,000 tasks in the state DB (SPEC §13).

    .venv/bin/python bench/console_bench.py [--tasks 1000000] [--runs 50]

Starts an embedded Postgres, fills it with N tasks (5% failed) of one org, runs `trace
dispatcher`, `trace query-service` and `trace api`, then measures (p50 over --runs requests,
HTTP on loopback, keep-alive):
  - the console's overview and task list pages, rendered server-side   (target <= 100 ms)
  - GET /v1/tasks?status=failed&limit=50 on page 1, page 100 and at the deepest page
    (keyset pagination: the cursor of the last failed tasks)           (target <= 20 ms)
  - POST /v1/query next to POST /v1/task/query, the same query over the same dataset,
    interleaved                                                       (target <= +3 ms)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq

import smoke
from trace_platform.adapters.local_keys import load_worker_tokens
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.chain.devnet import free_port
from trace_platform.config import Settings
from trace_platform.datasets import register_dataset
from trace_platform.db.embedded import stop_embedded
from trace_platform.db.pool import create_pool
from trace_platform.ops.env import OpsEnv
from trace_platform.ops.tasks import encode_cursor
from trace_platform.ops.users import create_user
from trace_platform.ports import LITE_ORG_ID
from trace_platform.stack import prepare


def p50(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


async def timed(http: httpx.AsyncClient, runs: int, method: str, url: str, **kw: Any) -> float:
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = await http.request(method, url, **kw)
        out.append(time.perf_counter() - t0)
        assert r.status_code == 200, (url, r.status_code, r.text[:300])
    return p50(out)


async def wait_ready(url: str) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(600):
            try:
                if (await http.get(url + "/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.1)
    raise SystemExit(f"{url} did not become ready")


async def main(args: argparse.Namespace) -> None:
    home = Path(tempfile.mkdtemp(prefix="trace-console-bench-"))
    settings = Settings.load(
        {
            "home": home,
            "port": free_port(),
            "query_port": free_port(),
            "api_port": free_port(),
            "log_level": "warning",
            "api_rate_per_second": 100000.0,
            "api_rate_burst": 100000,
        },
        env={},
    )
    procs: list[subprocess.Popen[bytes]] = []
    try:
        urls = await prepare(settings)
        settings = settings.replace(state_database_url=urls.state, data_database_url=urls.data)
        pool = await create_pool(urls.state, max_size=2)
        t0 = time.perf_counter()
        await pool.execute(
            "INSERT INTO state.tasks (task_id, org_id, status, payload, max_attempts, attempt,"
            " created_at, updated_at, last_error)"
            " SELECT gen_random_uuid(), $1,"
            "  CASE WHEN i % 20 = 0 THEN 'failed' ELSE 'completed' END,"
            "  jsonb_build_object('operator', 'emit_alerts', 'count', i % 100), 3, 1,"
            "  now() - make_interval(secs => ($2 - i) * 0.01), now(),"
            "  CASE WHEN i % 20 = 0 THEN 'emit_alerts: boom' END"
            " FROM generate_series(1, $2) AS i",
            LITE_ORG_ID,
            args.tasks,
        )
        await pool.execute("ANALYZE state.tasks")
        print(f"{args.tasks:,} tasks inserted in {time.perf_counter() - t0:.1f} s")
        key = (
            await create_user(OpsEnv(settings, pool, pool), LITE_ORG_ID, "bench", "admin")
        ).api_key
        path = home / "d.parquet"
        pq.write_table(
            pa.table({"n": list(range(200_000)), "v": [i * 0.5 for i in range(200_000)]}), path
        )
        await register_dataset(
            pool, object_store_from_settings(settings), "bench", [path], LITE_ORG_ID
        )
        env = dict(__import__("os").environ) | settings.child_env()
        log = (home / "procs.log").open("w")
        for cmd in (["dispatcher"], ["query-service"], ["api"]):
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "trace_platform", *cmd],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        api = f"http://127.0.0.1:{settings.api_port}"
        query = f"http://127.0.0.1:{settings.query_port}"
        dispatcher = settings.resolved_dispatcher_url
        for u in (api, query, dispatcher):
            await wait_ready(u)
        auth = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=api, headers=auth, timeout=30) as http:
            for page in ("/ui", "/ui/tasks"):  # warm up
                (await http.get(page)).raise_for_status()
            overview = await timed(http, args.runs, "GET", "/ui")
            task_page = await timed(http, args.runs, "GET", "/ui/tasks")
            first = await timed(http, args.runs, "GET", "/v1/tasks?status=failed&limit=50")
            cursor, page = None, 1
            while page < 100:  # page 100, or the last one of fewer tasks (a smoke run)
                url = "/v1/tasks?status=failed&limit=50" + (f"&cursor={cursor}" if cursor else "")
                after = (await http.get(url)).json()["next_cursor"]
                if after is None:
                    break
                cursor, page = after, page + 1
            page100 = await timed(
                http,
                args.runs,
                "GET",
                "/v1/tasks?status=failed&limit=50" + (f"&cursor={cursor}" if cursor else ""),
            )
            deep_row = await pool.fetchrow(
                "SELECT created_at, task_id FROM state.tasks WHERE org_id = $1 AND status = 'failed'"
                " ORDER BY created_at, task_id OFFSET least(60, $2) LIMIT 1",
                LITE_ORG_ID,
                max(0, args.tasks // 20 - 1),
            )
            deep = encode_cursor(deep_row["created_at"], deep_row["task_id"])
            deepest = await timed(
                http, args.runs, "GET", f"/v1/tasks?status=failed&limit=50&cursor={deep}"
            )
            # the same query through the user API and through the task path, interleaved
            tid = uuid.uuid4()
            await pool.execute(
                "INSERT INTO state.tasks (task_id, org_id, status, payload, max_attempts)"
                " VALUES ($1, $2, 'queued', $3, 1)",
                tid,
                LITE_ORG_ID,
                {"operator": "noop", "inputs": [{"dataset": "bench"}]},
            )
            claim = httpx.post(
                f"{dispatcher}/internal/task-claim",
                json={"task_id": str(tid)},
                headers={"X-Trace-Worker-Token": load_worker_tokens(settings).current},
            ).json()
            import jwt

            grant = jwt.decode(claim["capability_token"], options={"verify_signature": False})[
                "datasets"
            ][0]
            sql = "SELECT count(*), sum(v) FROM dataset WHERE n BETWEEN 1000 AND 2999"
            task_body = {
                "task_id": str(tid),
                "attempt": 1,
                "dataset_id": grant["dataset_uuid"],
                "sql": sql,
            }
            user_body = {"dataset": "bench", "sql": sql}
            async with httpx.AsyncClient(timeout=30) as qhttp:
                user_t, task_t = [], []
                for i in range(args.runs * 2):
                    for which in (0, 1) if i % 2 else (1, 0):
                        t = time.perf_counter()
                        if which == 0:
                            r = await http.post("/v1/query", json=user_body)
                            user_t.append(time.perf_counter() - t)
                        else:
                            r = await qhttp.post(
                                f"{query}/v1/task/query",
                                json=task_body,
                                headers={"X-Trace-Task-Capability": claim["capability_token"]},
                            )
                            task_t.append(time.perf_counter() - t)
                        assert r.status_code == 200, r.text
            t = time.perf_counter()
            await pool.fetch(
                "SELECT status, count(*) FROM state.tasks WHERE org_id = $1 GROUP BY status",
                LITE_ORG_ID,
            )
            sample_ms = (time.perf_counter() - t) * 1000
        await pool.close()
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        stop_embedded(home / "postgres")
        shutil.rmtree(home, ignore_errors=True)
    print(json.dumps({"tasks": args.tasks, "runs": args.runs}))
    print(
        f"console overview page        p50 {overview:6.1f} ms   (target <= 100; its task counts are"
        f" sampled at most every 2 s per org: one sample, an index-only count, takes {sample_ms:.0f} ms)"
    )
    print(f"console task list page       p50 {task_page:6.1f} ms   (target <= 100)")
    print(
        f"GET /v1/tasks?status=failed  p50 {first:6.1f} ms page 1, {page100:.1f} ms page {page}, {deepest:.1f} ms last page   (target <= 20)"
    )
    up, tp = p50(user_t), p50(task_t)
    print(
        f"POST /v1/query               p50 {up:6.2f} ms vs /v1/task/query {tp:.2f} ms: +{up - tp:.2f} ms   (target <= +3)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=50)
    smoke.add_flag(parser)
    args = parser.parse_args()
    smoke.apply(args, {"tasks": 2000, "runs": 3})
    asyncio.run(main(args))
