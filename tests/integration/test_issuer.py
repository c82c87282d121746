"""The key ring's issuer is the one source of truth for `iss` (issue: a ring with its own
issuer made every minted token fail the dispatcher's own verification)."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import REPO, Proc, free_port, proc_env, start_dispatcher, start_query_service
from tests.helpers import Attempt, create_tasks
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.config import Settings
from trace_platform.datasets import register_dataset
from trace_platform.db.pool import create_pool
from trace_platform.ports import LITE_ORG_ID

RING = {
    "issuer": "acme-ring",
    "current": {"kid": "acme-1", "alg": "HS256", "secret": secrets.token_hex(32)},
}


@pytest.fixture(scope="module")
def ring_settings(settings: Settings) -> Settings:
    # TRACE_ISSUER left at its default: the ring's own issuer must win.
    port = free_port()
    return settings.replace(
        task_keys=json.dumps(RING),
        issuer="trace-dispatcher",
        port=free_port(),
        query_port=port,
        query_url=f"http://127.0.0.1:{port}",
    )


@pytest.fixture(scope="module")
async def procs(
    ring_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Proc]]:
    logs = tmp_path_factory.mktemp("logs")
    out = {
        "dispatcher": await start_dispatcher(ring_settings, logs),
        "query": await start_query_service(ring_settings, logs),
    }
    yield out
    for p in out.values():
        p.stop()


async def test_a_ring_with_its_own_issuer_works_end_to_end(
    ring_settings: Settings, procs: dict[str, Proc], tmp_path: Path
) -> None:
    pq.write_table(pa.table({"block": [1, 2, 3]}), tmp_path / "d.parquet")
    pool = await create_pool(ring_settings.state_database_url or "", max_size=1)
    await register_dataset(
        pool,
        object_store_from_settings(ring_settings),
        "issuer-ds",
        [tmp_path / "d.parquet"],
        LITE_ORG_ID,
    )
    await pool.close()
    (tid,) = await create_tasks(
        ring_settings.state_database_url or "",
        payload={"operator": "manual", "inputs": [{"dataset": "issuer-ds"}]},
        wake=False,
    )
    async with httpx.AsyncClient(base_url=procs["dispatcher"].url or "", timeout=10) as http:
        a = await Attempt.claim(http, tid)
        import jwt

        claims = jwt.decode(a.token, options={"verify_signature": False})
        assert claims["iss"] == "acme-ring"
        assert (await a.heartbeat()).status_code == 200
        assert (await a.publish()).status_code == 200
        dataset_id = claims["datasets"][0]["dataset_uuid"]
        r = await http.post(
            f"{ring_settings.query_url}/v1/task/query",
            json={
                "task_id": a.task_id,
                "attempt": a.attempt,
                "dataset_id": dataset_id,
                "sql": "SELECT sum(block) FROM dataset",
            },
            headers={"X-Trace-Task-Capability": a.token},
        )
        assert r.status_code == 200, r.text
        assert r.json()["rows"] == [[6]]
        assert (await a.complete()).status_code == 200


def test_a_conflicting_issuer_stops_the_start_with_one_line(ring_settings: Settings) -> None:
    env = proc_env(ring_settings.replace(issuer="someone-else"))
    out = subprocess.run(
        [sys.executable, "-m", "trace_platform", "dispatcher"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        "error: TRACE_ISSUER ('someone-else') differs from the key ring's issuer ('acme-ring');"
        " remove one of them or make them equal"
    )
