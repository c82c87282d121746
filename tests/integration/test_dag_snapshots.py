"""Whole-snapshot DAG jobs and cron (SPEC §19, invariant 22) against a real anvil, cryo,
Postgres, query service, worker and dispatcher processes: a `window: all` job equals DuckDB's
recompute over its input's committed files after each upstream change, each run a new
version that a reader pinned to the previous one keeps reading; a cron job runs exactly one
run per slot across a dispatcher killed at a slot boundary and with two dispatchers up; after
a downtime only the latest missed slot runs and status counts the rest."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.chain_helpers import apply
from tests.conftest import (
    Proc,
    free_port,
    start_dispatcher,
    start_proc,
    start_query_service,
    wait_until,
)
from tests.helpers import Attempt, create_tasks
from tests.integration.test_dags import (
    FOLLOW,
    LEVEL1,
    SWAP,
    chain_spec,
    duck,
    live_files,
    read,
    web3_swaps,
)
from trace_platform.chain.devnet import Anvil, call_data
from trace_platform.cli.render import dag_status as render_status
from trace_platform.config import Settings
from trace_platform.domain.dag_schedule import latest_slot, next_slot
from trace_platform.domain.errors import TraceError
from trace_platform.ops.dags import dag_status
from trace_platform.ops.env import open_env
from trace_platform.ports import LITE_ORG_ID

TOP = (
    "SELECT address AS pool, count(*) AS swaps, max(block_number) AS last_block"
    " FROM swaps GROUP BY 1"
)
# Six fields, seconds first: every 2 s (UTC). A dispatcher restarted at a slot boundary is
# up and planning in about 0.7 s here, well within the slot it must not miss.
SLOT_SECONDS = 2
CRON = f"*/{SLOT_SECONDS} * * * * *"


def snap_spec(top_sql: str) -> str:
    """The `snap` DAG: `swaps` per range over the chain, `top` (window: all, `top_sql`)
    over all of it."""
    return (
        "kind: dag\nname: snap\njobs:\n"
        f"  swaps: {{inputs: [{{chain: live}}], sql: {json.dumps(LEVEL1)}}}\n"
        "  top:\n"
        "    inputs: [{job: swaps}]\n"
        "    window: all\n"
        "    min_interval_seconds: 0\n"
        f"    sql: {json.dumps(top_sql)}\n"
    )


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    """One pool, followed at its head; tests add swaps and mine."""
    anvil = Anvil(log=tmp_path_factory.mktemp("anvil") / "anvil.log").start()
    factory = anvil.deploy_factory()
    acct = anvil.accounts()
    tx = anvil.transact(factory, "createPair(address,address)", [acct[8], acct[9]])
    (log,) = anvil.receipt(tx)["logs"]
    anvil.extra = {"factory": factory.lower(), "pool": "0x" + log["data"][26:66]}  # type: ignore[attr-defined]
    anvil.transact(anvil.extra["pool"], SWAP, [7, 0, 0, 1, acct[1]])  # type: ignore[attr-defined]
    anvil.mine(20)
    yield anvil
    anvil.stop()


@pytest.fixture(scope="module")
def s_settings(settings: Settings, node: Anvil) -> Settings:
    return settings.replace(chain_interval=0.1, rpc_pools=(("local", node.url),))


@pytest.fixture(scope="module")
async def stack(
    s_settings: Settings, node: Anvil, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Proc]]:
    logs = tmp_path_factory.mktemp("logs")
    procs = {
        "dispatcher": await start_dispatcher(s_settings, logs),
        "query": await start_query_service(s_settings, logs),
        "worker": start_proc(s_settings, logs, "worker"),
    }
    try:
        await apply(s_settings, chain_spec(node, "live", FOLLOW))
        yield procs
    finally:
        for p in procs.values():
            p.stop()


async def job_status(settings: Settings, dag: str, job: str) -> dict[str, Any]:
    async with open_env(settings) as env:
        st = await dag_status(env, LITE_ORG_ID, dag)
    (found,) = [j for j in st.jobs if j.job == job]
    return dataclasses.asdict(found)


async def expected_top(settings: Settings) -> list[tuple[Any, ...]]:
    """TOP recomputed by DuckDB over every committed file of the job's input."""
    files = [f for *_, fs in await live_files(settings, "snap.swaps") for f in fs]
    if not files:
        return []
    return sorted(duck({"swaps": files}).execute(TOP).fetchall(), key=repr)


