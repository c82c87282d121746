"""The SQS Queue adapter against a real SQS-protocol server on loopback (moto's standalone
server), and the unchanged kernel running on it: dispatcher, worker and sink processes with
TRACE_QUEUE_BACKEND=sqs move tasks to `completed` and rows into `alert_events`."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import boto3
import orjson
import pytest

from tests.conftest import Proc, proc_env, start_dispatcher, start_proc, wait_until
from tests.helpers import create_tasks
from tests.integration.test_object_stores import aws_env, s3_endpoint  # noqa: F401 - fixtures
from trace_platform.adapters.sqs_queue import QueueUnavailable, SqsQueue
from trace_platform.config import Settings


@pytest.fixture(scope="module")
def sqs_env(s3_endpoint: str) -> Iterator[str]:  # noqa: F811 - moto serves every service
    old = os.environ.get("AWS_ENDPOINT_URL_SQS")
    os.environ["AWS_ENDPOINT_URL_SQS"] = s3_endpoint
    yield s3_endpoint
    if old is None:
        os.environ.pop("AWS_ENDPOINT_URL_SQS", None)
    else:
        os.environ["AWS_ENDPOINT_URL_SQS"] = old


@pytest.fixture
def queue(sqs_env: str) -> SqsQueue:
    return SqsQueue(prefix=f"t{uuid.uuid4().hex[:8]}-", wait_seconds=1)


async def test_publish_receive_ack_round_trip(queue: SqsQueue) -> None:
    ids = [uuid.uuid4() for _ in range(13)]  # more than one SQS batch each way
    assert await queue.publish("q", [{"n": i} for i in range(13)], message_ids=ids) == 13
    got = []
    while len(got) < 13:
        batch = await queue.receive("q", 13 - len(got), 30)
        assert batch, "messages went missing"
        got.extend(batch)
    assert sorted(m.payload["n"] for m in got) == list(range(13))
    assert {m.message_id for m in got} == set(ids)
    assert all(m.deliveries == 1 and m.receipt and m.created_at for m in got)
    assert await queue.receive("q", 10, 30) == []  # all invisible now
    assert await queue.ack("q", got) == 13
    (stats,) = [s for s in await queue.stats() if s.queue_name == "q"]
    assert stats.depth == 0


async def test_visibility_expiry_redelivers_with_a_higher_count(queue: SqsQueue) -> None:
    await queue.publish("q", [{"k": "v"}])
    (first,) = await queue.receive("q", 1, 1)
    assert await queue.extend_visibility("q", [first], 1) == 1

    async def redelivered() -> list[object]:
        return list(await queue.receive("q", 1, 30))

    (again,) = await wait_until(redelivered, timeout=15, what="redelivery")
    assert again.message_id == first.message_id and again.deliveries == 2
    assert await queue.ack("q", [again]) == 1


async def test_delayed_messages_stay_hidden_until_due(queue: SqsQueue) -> None:
    await queue.publish("q", [{"later": True}], delay_seconds=5)
    assert await queue.receive("q", 1, 30) == []  # a 1 s long poll ends well before it is due

    async def due() -> list[object]:
        return list(await queue.receive("q", 1, 30))

    (m,) = await wait_until(due, timeout=15, what="delayed message")
    assert m.payload == {"later": True}
    with pytest.raises(ValueError):
        await queue.publish("q", [{}], delay_seconds=901)


async def test_dead_letter_moves_the_message_with_its_error(queue: SqsQueue) -> None:
    await queue.publish("q", [{"bad": 1}])
    (m,) = await queue.receive("q", 1, 30)
    assert await queue.dead_letter("q", m, "q_dlq", "schema: bad row") is True
    url = boto3.client("sqs").get_queue_url(QueueName=queue._prefix + "q_dlq")["QueueUrl"]
    dead = boto3.client("sqs").receive_message(
        QueueUrl=url, MessageAttributeNames=["All"], WaitTimeSeconds=1
    )["Messages"]
    assert dead[0]["MessageAttributes"]["error"]["StringValue"] == "schema: bad row"
    assert dead[0]["MessageAttributes"]["message_id"]["StringValue"] == str(m.message_id)
    assert await queue.receive("q", 1, 30) == []  # gone from the source queue


async def test_an_unreachable_endpoint_is_a_queue_error_not_a_crash(sqs_env: str) -> None:
    client = boto3.client("sqs", endpoint_url="http://127.0.0.1:1")
    broken = SqsQueue(prefix="x-", client=client)
    with pytest.raises(QueueUnavailable) as err:
        await broken.receive("q", 1, 30)
    assert isinstance(err.value, OSError) and str(err.value).startswith("SQS ")
    started = asyncio.get_running_loop().time()
    await broken.wait_for_messages("q", 0.2)  # paces the retry after a failed receive
    assert asyncio.get_running_loop().time() - started >= 0.19


@pytest.fixture(scope="module")
async def sqs_stack(
    settings: Settings,
    sqs_env: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[Settings, dict[str, Proc]]]:
    s = settings.replace(queue_backend="sqs", sqs_queue_prefix=f"k{uuid.uuid4().hex[:6]}-")
    logs: Path = tmp_path_factory.mktemp("sqs-logs")
    procs = {
        "dispatcher": await start_dispatcher(s, logs),
        "sink": start_proc(s, logs, "sink"),
        "worker": start_proc(s, logs, "worker", "--concurrency", "4"),
    }
    yield s, procs
    for p in procs.values():
        p.stop()


async def test_the_kernel_runs_unchanged_on_sqs(
    sqs_stack: tuple[Settings, dict[str, Proc]],
    state_conn: asyncpg.Connection,
    data_conn: asyncpg.Connection,
) -> None:
    s, procs = sqs_stack
    seed = "sqs-" + uuid.uuid4().hex[:6]
    ids = await create_tasks(
        s.state_database_url or "",
        5,
        payload={"operator": "emit_alerts", "count": 20, "seed": seed},
    )

    async def done() -> bool:
        n = await state_conn.fetchval(
            "SELECT count(*) FROM state.tasks WHERE task_id = ANY($1) AND status = 'completed'",
            ids,
        )
        return bool(n == len(ids))

    async def rows() -> bool:
        n = await data_conn.fetchval(
            "SELECT count(*) FROM data.alert_events WHERE dedupe_key LIKE $1", f"{seed}:%"
        )
        return bool(n == 20)  # five tasks, same seed: the same 20 keys, inserted once

    await wait_until(done, timeout=60, what="tasks completed over SQS")
    await wait_until(rows, timeout=60, what="rows through the SQS buffer queue")
    # Nothing went through pgqueue: the wake-ups and buffer batches travelled over SQS.
    assert await state_conn.fetchval("SELECT count(*) FROM state.queue_messages") == 0
    names = {q.queue_name for q in await SqsQueue(prefix=s.sqs_queue_prefix).stats()}
    assert {"task_wakeup", "buffer_queue"} <= names
    for p in procs.values():
        assert p.popen is not None and p.popen.poll() is None


def test_trace_status_reads_sqs_depths(sqs_stack: tuple[Settings, dict[str, Proc]]) -> None:
    s, _ = sqs_stack
    out = subprocess.run(
        [sys.executable, "-m", "trace_platform", "status", "--json"],
        env=proc_env(s),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    queues = {q["queue"] for q in orjson.loads(out.stdout)["queues"]}
    assert {"task_wakeup", "buffer_queue"} <= queues
