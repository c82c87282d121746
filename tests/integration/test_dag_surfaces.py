"""The faces of DAGs (SPEC §13, §19): `trace dag list|status|pause|resume|delete`, local and
remote, `/v1/dags` with its roles and org scope, and the SDK — against a real anvil, cryo,
dispatcher, worker, query service, `trace api` and Postgres, with one DAG built over a synced
chain and one stopped by a failed range."""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.chain_helpers import apply
from tests.conftest import (
    Proc,
    proc_env,
    start_dispatcher,
    start_proc,
    start_query_service,
    wait_http_ready,
    wait_until,
)
from tests.helpers import env_of, run_trace
from tests.integration.test_user_api import run_remote
from trace_platform.chain.devnet import Anvil
from trace_platform.config import Settings
from trace_platform.db.pool import create_pool
from trace_platform.ops.dags import DagStatus, dag_status
from trace_platform.ops.env import open_env
from trace_platform.ops.users import create_user
from trace_platform.ports import LITE_ORG_ID

BLOCKS = 30
ORG_B = uuid.UUID("0b0b0b0b-0000-4000-8000-0000000000dd")
CHAIN = (
    "kind: chain_sync\nname: line\nchain_id: 31337\nrpc_pool: local\n"
    f"mode: {{kind: fixed_target, from_block: 0, to_block: {BLOCKS}}}\n"
    "streams:\n  blocks: {cryo_dataset: blocks, chunk_size: 5, max_inflight: 4}\n"
)
DAILY = (
    "kind: dag\nname: daily\njobs:\n"
    "  stamped:\n    inputs: [{chain: line}]\n"
    "    sql: SELECT block_number, timestamp FROM blocks\n"
    "    unique_key: [block_number]\n    backfill_blocks: 10\n"
    "  counted:\n    inputs: [{job: stamped}]\n"
    "    sql: SELECT count(*) AS n, min(block_number) AS first FROM stamped\n"
)
BROKEN = (
    "kind: dag\nname: broken\njobs:\n"
    "  same:\n    inputs: [{chain: line}]\n"
    "    sql: SELECT 1 AS k FROM blocks\n    unique_key: [k]\n"
)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    anvil = Anvil(log=tmp_path_factory.mktemp("anvil") / "anvil.log").start()
    anvil.mine(BLOCKS + 2 - anvil.head())
    yield anvil
    anvil.stop()


@pytest.fixture(scope="module")
def s_settings(settings: Settings, node: Anvil) -> Settings:
    return settings.replace(
        chain_interval=0.1,
        rpc_pools=(("local", node.url),),
        query_url=f"http://127.0.0.1:{settings.query_port}",
        api_rate_per_second=1000.0,
        api_rate_burst=1000,
    )


async def status(settings: Settings, name: str) -> DagStatus:
    async with open_env(settings) as env:
        return await dag_status(env, LITE_ORG_ID, name)