async def pinned_read(query_url: str, attempt: Attempt, sql: str) -> list[tuple[Any, ...]]:
    body = {"task_id": attempt.task_id, "attempt": attempt.attempt, "sql": sql}
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.post(
            f"{query_url}/v1/task/query",
            json=body,
            headers={"X-Trace-Task-Capability": attempt.token},
        )
    assert r.status_code == 200, r.text
    return sorted((tuple(row) for row in r.json()["rows"]), key=repr)


async def test_a_whole_snapshot_job_equals_the_recompute_after_each_upstream_change(
    s_settings: Settings, stack: dict[str, Proc], node: Anvil
) -> None:
    """...each run replaces the output as a new version, and a reader pinned to the
    previous version keeps reading it."""
    await apply(s_settings, snap_spec(TOP))
    pool = node.extra["pool"]  # type: ignore[attr-defined]
    acct = node.accounts()
    versions: list[int] = []
    pinned: tuple[Attempt, list[tuple[Any, ...]]] | None = None
    query_url = stack["query"].url or ""
    async with httpx.AsyncClient(base_url=stack["dispatcher"].url or "", timeout=10) as http:
        for change in range(3):
            tx = node.transact(pool, SWAP, [100 + change, 0, 0, 1, acct[1]])
            node.mine(12)  # the swap's chunk commits (tail_lag 2, chunks of 10)
            block = int(node.receipt(tx)["blockNumber"], 16)

            async def current(block: int = block) -> list[tuple[Any, ...]] | None:
                expected = await expected_top(s_settings)
                try:
                    got = await read(s_settings, "snap.top")
                except TraceError:  # no version yet (the first run)
                    return None
                seen = expected and max(r[2] for r in expected) >= block
                return got if seen and got == expected else None

            rows = await wait_until(current, 90, 0.2, f"snap.top recomputed after change {change}")
            assert sum(r[1] for r in rows) == 2 + change  # the fixture's swap and these
            st = await job_status(s_settings, "snap", "top")
            snap = st["snapshot"]
            assert st["window"] == "all" and snap["schedule"] is None
            assert snap["last_run_at"] is not None and snap["next_slot"] is None
            # No run failed, the first included: it waited for snap.swaps' first commit
            # (before it, the input has no version to read).
            assert st["failed"] == 0 and st["last_error"] is None, st
            versions.append(snap["version"])
            async with open_env(s_settings) as env:
                live = await env.state.fetchval(
                    "SELECT count(*) FROM state.dataset_partitions p JOIN state.datasets d"
                    " USING (dataset_uuid) WHERE d.name = 'snap.top' AND p.removed_seq IS NULL"
                )
            assert live == 1  # one version live: the run replaced the previous one
            if pinned is not None:
                attempt, before = pinned
                # The reader pinned before this change still reads its version, untouched.
                assert await pinned_read(query_url, attempt, 'SELECT * FROM "snap.top"') == before
                assert before != rows
            # Pin a reader to this version (its token names the commit, claimed now).
            (tid,) = await create_tasks(
                s_settings.state_database_url or "",
                payload={"operator": "manual", "inputs": [{"dataset": "snap.top"}]},
                wake=False,
            )
            attempt = await Attempt.claim(http, tid)
            assert await pinned_read(query_url, attempt, 'SELECT * FROM "snap.top"') == rows
            pinned = (attempt, rows)
    assert versions == sorted(versions) and len(set(versions)) == 3
    # A changed SQL is a new generation: built beside the current one, then cut over.
    changed = TOP.replace("max(block_number) AS last_block", "min(block_number) AS first_block")
    await apply(s_settings, snap_spec(changed))

    async def rebuilt() -> bool:
        files = [f for *_, fs in await live_files(s_settings, "snap.swaps") for f in fs]
        expected = sorted(duck({"swaps": files}).execute(changed).fetchall(), key=repr)
        return await read(s_settings, "snap.top") == expected

    await wait_until(rebuilt, 90, 0.2, "snap.top cut over to the changed SQL")
    text = render_status(await _status(s_settings, "snap"))
    assert "whole snapshot, on change: version" in text


async def _status(settings: Settings, dag: str) -> Any:
    async with open_env(settings) as env:
        return await dag_status(env, LITE_ORG_ID, dag)


