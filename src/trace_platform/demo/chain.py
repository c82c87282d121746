"""The chain part of `trace demo`: a local anvil node with ERC-20 traffic (a few whale
transfers among many small ones) and a factory whose pools see swaps, synced into four
datasets and two decoded tables (`factory_PairCreated`, `pair_Swap`) through the running
stack, with a progress bar per stream, then queried through the sandboxed query path — a
join of decoded swaps with block timestamps among them."""

from __future__ import annotations

import asyncio
import json
import secrets
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from trace_platform.chain.devnet import Anvil, pools_artifact
from trace_platform.domain.errors import TraceError
from trace_platform.ops.chains import chain_status
from trace_platform.ops.datasets import query_here
from trace_platform.ops.env import OpsEnv
from trace_platform.ops.specs import apply_specs
from trace_platform.ports import LITE_ORG_ID

DEMO_POOL = "demo"
BLOCKS = 600
WHALE = 10**24  # 1,000,000 tokens of 18 decimals
ZERO_ADDRESS = "0x" + "0" * 40  # the mint at deployment is not a transfer between holders
STREAMS = ("blocks", "transactions", "logs", "erc20_transfers")
SWAP = "swap(uint256,uint256,uint256,uint256,address)"
BIG_SWAP = 10**21  # amount0In of a swap the live alert calls big


@dataclass
class ChainDemoResult:
    status: str  # completed | failed | skipped
    detail: str = ""
    name: str = ""
    blocks: int = 0
    seconds: float = 0.0
    rows: dict[str, int] = field(default_factory=dict)
    whales_sent: int = 0
    whales_found: int = 0
    top: list[list[Any]] = field(default_factory=list)
    swaps_sent: int = 0
    swaps_found: int = 0
    swaps: list[list[Any]] = field(default_factory=list)
    dag: str = ""  # the DAG derived from the synced chain, and what its output holds
    dag_seconds: float = 0.0
    dag_swaps: int = 0
    volumes: list[list[Any]] = field(default_factory=list)
    top_schedule: str = ""  # the whole-snapshot top_pools job: its cron and next slot
    top_next_slot: str = ""
    # pool_volume's SQL changed: the generation built beside the current one, the cut-over,
    # then the rollback (generation numbers, seconds, and the DAG's tasks around it)
    rebuilt: list[str] = field(default_factory=list)
    generations: tuple[int, int] = (0, 0)
    rebuild_seconds: float = 0.0
    cut_over: bool = False
    rolled_back: bool = False
    tasks_around_rollback: tuple[int, int] = (0, 0)
    new_columns: list[str] = field(default_factory=list)


@dataclass
class Traffic:
    token: str
    factory: str
    pools: list[str]
    whales: int = 0
    swaps: int = 0


def start_node() -> Anvil:
    return Anvil().start()


def make_traffic(node: Anvil, blocks: int) -> Traffic:
    """Token traffic and swaps on two pools (one created halfway) over `blocks` blocks."""
    acct = node.accounts()
    traffic = Traffic(node.deploy_token(), node.deploy_factory(), [])
    traffic.pools.append(create_pool(node, traffic.factory, acct[8], acct[9]))
    i = 0
    while node.head() < blocks - 1:
        if len(traffic.pools) == 1 and node.head() >= blocks // 2:
            traffic.pools.append(create_pool(node, traffic.factory, acct[9], acct[8]))
        amounts = [10**18 * (1 + (i * 37) % 500) for _ in range(3)]
        if i % 7 == 3:
            amounts.append(WHALE * (2 + i % 5))
            traffic.whales += 1
        pool = traffic.pools[i % len(traffic.pools)]
        node.set_automine(False)  # the swap goes into the traffic block
        node.transact(pool, SWAP, [10**18 * (1 + i % 40), 0, 0, 10**17 * (i + 1), acct[3]])
        traffic.swaps += 1
        node.traffic_block(traffic.token, amounts)
        node.mine(min(9, blocks - 1 - node.head()))
        i += 1
    return traffic


