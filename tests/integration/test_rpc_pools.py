"""RPC pools against a real anvil behind fault-injecting proxies, real cryo, real Postgres
(SPEC §16, invariant 17): a dead, a throttling and a healthy endpoint; a hard throttle that
passes; an endpoint on another chain; an endpoint lagging the head. The sync stays exact,
and no URL (nor the API key in it) appears in status, logs or metrics."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.chain_helpers import (
    apply,
    node_blocks,
    node_log_counts,
    rows,
    spec_yaml,
    status,
    wait_synced,
)
from tests.conftest import (
    REPO,
    Proc,
    free_port,
    proc_env,
    start_dispatcher,
    start_proc,
    start_query_service,
    wait_http_ready,
    wait_until,
)
from tests.rpc_proxy import FaultProxy
from trace_platform.chain.devnet import Anvil
from trace_platform.config import Settings
from trace_platform.ops.env import open_env
from trace_platform.ops.users import create_user
from trace_platform.ports import LITE_ORG_ID

BLOCKS = 2000
KEY = "sekrit-key-4711"
DEFAULT_STREAMS = {d: {"cryo_dataset": d} for d in ("blocks", "transactions", "logs")}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    anvil = Anvil(log=tmp_path_factory.mktemp("anvil") / "anvil.log").start()
    token = anvil.deploy_token()
    while anvil.head() < BLOCKS - 1:
        anvil.traffic_block(token, [10**18 * (anvil.head() + 1), 3])
        anvil.mine(min(49, BLOCKS - 1 - anvil.head()))
    yield anvil
    anvil.stop()


@pytest.fixture(scope="module")
def proxies(node: Anvil) -> Iterator[dict[str, FaultProxy]]:
    made = {
        "throttled": FaultProxy(node.url),
        "healthy": FaultProxy(node.url),
        "hard": FaultProxy(node.url),
        "wrong": FaultProxy(node.url),
        "right": FaultProxy(node.url),
        "lagging": FaultProxy(node.url),
        "best": FaultProxy(node.url),
    }
    made["throttled"].throttle_ratio = 0.5
    made["hard"].retry_after = 2
    made["wrong"].chain_id = 1
    made["lagging"].lag = 20
    yield made
    for p in made.values():
        p.close()


def keyed(url: str) -> str:
    return f"{url}/v1?key={KEY}"


@pytest.fixture(scope="module")
def dead_url() -> str:
    return keyed(f"http://127.0.0.1:{free_port()}")


@pytest.fixture(scope="module")
def p_settings(settings: Settings, proxies: dict[str, FaultProxy], dead_url: str) -> Settings:
    port = free_port()
    p = {k: keyed(v.url) for k, v in proxies.items()}
    return settings.replace(
        query_port=port,
        query_url=f"http://127.0.0.1:{port}",
        api_port=free_port(),
        chain_interval=0.1,
        rpc_pools=(
            ("mixed", f"{dead_url};name=dead,{p['throttled']};name=throttled,{p['healthy']}"),
            ("hard", p["hard"]),
            ("chains", f"{p['wrong']};name=wrong,{p['right']};name=right"),
            ("heads", f"{p['lagging']};name=lagging,{p['best']};name=best"),
        ),
    )


@pytest.fixture(scope="module")
async def stack(
    p_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("logs")
    procs: dict[str, Proc] = {
        "dispatcher": await start_dispatcher(p_settings, logs),
        "worker": start_proc(p_settings, logs, "worker"),
        "query": await start_query_service(p_settings, logs),
        "sink": start_proc(p_settings, logs, "sink"),
        "api": Proc(["api"], proc_env(p_settings), logs / "api.log").start(),
    }
    await wait_http_ready(f"http://127.0.0.1:{p_settings.api_port}", procs["api"])
    yield {"procs": procs, "logs": logs}
    for p in procs.values():
        p.stop()


def endpoints_of(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["endpoint"]: e for e in job["endpoints"]}


async def assert_exact(settings: Settings, name: str, node: Anvil, end: int) -> None:
    """Invariant 9 through the pool: every block once, hashes, tx and log counts as web3's."""
    expected = node_blocks(node.url, 0, end)
    got = await rows(settings, f"{name}.blocks", "SELECT block_number, block_hash FROM dataset")
    assert sorted(r[0] for r in got) == list(range(end))
    assert {r[0]: r[1] for r in got} == {n: b["hash"] for n, b in expected.items()}
    txs = await rows(
        settings, f"{name}.transactions", "SELECT block_number, count(*) FROM dataset GROUP BY 1"
    )
    assert {r[0]: r[1] for r in txs} == {n: b["txs"] for n, b in expected.items() if b["txs"]}
    logs = await rows(
        settings, f"{name}.logs", "SELECT block_number, count(*) FROM dataset GROUP BY 1"
    )
    assert {r[0]: r[1] for r in logs} == node_log_counts(node.url, 0, end)


