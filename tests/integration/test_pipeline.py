"""End to end with real processes on loopback: dispatcher + worker(s) + sink + Postgres +
a local object store (SPEC §10 invariants 1-5, issue acceptance 1-6)."""

from __future__ import annotations

import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from tests.conftest import Proc, proc_env, start_dispatcher, start_proc, wait_until
from tests.helpers import Attempt, create_tasks, task_row
from trace_platform.adapters.pgqueue import PgQueue
from trace_platform.config import Settings
from trace_platform.db.pool import create_pool


@pytest.fixture(scope="module")
async def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
async def stack(settings: Settings, logs: Path) -> AsyncIterator[dict[str, Proc]]:
    procs = {
        "dispatcher": await start_dispatcher(settings, logs),
        "sink": start_proc(settings, logs, "sink"),
    }
    yield procs
    for p in procs.values():
        p.stop()


@pytest.fixture
async def worker(settings: Settings, logs: Path, stack: dict[str, Proc]) -> AsyncIterator[Proc]:
    proc = start_proc(settings, logs, "worker", "--concurrency", "4")
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
async def http(stack: dict[str, Proc]) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack["dispatcher"].url or "", timeout=10) as c:
        yield c


def emit(seed: str, count: int = 20, **extra: object) -> dict[str, object]:
    return {"operator": "emit_alerts", "count": count, "seed": seed, **extra}


async def rows_for(data_conn: asyncpg.Connection, seed: str) -> int:
    return int(
        await data_conn.fetchval(
            "SELECT count(*) FROM data.alert_events WHERE dedupe_key LIKE $1", f"{seed}:%"
        )
    )


async def completed(state_conn: asyncpg.Connection, ids: list[uuid.UUID]) -> bool:
    n = await state_conn.fetchval(
        "SELECT count(*) FROM state.tasks WHERE task_id = ANY($1) AND status = 'completed'", ids
    )
    return bool(n == len(ids))


async def sink_idle(state_conn: asyncpg.Connection) -> bool:
    n = await state_conn.fetchval(
        "SELECT count(*) FROM state.queue_messages WHERE queue_name = 'buffer_queue'"
    )
    pending = await state_conn.fetchval(
        "SELECT count(*) FROM state.outbox WHERE status = 'pending' AND topic = 'buffer_batch'"
    )
    return bool(n == 0 and pending == 0)


async def test_tasks_flow_end_to_end(
    settings: Settings, worker: Proc, state_conn: asyncpg.Connection, data_conn: asyncpg.Connection
) -> None:
    seed = "e2e-" + uuid.uuid4().hex[:6]
    ids = await create_tasks(settings.state_database_url or "", 1, payload=emit(seed, 25))
    await wait_until(lambda: completed(state_conn, ids), what="completion")
    await wait_until(lambda: rows_for(data_conn, seed), what="rows")
    await wait_until(lambda: sink_idle(state_conn))
    assert await rows_for(data_conn, seed) == 25
    row = await task_row(state_conn, ids[0])
    assert row["outputs"]["records"] == 25 and row["attempt"] == 1
    stored = await data_conn.fetchrow(
        "SELECT org_id, producer_task_id FROM data.alert_events WHERE dedupe_key = $1", f"{seed}:0"
    )
    assert stored["producer_task_id"] == ids[0] and stored["org_id"] == row["org_id"]


async def test_two_orgs_with_the_same_dedupe_keys_each_keep_all_their_events(
    settings: Settings, worker: Proc, state_conn: asyncpg.Connection, data_conn: asyncpg.Connection
) -> None:
    """alert_events is unique on (org_id, dedupe_key): one tenant's keys never suppress
    another tenant's events (SPEC §2)."""
    seed = "tenancy-" + uuid.uuid4().hex[:6]
    other = uuid.uuid4()
    ids = await create_tasks(settings.state_database_url or "", 1, payload=emit(seed, 20))
    ids += await create_tasks(
        settings.state_database_url or "", 1, payload=emit(seed, 20), org_id=other
    )
    await wait_until(lambda: completed(state_conn, ids), what="both orgs' tasks")
    await wait_until(lambda: sink_idle(state_conn))

    async def per_org() -> dict[str, int]:
        rows = await data_conn.fetch(
            "SELECT org_id, count(*) AS n FROM data.alert_events WHERE dedupe_key LIKE $1"
            " GROUP BY org_id",
            f"{seed}:%",
        )
        return {str(r["org_id"]): int(r["n"]) for r in rows}

    await wait_until(lambda: _has_orgs(per_org, 2), what="rows of both orgs")
    task_orgs = {str((await task_row(state_conn, t))["org_id"]) for t in ids}
    assert await per_org() == {org: 20 for org in task_orgs}