def create_pool(node: Anvil, factory: str, a: str, b: str) -> str:
    tx = node.transact(factory, "createPair(address,address)", [a, b])
    (log,) = node.receipt(tx)["logs"]
    return "0x" + str(log["data"])[26:66]


def contracts_text(factory: str, pools: list[str] | None = None) -> str:
    """The demo's `contracts:` section: the factory by address, its pools by the factory's
    PairCreated events (or, for a job that starts after they were created, by address)."""
    art = pools_artifact()
    pair = (
        f"    address: {json.dumps(pools)}\n"
        if pools
        else "    factory: {contract: factory, event: PairCreated, parameter: pair}\n"
    )
    return (
        "contracts:\n"
        f"  factory:\n    address: ['{factory}']\n    abi: {json.dumps(art['factory']['abi'])}\n"
        f"  pair:\n{pair}    abi: {json.dumps(art['pair']['abi'])}\n"
    )


def spec_text(name: str, blocks: int, factory: str) -> str:
    streams = "\n".join(
        f"  {s}: {{cryo_dataset: {s}, chunk_size: 50, max_inflight: 8}}" for s in STREAMS
    )
    return (
        f"kind: chain_sync\nname: {name}\nchain_id: 31337\nrpc_pool: {DEMO_POOL}\n"
        f"mode: {{kind: fixed_target, from_block: 0, to_block: {blocks}}}\nstreams:\n{streams}\n"
        + contracts_text(factory)
    )


def _bar(done: int, total: int, width: int = 28) -> str:
    filled = int(width * min(done, total) / total) if total else width
    return "#" * filled + "-" * (width - filled)


async def sync_and_query(env: OpsEnv, traffic: Traffic, timeout: float) -> ChainDemoResult:
    name = f"demo-{secrets.token_hex(3)}"
    result = ChainDemoResult("failed", name=name, whales_sent=traffic.whales, blocks=BLOCKS)
    result.swaps_sent = traffic.swaps
    await apply_specs(env, LITE_ORG_ID, spec_text(name, BLOCKS, traffic.factory))
    print(
        f"applied chain_sync {name}: {BLOCKS} blocks x {len(STREAMS)} streams"
        " + decoded factory_PairCreated and pair_Swap",
        flush=True,
    )
    t0 = time.monotonic()
    tty = sys.stdout.isatty()
    shown, last = 0, 0.0
    while True:
        (job,) = await chain_status(env, LITE_ORG_ID, name)
        lines = [
            f"  {s['stream']:<16} [{_bar(s['tip'], BLOCKS)}] {s['tip']:>4}/{BLOCKS}"
            + (f"  {s['last_error'][:60]}" if s["last_error"] else "")
            for s in job["streams"]
        ]
        done = all(s["complete"] for s in job["streams"])
        stopped = [s for s in job["streams"] if s["status"] == "stopped"]
        finished = done or bool(stopped) or time.monotonic() - t0 > timeout
        if tty:  # redraw the bars in place
            print((f"\x1b[{shown}F" if shown else "") + "\n".join(lines), flush=True)
            shown = len(lines)
        elif finished or time.monotonic() - last >= 2.0:
            print("\n".join(lines), flush=True)
            last = time.monotonic()
        if finished:
            break
        await asyncio.sleep(0.2)
    result.seconds = time.monotonic() - t0
    if not done:
        result.detail = "sync did not finish" + (
            f": {stopped[0]['last_error']}" if stopped else f" within {timeout:.0f} s"
        )
        return result
    try:
        for s in STREAMS:
            out = await query_here(
                env, LITE_ORG_ID, f"{name}.{s}", "SELECT count(*) FROM dataset", None
            )
            result.rows[s] = int(out.rows[0][0])
        top = await query_here(
            env,
            LITE_ORG_ID,
            f"{name}.erc20_transfers",
            f"SELECT block_number, to_address, value_f64 / 1e18 AS tokens FROM dataset"
            f" WHERE value_f64 >= {WHALE:.0e} AND from_address <> '{ZERO_ADDRESS}'"
            " ORDER BY value_f64 DESC, block_number",
            100,
        )
        # Decoded swaps joined with their blocks' timestamps, by the catalog's short names.
        swaps = await query_here(
            env,
            LITE_ORG_ID,
            None,
            "SELECT s.block_number, strftime(to_timestamp(b.timestamp), '%H:%M:%S') AS time,"
            " s.address AS pool, s.amount0In / 1e18 AS tokens_in, count(*) OVER () AS swaps"
            " FROM pair_Swap s JOIN blocks b USING (block_number)"
            " ORDER BY s.amount0In DESC, s.block_number LIMIT 5",
            None,
            None,
            name,
        )
    except TraceError as exc:
        result.detail = f"query failed: {exc.detail}"
        return result
    result.top = [list(r) for r in top.rows]
    result.whales_found = len(result.top)
    result.swaps = [list(r) for r in swaps.rows]
    result.swaps_found = int(result.swaps[0][4]) if result.swaps else 0
    try:
        await derive(env, result, timeout)
    except TraceError as exc:
        result.detail = f"DAG failed: {exc.detail}"
        return result
    try:
        await change_and_roll_back(env, result, timeout)
    except TraceError as exc:
        result.detail = f"DAG generations failed: {exc.detail}"
        return result
    ok = (
        result.rows.get("blocks") == BLOCKS
        and result.whales_found == traffic.whales
        and result.swaps_found == traffic.swaps
        and result.dag_swaps == traffic.swaps
        and result.cut_over
        and result.rolled_back
        and result.tasks_around_rollback[0] == result.tasks_around_rollback[1]
    )
    result.status = "completed" if ok else "failed"
    if not ok:
        result.detail = "synced data does not match the traffic that was sent"
    return result


