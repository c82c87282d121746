"""How the worker groups its alert rules' queries into calls to the query service."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiohttp import web

from trace_platform.alerts.evaluate import MAX_BATCH, MAX_BATCH_BYTES, Pending, RuleBatcher
from trace_platform.client import Lease
from trace_platform.config import Settings


def lease(token: str = "t" * 500) -> Lease:
    return Lease(uuid.uuid4(), 1, "", "", token, {})


async def test_rules_leave_by_range_oldest_first_within_count_and_byte_caps(
    monkeypatch: Any,
) -> None:
    batcher = RuleBatcher(Settings.load({}, env={}))
    sent: list[list[Pending]] = []
    release = asyncio.Event()

    async def send(batch: list[Pending]) -> None:
        sent.append(batch)
        await release.wait()  # hold the slot: the next rules gather meanwhile
        for p in batch:
            p[4].set_result({"rows": [], "key": p[0]})

    monkeypatch.setattr(batcher, "_send", send)
    monkeypatch.setattr(batcher, "slots", asyncio.Semaphore(1))
    first = asyncio.create_task(batcher.run("r0", lease(), "d", "SELECT 0"))
    while not sent:
        await asyncio.sleep(0)
    # While the first call is out: 100 rules of range 1, then a range 2 rule, then big rules
    # of range 1 again, then a rule of range 3.
    big = "SELECT 1 -- " + "x" * 19_000
    runs = [asyncio.create_task(batcher.run("r1", lease(), "d", "SELECT 1")) for _ in range(100)]
    runs.append(asyncio.create_task(batcher.run("r2", lease(), "d", "SELECT 2")))
    runs += [asyncio.create_task(batcher.run("r1", lease(), "d", big)) for _ in range(40)]
    runs.append(asyncio.create_task(batcher.run("r3", lease(), "d", "SELECT 3")))
    await asyncio.sleep(0)
    release.set()
    answers = await asyncio.gather(first, *runs)
    assert [a["key"] for a in answers] == ["r0"] + ["r1"] * 100 + ["r2"] + ["r1"] * 40 + ["r3"]
    keys = [{p[0] for p in b} for b in sent]
    assert all(len(k) == 1 for k in keys)  # one range per call
    order = [next(iter(k)) for k in keys]
    # Each call takes the range of the oldest rule still waiting, up to MAX_BATCH rules and
    # MAX_BATCH_BYTES of tokens and SQL: 64 of range 1, then the other 36 and as many big
    # rules as fit, then range 2 (now the oldest), the rest of range 1, range 3.
    assert order == ["r0", "r1", "r1", "r2", "r1", "r3"]
    assert len(sent[1]) == MAX_BATCH and 36 < len(sent[2]) < MAX_BATCH
    assert all(len(b) <= MAX_BATCH for b in sent)
    assert max(len(b) for b in sent) == MAX_BATCH
    for b in sent:
        size = sum(len(p[1].capability_token) + len(p[3]) + 256 for p in b)
        assert len(b) == 1 or size <= MAX_BATCH_BYTES
    assert sum(len(b) for b in sent) == 143  # each rule sent once


async def test_an_abandoned_attempt_is_not_sent(monkeypatch: Any) -> None:
    batcher = RuleBatcher(Settings.load({}, env={}))
    sent: list[list[Pending]] = []

    async def send(batch: list[Pending]) -> None:
        sent.append(batch)
        for p in batch:
            p[4].set_result({})

    monkeypatch.setattr(batcher, "_send", send)
    gone = asyncio.create_task(batcher.run("r", lease(), "d", "SELECT 1"))
    await asyncio.sleep(0)
    gone.cancel()  # cancelled before its call left
    kept = await batcher.run("r", lease(), "d", "SELECT 2")
    assert kept == {} and [[p[3] for p in b] for b in sent] == [["SELECT 2"]]


async def test_lone_rules_leave_at_once_over_one_kept_alive_connection() -> None:
    peers: list[tuple[str, int]] = []

    async def query_batch(request: web.Request) -> web.Response:
        peers.append(request.transport.get_extra_info("peername"))  # type: ignore[union-attr]
        body = await request.json()
        results = [{"status": 200, "result": {"sql": q["sql"]}} for q in body["queries"]]
        return web.json_response({"results": results})

    app = web.Application()
    app.router.add_post("/v1/task/query-batch", query_batch)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    batcher = RuleBatcher(Settings.load({"query_url": f"http://127.0.0.1:{port}"}, env={}))
    try:
        for i in range(3):  # one at a time: each is alone, nothing else is waiting
            answer = await asyncio.wait_for(batcher.run(f"r{i}", lease(), "d", f"SELECT {i}"), 5)
            assert answer == {"sql": f"SELECT {i}"}
        assert len(peers) == 3 and len(set(peers)) == 1  # three calls, one connection
    finally:
        await batcher.close()
        await runner.cleanup()