async def test_refused_whole_snapshot_and_cron_specs_name_the_field(
    s_settings: Settings, stack: dict[str, Proc]
) -> None:
    def spec(extra: str, inputs: str = "[{chain: live}]") -> str:
        return (
            "kind: dag\nname: refused\njobs:\n"
            f"  a: {{inputs: {inputs}, sql: 'SELECT count(*) AS n FROM blocks'{extra}}}\n"
        )

    cases = {
        spec(", schedule: 'not a cron'"): "jobs.a.schedule",
        spec(", schedule: '61 * * * *'"): "jobs.a.schedule",
        spec(", schedule: '* * * * *', window: range"): "a job with a schedule is a whole",
        spec(", min_interval_seconds: 5"): "min_interval_seconds is for whole-snapshot jobs",
        spec(", window: all, schedule: '* * * * *', min_interval_seconds: 5"): (
            "min_interval_seconds is for whole-snapshot jobs"
        ),
        (
            "kind: dag\nname: refused\njobs:\n"
            "  a: {inputs: [{chain: live}], window: all, sql: 'SELECT count(*) AS n FROM blocks'}\n"
            "  b: {inputs: [{job: a}], sql: 'SELECT n FROM a'}\n"
        ): "jobs.b.inputs.0.job: 'a' is a whole-snapshot job",
    }
    for text, expected in cases.items():
        with pytest.raises(TraceError) as err:
            await apply(s_settings, text)
        assert expected in err.value.detail, (expected, err.value.detail)
    async with open_env(s_settings) as env:
        assert (
            await env.state.fetchval("SELECT count(*) FROM state.dags WHERE name = 'refused'") == 0
        )


async def runs(settings: Settings, dag: str) -> list[dict[str, Any]]:
    """Every run of the DAG's cron job: its slot, its range row's status, its task's, and
    how many output partitions its task committed."""
    async with open_env(settings) as env:
        rows = await env.state.fetch(
            "SELECT r.slot, r.status, r.task_id, t.status AS task_status,"
            " (SELECT count(*) FROM state.dataset_partitions p"
            "  WHERE p.producer_task_id = r.task_id) AS commits"
            " FROM state.dag_ranges r JOIN state.dag_jobs j USING (job_uuid)"
            " JOIN state.dags d USING (dag_id) LEFT JOIN state.tasks t USING (task_id)"
            " WHERE d.name = $1 ORDER BY r.slot",
            dag,
        )
    return [dict(r) for r in rows]


async def sleep_to_slot(offset: float) -> datetime:
    """Wait for the wall clock to reach the next slot (+ offset seconds; a time target, not
    a synchronisation), returning that slot."""
    slot = next_slot(CRON, datetime.now(UTC))
    await asyncio.sleep(max(0.0, (slot - datetime.now(UTC)).total_seconds() + offset))
    return slot


async def committed_slots(settings: Settings, dag: str) -> set[datetime]:
    return {
        r["slot"]
        for r in await runs(settings, dag)
        if r["status"] == "committed" and r["slot"] is not None
    }


def consecutive(slots: list[datetime]) -> bool:
    return all(b - a == timedelta(seconds=SLOT_SECONDS) for a, b in itertools.pairwise(slots))


