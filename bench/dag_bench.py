"""DAG benchmarks (SPEC §19) through the real `trace up` stack.

    .venv/bin/python bench/dag_bench.py backfill [--ranges 200] [--range-blocks 1000]
        [--swaps-per-block 5] [--backfill-blocks N] [--max-concurrency N]
    .venv/bin/python bench/dag_bench.py head [--blocks 60] [--interval 1]
    .venv/bin/python bench/dag_bench.py status [--partitions 10000] [--runs 20]
    .venv/bin/python bench/dag_bench.py rederive [--ranges 200] [--range-blocks 1000]
        [--swaps-per-block 5] [--cryo-blocks 5000]
    .venv/bin/python bench/dag_bench.py cutover [--partitions 10000] [--runs 20]

backfill: a 2-level per-range SQL DAG (decoded swaps enriched with their block's timestamp,
  then swaps and volume per block and pool) over a chain of --ranges committed ranges of
  --range-blocks blocks (`blocks` and a decoded `pair_Swap`, --swaps-per-block swaps a block:
  by default 200 ranges, 1.2M input rows), built by the DAG from apply to its last level-2
  partition committed (database clock), next to DuckDB running the same two statements over
  the same Parquet files in one process, each level written as Parquet (target: DuckDB time /
  Trace time >= 0.5). The chain is seeded, not synced (anvil mines ever slower past a few
  thousand blocks): the bench writes each range's Parquet files into the range task's own
  attempt prefix and commits them through the chain's commit hook (`chain.commit.commit_range`,
  the function the dispatcher calls on a range task's successful completion: ledger row, task,
  partition, hash continuity with its neighbours, the `dataset.range_committed` event), before
  the stack starts. The job's defaults (backfill_rows 1,000,000 input rows a task, no backfill_blocks,
  max_concurrency 8) unless
  given. Also printed: how Trace's time splits per range task (from `state.dag_ranges`, the
  task's completion and the timing its `dag_sql` attempt reports; executor starts from the
  query service's log), and whether both systems' outputs agree.
head: anvil in automine, a swap sent every --interval seconds (one block each), a chain
  followed at its head (tail_lag 0, chunk_size 1, head_poll_seconds 0.1) with blocks, logs and
  the pool's decoded Swap table, and a 3-level DAG (enriched swaps -> per-range pool volume
  -> per-range totals). Per block: the blocks range's commit (its partition's created_at) to
  the level-3 partition that covers it committed, p50/p99 after 3 warm-up blocks, with the
  steps in between (targets p50 <= 1.5 s, p99 <= 4 s).
status: a 3-job DAG over a chain whose streams and jobs each hold --partitions committed
  partitions (seeded straight into the ledger tables a range commit writes), no stack: the
  scheduler's `DagPlanner.plan_job` with nothing to do and with one new input range (each in
  a transaction rolled back), and `ops.dags.dag_status` (target <= 100 ms each).
rederive: the backfill's 2-level DAG built over the same seeded chain (its pool points at a
  loopback endpoint that counts every JSON-RPC request), then level 2's SQL changed: apply to
  the cut-over of generation 2 (database clock), its RPC requests by method (target 0 for
  chain data: a stack process's first check of the endpoint, eth_chainId, may fall in) and whether
  level 1 kept its partitions, next to raw cryo extracting blocks + logs of --cryo-blocks
  anvil blocks, scaled to the seeded chain's blocks (target: >= 10x faster).
cutover: a 3-job DAG whose last two jobs changed, every job row (old and new) holding
  --partitions committed partitions (seeded into the ledger tables), no stack: the cut-over
  transaction (`dag.generations.switch`) BEGIN to COMMIT, which bounds how long it holds its
  locks, switching to generation 2 and back (target <= 50 ms), and the coverage check before
  it (no lock).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

import chain_bench
import smoke
from alert_bench import machine_cpu_seconds, stack_cpu
from chain_bench import BenchStack
from trace_platform.chain.devnet import Anvil, pools_artifact
from trace_platform.db.pool import create_pool
from trace_platform.ops.env import OpsEnv
from trace_platform.ports import LITE_ORG_ID
from trace_platform.stack import prepare

SMOKE = {  # `--smoke MODE`: each mode's smallest run (bench/smoke.py)
    "backfill": {"ranges": 4, "range_blocks": 10, "swaps_per_block": 2, "backfill_blocks": "0,20"},
    "head": {"blocks": 3, "interval": 0.5},
    "status": {"partitions": 100, "runs": 3},
    "rederive": {"ranges": 4, "range_blocks": 10, "swaps_per_block": 2, "cryo_blocks": 50},
    "cutover": {"partitions": 100, "runs": 3},
}
SWAP_EVENT = (
    "Swap(address indexed sender, uint256 amount0In, uint256 amount1In, uint256 amount0Out,"
    " uint256 amount1Out, address indexed to)"
)
POOLS = [f"0x{0xA11CE000 + i:040x}" for i in range(20)]
LEVEL1 = (
    "SELECT s.block_number, s.log_index, s.transaction_hash, s.address AS pool, s.amount0In,"
    " s.amount1Out, b.timestamp AS block_time FROM pair_Swap s JOIN blocks b USING (block_number)"
)
# Per block and pool: the same rows whether computed range by range or over everything.
LEVEL2 = (
    "SELECT block_number, pool, count(*) AS swaps, sum(amount0In) AS volume0,"
    " min(block_time) AS block_time FROM swaps GROUP BY block_number, pool"
)
DEAD_RPC = "http://127.0.0.1:9"  # the seeded chain is never extracted


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- seeding a chain through the commit hook --------------------------------------------


def block_hash(n: int) -> str:
    return "0x" + hashlib.sha256(n.to_bytes(8, "big")).hexdigest()


def blocks_table(start: int, end: int) -> Any:
    """cryo's `blocks` schema (hex=True), one row a block, 12 s apart."""
    import pyarrow as pa

    n = end - start
    numbers = list(range(start, end))
    return pa.table(
        {
            "block_hash": pa.array([block_hash(b) for b in numbers], pa.large_string()),
            "author": pa.array(["0x" + "00" * 20] * n, pa.large_string()),
            "block_number": pa.array(numbers, pa.uint32()),
            "gas_used": pa.array([21_000 * 5] * n, pa.uint64()),
            "extra_data": pa.array(["0x"] * n, pa.large_string()),
            "timestamp": pa.array([1_700_000_000 + 12 * b for b in numbers], pa.uint32()),
            "base_fee_per_gas": pa.array([10**9] * n, pa.uint64()),
            "chain_id": pa.array([31337] * n, pa.uint64()),
        }
    )