async def max_attempt(conn: asyncpg.Connection, name: str) -> int:
    return int(
        await conn.fetchval(
            "SELECT coalesce(max(t.attempt), 0) FROM state.tasks t"
            " JOIN state.chain_ranges r USING (task_id) JOIN state.chain_jobs j USING (job_id)"
            " WHERE j.name = $1",
            name,
        )
    )


async def test_dead_throttling_and_healthy_endpoints_sync_exactly(
    p_settings: Settings,
    stack: dict[str, Any],
    node: Anvil,
    proxies: dict[str, FaultProxy],
    state_conn: asyncpg.Connection,
) -> None:
    mode = f"{{kind: fixed_target, to_block: {BLOCKS}}}"
    await apply(p_settings, spec_yaml("mixed", mode, DEFAULT_STREAMS, rpc_pool="mixed"))
    job = await wait_synced(p_settings, "mixed", BLOCKS, timeout=240)
    for s in job["streams"]:
        assert (s["tip"], s["failed"], s["complete"]) == (BLOCKS, 0, True)
    await assert_exact(p_settings, "mixed", node, BLOCKS)
    assert await max_attempt(state_conn, "mixed") < p_settings.chain_max_attempts

    async def reported() -> dict[str, dict[str, Any]] | None:
        eps = endpoints_of(await status(p_settings, "mixed"))
        return eps if eps.get("dead", {}).get("errors") else None

    eps = await wait_until(reported, 20, 0.2, "the dead endpoint's errors reported")
    assert set(eps) == {"dead", "throttled", p_settings.rpc_endpoints("mixed")[2].label}
    assert eps["dead"]["state"] in ("out", "healthy") and eps["dead"]["errors"] >= 1
    throttled = eps["throttled"]
    assert proxies["throttled"].throttled > 0 and throttled["throttled"] > 0
    # Its budget was cut: metered now, at or below the rate it was throttled at.
    assert throttled["rps"] is not None and throttled["rps"] <= throttled["ceiling"]
    healthy = eps[p_settings.rpc_endpoints("mixed")[2].label]
    assert healthy["state"] == "healthy" and healthy["ranges"] > 0
    assert healthy["latency_p50_ms"] is not None


async def test_the_only_endpoint_throttles_hard_then_recovers(
    p_settings: Settings,
    stack: dict[str, Any],
    node: Anvil,
    proxies: dict[str, FaultProxy],
    state_conn: asyncpg.Connection,
) -> None:
    hard = proxies["hard"]
    hard.throttle_for(8)
    mode = "{kind: fixed_target, to_block: 1000}"
    await apply(p_settings, spec_yaml("hard", mode, DEFAULT_STREAMS, rpc_pool="hard"))
    job = await wait_synced(p_settings, "hard", 1000, timeout=180)
    assert all(s["failed"] == 0 for s in job["streams"])
    assert hard.throttled > 0
    await assert_exact(p_settings, "hard", node, 1000)
    assert await max_attempt(state_conn, "hard") < p_settings.chain_max_attempts
    # Retry-After was honoured: 8 s of 429s at 2 s apart is at most five rounds of calls, tens
    # of requests (64 measured, 16 a round), not thousands; a 1 s backoff would send twice that.
    assert hard.throttled < 100