async def _has_orgs(per_org: Any, n: int) -> bool:
    counts = await per_org()
    return len(counts) == n and all(v == 20 for v in counts.values())


async def test_duplicate_wakeups_run_a_task_once(
    settings: Settings,
    worker: Proc,
    state_conn: asyncpg.Connection,
    data_conn: asyncpg.Connection,
    dbs: object,
) -> None:
    seed = "dup-" + uuid.uuid4().hex[:6]
    (tid,) = await create_tasks(settings.state_database_url or "", 1, payload=emit(seed, 30))
    pool = await create_pool(settings.state_database_url or "", max_size=2)
    try:
        await PgQueue(pool).publish("task_wakeup", [{"task_id": str(tid)}] * 4)
    finally:
        await pool.close()
    await wait_until(lambda: completed(state_conn, [tid]), what="completion")
    await wait_until(lambda: sink_idle(state_conn), what="sink idle")
    await wait_until(lambda: _no_wakeups_for(state_conn, tid), what="all wake-ups acked")
    assert await rows_for(data_conn, seed) == 30
    row = await task_row(state_conn, tid)
    assert row["attempt"] == 1  # one execution
    batches = await state_conn.fetchval(
        "SELECT count(*) FROM state.outbox WHERE topic = 'buffer_batch'"
        " AND payload->'producer'->>'task_id' = $1",
        str(tid),
    )
    assert batches == 1


async def _no_wakeups_for(conn: asyncpg.Connection, tid: uuid.UUID) -> bool:
    n = await conn.fetchval(
        "SELECT count(*) FROM state.queue_messages WHERE queue_name = 'task_wakeup'"
        " AND payload->>'task_id' = $1",
        str(tid),
    )
    return bool(n == 0)


async def test_paused_worker_past_its_lease_cannot_publish_or_complete(
    settings: Settings,
    logs: Path,
    stack: dict[str, Proc],
    state_conn: asyncpg.Connection,
    data_conn: asyncpg.Connection,
) -> None:
    seed = "stale-" + uuid.uuid4().hex[:6]
    slow = start_proc(settings, logs, "worker")
    try:
        (tid,) = await create_tasks(
            settings.state_database_url or "", 1, payload=emit(seed, 15, sleep_seconds=1.0)
        )

        async def running_attempt(n: int) -> bool:
            row = await task_row(state_conn, tid)
            return bool(row["status"] == "running" and row["attempt"] == n)

        await wait_until(lambda: running_attempt(1), what="attempt 1 running")
        slow.signal(signal.SIGSTOP)
        await wait_until(
            lambda: _attempt_queued(state_conn, tid, 2), what="retry after lease expiry"
        )
        rescuer = start_proc(settings, logs, "worker")
        try:
            await wait_until(lambda: completed(state_conn, [tid]), what="attempt 2 completes")
            slow.signal(signal.SIGCONT)
            await wait_until(
                lambda: (
                    "worker.attempt_fenced" in slow.log_text()
                    or "worker.lease_lost" in slow.log_text()
                ),
                what="stale worker fenced",
            )
            await wait_until(lambda: "worker.attempt_fenced" in slow.log_text(), what="publish 409")
        finally:
            rescuer.stop()
    finally:
        slow.signal(signal.SIGCONT)
        slow.stop()
    await wait_until(lambda: sink_idle(state_conn))
    row = await task_row(state_conn, tid)
    assert row["status"] == "completed" and row["attempt"] == 2
    producers = await state_conn.fetch(
        "SELECT payload->'producer' AS p FROM state.outbox WHERE topic = 'buffer_batch'"
        " AND payload->'producer'->>'task_id' = $1",
        str(tid),
    )
    assert [orjson.loads(r["p"]) if isinstance(r["p"], str) else r["p"] for r in producers] == [
        {"task_id": str(tid), "attempt": 2}
    ]
    assert await rows_for(data_conn, seed) == 15