def swaps_table(start: int, end: int, per_block: int) -> Any:
    """The decoder's `pair_Swap` schema (`chain.abi`), `per_block` swaps in each block."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from trace_platform.chain.abi import parse_signature

    schema = parse_signature(SWAP_EVENT).schema()
    rows = (end - start) * per_block
    blocks = [start + i // per_block for i in range(rows)]
    index = [i % per_block for i in range(rows)]
    amounts = pa.array(
        [(b * 7919 + i * 104_729) % 10**12 for b, i in zip(blocks, index, strict=True)], pa.int64()
    )
    zero = pa.array([0] * rows, pa.int64())
    wide = {
        "amount0In": amounts,
        "amount1In": zero,
        "amount0Out": zero,
        "amount1Out": pc.multiply(amounts, 3),
    }
    columns: dict[str, Any] = {
        "block_number": pa.array(blocks, pa.uint32()),
        "block_hash": pa.array([block_hash(b) for b in blocks], pa.string()),
        "transaction_index": pa.array(index, pa.uint32()),
        "log_index": pa.array(index, pa.uint32()),
        "transaction_hash": pa.array(
            [f"0x{b:032x}{i:032x}" for b, i in zip(blocks, index, strict=True)], pa.string()
        ),
        # a block's swaps go to a few pools (two a pool): level 2 sums several per group
        "address": pa.array(
            [POOLS[(b * 7 + i // 2) % len(POOLS)] for b, i in zip(blocks, index, strict=True)]
        ),
        "sender": pa.array(["0x" + "0b" * 20] * rows, pa.string()),
        "to": pa.array(["0x" + "0c" * 20] * rows, pa.string()),
    }
    for name, values in wide.items():
        columns[name] = pc.cast(values, schema.field(name).type)
        columns[f"{name}_raw"] = pc.cast(values, pa.string())
    return pa.table({f.name: columns[f.name] for f in schema}, schema=schema)


def parquet_bytes(table: Any) -> bytes:
    import io

    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def seeded_chain_spec(name: str, to_block: int, range_blocks: int) -> str:
    return (
        f"kind: chain_sync\nname: {name}\nchain_id: 31337\nrpc_pool: bench\n"
        f"mode: {{kind: fixed_target, from_block: 0, to_block: {to_block}}}\n"
        "streams:\n"
        f"  blocks: {{cryo_dataset: blocks, chunk_size: {range_blocks}}}\n"
        f"  logs: {{cryo_dataset: logs, chunk_size: {range_blocks}}}\n"
        "contracts:\n"
        f"  pair: {{address: {json.dumps(POOLS)}, events: [{json.dumps(SWAP_EVENT)}]}}\n"
        "compaction: {enabled: false}\n"
    )


async def seed_chain(
    b: BenchStack, name: str, ranges: int, range_blocks: int, per_block: int
) -> dict[str, list[str]]:
    """Commit `ranges` ranges of `blocks` and `pair_Swap` through the chain's commit hook,
    each range's files in its task's attempt prefix; returns each relation's file paths.
    `logs` is not seeded: its cursor is set to the target so nothing plans its extraction."""
    from trace_platform.adapters.stores import object_store_from_settings
    from trace_platform.chain.commit import commit_range, part_prefix
    from trace_platform.chain.spec import range_task_id
    from trace_platform.db.sql import q

    store = object_store_from_settings(b.settings)
    end = ranges * range_blocks
    await b.apply(seeded_chain_spec(name, end, range_blocks))
    streams = {
        r["stream"]: r
        for r in await b.pool.fetch(
            "SELECT s.*, j.org_id FROM state.chain_streams s JOIN state.chain_jobs j USING (job_id)"
            " WHERE j.name = $1",
            name,
        )
    }
    files: dict[str, list[str]] = {"blocks": [], "pair_Swap": []}
    for i in range(ranges):
        start, stop = i * range_blocks, (i + 1) * range_blocks
        tables = {
            "blocks": await asyncio.to_thread(blocks_table, start, stop),
            "pair_Swap": await asyncio.to_thread(swaps_table, start, stop, per_block),
        }
        for stream, table in tables.items():
            row = streams[stream]
            task_id = range_task_id(row["job_id"], stream, start, stop, 0)
            data = await asyncio.to_thread(parquet_bytes, table)
            uri = part_prefix(store.root, row["dataset_uuid"], task_id, 1) + "part-000.parquet"
            stored = await store.put_bytes(uri, data)
            files[stream].append(uri.removeprefix("file://"))
            report = {
                "start": start,
                "end": stop,
                "files": [
                    {
                        "uri": uri,
                        "size": stored.size,
                        "sha256": hashlib.sha256(data).hexdigest(),
                        "rows": table.num_rows,
                        "min_block": start,
                        "max_block": stop - 1,
                    }
                ],
                "first_parent_hash": block_hash(start - 1) if start else None,
                "last_hash": block_hash(stop - 1),
                "last_block_time": 1_700_000_000 + 12 * (stop - 1),
                "undecodable": 0,
            }
            operator = "chain_decode" if stream == "pair_Swap" else "cryo_ingest"
            payload = {
                "operator": operator,
                "chain": {"stream": stream, "start": start, "end": stop},
            }
            async with b.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    q("chain", "insert_ranges"),
                    row["job_id"],
                    stream,
                    0,
                    [task_id],
                    [start],
                    [stop],
                )
                await conn.execute(
                    "INSERT INTO state.tasks (task_id, org_id, status, payload, max_attempts,"
                    " last_outcome, outputs) VALUES ($1, $2, 'completed', $3, 1, 'success', $4)",
                    task_id,
                    row["org_id"],
                    payload,
                    {"chain": report},
                )
                await commit_range(conn, store.root, task_id, 1, {"chain": report})
    for stream, row in streams.items():
        await b.pool.execute(q("chain", "advance_cursor"), row["job_id"], stream, end)
    return files


class SeededStack(BenchStack):
    """A bench stack whose databases come up first (seeded before any process runs)."""

    started = False

    async def __aenter__(self) -> SeededStack:
        urls = await prepare(self.settings)
        self.pool = await create_pool(urls.state, max_size=4)
        return self

    async def start(self) -> None:
        await self.stack.start()
        self.started = True
        await self.stack.wait_ready()
        await asyncio.sleep(chain_bench.SETTLE_SECONDS)

    async def __aexit__(self, *_: object) -> None:
        from trace_platform.db.embedded import stop_embedded

        await self.pool.close()
        if self.started:
            await self.stack.stop()
        stop_embedded(self.home / "postgres")
        shutil.rmtree(self.home, ignore_errors=True)


# --- backfill ---------------------------------------------------------------------------


def dag_spec(name: str, chain: str, backfill_blocks: int | None, concurrency: int | None) -> str:
    tuned = f", backfill_blocks: {backfill_blocks}" if backfill_blocks else ""
    defaults = f"defaults: {{max_concurrency: {concurrency}}}\n" if concurrency else ""
    return (
        f"kind: dag\nname: {name}\n{defaults}jobs:\n"
        f"  swaps: {{inputs: [{{chain: {chain}}}], sql: {json.dumps(LEVEL1)}{tuned}}}\n"
        f"  pool_volume: {{inputs: [{{job: swaps}}], sql: {json.dumps(LEVEL2)}}}\n"
    )


def duckdb_run(files: dict[str, list[str]], out: Path) -> tuple[float, tuple[Any, ...]]:
    """The two statements in one DuckDB process over the same files, each level written as
    Parquet; (seconds, the level-2 check sums)."""
    import duckdb

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    con = duckdb.connect()
    for name, paths in files.items():
        listed = ", ".join(f"'{p}'" for p in paths)
        con.execute(f'CREATE VIEW "{name}" AS SELECT * FROM read_parquet([{listed}])')
    con.execute(f"COPY ({LEVEL1}) TO '{out}/swaps.parquet' (FORMAT parquet, COMPRESSION zstd)")
    con.execute(f"CREATE VIEW swaps AS SELECT * FROM read_parquet('{out}/swaps.parquet')")
    con.execute(f"COPY ({LEVEL2}) TO '{out}/volume.parquet' (FORMAT parquet, COMPRESSION zstd)")
    elapsed = time.perf_counter() - t0
    sums = con.execute(
        f"SELECT count(*), sum(swaps), sum(volume0) FROM read_parquet('{out}/volume.parquet')"
    ).fetchone()
    con.close()
    assert sums is not None
    return elapsed, tuple(sums)


def check_sums(paths: list[str]) -> tuple[Any, ...]:
    import duckdb

    listed = ", ".join(f"'{p}'" for p in paths)
    row = (
        duckdb.connect()
        .execute(f"SELECT count(*), sum(swaps), sum(volume0) FROM read_parquet([{listed}])")
        .fetchone()
    )
    assert row is not None
    return tuple(row)


async def wait_dag(b: BenchStack, dag: str, tip: int, timeout: float) -> None:
    from trace_platform.ops.dags import dag_status

    env = OpsEnv(b.settings, b.pool, b.pool)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = await dag_status(env, LITE_ORG_ID, dag)
        if any(j.failed or j.status != "active" for j in st.jobs):
            raise RuntimeError(f"{dag}: a job failed: {st}")
        if all(j.committed_to >= tip and j.in_flight == 0 for j in st.jobs):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{dag} not built to {tip}")


def log_events(log: Path) -> list[dict[str, Any]]:
    """The stack's JSON log lines (each child's output goes to stack.log as `name | line`)."""
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            out.append(orjson.loads(line.split("| ", 1)[1]))
        except (IndexError, orjson.JSONDecodeError):
            continue
    return out


def executor_starts(log: Path) -> list[float]:
    """ms of each `query.executor_started` the query service logged."""
    return [
        float(e.get("ms", 0.0))
        for e in log_events(log)
        if e.get("event") == "query.executor_started"
    ]


def troubles(log: Path) -> list[str]:
    """Each warning or error event the stack logged, by name."""
    return [
        f"{e.get('level')} {e.get('event')}"
        for e in log_events(log)
        if e.get("level") in ("warning", "error", "critical")
    ]


async def task_timings(b: BenchStack, dag: str) -> list[dict[str, Any]]:
    rows = await b.pool.fetch(
        "SELECT j.name AS job, r.range_start, r.range_end,"
        " extract(epoch FROM r.created_at) AS created,"
        " extract(epoch FROM r.committed_at) AS committed, t.attempt, t.outputs"
        " FROM state.dag_ranges r JOIN state.dag_jobs j USING (job_uuid)"
        " JOIN state.dags d USING (dag_id) JOIN state.tasks t USING (task_id)"
        " WHERE d.name = $1 AND r.status = 'committed' ORDER BY r.created_at",
        dag,
    )
    out = []
    for r in rows:
        timing = (r["outputs"] or {}).get("dag", {}).get("timing") or {}
        row = dict(r) | {"created": float(r["created"]), "committed": float(r["committed"])}
        out.append(row | {k: float(v) for k, v in timing.items()})
    return out


def split_report(timings: list[dict[str, Any]], t0: float, executors: list[float]) -> None:
    """Where each range task's time went, per level: summed over its tasks (they overlap:
    up to max_concurrency run at once) and per task; then the run's wall clock."""
    committed_at = {(t["job"], t["range_end"]): t["committed"] for t in timings}
    commits: dict[str, list[float]] = {}
    for t in timings:
        commits.setdefault(t["job"], []).append(t["committed"])
    keys = ("schedule", "start", "query", "write", "commit")
    phases: dict[str, dict[str, list[float]]] = {j: {k: [] for k in keys} for j in commits}
    for t in timings:
        if t["job"] == "swaps":
            ready = t0  # every input range was committed before apply
        else:  # the level-1 partition this range holds whole ends where it ends
            ready = committed_at.get(("swaps", t["range_end"]), t["created"])
        # ... or, when the job had max_concurrency ranges in flight, its last commit before
        # (the slot it freed): the planner's own latency, not the wait for a slot
        freed = [c for c in commits[t["job"]] if c <= t["created"]]
        ready = max([ready, *freed])
        mine = phases[t["job"]]
        mine["schedule"].append(max(0.0, t["created"] - ready))
        if "started" in t:
            mine["start"].append(t["started"] - t["created"])
            mine["query"].append(t["queried"] - t["started"])
            mine["write"].append(t["written"] - t["queried"])
            mine["commit"].append(t["committed"] - t["written"])
    labels = {
        "schedule": "scheduling (input or slot ready -> task created)",
        "start": "queue + claim + worker (created -> operator runs)",
        "query": "query service: bind, executor, SQL, Parquet back",
        "write": "Parquet footer check + store (worker)",
        "commit": "completion report + fenced commit (dispatcher)",
    }
    print(
        f"  {'per range task':<50}{'level 1: sum s':>15}{'mean ms':>8}{'level 2: sum s':>16}{'mean ms':>8}"
    )
    for key in keys:
        cells = ""
        for job in ("swaps", "pool_volume"):
            values = phases.get(job, {}).get(key) or [0.0]
            cells += f"{sum(values):>15.2f}{statistics.mean(values) * 1000:>8.0f} "
        print(f"  {labels[key]:<50}{cells}")
    if executors:
        print(
            f"  (in the query phases: {len(executors)} executor starts,"
            f" {sum(executors) / 1000:.2f} s in all, {statistics.mean(executors):.0f} ms each)"
        )
    first = min(t["created"] for t in timings)
    l1 = max(commits["swaps"])
    print(
        f"  wall clock: apply -> first task {first - t0:.2f} s, -> last level-1 commit"
        f" {l1 - t0:.2f} s, -> last level-2 commit {max(commits['pool_volume']) - t0:.2f} s"
    )


