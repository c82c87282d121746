"""Datasets stored in S3 (a real S3-protocol server on loopback): registered through the S3
store, granted at claim, read by the executor through an S3 filesystem it is handed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import (
    Dbs,
    Proc,
    free_port,
    start_dispatcher,
    start_query_service,
)
from tests.helpers import Attempt, create_tasks
from tests.integration.test_object_stores import (  # noqa: F401 - fixtures
    aws_env,
    new_bucket,
    s3_endpoint,
)
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.config import Settings
from trace_platform.datasets import register_dataset
from trace_platform.db.pool import create_pool
from trace_platform.ports import LITE_ORG_ID


@pytest.fixture(scope="module")
def s3_settings(settings: Settings, s3_endpoint: str) -> Settings:  # noqa: F811
    bucket = new_bucket(s3_endpoint, "trace-")
    port = free_port()
    return settings.replace(
        object_store_url=f"s3://{bucket}/lake",
        s3_endpoint_url=s3_endpoint,
        query_port=port,
        query_url=f"http://127.0.0.1:{port}",
    )


@pytest.fixture(scope="module")
async def services(
    s3_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Proc]]:
    logs = tmp_path_factory.mktemp("logs")
    procs = {
        "dispatcher": await start_dispatcher(s3_settings, logs),
        "query": await start_query_service(s3_settings, logs),
    }
    yield procs
    for p in procs.values():
        p.stop()


async def test_query_over_a_dataset_in_s3(
    s3_settings: Settings, services: dict[str, Proc], dbs: Dbs, tmp_path: Path
) -> None:
    path = tmp_path / "blocks.parquet"
    pq.write_table(
        pa.table({"block": list(range(500)), "value": [i % 10 for i in range(500)]}), path
    )
    pool = await create_pool(dbs.state, max_size=2)
    store = object_store_from_settings(s3_settings)
    reg = await register_dataset(pool, store, "s3blocks", [path], LITE_ORG_ID)
    await pool.close()
    (tid,) = await create_tasks(
        s3_settings.state_database_url or "",
        1,
        payload={"operator": "manual", "inputs": [{"dataset": "s3blocks"}]},
        wake=False,
    )
    async with httpx.AsyncClient(base_url=services["dispatcher"].url or "", timeout=10) as http:
        a = await Attempt.claim(http, tid)
    import jwt

    claims = jwt.decode(a.token, options={"verify_signature": False})
    assert claims["s3"]["read_prefixes"][0].startswith(s3_settings.object_store_url or "x")
    assert claims["datasets"][0]["storage_ref"]["scheme"] == "s3"
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.post(
            f"{s3_settings.query_url}/v1/task/query",
            json={
                "task_id": a.task_id,
                "attempt": a.attempt,
                "dataset_id": str(reg.dataset_uuid),
                "sql": "SELECT value, count(*) FROM dataset GROUP BY value ORDER BY value",
            },
            headers={"X-Trace-Task-Capability": a.token},
        )
    assert r.status_code == 200, r.text
    assert r.json()["rows"] == [[v, 50] for v in range(10)]