async def _attempt_queued(conn: asyncpg.Connection, tid: uuid.UUID, attempt: int) -> bool:
    row = await task_row(conn, tid)
    return bool(row["attempt"] == attempt)


async def test_killed_worker_task_is_retried_and_completes_once(
    settings: Settings,
    logs: Path,
    stack: dict[str, Proc],
    state_conn: asyncpg.Connection,
    data_conn: asyncpg.Connection,
) -> None:
    seed = "crash-" + uuid.uuid4().hex[:6]
    doomed = start_proc(settings, logs, "worker")
    (tid,) = await create_tasks(
        settings.state_database_url or "", 1, payload=emit(seed, 12, sleep_seconds=1.0)
    )

    async def running() -> bool:
        return bool((await task_row(state_conn, tid))["status"] == "running")

    await wait_until(running, what="claimed")
    doomed.kill()
    survivor = start_proc(settings, logs, "worker")
    try:
        await wait_until(lambda: completed(state_conn, [tid]), timeout=30, what="retry completes")
    finally:
        survivor.stop()
    await wait_until(lambda: sink_idle(state_conn))
    row = await task_row(state_conn, tid)
    assert row["attempt"] == 2 and row["status"] == "completed"
    assert await rows_for(data_conn, seed) == 12


async def test_dispatcher_crash_with_pending_outbox_loses_nothing(
    settings: Settings,
    logs: Path,
    stack: dict[str, Proc],
    worker: Proc,
    state_conn: asyncpg.Connection,
    data_conn: asyncpg.Connection,
) -> None:
    seed = "dcrash-" + uuid.uuid4().hex[:6]
    disp = stack["dispatcher"]
    disp.signal(signal.SIGSTOP)
    ids = [
        (await create_tasks(settings.state_database_url or "", 1, payload=emit(f"{seed}-{i}", 4)))[
            0
        ]
        for i in range(20)
    ]
    assert (
        await state_conn.fetchval("SELECT count(*) FROM state.outbox WHERE status = 'pending'")
        >= 20
    )
    disp.signal(signal.SIGKILL)
    assert disp.popen is not None
    disp.popen.wait(10)
    stack["dispatcher"] = await start_dispatcher(settings, logs)
    await wait_until(lambda: completed(state_conn, ids), timeout=60, what="all tasks complete")
    await wait_until(lambda: sink_idle(state_conn))
    total = await data_conn.fetchval(
        "SELECT count(*) FROM data.alert_events WHERE dedupe_key LIKE $1", f"{seed}-%"
    )
    assert total == 20 * 4


# -- poison batches and tenancy: batches made by hand through the real API ------------------


async def publish_batch(
    http: httpx.AsyncClient, settings: Settings, content: bytes, record_count: int
) -> tuple[Attempt, Path]:
    """Act as a worker: create + claim a task, write a batch file, buffer-publish, complete."""
    (tid,) = await create_tasks(
        settings.state_database_url or "", 1, payload={"operator": "manual"}, wake=False
    )
    a = await Attempt.claim(http, tid)
    uri = a.write_prefix() + "batch-0000.jsonl"
    path = Path(uri[len("file://") :])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    r = await a.call("buffer-publish", batch_uri=uri, record_count=record_count)
    assert r.status_code == 200, r.text
    assert (await a.complete()).status_code == 200
    return a, path


def row(key: str, **over: object) -> bytes:
    base = {
        "alert_definition_id": str(uuid.uuid4()),
        "dedupe_key": key,
        "event_time": "2024-05-01T00:00:00Z",
        "payload": {},
    }
    return orjson.dumps({**base, **over})


async def dlq_for(conn: asyncpg.Connection, task_id: str) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT * FROM state.queue_messages WHERE queue_name = 'buffer_queue_dlq'"
            " AND payload->'original'->'producer'->>'task_id' = $1",
            task_id,
        )
    )


