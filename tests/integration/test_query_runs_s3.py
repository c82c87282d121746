"""Query runs over an S3 object store (a real S3-protocol server on loopback): the result is
written under `results/{org}/{run_id}/` in the bucket, the run's URL is a pre-signed S3 GET
that answers the same bytes as `POST /v1/query` (S3 checks its signature), and an
expired result is deleted from the bucket."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import boto3
import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import (
    Proc,
    api_settings,
    proc_env,
    start_query_service,
    wait_http_ready,
    wait_until,
)
from tests.helpers import env_of
from tests.integration.test_object_stores import (  # noqa: F401 - fixtures
    aws_env,
    new_bucket,
    s3_endpoint,
)
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.config import Settings
from trace_platform.datasets import register_dataset
from trace_platform.db.pool import create_pool
from trace_platform.ops.users import create_user
from trace_platform.ports import LITE_ORG_ID

SQL = "SELECT n, n * 10 AS tens FROM dataset ORDER BY n"


@pytest.fixture(scope="module")
def s3_settings(settings: Settings, s3_endpoint: str) -> Settings:  # noqa: F811
    bucket = new_bucket(s3_endpoint, "runs-")
    return api_settings(
        settings, object_store_url=f"s3://{bucket}/lake", s3_endpoint_url=s3_endpoint
    )


@pytest.fixture(scope="module")
async def stack(
    s3_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Proc]]:
    logs = tmp_path_factory.mktemp("s3runlogs")
    procs = {"query": await start_query_service(s3_settings, logs)}
    procs["api"] = Proc(["api"], proc_env(s3_settings), logs / "api.log").start()
    procs["api"].url = f"http://127.0.0.1:{s3_settings.api_port}"
    await wait_http_ready(procs["api"].url, procs["api"])
    procs["api"].extra["logs"] = logs
    yield procs
    for p in procs.values():
        p.stop()


@pytest.fixture(scope="module")
async def key(
    s3_settings: Settings, stack: dict[str, Proc], tmp_path_factory: pytest.TempPathFactory
) -> str:
    pool = await create_pool(s3_settings.state_database_url or "", max_size=2)
    try:
        path = tmp_path_factory.mktemp("s3runds") / "n.parquet"
        pq.write_table(pa.table({"n": pa.array(range(20), pa.int64())}), path)
        await register_dataset(
            pool, object_store_from_settings(s3_settings), "s3n", [path], LITE_ORG_ID
        )
        return (await create_user(env_of(pool), LITE_ORG_ID, "s3-runner", "reader")).api_key
    finally:
        await pool.close()


async def finished(http: httpx.AsyncClient, key: str, run_id: str) -> dict[str, object]:
    async def done() -> dict[str, object] | None:
        doc = (
            await http.get(f"/v1/query-runs/{run_id}", headers={"Authorization": f"Bearer {key}"})
        ).json()
        return doc if doc["status"] in ("succeeded", "failed", "canceled") else None

    found: dict[str, object] = await wait_until(done, timeout=60, interval=0.1, what="run end")
    return found


async def test_a_runs_result_is_in_the_bucket_behind_a_presigned_url_and_collected(
    s3_settings: Settings,
    stack: dict[str, Proc],
    key: str,
    s3_endpoint: str,  # noqa: F811
) -> None:
    auth = {"Authorization": f"Bearer {key}"}
    body = {"dataset": "s3n", "sql": SQL, "format": "csv"}
    async with httpx.AsyncClient(base_url=stack["api"].url or "", timeout=30) as http:
        direct = await http.post("/v1/query", json=body, headers=auth)
        assert direct.status_code == 200, direct.text
        r = await http.post("/v1/query-runs", json=body, headers=auth)
        assert r.status_code == 202, r.text
        run_id = r.json()["run_id"]
        done = await finished(http, key, run_id)
        assert done["status"] == "succeeded", done
        url = str(done["url"])
        assert url.startswith(s3_endpoint) and "X-Amz-Signature=" in url  # pre-signed S3 GET
        got = await http.get(url)
        assert got.status_code == 200 and got.content == direct.content
    bucket = s3_settings.resolved_object_store_url.removeprefix("s3://").split("/", 1)[0]
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="lake/results/")["Contents"]]
    assert keys == [f"lake/results/{LITE_ORG_ID}/{run_id}/result.csv"]

    # a query service keeping results 3 seconds: the collector deletes the object
    stack["query"].stop()
    logs = Path(stack["api"].extra["logs"])
    stack["query"] = await start_query_service(s3_settings.replace(query_result_ttl=3.0), logs)
    async with httpx.AsyncClient(base_url=stack["api"].url or "", timeout=30) as http:
        r = await http.post("/v1/query-runs", json=body, headers=auth)
        short = r.json()["run_id"]
        assert (await finished(http, key, short))["status"] == "succeeded"
    gone = f"lake/results/{LITE_ORG_ID}/{short}/result.csv"

    def deleted() -> bool:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"lake/results/{LITE_ORG_ID}/{short}/")
        return listed.get("KeyCount", 0) == 0

    await wait_until(deleted, timeout=30, interval=0.2, what=f"{gone} deleted")
    pool = await asyncpg.connect(s3_settings.state_database_url)
    try:
        row = await pool.fetchrow(
            "SELECT collected_at FROM state.query_runs WHERE run_id = $1", uuid.UUID(short)
        )
        assert row["collected_at"] is not None
    finally:
        await pool.close()
