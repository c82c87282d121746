"""Two modes over a real stack (`trace up`'s processes, embedded Postgres):

latency: POST /v1/task/query (HTTP + token + gate + manifest checks + a sandboxed executor
process bound to the dataset version + audit row) next to in-process DuckDB on the same
2,000,000-row Parquet file in the same run: raw `read_parquet`, DuckDB locked down to the
file's directory (`allowed_directories`), and an Arrow dataset. Routes take turns in each run.

export: a 1,000,000-row result as an Arrow IPC stream through POST /v1/query (user API ->
query service -> sandboxed executor, streamed) vs DuckDB writing the same query's Arrow IPC
stream in one process, each ending with the stream in a file (the client writes what it
reads as it reads it), in rows/s with the CPU seconds each spent (the stack's processes:
API, query service and its executors); today's JSON answer of 10,000 rows beside it; then
the RSS of the API and the query service sampled every 10 ms during a 10,000,000-row export
(idle, peak, the curve's percentiles).

    .venv/bin/python bench/query_bench.py [latency] [--rows 2000000] [--runs 50]
    .venv/bin/python bench/query_bench.py export [--rows 1000000] [--big-rows 10000000] [--runs 5]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import os
import socket
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import httpx
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

import smoke
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.config import Settings
from trace_platform.datasets import register_dataset
from trace_platform.db.embedded import stop_embedded
from trace_platform.db.pool import create_pool
from trace_platform.dispatcher.service import TaskService
from trace_platform.ports import LITE_ORG_ID
from trace_platform.stack import Stack, prepare

QUERIES = {
    "1% range filter": "SELECT count(*), sum(value) FROM dataset WHERE block BETWEEN 1000000 AND 1019999",
    "full-scan aggregate": "SELECT addr, count(*), sum(value), max(value) FROM dataset GROUP BY addr",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def interleaved(fns: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median ms per route, the routes taking turns within each run so that they all see the
    same background load (the stack's own pollers share these cores), in an order rotated
    every run so that none always follows the same neighbour."""
    for fn in fns.values():
        fn()  # warm: executors bound, footers cached
    out: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns.items())
    for i in range(runs):
        for name, fn in order[i % len(order) :] + order[: i % len(order)]:
            t0 = time.perf_counter()
            fn()
            out[name].append((time.perf_counter() - t0) * 1000)
    return {k: statistics.median(v) for k, v in out.items()}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    smoke.add_flag(ap)
    sub = ap.add_subparsers(dest="mode")
    lat = sub.add_parser("latency", help="POST /v1/task/query vs in-process DuckDB (default)")
    exp = sub.add_parser("export", help="a streamed Arrow answer vs DuckDB; memory at 10M rows")
    for parser in (ap, lat):
        parser.add_argument("--rows", type=int, default=2_000_000)
        parser.add_argument("--runs", type=int, default=50)
    exp.add_argument("--rows", type=int, default=1_000_000)
    exp.add_argument("--big-rows", type=int, default=10_000_000)
    exp.add_argument("--json-rows", type=int, default=10_000)
    exp.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if args.mode == "export":
        smoke.apply(args, {"rows": 20_000, "big_rows": 50_000, "json_rows": 1000, "runs": 1})
        await export(args)
        return
    smoke.apply(args, {"rows": 10_000, "runs": 3})
    home = Path(tempfile.mkdtemp(prefix="trace-query-bench-"))
    n = args.rows
    table = pa.table(
        {
            "block": pa.array(range(n), pa.int64()),
            "addr": pa.array(((i * 7919) % 1000 for i in range(n)), pa.int64()),
            "value": pa.array(((i * 2654435761) % 10**9 for i in range(n)), pa.int64()),
        }
    )
    path = home / "chain.parquet"
    pq.write_table(table, path, row_group_size=100_000)
    qport = free_port()
    settings = Settings.load(
        {
            "home": home,
            "port": free_port(),
            "query_port": qport,
            "api_port": free_port(),  # `trace up` refuses a taken port (8090: another stack)
            "log_level": "warning",
        },
        env={},
    )
    stack = Stack(settings, workers=0, out=(home / "stack.log").open("w"))
    rows: list[tuple[str, float, float, float, float]] = []
    try:
        await stack.start()
        await stack.wait_ready()
        urls = await prepare(settings)
        pool = await create_pool(urls.state, max_size=2)
        reg = await register_dataset(
            pool, object_store_from_settings(settings), "chain", [path], LITE_ORG_ID
        )
        from trace_platform.adapters.local_keys import load_key_ring

        service = TaskService(pool, load_key_ring(settings), settings)
        (tid,) = await service.create_tasks(
            [{"operator": "manual", "inputs": [{"dataset": "chain"}]}]
        )
        await pool.execute("DELETE FROM state.outbox WHERE payload->>'task_id' = $1", str(tid))
        claimed = await service.claim(tid, "bench")
        await pool.close()
        headers = {
            "X-Trace-Task-Capability": claimed.capability_token,
            "Content-Type": "application/json",
        }
        async with httpx.AsyncClient(timeout=5) as c:
            for _ in range(100):
                try:
                    if (await c.get(f"http://127.0.0.1:{qport}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
        raw = duckdb.connect()
        # The other route the issue asks to measure: DuckDB's own reader, locked down to the
        # dataset's directory (it would also let COPY/glob act inside that directory).
        allowed = duckdb.connect()
        allowed.execute(f"SET allowed_directories = ['{path.parent}/']")
        allowed.execute("SET enable_external_access = false")
        allowed.execute("SET lock_configuration = true")
        arrow = duckdb.connect()
        arrow.register("dataset", ds.dataset([str(path)], format="parquet"))
        # A keep-alive http.client connection: it measures the service, not a client library
        # (httpx alone adds ~0.3 ms per request here).
        client = http.client.HTTPConnection("127.0.0.1", qport, timeout=30)

        def healthz() -> None:
            client.request("GET", "/healthz")
            client.getresponse().read()

        floor_ms = interleaved({"healthz": healthz}, 200)["healthz"]
        for name, sql in QUERIES.items():
            raw_sql = sql.replace("FROM dataset", f"FROM read_parquet('{path}')")

            def via_service(s: str = sql) -> None:
                body = orjson.dumps(
                    {
                        "task_id": str(tid),
                        "attempt": claimed.attempt,
                        "dataset_id": str(reg.dataset_uuid),
                        "sql": s,
                    }
                )
                client.request("POST", "/v1/task/query", body, headers)
                r = client.getresponse()
                data = r.read()
                if r.status != 200:
                    raise SystemExit(f"query failed: {r.status} {data[:200]!r}")

            ms = interleaved(
                {
                    "raw": lambda s=raw_sql: raw.execute(s).fetchall(),
                    "allowed": lambda s=raw_sql: allowed.execute(s).fetchall(),
                    "arrow": lambda s=sql: arrow.execute(s).fetchall(),
                    "service": via_service,
                },
                args.runs,
            )
            rows.append((name, ms["raw"], ms["allowed"], ms["arrow"], ms["service"]))
    finally:
        await stack.stop()
        stop_embedded(home / "postgres")
    print(f"{args.rows} rows, median of {args.runs} runs (ms)")
    print(
        f"{'query':<22}{'raw read_parquet':>18}{'allowed_dirs':>14}{'raw arrow ds':>14}"
        f"{'POST /query':>13}{'vs raw':>9}"
    )
    for name, raw_ms, allowed_ms, arrow_ms, svc_ms in rows:
        print(
            f"{name:<22}{raw_ms:>18.1f}{allowed_ms:>14.1f}{arrow_ms:>14.1f}{svc_ms:>13.1f}"
            f"{svc_ms / raw_ms:>8.2f}x"
        )
    print(f"HTTP round trip floor (GET /healthz, same connection): {floor_ms:.2f} ms")
    print("targets: filter <= raw + 3 ms, scan <= 1.2x raw")
    for name, raw_ms, _, _, svc_ms in rows:
        ok = svc_ms <= raw_ms + 3 if "filter" in name else svc_ms <= 1.2 * raw_ms
        print(f"  {name}: {'met' if ok else 'NOT met'}")


def table_of(n: int) -> pa.Table:
    return pa.table(
        {
            "block": pa.array(range(n), pa.int64()),
            "addr": pa.array(((i * 7919) % 1000 for i in range(n)), pa.int64()),
            "value": pa.array(((i * 2654435761) % 10**9 for i in range(n)), pa.int64()),
        }
    )


TICK = os.sysconf("SC_CLK_TCK")


def process_tree(root: int) -> list[int]:
    """`root` and every process descended from it (a query service's executors)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes (and of their children that exited)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / TICK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def export(args: argparse.Namespace) -> None:
    from trace_platform.ops.env import OpsEnv
    from trace_platform.ops.users import create_user

    home = Path(tempfile.mkdtemp(prefix="trace-export-bench-"))
    for name, n in (("m1", args.rows), ("m10", args.big_rows)):
        pq.write_table(table_of(n), home / f"{name}.parquet", row_group_size=100_000)
    settings = Settings.load(
        {
            "home": home,
            "port": free_port(),
            "query_port": free_port(),
            "api_port": free_port(),
            "log_level": "warning",
            "api_rate_per_second": 1000.0,
            "api_rate_burst": 1000,
        },
        env={},
    )
    stack = Stack(settings, workers=0, out=(home / "stack.log").open("w"))
    sql = "SELECT block, addr, value FROM {} "
    lines: list[str] = []
    try:
        await stack.start()
        await stack.wait_ready()
        urls = await prepare(settings)
        pool = await create_pool(urls.state, max_size=2)
        store = object_store_from_settings(settings)
        for name in ("m1", "m10"):
            await register_dataset(pool, store, name, [home / f"{name}.parquet"], LITE_ORG_ID)
        key = (
            await create_user(OpsEnv(settings, pool, pool), LITE_ORG_ID, "bench", "reader")
        ).api_key
        await pool.close()
        pids = {c.name: c.proc.pid for c in stack.children if c.proc is not None}
        api_url = f"http://127.0.0.1:{settings.api_port}"
        headers = {"Authorization": f"Bearer {key}"}
        async with httpx.AsyncClient(base_url=api_url, timeout=300, headers=headers) as api:
            for _ in range(300):
                with contextlib.suppress(httpx.TransportError):
                    if (await api.get("/readyz")).status_code == 200:
                        break
                await asyncio.sleep(0.1)

            # A keep-alive http.client connection reading 1 MiB at a time: it measures the
            # stack, not a client library (httpx's aiter_raw costs ~2x the CPU here).
            client = http.client.HTTPConnection("127.0.0.1", settings.api_port, timeout=300)
            json_headers = {**headers, "Content-Type": "application/json"}

            def fetch_now(body: dict[str, object]) -> int:
                """The answer's size; its bytes written to `got.arrow` as they arrive (the
                same end as DuckDB's side below: the Arrow IPC stream in a file)."""
                size = 0
                client.request("POST", "/v1/query", orjson.dumps(body), json_headers)
                r = client.getresponse()
                if r.status != 200:
                    raise SystemExit(f"query failed: {r.status} {r.read()[:200]!r}")
                with (home / "got.arrow").open("wb") as f:
                    while chunk := r.read(1024 * 1024):
                        size += len(chunk)
                        f.write(chunk)
                return size

            async def fetch(body: dict[str, object]) -> int:
                return await asyncio.to_thread(fetch_now, body)

            def stack_cpu() -> float:
                return cpu_seconds(process_tree(pids["api"]) + process_tree(pids["query"]))

            def split_cpu() -> tuple[float, float, float]:
                """CPU of the API, the query service, its executors."""
                query = process_tree(pids["query"])
                api_s, query_s = cpu_seconds([pids["api"]]), cpu_seconds(query[:1])
                return api_s, query_s, cpu_seconds(query[1:])

            # 1. Arrow through /v1/query vs DuckDB writing the same Arrow IPC stream
            arrow_body = {"sql": sql.format("m1"), "format": "arrow"}
            size = await fetch(arrow_body)  # warm: an executor bound to m1
            with pa.memory_map(str(home / "got.arrow")) as got:
                assert pa.ipc.open_stream(got).read_all().num_rows == args.rows
            walls, cpus, own = [], [], []
            s0 = split_cpu()
            for _ in range(args.runs):
                c0, p0, t0 = stack_cpu(), time.process_time(), time.perf_counter()
                size = fetch_now(arrow_body)
                walls.append(time.perf_counter() - t0)
                cpus.append(stack_cpu() - c0)
                own.append(time.process_time() - p0)
            split = [(b - a) / args.runs for a, b in zip(s0, split_cpu(), strict=True)]
            api_s, api_cpu = statistics.median(walls), statistics.median(cpus)
            duck = duckdb.connect()
            duck_sql = sql.format(f"read_parquet('{home / 'm1.parquet'}')")
            d_walls, d_cpus = [], []
            for i in range(args.runs + 1):
                p0, t0 = time.process_time(), time.perf_counter()
                reader = duck.sql(duck_sql).to_arrow_reader(64 * 1024)
                with (
                    pa.OSFile(str(home / "duck.arrow"), "wb") as f,
                    pa.ipc.new_stream(f, reader.schema) as w,
                ):
                    for batch in reader:
                        w.write_batch(batch)
                if i:  # the first one warms the file cache
                    d_walls.append(time.perf_counter() - t0)
                    d_cpus.append(time.process_time() - p0)
            duck_s, duck_cpu = statistics.median(d_walls), statistics.median(d_cpus)
            # 2. today's JSON answer: 10,000 rows
            json_body = {"sql": sql.format("m1"), "limit": args.json_rows}
            j_walls, j_cpus = [], []
            for i in range(args.runs * 4 + 1):
                c0, t0 = stack_cpu(), time.perf_counter()
                r = await api.post("/v1/query", json=json_body)
                if i:
                    j_walls.append(time.perf_counter() - t0)
                    j_cpus.append(stack_cpu() - c0)
                assert r.status_code == 200 and len(r.json()["rows"]) == args.json_rows
            json_s, json_cpu = statistics.median(j_walls), statistics.median(j_cpus)
            # 3. memory of the API and the query service during a 10M-row export
            big_body = {"sql": sql.format("m10"), "format": "arrow"}
            await fetch({**big_body, "limit": 1000})  # warm: an executor bound to m10
            idle = {name: rss_mb(pids[name]) for name in ("api", "query")}
            curve: dict[str, list[float]] = {"api": [], "query": []}
            executor_peak = 0.0
            running = True

            async def sample() -> None:
                nonlocal executor_peak
                while running:
                    for name in curve:
                        curve[name].append(rss_mb(pids[name]))
                    for pid in process_tree(pids["query"])[1:]:
                        with contextlib.suppress(OSError):
                            executor_peak = max(executor_peak, rss_mb(pid))
                    await asyncio.sleep(0.01)

            sampler = asyncio.create_task(sample())
            t0 = time.perf_counter()
            try:
                big_size = await fetch(big_body)
            finally:
                running = False
                await sampler
            big_s = time.perf_counter() - t0
    finally:
        await stack.stop()
        stop_embedded(home / "postgres")
    n = args.rows
    lines.append(
        f"export: {n} rows x 3 BIGINT, Arrow IPC stream ({size / 2**20:.1f} MiB), median of {args.runs}"
    )
    lines.append(f"{'route':<40}{'s':>8}{'rows/s':>14}{'CPU-s':>8}")
    lines.append(
        f"{'POST /v1/query format=arrow (streamed)':<40}{api_s:>8.3f}{n / api_s:>14,.0f}{api_cpu:>8.2f}  (API + query service + executor; client {statistics.median(own):.2f})"
    )
    lines.append(
        f"{'DuckDB in one process -> Arrow IPC file':<40}{duck_s:>8.3f}{n / duck_s:>14,.0f}{duck_cpu:>8.2f}"
    )
    lines.append(
        f"{'POST /v1/query JSON, ' + str(args.json_rows) + ' rows':<40}{json_s:>8.3f}{args.json_rows / json_s:>14,.0f}{json_cpu:>8.2f}"
    )
    lines.append(
        f"  CPU-s per Arrow answer by process: API {split[0]:.3f}, query service {split[1]:.3f},"
        f" executor {split[2]:.3f}, client {statistics.median(own):.3f} (2 cores in all)"
    )
    ratio = (n / api_s) / (n / duck_s)
    lines.append(
        f"target: Arrow through /v1/query >= 0.5x DuckDB's rows/s: {ratio:.2f}x, {'met' if ratio >= 0.5 else 'NOT met'}"
    )
    lines.append(
        f"memory during a {args.big_rows}-row Arrow export ({big_size / 2**20:.0f} MiB in {big_s:.1f} s, {args.big_rows / big_s:,.0f} rows/s), RSS sampled every 10 ms (MB):"
    )
    for name, values in curve.items():
        qs = (
            statistics.quantiles(values, n=10, method="inclusive")
            if len(values) > 1
            else values * 9
        )
        lines.append(
            f"  {name:<6} idle {idle[name]:6.0f}  min {min(values):6.0f}  p10 {qs[0]:6.0f}  median {statistics.median(values):6.0f}  p90 {qs[-1]:6.0f}  max {max(values):6.0f}  (+{max(values) - idle[name]:.0f} over idle, {len(values)} samples)"
        )
    lines.append(
        f"  executor peak {executor_peak:.0f} MB (its own process, memory-limited by TRACE_QUERY_MEMORY_MB)"
    )
    growth = max(max(v) - idle[k] for k, v in curve.items())
    lines.append(
        f"target: bounded (API and query service < 200 MB over idle): +{growth:.0f} MB, {'met' if growth < 200 else 'NOT met'}"
    )
    print("\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