async def test_a_cron_job_runs_once_per_slot_across_kills_two_dispatchers_and_downtime(
    s_settings: Settings, stack: dict[str, Proc], tmp_path: Path
) -> None:
    applied = datetime.now(UTC)
    await apply(
        s_settings,
        "kind: dag\nname: ticker\njobs:\n"
        "  blocks_seen:\n"
        "    inputs: [{chain: live}]\n"
        f"    schedule: '{CRON}'\n"
        "    sql: SELECT count(*) AS n, max(block_number) AS head FROM blocks\n",
    )
    st = await job_status(s_settings, "ticker", "blocks_seen")
    assert st["window"] == "all" and st["snapshot"]["schedule"] == CRON
    assert st["snapshot"]["next_slot"] == next_slot(CRON, datetime.now(UTC))

    # Two dispatchers plan at once; one is killed at a slot boundary, then the worker's own.
    second = await start_dispatcher(s_settings, tmp_path, port=free_port())
    try:
        await wait_until(
            lambda: _count(committed_slots(s_settings, "ticker"), 2), 60, 0.2, "two slots run"
        )
        await sleep_to_slot(-0.05)
        second.kill()
        await wait_until(
            lambda: _count(committed_slots(s_settings, "ticker"), 4), 60, 0.2, "four slots run"
        )
        await sleep_to_slot(0.0)
        stack["dispatcher"].kill()
        stack["dispatcher"] = await start_dispatcher(s_settings, tmp_path)
        second = await start_dispatcher(s_settings, tmp_path, port=free_port())
        await wait_until(
            lambda: _count(committed_slots(s_settings, "ticker"), 6), 60, 0.2, "six slots run"
        )
    finally:
        second.stop()
    before = await runs(s_settings, "ticker")
    # One run at the apply (no slot: the output is not left empty until the first slot)...
    assert [r["status"] for r in before if r["slot"] is None] == ["committed"]
    slots = [r["slot"] for r in before if r["status"] == "committed" and r["slot"] is not None]
    assert slots[0] == next_slot(CRON, applied)  # the first slot after the apply
    assert consecutive(slots), slots  # every slot ran: none skipped...
    assert len({r["task_id"] for r in before}) == len(before)  # ...none twice
    assert all(r["commits"] == 1 for r in before if r["status"] == "committed")
    assert (await job_status(s_settings, "ticker", "blocks_seen"))["snapshot"]["missed_slots"] == 0

    # Downtime: every dispatcher down over three slots; only the latest missed one runs.
    last_before = await sleep_to_slot(0.0)
    await wait_until(
        lambda: _has(committed_slots(s_settings, "ticker"), last_before), 30, 0.05, "a slot run"
    )
    stack["dispatcher"].kill()
    await asyncio.sleep(3 * SLOT_SECONDS + 1)  # a deliberate outage over three slots
    down_until = datetime.now(UTC)
    stack["dispatcher"] = await start_dispatcher(s_settings, tmp_path)
    resumed = latest_slot(CRON, down_until)

    async def after_downtime() -> list[datetime] | None:
        got = sorted(s for s in await committed_slots(s_settings, "ticker") if s > last_before)
        return got if got else None

    first_after = (await wait_until(after_downtime, 60, 0.2, "a run after downtime"))[0]
    assert first_after in (resumed, resumed + timedelta(seconds=SLOT_SECONDS))
    missed = int((first_after - last_before).total_seconds()) // SLOT_SECONDS - 1
    assert missed >= 2  # three slots passed while down: the latest ran, the others did not
    snap = (await job_status(s_settings, "ticker", "blocks_seen"))["snapshot"]
    assert snap["missed_slots"] == missed and snap["last_missed"] in (missed, 0)
    every = await runs(s_settings, "ticker")
    every = [r for r in every if r["slot"] is not None]
    skipped = [r for r in every if last_before < r["slot"] < first_after]
    assert skipped == []  # the missed slots never ran
    assert len({r["slot"] for r in every}) == len(every)
    text = render_status(await _status(s_settings, "ticker"))
    assert f"schedule '{CRON}' (UTC)" in text and f"missed {missed} slots" in text
    # The output is the last run's, over the chain's committed blocks.
    assert len(await read(s_settings, "ticker.blocks_seen")) == 1


async def _count(slots: Any, n: int) -> bool:
    return len(await slots) >= n


async def _has(slots: Any, slot: datetime) -> bool:
    return slot in await slots