@pytest.mark.parametrize(
    "bad_line",
    [b"{not json", row("k", chain_id="one"), row("k", surprise=True)],
    ids=["bad-line", "wrong-type", "unknown-field"],
)
async def test_poison_batch_goes_to_dlq_without_partial_write_and_can_be_redriven(
    settings: Settings,
    http: httpx.AsyncClient,
    worker: Proc,
    state_conn: asyncpg.Connection,
    data_conn: asyncpg.Connection,
    bad_line: bytes,
) -> None:
    tag = "poison-" + uuid.uuid4().hex[:6]
    content = b"\n".join([row(f"{tag}:0"), row(f"{tag}:1"), bad_line, row(f"{tag}:3")]) + b"\n"
    a, path = await publish_batch(http, settings, content, 4)
    # good batches behind it still flow
    good_seed = "good-" + uuid.uuid4().hex[:6]
    good = await create_tasks(settings.state_database_url or "", 3, payload=emit(good_seed, 5))
    await wait_until(lambda: completed(state_conn, good), what="good tasks")
    dead = await wait_until(lambda: dlq_for(state_conn, a.task_id), what="dead-lettered")

    async def good_rows() -> int | None:  # the sink applies a completed task's batch after it
        n = await rows_for(data_conn, good_seed)
        return n if n >= 5 else None

    await wait_until(good_rows, what="the good batches' rows")
    assert await rows_for(data_conn, good_seed) == 5  # same seed x3: 5 unique rows
    assert (
        await data_conn.fetchval(
            "SELECT count(*) FROM data.alert_events WHERE dedupe_key LIKE $1", f"{tag}:%"
        )
        == 0
    )
    info = dead[0]["payload"]
    assert info["deliveries"] == settings.sink_max_deliveries and info["error"].startswith("line 3")
    # fix the object, re-drive through the CLI, and the batch lands
    path.write_bytes(b"\n".join([row(f"{tag}:{i}") for i in range(4)]) + b"\n")
    out = subprocess.run(
        [sys.executable, "-m", "trace_platform", "dlq", "redrive", str(dead[0]["message_id"])],
        env=proc_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "re-drove 1" in out.stdout
    await wait_until(lambda: _rows_with_prefix(data_conn, tag, 4), what="redriven rows")
    assert await dlq_for(state_conn, a.task_id) == []


async def _rows_with_prefix(conn: asyncpg.Connection, tag: str, n: int) -> bool:
    got = await conn.fetchval(
        "SELECT count(*) FROM data.alert_events WHERE dedupe_key LIKE $1", f"{tag}:%"
    )
    return bool(got == n)


async def test_record_count_mismatch_is_poison(
    settings: Settings,
    http: httpx.AsyncClient,
    state_conn: asyncpg.Connection,
    data_conn: asyncpg.Connection,
) -> None:
    tag = "count-" + uuid.uuid4().hex[:6]
    a, _ = await publish_batch(http, settings, row(f"{tag}:0") + b"\n", 2)
    dead = await wait_until(lambda: dlq_for(state_conn, a.task_id), what="dead-lettered")
    assert "declares 2" in dead[0]["payload"]["error"]
    assert not await _rows_with_prefix(data_conn, tag, 1)


async def test_rows_get_the_trusted_org_not_their_own(
    settings: Settings,
    http: httpx.AsyncClient,
    state_conn: asyncpg.Connection,
    data_conn: asyncpg.Connection,
) -> None:
    tag = "tenant-" + uuid.uuid4().hex[:6]
    intruder = str(uuid.uuid4())
    a, _ = await publish_batch(
        http,
        settings,
        row(f"{tag}:0", org_id=intruder, producer_task_id=str(uuid.uuid4())) + b"\n",
        1,
    )
    await wait_until(lambda: _rows_with_prefix(data_conn, tag, 1), what="row")
    stored = await data_conn.fetchrow(
        "SELECT org_id, producer_task_id FROM data.alert_events WHERE dedupe_key = $1", f"{tag}:0"
    )
    task_org = (await task_row(state_conn, a.task_id))["org_id"]
    assert stored["org_id"] == task_org and str(stored["org_id"]) != intruder
    assert str(stored["producer_task_id"]) == a.task_id


async def test_unknown_operator_fails_fatally_with_a_clear_message(
    settings: Settings, worker: Proc, state_conn: asyncpg.Connection
) -> None:
    (tid,) = await create_tasks(settings.state_database_url or "", 1, payload={"operator": "nope"})

    async def failed() -> bool:
        return bool((await task_row(state_conn, tid))["status"] == "failed")

    await wait_until(failed, what="fatal failure")
    row_ = await task_row(state_conn, tid)
    assert row_["attempt"] == 1 and "unknown operator 'nope'" in row_["last_error"]
