"""A DAG job's partitions page (ops.dag_lineage, the console's /ui/dags/{dag}/jobs/{job}) on
a job with 10,000 live partitions in the state database: keyset pages of 100 visit every
partition once in range order, each with the input partition it read, at a bounded cost
per page; another org, an unknown job or generation is not found."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tests.conftest import Dbs
from tests.helpers import env_of
from trace_platform.db.pool import create_pool
from trace_platform.domain.errors import NotFoundError, ValidationError
from trace_platform.ops.dag_lineage import job_partitions
from trace_platform.ports import LITE_ORG_ID

N = 10_000
SPAN = 10


@pytest.fixture(scope="module")
async def pool(dbs: Dbs) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(dbs.state, max_size=2)
    yield p
    await p.close()


async def seed(pool: asyncpg.Pool) -> dict[str, uuid.UUID]:
    """A DAG `big` whose job `down` reads job `up`, each with N committed partitions of SPAN
    blocks, and the lineage of each `down` partition: the `up` partition of its range."""
    ids = {k: uuid.uuid4() for k in ("dag", "up", "down", "up_ds", "down_ds")}
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO state.dags (dag_id, org_id, name) VALUES ($1, $2, 'big')",
            ids["dag"],
            LITE_ORG_ID,
        )
        for job, ds, inputs in (
            ("up", "up_ds", [{"kind": "chain", "name": "c"}]),
            ("down", "down_ds", [{"kind": "job", "name": "up"}]),
        ):
            await conn.execute(
                "INSERT INTO state.datasets (dataset_uuid, org_id, name) VALUES ($1, $2, $3)",
                ids[ds],
                LITE_ORG_ID,
                f"big.{job}",
            )
            await conn.execute(
                "INSERT INTO state.dag_jobs (job_uuid, dag_id, org_id, name, dataset_uuid,"
                " generation, definition, inputs, position, max_concurrency, max_attempts)"
                " VALUES ($1, $2, $3, $4, $5, $6, '{}'::jsonb, $7::jsonb, 0, 1, 1)",
                ids[job],
                ids["dag"],
                LITE_ORG_ID,
                job,
                ids[ds],
                f"{job}-definition-hash",
                inputs,
            )
            await conn.execute(
                "INSERT INTO state.dataset_partitions (partition_id, dataset_uuid, range_start,"
                " range_end, files, row_count, size_bytes, added_seq)"
                " SELECT gen_random_uuid(), $1, i * $2, (i + 1) * $2, '[]'::jsonb, i % 7, 100, 1"
                " FROM generate_series(0, $3 - 1) AS i",
                ids[ds],
                SPAN,
                N,
            )
        jobs = {"up": str(ids["up"]), "down": str(ids["down"])}
        await conn.execute(
            "INSERT INTO state.dag_generations (dag_id, generation, state, spec, sha256, jobs)"
            " VALUES ($1, 1, 'current', '{}'::jsonb, '', $2::jsonb)",
            ids["dag"],
            jobs,
        )
        await conn.execute(
            "INSERT INTO state.dag_lineage (partition_id, input_dataset_uuid, input_partition_id,"
            " range_start, range_end)"
            " SELECT d.partition_id, u.dataset_uuid, u.partition_id, u.range_start, u.range_end"
            " FROM state.dataset_partitions d JOIN state.dataset_partitions u"
            " ON u.dataset_uuid = $2 AND u.range_start = d.range_start WHERE d.dataset_uuid = $1",
            ids["down_ds"],
            ids["up_ds"],
        )
        await conn.execute("ANALYZE state.dataset_partitions; ANALYZE state.dag_lineage")
    return ids


async def test_pages_of_100_visit_10000_partitions_once_in_order_with_their_lineage(
    pool: asyncpg.Pool,
) -> None:
    ids = await seed(pool)
    env = env_of(pool)
    ups = {
        r["range_start"]: r["partition_id"]
        for r in await pool.fetch(
            "SELECT range_start, partition_id FROM state.dataset_partitions"
            " WHERE dataset_uuid = $1",
            ids["up_ds"],
        )
    }
    seen: list[int] = []
    after: int | None = None
    pages, slowest = 0, 0.0
    while True:
        t0 = time.perf_counter()
        page = await job_partitions(env, LITE_ORG_ID, "big", "down", None, after)
        slowest = max(slowest, time.perf_counter() - t0)
        pages += 1
        assert page.total == N and page.generations == [(1, "current")]
        assert len(page.partitions) <= 100
        for p in page.partitions:
            seen.append(p.range_start)
            assert p.range_end == p.range_start + SPAN
            (read,) = p.inputs
            assert read.partition_id == ups[p.range_start]
            assert (read.dataset, read.job, read.dag) == ("big.up", "up", "big")
            assert read.generation == "up-definition-hash"
            assert (read.range_start, read.range_end) == (p.range_start, p.range_end)
        if page.next_after is None:
            break
        after = page.next_after
    assert seen == [i * SPAN for i in range(N)]
    assert pages == N // 100
    # 100 pages of a 10,000-partition job, each a fixed number of indexed statements
    print(f"slowest of {pages} pages: {slowest * 1000:.1f} ms")
    assert slowest < 0.5, slowest


async def test_another_org_an_unknown_job_or_generation_is_not_found(pool: asyncpg.Pool) -> None:
    env = env_of(pool)
    if not await pool.fetchval("SELECT count(*) FROM state.dags WHERE name = 'big'"):
        await seed(pool)
    with pytest.raises(NotFoundError, match="no job 'down' of DAG 'big'"):
        await job_partitions(env, uuid.uuid4(), "big", "down")
    with pytest.raises(NotFoundError, match="no job 'nope'"):
        await job_partitions(env, LITE_ORG_ID, "big", "nope")
    with pytest.raises(NotFoundError, match="in generation 7"):
        await job_partitions(env, LITE_ORG_ID, "big", "down", 7)
    with pytest.raises(ValidationError, match="limit"):
        await job_partitions(env, LITE_ORG_ID, "big", "down", limit=0)
    # past the columns' integer ranges (a console URL's ?generation= or ?after=): 404 / 400
    with pytest.raises(NotFoundError, match="in generation 99999999999999999999"):
        await job_partitions(env, LITE_ORG_ID, "big", "down", 99999999999999999999)
    with pytest.raises(ValidationError, match="after"):
        await job_partitions(env, LITE_ORG_ID, "big", "down", None, 2**70)
    # generation 1 names the same (current) row
    page = await job_partitions(env, LITE_ORG_ID, "big", "down", 1, None, 5)
    assert [p.range_start for p in page.partitions] == [0, 10, 20, 30, 40]
    assert page.next_after == 40