TOP_POOLS_SCHEDULE = "* * * * *"


def dag_text(dag: str, chain: str, changed: bool = False) -> str:
    """Three jobs over the chain: decoded swaps enriched with their blocks' timestamps; per
    range of blocks, each pool's volume; and over all of it, the top pools, a whole
    snapshot recomputed once a minute (UTC) as a new version. `changed`: pool_volume (level
    2) also keeps each pool's biggest swap, a new generation of it and of top_pools."""
    enriched = (
        "SELECT s.block_number, s.log_index, s.transaction_hash, s.address AS pool,"
        " s.amount0In / 1e18 AS tokens_in, b.timestamp AS block_time"
        " FROM pair_Swap s JOIN blocks b USING (block_number)"
    )
    biggest = ", max(tokens_in) AS biggest_in" if changed else ""
    volume = (
        "SELECT pool, count(*) AS swaps, sum(tokens_in) AS tokens_in,"
        f" min(block_time) AS first_time{biggest} FROM swaps GROUP BY pool"
    )
    top = (
        "SELECT pool, sum(swaps) AS swaps, sum(tokens_in) AS tokens_in FROM pool_volume"
        " GROUP BY pool ORDER BY swaps DESC LIMIT 10"
    )
    return (
        f"kind: dag\nname: {dag}\njobs:\n"
        f"  swaps:\n    inputs: [{{chain: {chain}}}]\n    sql: {json.dumps(enriched)}\n"
        "    unique_key: [transaction_hash, log_index]\n"
        f"  pool_volume:\n    inputs: [{{job: swaps}}]\n    sql: {json.dumps(volume)}\n"
        f"  top_pools:\n    inputs: [{{job: pool_volume}}]\n    window: all\n"
        f"    schedule: {json.dumps(TOP_POOLS_SCHEDULE)}\n    sql: {json.dumps(top)}\n"
    )