async def test_a_reorg_below_a_whole_snapshot_job_removes_its_version_until_it_reruns(
    s_settings: Settings, stack: dict[str, Proc], node: Anvil
) -> None:
    """No reader of a whole-snapshot output sees a row of the abandoned fork (invariant
    20); the next run equals the canonical chain."""
    await apply(
        s_settings,
        "kind: dag\nname: snapr\njobs:\n"
        f"  swaps: {{inputs: [{{chain: live}}], sql: {json.dumps(LEVEL1)}}}\n"
        "  hashes:\n"
        "    inputs: [{job: swaps}]\n"
        "    window: all\n"
        "    min_interval_seconds: 0\n"
        "    sql: SELECT transaction_hash, log_index FROM swaps\n",
    )
    pool, acct = node.extra["pool"], node.accounts()  # type: ignore[attr-defined]
    node.transact(pool, SWAP, [300, 0, 0, 1, acct[1]])
    node.mine(12)
    before = web3_swaps(node)

    async def holds(swaps: set[tuple[str, int]], relation: str = "snapr.hashes") -> bool:
        try:
            return set(await read(s_settings, relation)) == swaps
        except TraceError:
            return False

    await wait_until(lambda: holds(before), 90, 0.2, "snapr.hashes over every swap")
    # A scheduled job runs once at apply (over every swap by now), then once a year.
    await apply(
        s_settings,
        "kind: dag\nname: snapy\njobs:\n"
        "  yearly:\n"
        "    inputs: [{chain: live}]\n"
        "    schedule: '0 0 1 1 *'\n"
        f"    sql: {json.dumps('SELECT transaction_hash, log_index FROM pair_Swap')}\n",
    )
    await wait_until(lambda: holds(before, "snapy.yearly"), 90, 0.2, "snapy.yearly at apply")
    swap = {"from": acct[0], "to": pool, "data": call_data(SWAP, [999, 0, 0, 1, acct[3]])}
    node.rpc("anvil_reorg", [16, [[{**swap, "gas": hex(200_000)}, 0]]])  # the swap's block too
    node.mine(12)
    after = web3_swaps(node)
    abandoned = before - after
    assert abandoned and after - before

    seen: list[set[tuple[str, int]]] = []

    async def repaired() -> bool:
        async with open_env(s_settings) as env:
            detected = await env.state.fetchval(
                "SELECT reorgs FROM state.chain_jobs WHERE name = 'live'"
            )
        try:
            rows = set(await read(s_settings, "snapr.hashes"))
        except TraceError:  # no live version: removed by the repair, not yet rerun
            rows = set()
        if detected:
            seen.append(rows)
        return bool(detected) and rows == after

    await wait_until(repaired, 90, 0.1, "snapr.hashes over the canonical chain")
    assert seen and all(not (rows & abandoned) for rows in seen)
    # The scheduled job's output, removed by the repair, is rebuilt once its input covers
    # again what it covered — now, not at its next slot (next January).
    await wait_until(lambda: holds(after, "snapy.yearly"), 90, 0.2, "snapy.yearly rebuilt")


async def test_the_api_and_the_remote_cli_show_a_cron_jobs_last_run_next_slot_and_version(
    s_settings: Settings, stack: dict[str, Proc], tmp_path: Path
) -> None:
    """GET /v1/dags/{name} carries the same `snapshot` document as the local status, and
    the remote CLI renders it (after the cron test: `ticker` has run)."""
    from tests.conftest import proc_env, wait_http_ready
    from tests.helpers import env_of
    from tests.integration.test_user_api import run_remote
    from trace_platform.db.pool import create_pool
    from trace_platform.ops.dags import set_dag_paused
    from trace_platform.ops.users import create_user

    async with open_env(s_settings) as env:  # paused and idle: the documents hold still
        await set_dag_paused(env, LITE_ORG_ID, "ticker", True)
    await wait_until(
        lambda: _settled(runs(s_settings, "ticker")), 30, 0.1, "ticker's last run done"
    )
    api = Proc(["api"], proc_env(s_settings), tmp_path / "api.log").start()
    url = f"http://127.0.0.1:{s_settings.api_port}"
    try:
        await wait_http_ready(url, api)
        pool = await create_pool(s_settings.state_database_url or "", max_size=2)
        try:
            key = (await create_user(env_of(pool), LITE_ORG_ID, "snap-reader", "reader")).api_key
        finally:
            await pool.close()
        async with httpx.AsyncClient(base_url=url) as http:
            r = await http.get("/v1/dags/ticker", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        (job,) = r.json()["jobs"]
        snap = job["snapshot"]
        local = (await job_status(s_settings, "ticker", "blocks_seen"))["snapshot"]
        assert snap["schedule"] == CRON and snap["version"] == local["version"] > 0
        assert snap["runs"] == local["runs"] and snap["missed_slots"] == local["missed_slots"]
        assert datetime.fromisoformat(snap["last_run_at"]) == local["last_run_at"]
        assert datetime.fromisoformat(snap["next_slot"]) > datetime.fromisoformat(snap["last_slot"])
        remote = run_remote(url, key, "dag", "status", "ticker", home=tmp_path)
        assert remote.returncode == 0, remote.stderr
        assert f"whole snapshot, schedule '{CRON}' (UTC): version" in remote.stdout
        assert f"missed {local['missed_slots']} slots" in remote.stdout
    finally:
        api.stop()


async def _settled(rows: Any) -> bool:
    return all(r["status"] != "scheduled" for r in await rows)