def configs(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(backfill_blocks, max_concurrency) of each DAG built in turn; 0: the default."""
    spans = [int(v) for v in str(args.backfill_blocks).split(",")]
    limits = [int(v) for v in str(args.max_concurrency).split(",")]
    return [(s, m) for s in spans for m in limits]


async def build(
    b: BenchStack,
    name: str,
    tip: int,
    span: int,
    limit: int,
    executors_before: int,
    troubles_before: int,
) -> dict[str, Any]:
    """Apply one DAG over the seeded chain and wait for it: its time, where it went, and
    its level-2 check sums."""
    cpu0, busy0 = stack_cpu(b.home), machine_cpu_seconds()
    t0 = float(await b.pool.fetchval("SELECT extract(epoch FROM clock_timestamp())"))
    await b.apply(dag_spec(name, "seeded", span or None, limit or None))
    await wait_dag(b, name, tip, timeout=600)
    cpu1, busy1 = stack_cpu(b.home), machine_cpu_seconds()
    last = float(
        await b.pool.fetchval(
            "SELECT extract(epoch FROM max(p.created_at)) FROM state.dataset_partitions p"
            " JOIN state.datasets d USING (dataset_uuid) WHERE d.name = $1"
            " AND p.removed_seq IS NULL",
            f"{name}.pool_volume",
        )
    )
    volume = [
        f["uri"].removeprefix("file://")
        for r in await b.pool.fetch(
            "SELECT p.files FROM state.dataset_partitions p JOIN state.datasets d"
            " USING (dataset_uuid) WHERE d.name = $1 AND p.removed_seq IS NULL",
            f"{name}.pool_volume",
        )
        for f in r["files"]
    ]
    starts = executor_starts(b.home / "stack.log")
    seen = troubles(b.home / "stack.log")
    return {
        "troubles": seen[troubles_before:],
        "seconds": last - t0,
        "t0": t0,
        "timings": await task_timings(b, name),
        "sums": check_sums(volume),
        "executors": starts[executors_before:],
        "cpu": {k: cpu1.get(k, 0.0) - cpu0.get(k, 0.0) for k in cpu1},
        "busy": busy1 - busy0,
    }


async def backfill(args: argparse.Namespace) -> None:
    ranges, rb, spb = args.ranges, args.range_blocks, args.swaps_per_block
    tip = ranges * rb
    runs: list[tuple[tuple[int, int], dict[str, Any]]] = []
    tuned = {"query_executors": args.query_executors} if args.query_executors else {}
    async with SeededStack(DEAD_RPC, log_level="info", **tuned) as b:
        t = time.perf_counter()
        files = await seed_chain(b, "seeded", ranges, rb, spb)
        seeded = time.perf_counter() - t
        rows = tip + tip * spb
        print(
            f"seeded {ranges} committed ranges of {rb} blocks each of blocks and pair_Swap"
            f" ({tip:,} blocks + {tip * spb:,} swaps = {rows:,} input rows) through"
            f" chain.commit.commit_range in {seeded:.1f} s"
        )
        duck = [(await asyncio.to_thread(duckdb_run, files, b.home / "duck0"))]
        await b.start()
        for i, (span, limit) in enumerate(configs(args)):
            log = b.home / "stack.log"
            before = len(executor_starts(log)), len(troubles(log))
            runs.append(((span, limit), await build(b, f"dex{i}", tip, span, limit, *before)))
            duck.append(await asyncio.to_thread(duckdb_run, files, b.home / f"duck{i + 1}"))
    duck_s = min(s for s, _ in duck)
    duck_sums = duck[0][1]
    print(
        f"duckdb, one process, the two statements, each level written as Parquet:"
        f" best {duck_s:.2f} s of {len(duck)} ({', '.join(f'{s:.2f}' for s, _ in duck)}),"
        f" {rows / duck_s:,.0f} input rows/s"
    )
    print(f"level-2 rows, sum(swaps), sum(volume0): {duck_sums}")
    if args.query_executors:
        print(f"query service: {args.query_executors} executors (default 2)")
    failed = False
    for (span, limit), run in runs:
        timings = run["timings"]
        per_job = {j: sum(1 for t in timings if t["job"] == j) for j in ("swaps", "pool_volume")}
        trace_s = run["seconds"]
        same = run["sums"] == duck_sums
        failed |= not same
        print(
            f"\ntrace, 2-level DAG, backfill_blocks {span or 'default (none: backfill_rows 1,000,000)'}, max_concurrency"
            f" {limit or 'default (8)'}: {per_job['swaps']} level-1 + {per_job['pool_volume']}"
            f" level-2 range tasks"
        )
        print(
            f"  apply -> last level-2 partition committed: {trace_s:.2f} s,"
            f" {rows / trace_s:,.0f} input rows/s; output {'equals duckdb' if same else 'DIFFERS'}"
            + ("" if same else f" {run['sums']}")
        )
        print(f"  ratio duckdb/trace: {duck_s / trace_s:.2f}   (target >= 0.5)")
        split_report(timings, run["t0"], run["executors"])
        used = sorted(run["cpu"].items(), key=lambda kv: -kv[1])
        shown = ", ".join(f"{k} {v:.2f}" for k, v in used if v >= 0.01)
        print(
            f"  CPU s while building: machine {run['busy']:.2f} of {2 * trace_s:.2f}"
            f" (2 cores); live stack processes: {shown}"
        )
        if run["troubles"]:
            counted = collections.Counter(run["troubles"])
            print("  logged: " + ", ".join(f"{k} x{n}" for k, n in counted.most_common()))
    if failed:
        raise SystemExit(1)


# --- head -------------------------------------------------------------------------------

SWAP = "swap(uint256,uint256,uint256,uint256,address)"
LEVEL1_HEAD = (
    "SELECT s.block_number, s.log_index, s.transaction_hash, s.address, s.amount0In_raw,"
    " b.timestamp AS block_time FROM pair_Swap s JOIN blocks b USING (block_number)"
)
LEVEL2_HEAD = (
    "SELECT address AS pool, count(*) AS swaps, min(block_time) AS first_time FROM swaps GROUP BY 1"
)
LEVEL3_HEAD = "SELECT pool, sum(swaps) AS swaps FROM pool_volume GROUP BY 1"


def head_specs(pool: str) -> tuple[str, str]:
    art = pools_artifact()
    chain = (
        "kind: chain_sync\nname: head\nchain_id: 31337\nrpc_pool: bench\n"
        "mode: {kind: follow_head, from_block: 0, tail_lag: 0, head_poll_seconds: 0.1,"
        " max_head_age_seconds: 600}\n"
        "streams:\n"
        "  blocks: {cryo_dataset: blocks, chunk_size: 1, max_inflight: 8}\n"
        "  logs: {cryo_dataset: logs, chunk_size: 1, max_inflight: 8}\n"
        "contracts:\n"
        f"  pair: {{address: [{pool}], abi: {json.dumps(art['pair']['abi'])}}}\n"
    )
    dag = (
        "kind: dag\nname: live\njobs:\n"
        f"  swaps: {{inputs: [{{chain: head}}], sql: {json.dumps(LEVEL1_HEAD)}}}\n"
        f"  pool_volume: {{inputs: [{{job: swaps}}], sql: {json.dumps(LEVEL2_HEAD)}}}\n"
        f"  busiest: {{inputs: [{{job: pool_volume}}], sql: {json.dumps(LEVEL3_HEAD)}}}\n"
    )
    return chain, dag


HEAD_JOBS = ("swaps", "pool_volume", "busiest")
HEAD_PHASES = {
    "schedule": "inputs committed -> range task created (the scheduler)",
    "start": "created -> operator runs (outbox, queue, claim)",
    "query": "query service (bind, executor, SQL, Parquet back)",
    "write": "Parquet footer check + store (worker)",
    "commit": "completion report + fenced commit (dispatcher)",
}


async def head_levels(b: BenchStack, first: int, last: int) -> dict[str, dict[str, list[float]]]:
    """Per level, where each range task's time went: from its inputs' last commit (the
    chain's blocks and decoded swaps for level 1, the level above for the others) to its own
    commit, by the timing its attempt reports."""
    parts = {
        (r["name"], r["range_end"]): float(r["at"])
        for r in await b.pool.fetch(
            "SELECT d.name, p.range_end, extract(epoch FROM p.created_at) AS at"
            " FROM state.dataset_partitions p JOIN state.datasets d USING (dataset_uuid)"
            " WHERE p.removed_seq IS NULL AND p.range_start >= $1 AND p.range_end <= $2",
            first,
            last,
        )
    }
    inputs = {
        "swaps": ["head.blocks", "head.pair_Swap"],
        "pool_volume": ["live.swaps"],
        "busiest": ["live.pool_volume"],
    }
    out: dict[str, dict[str, list[float]]] = {j: {k: [] for k in HEAD_PHASES} for j in HEAD_JOBS}
    for t in await task_timings(b, "live"):
        if t["range_start"] < first or t["range_end"] > last or "started" not in t:
            continue
        ready = [parts.get((name, t["range_end"])) for name in inputs[t["job"]]]
        if None in ready:
            continue
        phases = out[t["job"]]
        phases["schedule"].append(t["created"] - max(r for r in ready if r is not None))
        phases["start"].append(t["started"] - t["created"])
        phases["query"].append(t["queried"] - t["started"])
        phases["write"].append(t["written"] - t["queried"])
        phases["commit"].append(t["committed"] - t["written"])
    return out


async def head(args: argparse.Namespace) -> None:
    node = Anvil().start()
    try:
        factory = node.deploy_factory()
        acct = node.accounts()
        tx = node.transact(factory, "createPair(address,address)", [acct[8], acct[9]])
        (created,) = node.receipt(tx)["logs"]
        pool = "0x" + created["data"][26:66]
        chain, dag = head_specs(pool)
        async with BenchStack(node, log_level="info") as b:
            await b.apply(chain)
            await b.apply(dag)
            first = node.head() + 1 + 3  # 3 warm-up blocks
            last = first + args.blocks
            i = 0
            cpu0, busy0 = stack_cpu(b.home), machine_cpu_seconds()
            next_at = time.monotonic()
            while node.head() < last - 1:
                node.transact(pool, SWAP, [10**18 + i, 0, 0, 1, acct[1]], acct[2])
                i += 1
                next_at += args.interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await wait_dag(b, "live", last, timeout=60)
            cpu1, busy1 = stack_cpu(b.home), machine_cpu_seconds()
            steps = await b.pool.fetch(
                "WITH p AS (SELECT d.name, p.range_start, p.range_end, p.created_at"
                " FROM state.dataset_partitions p JOIN state.datasets d USING (dataset_uuid)"
                " WHERE p.removed_seq IS NULL)"
                " SELECT b.range_start AS block,"
                " extract(epoch FROM s.created_at - b.created_at) AS decoded,"
                " extract(epoch FROM l1.created_at - b.created_at) AS level1,"
                " extract(epoch FROM l2.created_at - b.created_at) AS level2,"
                " extract(epoch FROM l3.created_at - b.created_at) AS level3"
                " FROM p b"
                " JOIN p s ON s.name = 'head.pair_Swap' AND s.range_start <= b.range_start"
                "  AND s.range_end > b.range_start"
                " JOIN p l1 ON l1.name = 'live.swaps' AND l1.range_start <= b.range_start"
                "  AND l1.range_end > b.range_start"
                " JOIN p l2 ON l2.name = 'live.pool_volume' AND l2.range_start <= b.range_start"
                "  AND l2.range_end > b.range_start"
                " JOIN p l3 ON l3.name = 'live.busiest' AND l3.range_start <= b.range_start"
                "  AND l3.range_end > b.range_start"
                " WHERE b.name = 'head.blocks' AND b.range_start >= $1 AND b.range_start < $2"
                " ORDER BY b.range_start",
                first,
                last,
            )
            spans = await b.pool.fetchval(
                "SELECT avg(p.range_end - p.range_start) FROM state.dataset_partitions p"
                " JOIN state.datasets d USING (dataset_uuid) WHERE d.name = 'live.busiest'"
                " AND p.removed_seq IS NULL AND p.range_start >= $1",
                first,
            )
            levels = await head_levels(b, first, last)
            starts = executor_starts(b.home / "stack.log")
    finally:
        node.stop()
    print(
        f"follow head, anvil automine, one swap every {args.interval:g} s (a block each),"
        f" tail_lag 0, chunk_size 1: {len(steps)} blocks [{first}, {last}) after 3 warm-up"
    )
    print(f"  level-3 partitions hold {float(spans or 0):.2f} blocks on average")
    print(f"  {'blocks range committed ->':<34}{'p50 s':>8}{'p90 s':>8}{'p99 s':>8}{'max s':>8}")
    for key, label in (
        ("decoded", "pair_Swap range committed"),
        ("level1", "level 1 (enriched swaps)"),
        ("level2", "level 2 (pool volume)"),
        ("level3", "level 3 (totals) committed"),
    ):
        values = [float(r[key]) for r in steps]
        print(
            f"  {label:<34}{pct(values, 0.5):>8.2f}{pct(values, 0.9):>8.2f}"
            f"{pct(values, 0.99):>8.2f}{max(values):>8.2f}"
        )
    print("(targets: level 3 p50 <= 1.5 s, p99 <= 4 s)")
    print(f"  each level's range task, p50 ms: {'':<24}{'level 1':>9}{'level 2':>9}{'level 3':>9}")
    for key, label in HEAD_PHASES.items():
        cells = "".join(f"{pct(levels[j][key], 0.5) * 1000:>9.0f}" for j in HEAD_JOBS)
        print(f"  {label:<57}{cells}")
    print(
        f"  (the query service started {len(starts)} executors in the whole run,"
        f" {statistics.median(starts or [0]):.0f} ms each (median): {len(starts) / max(1, last):.1f} a block)"
    )
    used = sorted(((k, cpu1.get(k, 0.0) - cpu0.get(k, 0.0)) for k in cpu1), key=lambda kv: -kv[1])
    blocks = max(1, last - first + 3)  # the warm-up blocks were sent inside the window too
    print(
        f"  CPU s while following ({blocks} blocks): stack {sum(v for _, v in used):.2f}"
        f" ({sum(v for _, v in used) / blocks:.3f} a block), machine {busy1 - busy0:.2f};"
        " by process: " + ", ".join(f"{k} {v:.2f}" for k, v in used if v >= 0.01)
    )
    if len(steps) < args.blocks:
        raise SystemExit(f"only {len(steps)} of {args.blocks} blocks measured")


# --- status -----------------------------------------------------------------------------

SPAN = 10


async def status(args: argparse.Namespace) -> None:
    """The planner and `dag_status` over jobs of --partitions committed partitions each."""
    from trace_platform.config import Settings
    from trace_platform.dag.planner import DagPlanner
    from trace_platform.db.embedded import stop_embedded
    from trace_platform.ops.dags import dag_status
    from trace_platform.ops.specs import apply_specs

    n = args.partitions
    home = Path(tempfile.mkdtemp(prefix="trace-dag-bench-"))
    settings = Settings.load({"home": home, "log_level": "warning"}, env={})
    urls = await prepare(settings)
    pool = await create_pool(urls.state, max_size=2)
    try:
        env = OpsEnv(settings, pool, pool)
        chain = (
            "kind: chain_sync\nname: big\nchain_id: 1\nrpc_pool: nowhere\n"
            f"mode: {{kind: fixed_target, from_block: 0, to_block: {n * SPAN + 1000}}}\n"
            f"streams:\n  blocks: {{cryo_dataset: blocks, chunk_size: {SPAN}}}\n"
            f"  logs: {{cryo_dataset: logs, chunk_size: {SPAN}}}\n"
        )
        dag = (
            "kind: dag\nname: wide\njobs:\n"
            "  per_block: {inputs: [{chain: big}], sql: 'SELECT b.block_number, count(l.log_index)"
            " AS logs FROM blocks b LEFT JOIN logs l USING (block_number) GROUP BY 1'}\n"
            "  busy: {inputs: [{job: per_block}], sql: 'SELECT block_number FROM per_block"
            " WHERE logs > 0'}\n"
            "  total: {inputs: [{job: busy}], sql: 'SELECT count(*) AS n FROM busy'}\n"
        )
        await apply_specs(env, LITE_ORG_ID, chain)
        await apply_specs(env, LITE_ORG_ID, dag)
        t = time.perf_counter()
        async with pool.acquire() as conn, conn.transaction():
            for stream in ("blocks", "logs"):
                ds = await conn.fetchval(
                    "SELECT dataset_uuid FROM state.datasets WHERE name = $1", f"big.{stream}"
                )
                await seed_partitions(conn, ds, 0, n)
            for job in ("per_block", "busy", "total"):
                await seed_job(conn, job, n)
        await pool.execute("ANALYZE")
        print(
            f"seeded 2 chain streams and 3 jobs x {n:,} committed partitions (ranges, lineage)"
            f" in {time.perf_counter() - t:.1f} s"
        )
        jobs = {
            r["name"]: r["job_uuid"]
            for r in await pool.fetch("SELECT name, job_uuid FROM state.dag_jobs")
        }
        planner = DagPlanner(pool)
        idle, new, start = [], [], []
        blocks_ds = await pool.fetchval(
            "SELECT dataset_uuid FROM state.datasets WHERE name = 'big.blocks'"
        )
        logs_ds = await pool.fetchval(
            "SELECT dataset_uuid FROM state.datasets WHERE name = 'big.logs'"
        )
        for _ in range(args.runs + 1):
            async with pool.acquire() as conn:
                tr = conn.transaction()
                await tr.start()
                t = time.perf_counter()
                created = await planner.plan_job(conn, jobs["per_block"])
                idle.append((time.perf_counter() - t) * 1000)
                assert created == 0, created
                await tr.rollback()
                tr = conn.transaction()
                await tr.start()
                for ds in (blocks_ds, logs_ds):  # one new range of each input
                    await seed_partitions(conn, ds, n, n + 1)
                t = time.perf_counter()
                created = await planner.plan_job(conn, jobs["per_block"])
                new.append((time.perf_counter() - t) * 1000)
                assert created == 1, created
                await tr.rollback()
                tr = conn.transaction()
                await tr.start()
                await conn.execute(  # the job anew at block 0, its inputs all committed
                    "DELETE FROM state.dag_ranges WHERE job_uuid = $1", jobs["per_block"]
                )
                await conn.execute(
                    "UPDATE state.dag_jobs SET cursor = 0 WHERE job_uuid = $1", jobs["per_block"]
                )
                t = time.perf_counter()
                created = await planner.plan_job(conn, jobs["per_block"])
                start.append((time.perf_counter() - t) * 1000)
                assert created > 0, created
                await tr.rollback()
        took = []
        for _ in range(args.runs + 1):
            t = time.perf_counter()
            st = await dag_status(env, LITE_ORG_ID, "wide")
            took.append((time.perf_counter() - t) * 1000)
        assert [j.committed for j in st.jobs] == [n, n, n], st
    finally:
        await pool.close()
        stop_embedded(home / "postgres")
        shutil.rmtree(home, ignore_errors=True)
    print(f"3 jobs x {n:,} committed partitions, {args.runs} runs each (after one warm-up)")
    print(f"  {'operation':<56}{'median ms':>10}{'max ms':>9}")
    for label, values in (
        ("DagPlanner.plan_job, nothing to do", idle[1:]),
        ("DagPlanner.plan_job, one new input range -> 1 task", new[1:]),
        ("DagPlanner.plan_job, a new job at block 0 -> 8 tasks", start[1:]),
        ("ops.dags.dag_status (3 jobs)", took[1:]),
    ):
        print(f"  {label:<56}{statistics.median(values):>10.1f}{max(values):>9.1f}")
    print("(target <= 100 ms)")


async def seed_partitions(conn: Any, dataset: uuid.UUID, first: int, stop: int) -> None:
    """Live partitions [SPAN*i, SPAN*(i+1)) for i in [first, stop), as a range commit writes
    them (one file each, a commit sequence number each)."""
    await conn.execute(
        "INSERT INTO state.dataset_partitions (partition_id, dataset_uuid, range_start,"
        " range_end, files, row_count, size_bytes, added_seq)"
        " SELECT gen_random_uuid(), $1, i * $2, (i + 1) * $2,"
        " jsonb_build_array(jsonb_build_object('uri', 'file:///seeded/' || i || '.parquet',"
        " 'size', 1000, 'sha256', md5(i::text), 'rows', $2)), $2, 1000, i + 1"
        " FROM generate_series($3::bigint, $4::bigint - 1) AS i",
        dataset,
        SPAN,
        first,
        stop,
    )
    await conn.execute(
        "UPDATE state.datasets SET commit_seq = greatest(commit_seq, $2) WHERE dataset_uuid = $1",
        dataset,
        stop,
    )


async def seed_job(conn: Any, job: str, n: int) -> None:
    """A job's ledger as its range commits leave it: `n` committed ranges with their
    partitions, completed tasks and lineage to the partitions of what it reads; its cursor
    at the end."""
    row = await conn.fetchrow(
        "SELECT job_uuid, dataset_uuid, generation, org_id FROM state.dag_jobs WHERE name = $1",
        job,
    )
    await seed_partitions(conn, row["dataset_uuid"], 0, n)
    await conn.execute(
        "WITH r AS (INSERT INTO state.dag_ranges (task_id, job_uuid, generation, epoch,"
        " range_start, range_end, status, partition_id, committed_at)"
        " SELECT gen_random_uuid(), $1, $2, 0, p.range_start, p.range_end, 'committed',"
        " p.partition_id, now() FROM state.dataset_partitions p WHERE p.dataset_uuid = $3"
        " RETURNING task_id)"
        " INSERT INTO state.tasks (task_id, org_id, status, payload, max_attempts, last_outcome)"
        " SELECT task_id, $4, 'completed', '{\"operator\": \"dag_sql\"}', 5, 'success' FROM r",
        row["job_uuid"],
        row["generation"],
        row["dataset_uuid"],
        row["org_id"],
    )
    await conn.execute(
        "INSERT INTO state.dag_lineage (partition_id, input_dataset_uuid, input_partition_id,"
        " range_start, range_end)"
        " SELECT o.partition_id, i.dataset_uuid, i.partition_id, i.range_start, i.range_end"
        " FROM state.dag_reads r JOIN state.dataset_partitions i ON i.dataset_uuid = r.dataset_uuid"
        " JOIN state.dataset_partitions o ON o.dataset_uuid = $2 AND o.range_start = i.range_start"
        " WHERE r.job_uuid = $1 AND r.bounded",
        row["job_uuid"],
        row["dataset_uuid"],
    )
    await conn.execute(
        "UPDATE state.dag_jobs SET cursor = $2 WHERE job_uuid = $1", row["job_uuid"], n * SPAN
    )


# --- rederive and cut-over (DAG generations) ---------------------------------------------

LEVEL2_V2 = LEVEL2.replace(
    "min(block_time) AS block_time", "min(block_time) AS block_time, max(amount1Out) AS out1"
)


class RpcCounter:
    """A loopback JSON-RPC endpoint that only counts: the seeded chain's pool points here,
    so any request the stack makes to "the node" is seen (and answered with an error)."""

    def __init__(self) -> None:
        self.methods: collections.Counter[str] = collections.Counter()
        self.url = ""
        self.runner: Any = None

    async def start(self) -> RpcCounter:
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            try:
                body = orjson.loads(await request.read())
            except orjson.JSONDecodeError:
                body = {}
            for item in body if isinstance(body, list) else [body]:
                self.methods[str(item.get("method") if isinstance(item, dict) else "?")] += 1
            return web.json_response(
                {"jsonrpc": "2.0", "id": None, "error": {"code": -32000, "message": "bench"}}
            )

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()


def raw_cryo_rate(blocks: int) -> tuple[float, int]:
    """Raw cryo extracting blocks + logs of `blocks` anvil blocks (a token transfer block
    every 10): (seconds, logs extracted)."""
    import cryo

    node = Anvil().start()
    try:
        chain_bench.make_chain(node, blocks)
        out = Path(tempfile.mkdtemp(prefix="trace-raw-cryo-"))
        t0 = time.perf_counter()
        cryo.freeze(
            ["blocks", "logs"],
            blocks=[f"0:{blocks}"],
            rpc=node.url,
            output_dir=str(out),
            hex=True,
            verbose=False,
        )
        elapsed = time.perf_counter() - t0
        import duckdb

        logs = (
            duckdb.connect()
            .execute(f"SELECT count(*) FROM read_parquet('{out}/*logs*.parquet')")
            .fetchone()
        )
        shutil.rmtree(out, ignore_errors=True)
        return elapsed, int(logs[0]) if logs else 0
    finally:
        node.stop()


async def generation_state(b: BenchStack, dag: str) -> tuple[int, int | None]:
    row = await b.pool.fetchrow(
        "SELECT generation, building_generation FROM state.dags WHERE name = $1", dag
    )
    return int(row["generation"]), row["building_generation"]


async def rederive(args: argparse.Namespace) -> None:
    """Change level 2's SQL of a built 2-level DAG over the seeded chain: the new generation
    of level 2 is computed from level 1's committed partitions, next to extracting the same
    blocks from a node."""
    ranges, rb, spb = args.ranges, args.range_blocks, args.swaps_per_block
    tip = ranges * rb
    rows = tip + tip * spb
    cryo_s, cryo_logs = await asyncio.to_thread(raw_cryo_rate, args.cryo_blocks)
    counter = await RpcCounter().start()
    try:
        async with SeededStack(counter.url, log_level="info") as b:
            await seed_chain(b, "seeded", ranges, rb, spb)
            level1 = tip * spb
            print(
                f"seeded {ranges} committed ranges of {rb} blocks ({tip:,} blocks + {level1:,}"
                f" swaps = {rows:,} input rows) through chain.commit.commit_range"
            )
            await b.start()
            t0 = time.perf_counter()
            await b.apply(dag_spec("rx", "seeded", args.backfill_blocks or None, None))
            await wait_dag(b, "rx", tip, timeout=900)
            built = time.perf_counter() - t0
            before = dict(counter.methods)
            l1_before = await b.pool.fetch(
                "SELECT partition_id FROM state.dataset_partitions p JOIN state.datasets d"
                " USING (dataset_uuid) WHERE d.name = 'rx.swaps' AND p.removed_seq IS NULL"
            )
            start = float(await b.pool.fetchval("SELECT extract(epoch FROM clock_timestamp())"))
            changed = dag_spec("rx", "seeded", args.backfill_blocks or None, None).replace(
                json.dumps(LEVEL2), json.dumps(LEVEL2_V2)
            )
            await b.apply(changed)
            deadline = time.monotonic() + 900
            while await generation_state(b, "rx") != (2, None):
                if time.monotonic() > deadline:
                    raise TimeoutError("generation 2 did not cut over")
                await asyncio.sleep(0.05)
            cut = await b.pool.fetchval(
                "SELECT extract(epoch FROM g.current_at) FROM state.dag_generations g"
                " JOIN state.dags d USING (dag_id) WHERE d.name = 'rx' AND g.generation = 2"
            )
            rederived = float(cut) - start
            asked = {
                m: n - before.get(m, 0) for m, n in counter.methods.items() if n > before.get(m, 0)
            }
            rpc = sum(asked.values())
            l1_after = await b.pool.fetch(
                "SELECT partition_id FROM state.dataset_partitions p JOIN state.datasets d"
                " USING (dataset_uuid) WHERE d.name = 'rx.swaps' AND p.removed_seq IS NULL"
            )
            volume = [
                f["uri"].removeprefix("file://")
                for r in await b.pool.fetch(
                    "SELECT p.files FROM state.dataset_partitions p JOIN state.datasets d"
                    " USING (dataset_uuid) WHERE d.name = 'rx.pool_volume'"
                    " AND p.removed_seq IS NULL"
                )
                for f in r["files"]
            ]
            tasks = await b.pool.fetchval(
                "SELECT count(*) FROM state.dag_ranges r JOIN state.dag_jobs j USING (job_uuid)"
                " JOIN state.dags d USING (dag_id) WHERE d.name = 'rx' AND j.role = 'current'"
                " AND j.name = 'pool_volume'"
            )
            import duckdb

            listed = ", ".join(f"'{p}'" for p in volume)
            out1 = (
                duckdb.connect()
                .execute(f"SELECT count(*) FROM read_parquet([{listed}]) WHERE out1 IS NOT NULL")
                .fetchone()
            )
    finally:
        await counter.stop()
    per_block = cryo_s / args.cryo_blocks
    cryo_full = per_block * tip
    print(
        f"generation 1 (both levels from the seeded chain): built in {built:.2f} s"
        f" ({rows / built:,.0f} input rows/s)"
    )
    print(
        f"generation 2 (level 2's SQL changed; level 1's {level1:,} enriched swaps its input):"
        f" apply -> cut-over {rederived:.2f} s, {tasks} level-2 range tasks,"
        f" {rpc} RPC requests{f' {asked}' if asked else ''} ({rpc - asked.get('eth_chainId', 0)}"
        " for chain data; eth_chainId is a process's first check of the endpoint, 16 at"
        " once, whenever it comes); level-1 partitions unchanged:"
        f" {sorted(r[0] for r in l1_before) == sorted(r[0] for r in l1_after)};"
        f" rows with the new column: {out1[0] if out1 else 0:,}"
    )
    print(
        f"raw cryo, blocks + logs of {args.cryo_blocks:,} anvil blocks ({cryo_logs:,} logs):"
        f" {cryo_s:.2f} s = {per_block * 1000:.2f} ms a block -> the seeded {tip:,} blocks"
        f" at that rate: {cryo_full:.1f} s (a lower bound: the seeded chain holds {spb} swaps"
        " a block, anvil's about one log in 10 blocks)"
    )
    print(
        f"  re-derive vs raw cryo of the same blocks: {cryo_full / rederived:.1f}x faster"
        " (target >= 10x, 0 RPC for chain data)"
    )


async def seed_row(conn: Any, job_uuid: uuid.UUID, n: int) -> None:
    """One job row's ledger as its range commits leave it (`seed_job`, by row)."""
    row = await conn.fetchrow(
        "SELECT job_uuid, dataset_uuid, generation, org_id FROM state.dag_jobs WHERE job_uuid = $1",
        job_uuid,
    )
    await seed_partitions(conn, row["dataset_uuid"], 0, n)
    await conn.execute(
        "INSERT INTO state.dag_ranges (task_id, job_uuid, generation, epoch, range_start,"
        " range_end, status, partition_id, committed_at)"
        " SELECT gen_random_uuid(), $1, $2, 0, p.range_start, p.range_end, 'committed',"
        " p.partition_id, now() FROM state.dataset_partitions p WHERE p.dataset_uuid = $3",
        row["job_uuid"],
        row["generation"],
        row["dataset_uuid"],
    )
    await conn.execute(
        "UPDATE state.dag_jobs SET cursor = $2 WHERE job_uuid = $1", row["job_uuid"], n * SPAN
    )


async def cutover(args: argparse.Namespace) -> None:
    """The cut-over transaction of a 3-job DAG whose last two jobs changed, each row (old
    and new) holding --partitions committed partitions: its lock hold (BEGIN to COMMIT: the
    locks it takes are released at COMMIT), switching 1 -> 2 and back, and the coverage
    check that precedes it (no lock)."""
    from trace_platform.config import Settings
    from trace_platform.dag.generations import coverage, switch
    from trace_platform.db.embedded import stop_embedded
    from trace_platform.ops.specs import apply_specs

    n = args.partitions
    home = Path(tempfile.mkdtemp(prefix="trace-dag-bench-"))
    settings = Settings.load({"home": home, "log_level": "warning"}, env={})
    urls = await prepare(settings)
    pool = await create_pool(urls.state, max_size=2)
    held: list[float] = []
    checks: list[float] = []
    try:
        env = OpsEnv(settings, pool, pool)
        chain = (
            "kind: chain_sync\nname: big\nchain_id: 1\nrpc_pool: nowhere\n"
            f"mode: {{kind: fixed_target, from_block: 0, to_block: {n * SPAN + 1000}}}\n"
            f"streams:\n  blocks: {{cryo_dataset: blocks, chunk_size: {SPAN}}}\n"
        )

        def dag(where: str) -> str:
            return (
                "kind: dag\nname: wide\njobs:\n"
                "  per_block: {inputs: [{chain: big}], sql: 'SELECT block_number FROM blocks'}\n"
                "  busy: {inputs: [{job: per_block}], sql: 'SELECT block_number FROM per_block"
                f" WHERE {where}'}}\n"
                "  total: {inputs: [{job: busy}], sql: 'SELECT count(*) AS n FROM busy'}\n"
            )

        await apply_specs(env, LITE_ORG_ID, chain)
        await apply_specs(env, LITE_ORG_ID, dag("block_number > 0"))
        async with pool.acquire() as conn, conn.transaction():
            ds = await conn.fetchval(
                "SELECT dataset_uuid FROM state.datasets WHERE name = 'big.blocks'"
            )
            await seed_partitions(conn, ds, 0, n)
            for r in await conn.fetch("SELECT job_uuid FROM state.dag_jobs"):
                await seed_row(conn, r["job_uuid"], n)
        (result,) = await apply_specs(env, LITE_ORG_ID, dag("block_number > 1"))
        assert result["building_generation"] == 2, result
        async with pool.acquire() as conn, conn.transaction():
            for r in await conn.fetch(
                "SELECT job_uuid FROM state.dag_jobs WHERE role = 'building'"
            ):
                await seed_row(conn, r["job_uuid"], n)
        await pool.execute("ANALYZE")
        dag_id = await pool.fetchval("SELECT dag_id FROM state.dags WHERE name = 'wide'")
        parts = await pool.fetchval("SELECT count(*) FROM state.dataset_partitions")
        print(
            f"a 3-job DAG, 2 jobs changed: 5 job rows x {n:,} committed partitions"
            f" ({parts:,} partitions in all)"
        )
        target = 2
        async with pool.acquire() as conn:
            for _ in range(args.runs + 1):
                t = time.perf_counter()
                checked = await conn.fetchval("SELECT clock_timestamp()")
                building, jobs, active = await coverage(conn, dag_id)
                checks.append((time.perf_counter() - t) * 1000)
                if target == 2:
                    assert building == 2 and active and all(j.ready for j in jobs), jobs
                t = time.perf_counter()
                async with conn.transaction():
                    await switch(conn, dag_id, target, "bench", since=checked)
                held.append((time.perf_counter() - t) * 1000)
                if target == 1:  # back to building generation 2, as apply leaves it
                    await conn.execute(
                        "UPDATE state.dags SET building_generation = 2 WHERE dag_id = $1", dag_id
                    )
                    await conn.execute(
                        "UPDATE state.dag_generations SET state = 'building'"
                        " WHERE dag_id = $1 AND generation = 2",
                        dag_id,
                    )
                    await conn.execute(
                        "UPDATE state.dag_jobs SET role = 'building' WHERE dag_id = $1"
                        " AND role = 'retired'",
                        dag_id,
                    )
                target = 1 if target == 2 else 2
    finally:
        await pool.close()
        stop_embedded(home / "postgres")
        shutil.rmtree(home, ignore_errors=True)
    print(f"  {'operation':<60}{'median ms':>10}{'max ms':>9}")
    for label, values in (
        ("coverage check (no lock), every building job vs current", checks[1:]),
        ("cut-over transaction, BEGIN -> COMMIT (its lock hold)", held[1:]),
    ):
        print(f"  {label:<60}{statistics.median(values):>10.1f}{max(values):>9.1f}")
    print("(target: lock hold <= 50 ms)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    smoke.add_flag(ap)
    sub = ap.add_subparsers(dest="bench", required=True)
    bf = sub.add_parser("backfill")
    bf.add_argument("--ranges", type=int, default=200, help="committed chain ranges")
    bf.add_argument("--range-blocks", type=int, default=1000, help="blocks a chain range")
    bf.add_argument("--swaps-per-block", type=int, default=5)
    bf.add_argument(
        "--backfill-blocks", default="0", help="level 1's; a list builds one DAG each (0: default)"
    )
    bf.add_argument(
        "--max-concurrency", default="0", help="the DAG's; a list builds one DAG each (0: default)"
    )
    bf.add_argument(
        "--query-executors", type=int, default=0, help="the query service's (0: the default)"
    )
    hd = sub.add_parser("head")
    hd.add_argument("--blocks", type=int, default=60, help="blocks measured")
    hd.add_argument("--interval", type=float, default=1.0, help="seconds between blocks")
    st = sub.add_parser("status")
    st.add_argument("--partitions", type=int, default=10_000, help="per job and input")
    st.add_argument("--runs", type=int, default=20)
    rd = sub.add_parser("rederive")
    rd.add_argument("--ranges", type=int, default=200, help="committed chain ranges")
    rd.add_argument("--range-blocks", type=int, default=1000, help="blocks a chain range")
    rd.add_argument("--swaps-per-block", type=int, default=5)
    rd.add_argument("--backfill-blocks", type=int, default=0, help="level 1's (0: default)")
    rd.add_argument("--cryo-blocks", type=int, default=5000, help="anvil blocks raw cryo reads")
    co = sub.add_parser("cutover")
    co.add_argument("--partitions", type=int, default=10_000, help="per job row")
    co.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    if smoke.apply(args, SMOKE[args.bench]):
        chain_bench.SETTLE_SECONDS = 0.0
    benches = {
        "backfill": backfill,
        "head": head,
        "status": status,
        "rederive": rederive,
        "cutover": cutover,
    }
    asyncio.run(benches[args.bench](args))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