async def derive(env: OpsEnv, result: ChainDemoResult, timeout: float) -> None:
    """Apply the demo's DAG over the synced chain, show its progress, read its output."""
    from trace_platform.ops.dags import dag_status

    dag = result.dag = f"{result.name}-dex"
    await apply_specs(env, LITE_ORG_ID, dag_text(dag, result.name))
    print(
        f"applied dag {dag}: swaps (pair_Swap JOIN blocks) -> pool_volume -> top_pools"
        f" (window: all, schedule {TOP_POOLS_SCHEDULE!r})",
        flush=True,
    )
    t0 = time.monotonic()
    while True:
        every = (await dag_status(env, LITE_ORG_ID, dag)).jobs
        # The per-range jobs build now; top_pools runs at its next cron slot (not waited for).
        jobs = [j for j in every if j.window == "range"]
        done = all(j.committed_to >= BLOCKS and not j.in_flight for j in jobs)
        failed = [j for j in jobs if j.status == "stopped"]
        if done or failed or time.monotonic() - t0 > timeout:
            break
        await asyncio.sleep(0.2)
    result.dag_seconds = time.monotonic() - t0
    for j in every:
        if j.snapshot is not None and j.snapshot.schedule:
            result.top_schedule = j.snapshot.schedule
            slot = j.snapshot.next_slot
            result.top_next_slot = slot.strftime("%H:%M:%S UTC") if slot else ""
    if failed:
        raise TraceError(f"job {failed[0].job}: {failed[0].last_error}")
    volumes = await query_here(
        env,
        LITE_ORG_ID,
        None,
        f'SELECT pool, sum(swaps) AS swaps, sum(tokens_in) AS tokens_in FROM "{dag}.pool_volume"'
        " GROUP BY pool ORDER BY swaps DESC",
        None,
    )
    result.volumes = [list(r) for r in volumes.rows]
    result.dag_swaps = int(sum(r[1] for r in result.volumes))


async def change_and_roll_back(env: OpsEnv, result: ChainDemoResult, timeout: float) -> None:
    """Change pool_volume's SQL: its new generation (and top_pools') builds in the background
    from the committed swaps while readers keep the current one; show its progress, the
    cut-over, then roll back to the previous generation (kept: nothing recomputed)."""
    from trace_platform.ops.dags import dag_status, rollback_dag

    dag = result.dag
    before = (await dag_status(env, LITE_ORG_ID, dag)).generation
    await apply_specs(env, LITE_ORG_ID, dag_text(dag, result.name, changed=True))
    st = await dag_status(env, LITE_ORG_ID, dag)
    building = st.building_generation
    if building is None:
        raise TraceError("changing pool_volume's SQL started no generation")
    _say_line(
        f"changed pool_volume's SQL (+ biggest_in): generation {building} builds pool_volume"
        f" and top_pools from the stored swaps; readers keep generation {before}"
    )
    t0, last, seen = time.monotonic(), 0.0, ""
    while True:
        st = await dag_status(env, LITE_ORG_ID, dag)
        if st.generation != before:
            break
        gen = next((g for g in st.generations if g.generation == building), None)
        if gen is None or gen.state != "building":
            raise TraceError(f"generation {building} is {gen.state if gen else 'gone'}")
        line = "  building generation {}: {}".format(
            building,
            ", ".join(f"{j.job} {min(j.committed_to, j.target)}/{j.target}" for j in gen.jobs),
        )
        waiting = [j for j in st.jobs if j.window == "all" and j.snapshot is not None]
        if all(j.ready for j in gen.jobs if j.job != "top_pools") and waiting:
            slot = waiting[0].snapshot.next_slot if waiting[0].snapshot else None
            if slot is not None:
                line += f" (top_pools runs at its next cron slot, {slot:%H:%M:%S} UTC)"
        if line != seen or time.monotonic() - last >= 5.0:
            _say_line(line)
            seen, last = line, time.monotonic()
        for j in st.jobs:
            if j.status == "stopped":
                raise TraceError(f"job {j.job}: {j.last_error}")
        if time.monotonic() - t0 > timeout:
            raise TraceError(f"generation {building} did not cut over within {timeout:.0f} s")
        await asyncio.sleep(0.25)
    result.rebuild_seconds = time.monotonic() - t0
    result.generations = (before, st.generation)
    result.cut_over = True
    cols = await query_here(env, LITE_ORG_ID, f"{dag}.pool_volume", "SELECT * FROM dataset", 1)
    result.new_columns = [c["name"] for c in cols.columns]
    _say_line(
        f"cut over in one transaction: generation {before} -> {st.generation} after"
        f" {result.rebuild_seconds:.1f}s; {dag}.pool_volume now has biggest_in:"
        f" {'biggest_in' in result.new_columns}"
    )
    tasks_before = await _dag_tasks(env, dag)
    switched = await rollback_dag(env, LITE_ORG_ID, dag)
    tasks_after = await _dag_tasks(env, dag)
    result.tasks_around_rollback = (tasks_before, tasks_after)
    current = (await dag_status(env, LITE_ORG_ID, dag)).generation
    result.rolled_back = current == switched.to_generation == before
    _say_line(
        f"rolled back: generation {switched.from_generation} -> {switched.to_generation}"
        f" ({switched.jobs} jobs), {tasks_after - tasks_before} tasks created (the DAG's"
        f" tasks: {tasks_before} before, {tasks_after} after); generation {current} is current"
    )