@pytest.fixture(scope="module")
async def api(s_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """The stack, the chain synced, `daily` built to its end and `broken` stopped."""
    logs = tmp_path_factory.mktemp("daglogs")
    procs = [
        await start_dispatcher(s_settings, logs),
        await start_query_service(s_settings, logs),
        start_proc(s_settings, logs, "worker"),
        Proc(["api"], proc_env(s_settings), logs / "api.log").start(),
    ]
    url = f"http://127.0.0.1:{s_settings.api_port}"
    try:
        await wait_http_ready(url, procs[-1])
        await apply(s_settings, CHAIN)
        await apply(s_settings, DAILY)
        await apply(s_settings, BROKEN)

        async def settled() -> bool:
            daily, broken = await status(s_settings, "daily"), await status(s_settings, "broken")
            built = all(j.committed_to == BLOCKS and not j.in_flight for j in daily.jobs)
            return built and broken.jobs[0].status == "stopped"

        await wait_until(settled, 90, 0.2, "daily built and broken stopped")
        yield url
    finally:
        for p in procs:
            p.stop()


@pytest.fixture(scope="module")
async def keys(s_settings: Settings, api: str) -> dict[str, str]:
    pool = await create_pool(s_settings.state_database_url or "", max_size=2)
    try:
        out = {}
        for org, prefix in ((LITE_ORG_ID, ""), (ORG_B, "b-")):
            for role in ("reader", "writer"):
                made = await create_user(env_of(pool), org, f"dag-{prefix}{role}", role)
                out[prefix + role] = made.api_key
        return out
    finally:
        await pool.close()


async def live_ranges(settings: Settings, relation: str) -> list[tuple[int, int]]:
    conn = await asyncpg.connect(settings.state_database_url)
    try:
        rows = await conn.fetch(
            "SELECT p.range_start, p.range_end FROM state.dataset_partitions p"
            " JOIN state.datasets d USING (dataset_uuid)"
            " WHERE d.name = $1 AND p.removed_seq IS NULL ORDER BY 1",
            relation,
        )
    finally:
        await conn.close()
    return [(r["range_start"], r["range_end"]) for r in rows]


def trace(settings: Settings, *args: str) -> Any:
    out = run_trace(settings, *args)
    assert out.returncode == 0, (args, out.stderr)
    return out


def row_of(text: str, first: str) -> list[str]:
    """The cells of the table line that starts with `first` (columns are 2+ spaces apart)."""
    for line in text.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == first:
            return cells
    raise AssertionError(f"no row {first!r} in:\n{text}")


async def test_dag_status_shows_each_jobs_progress_rows_lag_and_last_error(
    s_settings: Settings, api: str
) -> None:
    listed = trace(s_settings, "dag", "list").stdout
    assert row_of(listed, "name")[:6] == [
        "name",
        "state",
        "jobs",
        "committed",
        "in flight",
        "failed",
    ]
    st = await status(s_settings, "daily")
    ranges = {j.job: j.committed for j in st.jobs}
    # a committed range is a live partition of the job's output (their number depends on how
    # far the chain had committed when each was planned)
    assert ranges == {
        "stamped": len(await live_ranges(s_settings, "daily.stamped")),
        "counted": len(await live_ranges(s_settings, "daily.counted")),
    }
    assert row_of(listed, "daily")[1:6] == ["running", "2", str(sum(ranges.values())), "0", "0"]
    # `broken`'s ranges each failed for good (its first one stopped it): none is in flight
    failed = (await status(s_settings, "broken")).jobs[0].failed
    assert failed >= 1
    assert row_of(listed, "broken")[1:6] == ["error", "1 (1 stopped)", "0", "0", str(failed)]

    daily = trace(s_settings, "dag", "status", "daily").stdout
    assert daily.splitlines()[0] == "dag daily  running  2 jobs"
    stamped, counted = row_of(daily, "stamped"), row_of(daily, "counted")
    # job, status, progress, committed, in flight, failed, rows, to, input tip, lag, generation
    assert stamped == [
        "stamped",
        "active",
        "[##########] 100%",
        str(ranges["stamped"]),
        "0",
        "0",
        str(BLOCKS),
        str(BLOCKS),
        str(BLOCKS),
        "0 blocks",
        st.jobs[0].generation[:12],
    ]
    counted_rows = ranges["counted"]  # one row per range
    assert counted[1:10] == [
        "active",
        "[##########] 100%",
        str(ranges["counted"]),
        "0",
        "0",
        str(counted_rows),
        str(BLOCKS),
        str(BLOCKS),
        "0 blocks",
    ]
    assert "  stamped (daily.stamped) reads chain line" in daily
    assert "  counted (daily.counted) reads job stamped" in daily
    assert "last error" not in daily

    broken = trace(s_settings, "dag", "status", "broken").stdout
    assert broken.splitlines()[0] == "dag broken  error  1 job"
    same = row_of(broken, "same")
    assert same[1:7] == ["stopped", "[..........] 0%", "0", "0", str(failed), "0"]
    (error,) = [line.strip() for line in broken.splitlines() if "last error" in line]
    assert re.match(
        r"last error: range \[\d+, \d+\) failed: unique_key \['k'\] is not unique", error
    )

    # --json is the API's document
    as_json = orjson.loads(trace(s_settings, "dag", "status", "daily", "--json").stdout)
    expected = dataclasses.asdict(await status(s_settings, "daily"))
    assert as_json == orjson.loads(orjson.dumps(expected))
    missing = run_trace(s_settings, "dag", "status", "nope")
    assert (missing.returncode, missing.stderr) == (1, "error: no DAG named 'nope'\n")


async def test_the_api_the_sdk_and_the_remote_cli_answer_the_same_documents(
    s_settings: Settings, api: str, keys: dict[str, str], tmp_path: Path
) -> None:
    from trace_platform.sdk import Client

    with Client(api, keys["reader"]) as sdk:
        listed = {d["name"]: d for d in sdk.dags()}
        shown = sdk.dag("daily")
    local_list = orjson.loads(trace(s_settings, "dag", "list", "--json").stdout)
    assert list(listed.values()) == local_list
    assert shown == orjson.loads(trace(s_settings, "dag", "status", "daily", "--json").stdout)
    assert [j["job"] for j in shown["jobs"]] == ["stamped", "counted"]
    assert shown["jobs"][1]["inputs"] == [{"kind": "job", "name": "stamped", "where": None}]
    for args in (
        ("dag", "list"),
        ("dag", "list", "--json"),
        ("dag", "status", "daily"),
        ("dag", "status", "broken", "--json"),
    ):
        local = trace(s_settings, *args)
        remote = run_remote(api, keys["reader"], *args, home=tmp_path)
        assert (remote.returncode, remote.stdout) == (0, local.stdout), (args, remote.stderr)
    gone = run_remote(api, keys["reader"], "dag", "status", "nope", home=tmp_path)
    assert (gone.returncode, gone.stderr) == (1, "error: no DAG named 'nope'\n")
    # another org's key sees no DAG, and none by name
    async with httpx.AsyncClient(base_url=api) as http:
        other = {"Authorization": f"Bearer {keys['b-reader']}"}
        assert (await http.get("/v1/dags", headers=other)).json() == {"dags": []}
        assert (await http.get("/v1/dags/daily", headers=other)).status_code == 404
        assert (await http.delete("/v1/dags/daily", headers=other)).status_code == 403
        other = {"Authorization": f"Bearer {keys['b-writer']}"}
        assert (await http.delete("/v1/dags/daily", headers=other)).status_code == 404
    assert (await status(s_settings, "daily")).state == "running"


async def test_a_reader_cannot_pause_or_delete_and_a_writer_can(
    s_settings: Settings, api: str, keys: dict[str, str], tmp_path: Path
) -> None:
    from trace_platform.sdk import ApiError, Client

    async def spec_of(name: str) -> Any:
        conn = await asyncpg.connect(s_settings.state_database_url)
        try:
            return await conn.fetchval(
                "SELECT sha256 FROM state.specs WHERE kind = 'dag' AND name = $1", name
            )
        finally:
            await conn.close()

    with Client(api, keys["reader"]) as reader:
        for call in (reader.pause_dag, reader.resume_dag, reader.delete_dag):
            with pytest.raises(ApiError) as refused:
                call("daily")
            assert (refused.value.status, refused.value.code) == (403, "forbidden")
    assert (await status(s_settings, "daily")).state == "running" and await spec_of("daily")
    denied = run_remote(api, keys["reader"], "dag", "pause", "daily", home=tmp_path)
    assert denied.returncode == 2 and "writer" in denied.stderr

    with Client(api, keys["writer"]) as writer:
        assert writer.pause_dag("daily") == {"name": "daily", "paused": True}
        assert (await status(s_settings, "daily")).state == "paused"
        assert writer.resume_dag("daily") == {"name": "daily", "paused": False}
        assert writer.delete_dag("broken")["deleted"] is True
        assert {d["name"]: d["state"] for d in writer.dags()} == {
            "broken": "deleted",
            "daily": "running",
        }
        with pytest.raises(ApiError) as again:
            writer.resume_dag("broken")  # a deleted DAG comes back by being applied
        assert again.value.status == 409 and "apply its spec again" in str(again.value)
    assert await spec_of("broken") is None
    # its output stays readable
    read = trace(s_settings, "dataset", "query", "daily.counted", "SELECT sum(n) AS n FROM dataset")
    assert read.stdout.split()[:2] == ["n", str(BLOCKS)]

    # the local verbs: pause, resume, delete
    assert trace(s_settings, "dag", "pause", "daily").stdout == "daily: paused\n"
    assert row_of(trace(s_settings, "dag", "list").stdout, "daily")[1] == "paused"
    resumed = run_remote(api, keys["writer"], "dag", "resume", "daily", home=tmp_path)
    assert (resumed.returncode, resumed.stdout) == (0, "daily: resumed\n")
    deleted = trace(s_settings, "dag", "delete", "daily").stdout
    assert deleted.startswith("daily: deleted")
    assert (await status(s_settings, "daily")).state == "deleted"
    await apply(s_settings, DAILY)  # applied again, it runs where it was
    st = await status(s_settings, "daily")
    assert st.state == "running" and all(j.committed_to == BLOCKS for j in st.jobs)


async def test_rollback_and_purge_of_a_generation_through_the_cli_the_api_and_the_sdk(
    s_settings: Settings, api: str, keys: dict[str, str], tmp_path: Path
) -> None:
    from trace_platform.sdk import ApiError, Client

    changed = DAILY.replace("count(*) AS n,", "count(*) AS n, 2 AS v,")
    await apply(s_settings, changed)

    async def cut_over() -> DagStatus | None:
        st = await status(s_settings, "daily")
        return st if st.building_generation is None and st.generation == 2 else None

    await wait_until(cut_over, 60, 0.2, "generation 2 current")
    shown = trace(s_settings, "dag", "status", "daily").stdout
    assert "generation 2 current; kept for rollback: 1" in shown
    with Client(api, keys["reader"]) as reader:
        with pytest.raises(ApiError) as refused:
            reader.rollback_dag("daily")
        assert refused.value.status == 403
        assert reader.dag("daily")["generation"] == 2
    with Client(api, keys["writer"]) as writer:
        assert writer.rollback_dag("daily") == {
            "name": "daily",
            "from_generation": 2,
            "to_generation": 1,
            "jobs": 1,
        }
        with pytest.raises(ApiError) as current:
            writer.purge_dag("daily", 1)
        assert current.value.status == 409 and "is current" in str(current.value)
    read = trace(s_settings, "dataset", "query", "daily.counted", "SELECT * FROM dataset LIMIT 1")
    assert " v " not in f" {read.stdout.split(chr(10))[0]} "  # generation 1's columns again
    again = run_remote(api, keys["writer"], "dag", "rollback", "daily", home=tmp_path)
    assert again.returncode == 1 and "no earlier generation" in again.stderr
    purged = trace(s_settings, "dag", "purge", "daily", "--generation", "2").stdout
    assert purged.startswith("daily: generation 2 purged (1 jobs,")
    states = {g.generation: g.state for g in (await status(s_settings, "daily")).generations}
    assert states == {1: "current", 2: "purged"}