async def test_an_endpoint_on_another_chain_is_refused_while_the_other_carries_the_job(
    p_settings: Settings, stack: dict[str, Any], node: Anvil
) -> None:
    mode = "{kind: fixed_target, to_block: 500}"
    await apply(p_settings, spec_yaml("chains", mode, DEFAULT_STREAMS, rpc_pool="chains"))
    job = await wait_synced(p_settings, "chains", 500, timeout=120)
    assert job["error"] is None
    await assert_exact(p_settings, "chains", node, 500)

    async def refused() -> dict[str, dict[str, Any]] | None:
        # the dispatcher's view may say "refused" before the worker's next report (every
        # 2 s) brings the counts of the ranges it extracted
        eps = endpoints_of(await status(p_settings, "chains"))
        wrong, right = eps.get("wrong", {}), eps.get("right", {})
        return eps if wrong.get("state") == "refused" and right.get("ranges") else None

    eps = await wait_until(refused, 20, 0.2, "the wrong-chain endpoint refused")
    reason = eps["wrong"]["reason"]
    assert "chain_id_mismatch" in reason and "serves chain 1" in reason and "31337" in reason
    assert eps["wrong"]["ranges"] == 0 and eps["right"]["ranges"] > 0


async def test_following_the_head_takes_the_best_head_past_a_lagging_endpoint(
    p_settings: Settings, stack: dict[str, Any], node: Anvil
) -> None:
    streams = {"blocks": {"cryo_dataset": "blocks", "chunk_size": 10}}
    mode = f"{{kind: follow_head, from_block: {BLOCKS - 200}, tail_lag: 2}}"
    await apply(p_settings, spec_yaml("heads", mode, streams, rpc_pool="heads"))
    node.mine(30)
    head = node.head()

    async def caught_up() -> dict[str, Any] | None:
        job = await status(p_settings, "heads")
        return job if job["head"] == head and job["streams"][0]["tip"] >= head - 12 else None

    job = await wait_until(caught_up, 60, 0.2, "the job at the best head")
    assert job["head"] == head  # not the lagging endpoint's head - 20
    lag = job["streams"][0]["lag_blocks"]
    assert lag <= 2 + 10 + 1  # within tail_lag + chunk_size (+ the head block itself)

    async def lags() -> dict[str, Any] | None:
        # the two heads are asked at once; a round during the mining above may see them a
        # block apart, so wait for a round after it (each round reports afresh)
        eps = endpoints_of(await status(p_settings, "heads"))
        lagging, best = eps.get("lagging", {}), eps.get("best", {})  # (reported every 2 s)
        return eps if lagging.get("lag") == 20 and best.get("lag") == 0 else None

    await wait_until(lags, 20, 0.2, "the lagging endpoint's lag of 20 reported")


async def test_no_url_or_key_appears_in_status_logs_metrics_or_the_cli(
    p_settings: Settings,
    stack: dict[str, Any],
    proxies: dict[str, FaultProxy],
    dead_url: str,
) -> None:
    # Runs last in the module: every job above has written its logs by now.
    seen: list[str] = []
    async with httpx.AsyncClient() as http:
        metrics = (await http.get((stack["procs"]["dispatcher"].url or "") + "/metrics")).text
    assert 'trace_rpc_endpoint{endpoint="throttled"' in metrics
    seen.append(metrics)
    for name in ("mixed", "chains", "heads"):
        seen.append(orjson.dumps(await status(p_settings, name)).decode())
    cli = subprocess.run(
        [sys.executable, "-m", "trace_platform", "chain", "status", "mixed"],
        capture_output=True,
        text=True,
        env=proc_env(p_settings),
        cwd=REPO,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert "throttled" in cli.stdout and "dead" in cli.stdout
    seen += [cli.stdout, cli.stderr]
    async with open_env(p_settings) as env:
        key = (await create_user(env, LITE_ORG_ID, "pool-viewer", "reader")).api_key
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{p_settings.api_port}") as http:
        api = await http.get("/v1/chains/mixed", headers={"Authorization": f"Bearer {key}"})
        assert api.status_code == 200 and "throttled" in api.text
        form = await http.get("/ui/login")
        token = re.search(r'name="login_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        await http.post("/ui/login", data={"api_key": key, "login_token": token})
        page = await http.get("/ui/chains")
        assert page.status_code == 200 and 'data-endpoint="throttled"' in page.text
    seen += [api.text, page.text]
    seen += [p.read_text(errors="replace") for p in Path(stack["logs"]).glob("*")]
    ports = [str(p.port) for p in proxies.values()] + [dead_url.split(":")[2].split("/")[0]]
    for text in seen:
        assert KEY not in text
        for port in ports:
            assert f":{port}/" not in text and f":{port}?" not in text
