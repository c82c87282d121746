"""Chain sync against a real anvil node, real cryo, real Postgres and a real object store
(SPEC §11, invariants 9-11): fixed targets, re-applies, reads through snapshots and range
grants, compaction, failure paths and reorgs."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import jwt
import pytest

from tests.chain_helpers import (
    ALERT_SQL,
    apply,
    committed_files,
    node_blocks,
    node_log_counts,
    rows,
    spec_yaml,
    status,
    streams_of,
    wait_synced,
    whale_transfers,
)
from tests.conftest import (
    REPO,
    Proc,
    free_port,
    proc_env,
    start_dispatcher,
    start_proc,
    start_query_service,
    wait_until,
)
from tests.helpers import Attempt, claim, create_tasks
from trace_platform.chain.devnet import Anvil
from trace_platform.config import Settings

BLOCKS = 2000
STREAMS = {
    "blocks": {"cryo_dataset": "blocks", "chunk_size": 100, "max_inflight": 4},
    "transactions": {"cryo_dataset": "transactions", "chunk_size": 100, "max_inflight": 4},
    "logs": {"cryo_dataset": "logs", "chunk_size": 100, "max_inflight": 4},
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    """2,000 blocks: every 40th holds ERC-20 and ETH transfers, the rest are empty."""
    anvil = Anvil(log=tmp_path_factory.mktemp("anvil") / "anvil.log").start()
    token = anvil.deploy_token()
    while anvil.head() < BLOCKS - 1:
        anvil.traffic_block(token, [10**18 * (anvil.head() + 1), 7 * 10**24, 3])
        anvil.mine(min(39, BLOCKS - 1 - anvil.head()))
    assert anvil.head() == BLOCKS - 1
    anvil.extra = {"token": token}  # type: ignore[attr-defined]
    yield anvil
    anvil.stop()


@pytest.fixture(scope="module")
def reorg_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    anvil = Anvil(log=tmp_path_factory.mktemp("anvil") / "reorg.log").start()
    yield anvil
    anvil.stop()


@pytest.fixture(scope="module")
def c_settings(settings: Settings, node: Anvil, reorg_node: Anvil) -> Settings:
    port = free_port()
    return settings.replace(
        query_port=port,
        query_url=f"http://127.0.0.1:{port}",
        chain_interval=0.1,
        rpc_pools=(
            ("local", node.url),
            ("reorgnode", reorg_node.url),
            ("refused", f"http://127.0.0.1:{free_port()}"),
        ),
    )


@pytest.fixture(scope="module")
async def stack(
    c_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Proc]]:
    logs = tmp_path_factory.mktemp("logs")
    procs = {
        "dispatcher": await start_dispatcher(c_settings, logs),
        "worker": start_proc(c_settings, logs, "worker"),
        "query": await start_query_service(c_settings, logs),
        "sink": start_proc(c_settings, logs, "sink"),
    }
    yield procs
    for p in procs.values():
        p.stop()


@pytest.fixture(scope="module")
async def fixed(c_settings: Settings, stack: dict[str, Proc], node: Anvil) -> dict[str, Any]:
    """The `fixed` job synced to 2,000 blocks (shared by the read tests)."""
    text = spec_yaml("fixed", "{kind: fixed_target, from_block: 0, to_block: 2000}", STREAMS)
    (result,) = await apply(c_settings, text)
    assert result["changed"] and result["created"]
    job = await wait_synced(c_settings, "fixed", BLOCKS)
    return {"text": text, "job": job}


async def task_count(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM state.tasks WHERE payload ? 'chain'"))


async def test_fixed_target_holds_every_block_once_equal_to_the_node(
    c_settings: Settings, fixed: dict[str, Any], node: Anvil
) -> None:
    job = fixed["job"]
    for s in job["streams"]:
        # far behind a fixed target: two backfill ranges of 1,000 blocks, not 20 chunks
        assert (s["tip"], s["committed"], s["failed"], s["complete"]) == (BLOCKS, 2, 0, True)
    expected = node_blocks(node.url, 0, BLOCKS)
    got = await rows(
        c_settings, "fixed.blocks", "SELECT block_number, block_hash FROM dataset ORDER BY 1"
    )
    assert [r[0] for r in got] == list(range(BLOCKS))  # every block exactly once
    assert {r[0]: r[1] for r in got} == {n: b["hash"] for n, b in expected.items()}
    txs = await rows(
        c_settings,
        "fixed.transactions",
        "SELECT block_number, count(*) FROM dataset GROUP BY 1 ORDER BY 1",
    )
    assert {r[0]: r[1] for r in txs} == {n: b["txs"] for n, b in expected.items() if b["txs"]}
    assert sum(r[1] for r in txs) > 100
    logs = await rows(
        c_settings, "fixed.logs", "SELECT block_number, count(*) FROM dataset GROUP BY 1"
    )
    assert {r[0]: r[1] for r in logs} == node_log_counts(node.url, 0, BLOCKS)


async def test_reapplying_the_same_spec_schedules_nothing(
    c_settings: Settings,
    fixed: dict[str, Any],
    stack: dict[str, Proc],
    state_conn: asyncpg.Connection,
) -> None:
    before = await task_count(state_conn)
    (result,) = await apply(c_settings, fixed["text"])
    assert result["changed"] is False
    metrics_url = (stack["dispatcher"].url or "") + "/metrics"

    async def planner_ticks() -> float:
        async with httpx.AsyncClient() as http:
            text = (await http.get(metrics_url)).text
        for line in text.splitlines():
            if line.startswith('trace_loop_iterations_total{loop="chain_planner"}'):
                return float(line.split()[-1])
        return 0.0

    start = await planner_ticks()
    await wait_until(lambda: _more(planner_ticks, start + 3), 10, 0.05, "three planner ticks")
    assert await task_count(state_conn) == before


async def _more(read: Any, at_least: float) -> bool:
    return bool(await read() >= at_least)


async def claim_with_inputs(
    stack: dict[str, Proc], c_settings: Settings, inputs: list[Any]
) -> Attempt:
    (tid,) = await create_tasks(
        c_settings.state_database_url or "",
        1,
        payload={"operator": "manual", "inputs": inputs},
        wake=False,
    )
    http = httpx.AsyncClient(base_url=stack["dispatcher"].url or "", timeout=10)
    return await Attempt.claim(http, tid)


async def task_query(
    c_settings: Settings, a: Attempt, sql: str, by_name: bool = False
) -> httpx.Response:
    """The task route; `by_name`: no dataset_id, the relations are read by their names."""
    claims = jwt.decode(a.token, options={"verify_signature": False})
    body = {
        "task_id": a.task_id,
        "attempt": a.attempt,
        "dataset_id": None if by_name else claims["datasets"][0]["dataset_uuid"],
        "sql": sql,
    }
    async with httpx.AsyncClient(timeout=30) as c:
        return await c.post(
            f"{c_settings.query_url}/v1/task/query",
            json=body,
            headers={"X-Trace-Task-Capability": a.token},
        )


COUNT_SQL = "SELECT count(*), count(DISTINCT block_number), min(block_number), max(block_number) FROM dataset"


async def test_snapshot_grant_is_small_pinned_at_claim_and_range_grants_see_only_their_range(
    c_settings: Settings, fixed: dict[str, Any], stack: dict[str, Proc], node: Anvil
) -> None:
    pinned = await claim_with_inputs(stack, c_settings, [{"dataset": "fixed.blocks"}])
    ranged = await claim_with_inputs(
        stack, c_settings, [{"dataset": "fixed.blocks", "range": [150, 420]}]
    )
    claims = jwt.decode(pinned.token, options={"verify_signature": False})
    (grant,) = claims["datasets"]
    assert grant["dataset_version"].startswith("snap-")  # a snapshot id, never a file list
    assert len(pinned.token) < 1500
    r = await task_query(c_settings, pinned, COUNT_SQL)
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[BLOCKS, BLOCKS, 0, BLOCKS - 1]]
    r = await task_query(c_settings, ranged, COUNT_SQL)
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[270, 270, 150, 419]]

    # Extend the target: more ranges commit, the pinned snapshot does not move.
    node.mine(300)
    extended = fixed["text"].replace("to_block: 2000", "to_block: 2300")
    (result,) = await apply(c_settings, extended)
    assert result["changed"]
    await wait_synced(c_settings, "fixed", 2300)
    r = await task_query(c_settings, pinned, COUNT_SQL)
    assert r.json()["rows"] == [[BLOCKS, BLOCKS, 0, BLOCKS - 1]]
    fresh = await claim_with_inputs(stack, c_settings, [{"dataset": "fixed.blocks"}])
    r = await task_query(c_settings, fresh, COUNT_SQL)
    assert r.json()["rows"] == [[2300, 2300, 0, 2299]]
    # The operator's read path sees every committed range as one relation too.
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "trace_platform",
            "dataset",
            "query",
            "fixed.blocks",
            COUNT_SQL,
            "--json",
        ],
        env=proc_env(c_settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert '"rows":[[2300,2300,0,2299]]' in out.stdout


async def test_a_chain_input_grants_every_relation_of_the_job_by_name_and_nothing_else(
    c_settings: Settings, fixed: dict[str, Any], stack: dict[str, Proc], node: Anvil
) -> None:
    job = await claim_with_inputs(stack, c_settings, [{"chain": "fixed", "range": [100, 300]}])
    claims = jwt.decode(job.token, options={"verify_signature": False})
    assert {g["name"] for g in claims["datasets"]} == {
        "fixed.blocks",
        "fixed.transactions",
        "fixed.logs",
    }
    assert all(g["dataset_version"].startswith("snap-") for g in claims["datasets"])
    assert len(job.token) < 3000  # snapshot ids, never file lists
    joined = (
        "SELECT b.block_number, count(t.transaction_hash), count(DISTINCT l.log_index)"
        " FROM blocks b LEFT JOIN transactions t USING (block_number)"
        ' LEFT JOIN "fixed.logs" l ON l.transaction_hash = t.transaction_hash'
        " GROUP BY 1 ORDER BY 1"
    )
    r = await task_query(c_settings, job, joined, by_name=True)
    assert r.status_code == 200, r.text
    rows = r.json()["rows"]
    assert [row[0] for row in rows] == list(range(100, 300))  # the range bounds every relation
    node_txs = node_blocks(node.url, 100, 300)
    assert {row[0]: row[1] for row in rows} == {n: b["txs"] for n, b in node_txs.items()}

    # A task granted one relation cannot read another one, whatever name it uses, although
    # its files exist and the same org owns them.
    only = await claim_with_inputs(stack, c_settings, [{"dataset": "fixed.blocks"}])
    for sql in [
        "SELECT count(*) FROM logs",
        'SELECT count(*) FROM "fixed.logs"',
        'SELECT count(*) FROM "fixed".logs',
        "SELECT count(*) FROM fixed_logs",
        "SELECT count(*) FROM dataset JOIN transactions USING (block_number)",
        "SELECT count(*) FROM main.dataset",
        "SELECT count(*) FROM memory.main.dataset",
    ]:
        r = await task_query(c_settings, only, sql)
        assert r.status_code == 400, (sql, r.text)
        assert r.json()["reason"] == "sql_relation_not_allowed"
        assert "SELECT" not in r.text
    r = await task_query(c_settings, only, "SELECT count(*) FROM blocks", by_name=True)
    assert r.status_code == 200, r.text
    # A job of no org of this task's cannot be an input: the task fails at claim, no token.
    (tid,) = await create_tasks(
        c_settings.state_database_url or "",
        1,
        payload={"operator": "manual", "inputs": [{"chain": "no-such-job"}]},
        wake=False,
    )
    async with httpx.AsyncClient(base_url=stack["dispatcher"].url or "", timeout=10) as http:
        r = await claim(http, tid)
    assert r.status_code == 409 and "capability_token" not in r.text


JOINED_SQL = "SELECT count(*) FROM blocks b JOIN transactions t USING (block_number)"


async def test_a_udf_reads_every_committed_range_as_one_dataset(
    c_settings: Settings, fixed: dict[str, Any], stack: dict[str, Proc], data_conn: Any
) -> None:
    import textwrap
    import uuid

    from trace_platform.bundles import deterministic_zip, register_bundle
    from trace_platform.db.pool import create_pool
    from trace_platform.ports import LITE_ORG_ID

    tip = streams_of(await status(c_settings, "fixed"))["blocks"]["tip"]
    tag = "chain-udf-" + uuid.uuid4().hex[:6]
    code = textwrap.dedent(f"""
        def handler(event, context):
            res = context.query(event["dataset"], "{COUNT_SQL}")
            n, distinct, lo, hi = res["rows"][0]
            # By name, no dataset id: the relations of the task's chain input.
            joined = context.query("{JOINED_SQL}")
            return [{{"alert_definition_id": "9a1f2b3c-4d5e-4f60-8a7b-1c2d3e4f5a6b",
                      "dedupe_key": "{tag}", "event_time": "2024-01-01T00:00:00Z",
                      "payload": {{"n": n, "distinct": distinct, "lo": lo, "hi": hi,
                                  "txs": joined["rows"][0][0]}}}}]
        """).encode()
    pool = await create_pool(c_settings.state_database_url or "", max_size=1)
    from trace_platform.adapters.stores import object_store_from_settings

    bundle = await register_bundle(
        pool,
        object_store_from_settings(c_settings),
        deterministic_zip([("handler.py", code)]),
        "python",
        "handler.handler",
        LITE_ORG_ID,
    )
    await pool.close()
    grant = jwt.decode(
        (await claim_with_inputs(stack, c_settings, [{"dataset": "fixed.blocks"}])).token,
        options={"verify_signature": False},
    )["datasets"][0]
    payload = {
        "runtime": "lambda",
        "udf": {"bundle_id": str(bundle.bundle_id)},
        "inputs": [{"chain": "fixed"}],
        "work_payload": {"dataset": grant["dataset_uuid"]},
    }
    await create_tasks(c_settings.state_database_url or "", 1, payload=payload)

    async def landed() -> Any:
        return await data_conn.fetchval(
            "SELECT payload FROM data.alert_events WHERE dedupe_key = $1", tag
        )

    got = await wait_until(landed, 60, 0.1, "the UDF's row")
    (txs,) = await rows(c_settings, "fixed.blocks", JOINED_SQL)
    assert txs[0] > 0
    assert got == {"n": tip, "distinct": tip, "lo": 0, "hi": tip - 1, "txs": txs[0]}


async def test_compaction_merges_old_partitions_and_keeps_results(
    c_settings: Settings,
    fixed: dict[str, Any],
    stack: dict[str, Proc],
    state_conn: asyncpg.Connection,
) -> None:
    # chunk-sized partitions throughout (backfill_blocks = chunk_size): compaction merges them
    streams = {
        "blocks": {
            "cryo_dataset": "blocks",
            "chunk_size": 50,
            "max_inflight": 8,
            "backfill_blocks": 50,
        }
    }
    text = spec_yaml(
        "compacted",
        "{kind: fixed_target, from_block: 0, to_block: 2000}",
        streams,
        compaction={"finality_depth": 1, "target_blocks": 500},
    )
    await apply(c_settings, text)
    await wait_synced(c_settings, "compacted", BLOCKS)

    async def live_files() -> int:
        return len(await committed_files(state_conn, "compacted"))

    await wait_until(lambda: _fewer(live_files, 4), 60, 0.2, "compaction to 4 files")
    parts = await state_conn.fetch(
        "SELECT range_start, range_end, compacted FROM state.dataset_partitions p"
        " JOIN state.datasets d USING (dataset_uuid) WHERE d.name = 'compacted.blocks'"
        " AND removed_seq IS NULL ORDER BY range_start"
    )
    assert [(p["range_start"], p["range_end"], p["compacted"]) for p in parts] == [
        (0, 500, True),
        (500, 1000, True),
        (1000, 1500, True),
        (1500, 2000, True),
    ]
    sql = "SELECT block_number, block_hash FROM dataset ORDER BY 1"
    assert await rows(c_settings, "compacted.blocks", sql) == await rows(
        c_settings, "fixed.blocks", sql, (0, BLOCKS)
    )


async def _fewer(read: Any, at_most: int) -> bool:
    return bool(await read() <= at_most)


async def test_unknown_cryo_dataset_stops_the_stream_with_its_reason(
    c_settings: Settings, stack: dict[str, Proc], state_conn: asyncpg.Connection
) -> None:
    streams = {"weird": {"cryo_dataset": "not_a_dataset", "chunk_size": 10, "max_inflight": 1}}
    await apply(c_settings, spec_yaml("unknown-ds", "{kind: fixed_target, to_block: 30}", streams))

    async def stopped() -> dict[str, Any] | None:
        s = streams_of(await status(c_settings, "unknown-ds"))["weird"]
        return s if s["status"] == "stopped" else None

    s = await wait_until(stopped, 60, 0.2, "stream stopped")
    assert "cryo cannot extract dataset 'not_a_dataset'" in s["last_error"]
    assert "[0, 10)" in s["last_error"]
    assert (s["failed"], s["committed"], s["tip"]) == (1, 0, 0)
    assert await committed_files(state_conn, "unknown-ds") == []


async def apply_and_wait_for_error(settings: Settings, name: str, pool: str) -> dict[str, Any]:
    """Apply a small fixed-target job on `pool`; its status once the job shows an error."""
    mode = "{kind: fixed_target, to_block: 30}"
    await apply(settings, spec_yaml(name, mode, {"blocks": STREAMS["blocks"]}, rpc_pool=pool))

    async def errored() -> dict[str, Any] | None:
        job = await status(settings, name)
        return job if job["error"] else None

    job: dict[str, Any] = await wait_until(errored, 30, 0.1, f"{name}: a job error")
    return job


async def test_missing_rpc_pool_is_a_clear_error_and_schedules_nothing(
    c_settings: Settings, stack: dict[str, Proc], state_conn: asyncpg.Connection
) -> None:
    job = await apply_and_wait_for_error(c_settings, "no-pool", "nowhere")
    assert job["error"].startswith("rpc_pool_missing")
    assert "TRACE_RPC_POOL_NOWHERE_URLS" in job["error"]
    assert streams_of(job)["blocks"]["in_flight"] == 0
    job_id = await state_conn.fetchval("SELECT job_id FROM state.chain_jobs WHERE name = 'no-pool'")
    assert (
        await state_conn.fetchval(
            "SELECT count(*) FROM state.chain_ranges WHERE job_id = $1", job_id
        )
        == 0
    )


async def test_rpc_refusing_connections_is_reported_and_nothing_is_torn(
    c_settings: Settings, stack: dict[str, Proc], state_conn: asyncpg.Connection
) -> None:
    job = await apply_and_wait_for_error(c_settings, "refused", "refused")
    assert job["error"].startswith("rpc_unavailable: ep-")  # the endpoint by its label
    assert "the node is unreachable" in job["error"]
    assert "127.0.0.1" not in job["error"]  # pool URLs carry API keys: never shown
    assert await committed_files(state_conn, "refused") == []


async def test_reorg_deeper_than_tail_lag_is_detected_and_repaired(
    c_settings: Settings, stack: dict[str, Proc], reorg_node: Anvil, state_conn: asyncpg.Connection
) -> None:
    reorg_node.mine(100)  # head 100
    streams = {
        "blocks": {"cryo_dataset": "blocks", "chunk_size": 10, "max_inflight": 4},
        "transactions": {"cryo_dataset": "transactions", "chunk_size": 5, "max_inflight": 4},
    }
    mode = "{kind: follow_head, from_block: 0, tail_lag: 2, head_poll_seconds: 0.2, max_head_age_seconds: 600}"
    await apply(c_settings, spec_yaml("reorged", mode, streams, rpc_pool="reorgnode"))
    await wait_synced(c_settings, "reorged", 90)
    before = await rows(
        c_settings, "reorged.blocks", "SELECT block_number, block_hash FROM dataset ORDER BY 1"
    )
    assert [r[0] for r in before] == list(range(90))

    acct = reorg_node.accounts()
    tx = {"from": acct[0], "to": acct[1], "value": "0x1"}
    reorg_node.rpc("anvil_reorg", [15, [[tx, 2]]])  # blocks 86..100 replaced, one gains a tx

    async def repaired() -> dict[str, Any] | None:
        job = await status(c_settings, "reorged")
        s = streams_of(job)
        ok = job["reorgs"] >= 1 and all(v["tip"] >= 90 and v["in_flight"] == 0 for v in s.values())
        return job if ok else None

    job = await wait_until(repaired, 60, 0.2, "reorg repaired")
    assert job["last_reorg"]["fork_block"] == 80  # the first range whose last block changed
    assert job["last_reorg"]["depth"] >= 15
    assert job["last_reorg"]["replaced_ranges"]["blocks"] >= 1
    after = await rows(
        c_settings, "reorged.blocks", "SELECT block_number, block_hash FROM dataset ORDER BY 1"
    )
    canonical = node_blocks(reorg_node.url, 0, 90)
    assert [r[0] for r in after] == list(range(90))
    assert {r[0]: r[1] for r in after} == {n: b["hash"] for n, b in canonical.items()}
    assert after[85] == before[85] and after[89] != before[89]
    txs = await rows(
        c_settings, "reorged.transactions", "SELECT block_number, transaction_hash FROM dataset"
    )
    node_txs = {n: b["txs"] for n, b in node_blocks(reorg_node.url, 0, 90).items() if b["txs"]}
    assert {r[0] for r in txs} == set(node_txs)
    kinds = await state_conn.fetch(
        "SELECT e.kind, e.detail FROM state.chain_events e JOIN state.chain_jobs j USING (job_id)"
        " WHERE j.name = 'reorged'"
    )
    assert [k["kind"] for k in kinds].count("chain.reorg") >= 1


def trace_apply(settings: Settings, path: Path, text: str) -> subprocess.CompletedProcess[str]:
    """`trace apply FILE` as a user runs it."""
    path.write_text(text)
    return subprocess.run(
        [sys.executable, "-m", "trace_platform", "apply", str(path)],
        env=proc_env(settings),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_apply_rejects_unknown_fields_with_their_path(c_settings: Settings, tmp_path: Path) -> None:
    bad = spec_yaml(
        "bad",
        "{kind: fixed_target, to_block: 10}",
        {"blocks": {"cryo_dataset": "blocks", "chunk_sise": 5}},
    )
    out = trace_apply(c_settings, tmp_path / "bad.yaml", bad)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: streams.blocks.chunk_sise: unknown field"


async def test_a_sql_alert_backfills_every_committed_range_once_with_the_nodes_events(
    c_settings: Settings,
    stack: dict[str, Proc],
    node: Anvil,
    state_conn: asyncpg.Connection,
    data_conn: Any,
) -> None:
    streams = {  # ranges of 200 blocks throughout (backfill_blocks = chunk_size): 10 ranges
        "erc20_transfers": {
            "cryo_dataset": "erc20_transfers",
            "chunk_size": 200,
            "max_inflight": 8,
            "backfill_blocks": 200,
        }
    }
    await apply(c_settings, spec_yaml("alerted", "{kind: fixed_target, to_block: 2000}", streams))
    await wait_synced(c_settings, "alerted", BLOCKS)
    alert = (
        "kind: alert\nname: whales\nsource: {dataset: alerted.erc20_transfers}\n"
        f'start: {{from_block: 0}}\nrule: {{sql: "{ALERT_SQL}"}}\n'
        "identity: [transaction_hash, log_index]\nseverity: critical\n"
    )
    (result,) = await apply(c_settings, alert)
    assert result["evaluations_scheduled"] == 10  # one per committed range
    expected = whale_transfers(node.url, node.extra["token"], 0, BLOCKS - 1)  # type: ignore[attr-defined]
    assert len(expected) > 20
    alert_id = uuid.UUID(result["alert_id"])

    async def events() -> set[tuple[str, int]]:
        rows = await data_conn.fetch(
            "SELECT payload FROM data.alert_events WHERE alert_definition_id = $1", alert_id
        )
        return {
            (r["payload"]["row"]["transaction_hash"], r["payload"]["row"]["log_index"])
            for r in rows
        }

    await wait_until(lambda: _equals(events, expected), 90, 0.2, "every whale transfer alerted")
    # Re-applying (a backfill again) schedules nothing new and adds no event.
    tasks = "SELECT count(*) FROM state.tasks WHERE payload->'alert'->>'alert_id' = $1"
    before = await state_conn.fetchval(tasks, str(alert_id))
    await apply(c_settings, alert)
    assert await state_conn.fetchval(tasks, str(alert_id)) == before == 10
    rows = await data_conn.fetch(
        "SELECT dedupe_key, block_hash, chain_id FROM data.alert_events WHERE alert_definition_id = $1",
        alert_id,
    )
    assert len(rows) == len(expected) and all(
        r["block_hash"] and r["chain_id"] == 31337 for r in rows
    )


async def _equals(read: Any, expected: set[tuple[str, int]]) -> bool:
    return bool(await read() == expected)


def test_an_alert_rule_the_gate_rejects_is_refused_at_apply(
    c_settings: Settings, tmp_path: Path
) -> None:
    out = trace_apply(
        c_settings,
        tmp_path / "bad-alert.yaml",
        "kind: alert\nname: bad\nsource: {dataset: fixed.blocks}\n"
        "rule: {sql: \"SELECT * FROM read_parquet('/etc/passwd')\"}\nidentity: [block_number]\n",
    )
    assert out.returncode == 2
    assert out.stderr.startswith("error: rule.sql: rejected by the SQL gate")


async def test_a_latest_alert_evaluates_only_ranges_committed_after_it(
    c_settings: Settings, stack: dict[str, Proc], node: Anvil, data_conn: Any
) -> None:
    alert = (
        "kind: alert\nname: whales-live\nsource: {dataset: alerted.erc20_transfers}\n"
        f'start: latest\nrule: {{sql: "{ALERT_SQL}"}}\nidentity: [transaction_hash, log_index]\n'
    )
    (result,) = await apply(c_settings, alert)  # after the backfill test: 2,000 blocks committed
    assert result["evaluations_scheduled"] == 0 and result["start_block"] >= BLOCKS
    (whale,) = node.traffic_block(node.extra["token"], [9 * 10**24])[1:]  # type: ignore[attr-defined]
    end = node.head() + 1
    streams = {
        "erc20_transfers": {"cryo_dataset": "erc20_transfers", "chunk_size": 200, "max_inflight": 8}
    }
    await apply(
        c_settings, spec_yaml("alerted", f"{{kind: fixed_target, to_block: {end}}}", streams)
    )
    alert_id = uuid.UUID(result["alert_id"])

    async def live_events() -> list[str] | None:
        rows = await data_conn.fetch(
            "SELECT tx_hash FROM data.alert_events WHERE alert_definition_id = $1", alert_id
        )
        return [r["tx_hash"] for r in rows] or None

    assert await wait_until(live_events, 60, 0.2, "the new whale alerted") == [whale]