async def _dag_tasks(env: OpsEnv, dag: str) -> int:
    """Tasks ever created for the DAG's jobs, every generation's (their range ledger)."""
    from trace_platform.db.sql import q

    return int(await env.state.fetchval(q("demo", "dag_tasks"), LITE_ORG_ID, dag))


def _say_line(text: str) -> None:
    print(text, flush=True)


def format_chain(r: ChainDemoResult) -> list[str]:
    if r.status == "skipped":
        return [f"  chain sync           skipped ({r.detail})"]
    lines = [
        f"  chain sync           {r.status}: {r.name}, {r.blocks} blocks in {r.seconds:.1f}s"
        + (f" ({r.blocks / r.seconds:.0f} blocks/s)" if r.seconds else "")
        + (f"  ({r.detail})" if r.detail else "")
    ]
    if r.rows:
        lines.append("  synced rows          " + ", ".join(f"{k} {v}" for k, v in r.rows.items()))
        lines.append(f"  whale transfers      {r.whales_found} found / {r.whales_sent} sent")
        for row in r.top[:5]:
            lines.append(f"    block {row[0]:>4}  {row[1]}  {row[2]:,.0f} tokens")
        lines.append(
            f"  decoded swaps        {r.swaps_found} found / {r.swaps_sent} sent"
            " (pair_Swap JOIN blocks: the biggest)"
        )
        for row in r.swaps:
            lines.append(f"    block {row[0]:>4}  {row[1]}  pool {row[2][:12]}…  {row[3]:,.0f} in")
    if r.volumes:
        lines.append(
            f"  dag {r.dag:<16} swaps -> pool_volume built in {r.dag_seconds:.1f}s:"
            f" {r.dag_swaps} swaps over {len(r.volumes)} pools"
        )
        for row in r.volumes:
            lines.append(f"    pool {row[0][:12]}…  {row[1]:>3} swaps  {row[2]:,.0f} in")
        if r.top_schedule:
            lines.append(
                f"    top_pools (window: all) refreshed on cron {r.top_schedule!r}: next run"
                f" {r.top_next_slot}, a new version each run (trace dag status {r.dag})"
            )
    if r.cut_over:
        old, new = r.generations
        lines.append(
            f"  dag generations      pool_volume's SQL changed: generation {new} built beside"
            f" {old} in {r.rebuild_seconds:.1f}s, cut over, rolled back to {old}"
            f" ({r.tasks_around_rollback[1] - r.tasks_around_rollback[0]} tasks created)"
            + ("" if r.rolled_back else " - rollback FAILED")
        )
    return lines
