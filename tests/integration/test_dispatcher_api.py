"""Dispatcher over real HTTP on loopback and a real PostgreSQL (SPEC §3-§5)."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import httpx
import jwt
import pytest

from tests.conftest import TEST_KEYS, Proc, wait_until
from tests.helpers import (
    Attempt,
    claim,
    create_tasks,
    outbox_rows,
    queue_messages,
    task_row,
    worker_headers,
)
from trace_platform.adapters.local_keys import LocalKeyRing
from trace_platform.config import Settings
from trace_platform.domain.capability import build_claims


async def new_task(settings: Settings, **kw: object) -> uuid.UUID:
    (tid,) = await create_tasks(settings.state_database_url or "", 1, **kw)  # type: ignore[arg-type]
    return tid


async def footprint(conn: asyncpg.Connection, task_id: uuid.UUID | str) -> dict[str, object]:
    """All a call on a task can change: its row, its events, the outbox rows naming it."""
    tid = uuid.UUID(str(task_id))
    return {
        "row": dict(await task_row(conn, tid)),
        "events": await conn.fetchval(
            "SELECT count(*) FROM state.task_events WHERE task_id=$1", tid
        ),
        "outbox": await conn.fetchval(
            "SELECT count(*) FROM state.outbox WHERE payload::text LIKE '%' || $1 || '%'", str(tid)
        ),
    }


def refused(r: httpx.Response, status: int, code: str) -> None:
    """A refusal with its status and error code (and one line of reason)."""
    assert (r.status_code, r.json()["error"]) == (status, code), r.text
    assert r.json()["detail"] and "\n" not in r.json()["detail"]


# -- health, docs, metrics -------------------------------------------------------------------


async def test_health_ready_metrics_and_openapi(http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    assert (await http.get("/readyz")).status_code == 200
    metrics = (await http.get("/metrics")).text
    assert "trace_http_requests_total" in metrics
    spec = (await http.get("/openapi.json")).json()
    for path in (
        "/internal/task-claim",
        "/v1/task/complete",
        "/v1/task/buffer-publish",
        "/v1/task/heartbeat",
        "/v1/task/events",
        "/internal/jwks/task",
    ):
        assert path in spec["paths"]
    body = spec["paths"]["/v1/task/complete"]["post"]["requestBody"]
    assert "outcome" in body["content"]["application/json"]["schema"]["properties"]


async def test_jwks_is_empty_for_hs256_ring(http: httpx.AsyncClient) -> None:
    r = await http.get("/internal/jwks/task", headers=worker_headers())
    assert (r.status_code, r.json()) == (200, {"keys": []})


# -- claim -------------------------------------------------------------------------------------


async def test_queued_task_is_claimed_once(
    http: httpx.AsyncClient, settings: Settings, state_conn: asyncpg.Connection
) -> None:
    tid = await new_task(settings)
    results = await asyncio.gather(*(claim(http, tid) for _ in range(5)))
    codes = sorted(r.status_code for r in results)
    assert codes == [200, 409, 409, 409, 409]
    refused = [r.json() for r in results if r.status_code == 409]
    assert all(b["error"] == "not_claimed" and b["reason"] == "already_running" for b in refused)
    won = next(r.json() for r in results if r.status_code == 200)
    row = await task_row(state_conn, tid)
    assert row["status"] == "running" and str(row["lease_token"]) == won["lease_token"]
    assert won["work_payload"] == {"operator": "noop"} and won["attempt"] == 1
    claims = jwt.decode(won["capability_token"], options={"verify_signature": False})
    assert claims["task_id"] == str(tid) and claims["attempt"] == 1
    assert jwt.get_unverified_header(won["capability_token"])["kid"] == "k-current"


async def test_terminal_tasks_are_not_claimable(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    tid = await new_task(settings)
    a = await Attempt.claim(http, tid)
    assert (await a.complete()).status_code == 200
    r = await claim(http, tid)
    assert r.status_code == 409 and r.json()["reason"] == "completed"
    tid2 = await new_task(settings)
    assert (
        await http.post(
            "/internal/task-cancel", json={"task_id": str(tid2)}, headers=worker_headers()
        )
    ).status_code == 200
    r = await claim(http, tid2)
    assert r.status_code == 409 and r.json()["reason"] == "canceled"


async def test_unknown_task_is_404_and_worker_token_is_required(http: httpx.AsyncClient) -> None:
    assert (await claim(http, uuid.uuid4())).status_code == 404
    body = {"task_id": str(uuid.uuid4())}
    for headers in ({}, {"X-Trace-Worker-Token": "wrong"}, {"X-Trace-Worker-Token": ""}):
        r = await http.post("/internal/task-claim", json=body, headers=headers)
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
    r = await http.get(f"/internal/task-fetch?task_id={uuid.uuid4()}")
    assert r.status_code == 401


async def test_claim_body_errors_are_400_with_one_line_reason(http: httpx.AsyncClient) -> None:
    for raw in (
        b"",
        b"not json",
        b"[]",
        b'{"task_id": "nope"}',
        b'{"task_id": 1}',
        json.dumps({"task_id": str(uuid.uuid4()), "evil": 1}).encode(),
    ):
        r = await http.post("/internal/task-claim", content=raw, headers=worker_headers())
        assert r.status_code == 400, raw
        body = r.json()
        assert body["error"] == "invalid_request" and "\n" not in body["detail"]


async def test_task_fetch_shows_state_without_lease(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    tid = await new_task(settings)
    await Attempt.claim(http, tid)
    r = await http.get(f"/internal/task-fetch?task_id={tid}", headers=worker_headers())
    assert r.status_code == 200
    view = r.json()
    assert view["status"] == "running" and view["attempt"] == 1 and "lease_token" not in view
    assert (
        await http.get("/internal/task-fetch?task_id=x", headers=worker_headers())
    ).status_code == 400


# -- heartbeat, publish, events --------------------------------------------------------------


async def test_heartbeat_extends_the_lease(
    http: httpx.AsyncClient, settings: Settings, state_conn: asyncpg.Connection
) -> None:
    tid = await new_task(settings)
    a = await Attempt.claim(http, tid)
    before = (await task_row(state_conn, tid))["lease_expires_at"]
    r = await a.heartbeat()
    assert r.status_code == 200
    after = (await task_row(state_conn, tid))["lease_expires_at"]
    assert after > before and r.json()["lease_expires_at"] == after.isoformat()


async def test_buffer_publish_twice_is_one_outbox_row_and_one_message(
    http: httpx.AsyncClient, settings: Settings, state_conn: asyncpg.Connection
) -> None:
    tid = await new_task(settings)
    a = await Attempt.claim(http, tid)
    r1 = await a.publish("batch-1.jsonl", record_count=3)
    r2 = await a.publish("batch-1.jsonl", record_count=3)
    assert r1.status_code == r2.status_code == 200
    assert r1.json()["duplicate"] is False and r2.json()["duplicate"] is True
    rows = [
        r
        for r in await outbox_rows(state_conn, "buffer_batch")
        if r["payload"]["producer"]["task_id"] == str(tid)
    ]
    assert len(rows) == 1

    async def delivered() -> list[asyncpg.Record]:
        msgs = await queue_messages(state_conn, "buffer_queue")
        return [m for m in msgs if m["payload"]["producer"]["task_id"] == str(tid)]

    msgs = await wait_until(delivered, what="buffer message")
    assert len(msgs) == 1
    p = msgs[0]["payload"]
    assert p["kind"] == "buffer_batch" and p["record_count"] == 3
    assert p["org_id"] == str((await task_row(state_conn, tid))["org_id"])
    assert p["producer"] == {"task_id": str(tid), "attempt": 1}
    assert p["batch_uri"] == a.write_prefix() + "batch-1.jsonl"
    # after completion, a repeat of the same publish is still an idempotent success
    assert (await a.complete()).status_code == 200
    assert (await a.publish("batch-1.jsonl", record_count=3)).status_code == 200
    assert (await a.publish("batch-2.jsonl")).status_code == 409


async def test_buffer_publish_outside_write_prefix_is_403(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    tid = await new_task(settings)
    a = await Attempt.claim(http, tid)
    root = a.write_prefix().rsplit("/buffers/", 1)[0]
    for uri in (
        f"{root}/buffers/{tid}/2/x.jsonl",
        f"{root}/secrets/x",
        a.write_prefix() + "../x",
        "s3://other/buffers/x.jsonl",
        "file:///etc/passwd",
    ):
        r = await a.call("buffer-publish", batch_uri=uri, record_count=1)
        assert r.status_code == 403, uri


async def test_events_are_recorded_idempotently(
    http: httpx.AsyncClient, settings: Settings, state_conn: asyncpg.Connection
) -> None:
    tid = await new_task(settings)
    a = await Attempt.claim(http, tid)
    events = [{"kind": "progress", "pct": 10}, {"kind": "progress", "pct": 50}]
    assert (await a.events(events)).status_code == 200
    assert (await a.events(events)).status_code == 200
    n = await state_conn.fetchval("SELECT count(*) FROM state.task_events WHERE task_id=$1", tid)
    assert n == 2


# -- token rules (SPEC §10.6) ------------------------------------------------------------------


async def test_missing_or_invalid_token_is_401(
    http: httpx.AsyncClient, settings: Settings, state_conn: asyncpg.Connection
) -> None:
    tid = await new_task(settings)
    a = await Attempt.claim(http, tid)
    before = await footprint(state_conn, tid)
    for path in ("heartbeat", "complete", "events", "buffer-publish", "upload-url"):
        refused(await a.call(path, token=None), 401, "unauthorized")
        refused(await a.call(path, token="garbage"), 401, "unauthorized")
    # 401 wins over a malformed body: nothing about the schema leaks to the unauthenticated
    r = await http.post("/v1/task/complete", content=b"not json")
    refused(r, 401, "unauthorized")
    assert "json" not in r.text.lower()
    assert await footprint(state_conn, tid) == before


async def test_token_for_task_a_used_on_task_b_is_403(
    http: httpx.AsyncClient, settings: Settings, state_conn: asyncpg.Connection
) -> None:
    a = await Attempt.claim(http, await new_task(settings))
    b = await Attempt.claim(http, await new_task(settings))
    before = [await footprint(state_conn, x.task_id) for x in (a, b)]
    b.token = a.token
    for path in ("heartbeat", "events"):
        r = await b.call(path, events=[{"x": 1}]) if path == "events" else await b.call(path)
        refused(r, 403, "forbidden")
    refused(await b.complete(), 403, "forbidden")
    refused(await b.publish(), 403, "forbidden")
    assert [await footprint(state_conn, x.task_id) for x in (a, b)] == before


async def test_right_token_wrong_lease_is_409(
    http: httpx.AsyncClient, settings: Settings, state_conn: asyncpg.Connection
) -> None:
    a = await Attempt.claim(http, await new_task(settings))
    before = await footprint(state_conn, a.task_id)
    a.lease_token = str(uuid.uuid4())
    refused(await a.heartbeat(), 409, "stale_fence")
    refused(await a.complete(), 409, "stale_fence")
    refused(await a.events([{"x": 1}]), 409, "stale_fence")
    refused(await a.publish(), 409, "stale_fence")
    assert await footprint(state_conn, a.task_id) == before


async def test_token_signed_with_next_key_is_accepted(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    a = await Attempt.claim(http, await new_task(settings))
    next_ring = LocalKeyRing.from_document({"issuer": "trace-test", "current": TEST_KEYS["next"]})
    verified_claims = jwt.decode(a.token, options={"verify_signature": False})
    a.token = next_ring.sign(
        build_claims(
            issuer="trace-test",
            task_id=uuid.UUID(a.task_id),
            attempt=1,
            org_id=uuid.UUID(verified_claims["org_id"]),
            ttl_seconds=60,
            store_root=settings.resolved_object_store_url,
        )
    )
    assert jwt.get_unverified_header(a.token)["kid"] == "k-next"
    assert (await a.heartbeat()).status_code == 200
    assert (await a.complete()).status_code == 200


async def test_forged_tokens_are_401(http: httpx.AsyncClient, settings: Settings) -> None:
    a = await Attempt.claim(http, await new_task(settings))
    claims = jwt.decode(a.token, options={"verify_signature": False})
    forged = [
        jwt.encode(claims, "x" * 40, algorithm="HS256", headers={"kid": "k-current"}),
        jwt.encode(claims, None, algorithm="none", headers={"kid": "k-current"}),  # type: ignore[arg-type]
        jwt.encode(
            {**claims, "exp": 1000},
            TEST_KEYS["current"]["secret"],
            algorithm="HS256",
            headers={"kid": "k-current"},
        ),
        jwt.encode(
            {**claims, "aud": "x"},
            TEST_KEYS["current"]["secret"],
            algorithm="HS256",
            headers={"kid": "k-current"},
        ),
        jwt.encode(
            {**claims, "iss": "x"},
            TEST_KEYS["current"]["secret"],
            algorithm="HS256",
            headers={"kid": "k-current"},
        ),
        jwt.encode(
            claims, TEST_KEYS["current"]["secret"], algorithm="HS256", headers={"kid": "k-old"}
        ),
    ]
    for tok in forged:
        r = await a.call("heartbeat", token=tok)
        assert r.status_code == 401
        assert tok not in r.text  # tokens are never echoed


# -- completion and retries ------------------------------------------------------------------


async def test_same_completion_twice_is_idempotent(
    http: httpx.AsyncClient, settings: Settings, state_conn: asyncpg.Connection
) -> None:
    tid = await new_task(settings)
    a = await Attempt.claim(http, tid)
    r1 = await a.complete("retryable_error", error_message="boom")
    updated_1 = (await task_row(state_conn, tid))["updated_at"]
    r2 = await a.complete("retryable_error", error_message="boom")
    assert r1.status_code == r2.status_code == 200 and r1.json() == r2.json()
    assert (await task_row(state_conn, tid))["updated_at"] == updated_1  # one state change
    # one outbox effect: exactly one wake-up for attempt 2
    await wait_until(lambda: _attempt_is(state_conn, tid, 2), what="retry")
    n = await state_conn.fetchval(
        "SELECT count(*) FROM state.outbox WHERE payload->>'task_id' = $1", str(tid)
    )
    assert n == 2  # creation + one retry
    assert (await a.complete("success")).status_code == 409


async def _attempt_is(conn: asyncpg.Connection, tid: uuid.UUID, attempt: int) -> bool:
    row = await task_row(conn, tid)
    return row["attempt"] == attempt and row["status"] == "queued"


async def test_retryable_error_backs_off_then_fails_after_max_attempts(
    http: httpx.AsyncClient, settings: Settings, state_conn: asyncpg.Connection
) -> None:
    tid = await new_task(settings, max_attempts=2)
    a = await Attempt.claim(http, tid)
    r = await a.complete("retryable_error", error_message="flaky")
    assert r.json()["status"] == "failed" and r.json()["next_retry_at"] is not None
    row = await task_row(state_conn, tid)
    assert row["last_error"] == "flaky" and row["next_retry_at"] > row["updated_at"]
    await wait_until(lambda: _attempt_is(state_conn, tid, 2), what="retry 2")
    wakeups = [
        m
        for m in await queue_messages(state_conn, "task_wakeup")
        if m["payload"]["task_id"] == str(tid)
    ]
    assert wakeups, "the retry must publish a fresh wake-up"
    b = await Attempt.claim(http, tid)
    assert b.attempt == 2
    r = await b.complete("retryable_error", error_message="flaky again")
    assert r.json() == {
        "task_id": str(tid),
        "attempt": 2,
        "status": "failed",
        "next_retry_at": None,
    }
    assert (await claim(http, tid)).json()["reason"] == "failed"
    assert await state_conn.fetchval("SELECT count(*) FROM state.tasks WHERE task_id=$1", tid) == 1


async def test_fatal_error_is_terminal_at_once(
    http: httpx.AsyncClient, settings: Settings, state_conn: asyncpg.Connection
) -> None:
    tid = await new_task(settings)
    a = await Attempt.claim(http, tid)
    r = await a.complete("fatal_error", error_message="bad input")
    assert r.json()["status"] == "failed" and r.json()["next_retry_at"] is None
    row = await task_row(state_conn, tid)
    assert row["status"] == "failed" and row["attempt"] == 1 and row["next_retry_at"] is None


async def test_complete_body_validation_is_400(http: httpx.AsyncClient, settings: Settings) -> None:
    a = await Attempt.claim(http, await new_task(settings))
    assert (await a.call("complete", outcome="maybe")).status_code == 400
    assert (await a.call("complete")).status_code == 400
    assert (await a.call("complete", outcome="success", extra=1)).status_code == 400


# -- leases and stale fencing ------------------------------------------------------------------


async def test_expired_lease_is_reaped_into_a_retry_and_stale_attempt_is_fenced(
    http: httpx.AsyncClient, settings: Settings, state_conn: asyncpg.Connection
) -> None:
    tid = await new_task(settings)
    old = await Attempt.claim(http, tid)
    await wait_until(lambda: _attempt_is(state_conn, tid, 2), timeout=20, what="reap + retry")
    new = await Attempt.claim(http, tid)
    assert new.attempt == 2
    before = await footprint(state_conn, tid)
    # every call of attempt 1 is rejected and changes nothing
    refused(await old.heartbeat(), 409, "stale_fence")
    refused(await old.publish(), 409, "stale_fence")
    refused(await old.events([{"x": 1}]), 409, "stale_fence")
    refused(await old.complete(), 409, "stale_fence")
    # attempt 1's token with attempt 2's fence is a binding error
    old.attempt, old.lease_token = new.attempt, new.lease_token
    refused(await old.complete(), 403, "forbidden")
    assert await footprint(state_conn, tid) == before
    assert before["events"] == 0
    assert (await new.complete()).status_code == 200


async def test_late_reply_is_accepted_while_no_newer_attempt_started(
    http: httpx.AsyncClient, settings: Settings, state_conn: asyncpg.Connection, dbs: object
) -> None:
    tid = await new_task(settings)
    a = await Attempt.claim(http, tid)
    # Expire the lease and reap it, but keep the retry far away so attempt 2 does not start.
    await state_conn.execute(
        "UPDATE state.tasks SET lease_expires_at = now() - interval '1 second' WHERE task_id=$1",
        tid,
    )

    async def reaped() -> bool:
        row = await task_row(state_conn, tid)
        return row["status"] == "failed" and row["last_outcome"] == "timeout"

    await wait_until(reaped, what="reaper")
    await state_conn.execute(
        "UPDATE state.tasks SET next_retry_at = now() + interval '1 hour' WHERE task_id=$1", tid
    )
    assert (await a.heartbeat()).status_code == 409  # no reviving a timed-out lease
    r = await a.complete("success")
    assert r.status_code == 200 and r.json()["status"] == "completed"
    row = await task_row(state_conn, tid)
    assert row["status"] == "completed" and row["next_retry_at"] is None


async def test_cancel_rules(
    http: httpx.AsyncClient, settings: Settings, state_conn: asyncpg.Connection
) -> None:
    tid = await new_task(settings)
    a = await Attempt.claim(http, tid)
    r = await http.post(
        "/internal/task-cancel", json={"task_id": str(tid)}, headers=worker_headers()
    )
    assert r.status_code == 200
    before = await footprint(state_conn, tid)
    assert before["row"]["status"] == "canceled"  # type: ignore[index]
    refused(await a.heartbeat(), 409, "conflict")
    refused(await a.complete(), 409, "conflict")
    refused(await a.publish(), 409, "conflict")
    again = await http.post(
        "/internal/task-cancel", json={"task_id": str(tid)}, headers=worker_headers()
    )
    refused(again, 409, "conflict")
    assert await footprint(state_conn, tid) == before


async def test_unexpected_paths_and_methods(http: httpx.AsyncClient, dispatcher: Proc) -> None:
    assert (await http.get("/v1/task/complete")).status_code == 405
    assert (await http.get("/nope")).status_code == 404


# -- batch endpoints for trusted workers -------------------------------------------------------


async def test_claim_batch_claims_queued_and_explains_the_rest(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    queued = [await new_task(settings) for _ in range(3)]
    done = await new_task(settings)
    a = await Attempt.claim(http, done)
    assert (await a.complete()).status_code == 200
    unknown = uuid.uuid4()
    body = {"task_ids": [str(t) for t in [*queued, queued[0], done, unknown]], "worker_id": "w"}
    assert (await http.post("/internal/task-claim-batch", json=body)).status_code == 401
    r = await http.post("/internal/task-claim-batch", json=body, headers=worker_headers())
    assert r.status_code == 200
    data = r.json()
    assert sorted(c["task_id"] for c in data["claimed"]) == sorted(str(t) for t in queued)
    reasons = {n["task_id"]: n["reason"] for n in data["not_claimed"]}
    assert reasons == {str(done): "completed", str(unknown): "not_found"}
    again = await http.post("/internal/task-claim-batch", json=body, headers=worker_headers())
    assert again.json()["claimed"] == []
    for bad in ({"task_ids": []}, {"task_ids": ["x"]}, {"task_ids": [str(unknown)] * 300}):
        resp = await http.post("/internal/task-claim-batch", json=bad, headers=worker_headers())
        assert resp.status_code == 400


async def test_complete_batch_fences_every_item_on_its_own(
    http: httpx.AsyncClient, settings: Settings, state_conn: asyncpg.Connection
) -> None:
    a, b, c, d, e = [await Attempt.claim(http, await new_task(settings)) for _ in range(5)]

    def item(att: Attempt, token: str | None = None, **over: object) -> dict[str, object]:
        return {**att.fence(), "outcome": "success", "capability_token": token or att.token, **over}

    items = [
        item(a, outputs={"records": 1}),
        item(b, outcome="retryable_error", error_message="flaky"),
        item(c, token="garbage"),  # 401
        item(d, token=a.token),  # token of another task: 403
        item(e, lease_token=str(uuid.uuid4())),  # stale lease: 409
    ]
    body = {"items": items}
    assert (await http.post("/internal/task-complete-batch", json=body)).status_code == 401
    r = await http.post("/internal/task-complete-batch", json=body, headers=worker_headers())
    assert r.status_code == 200
    codes = [res["code"] for res in r.json()["results"]]
    assert codes == [200, 200, 401, 403, 409]
    assert r.json()["results"][0]["body"]["status"] == "completed"
    assert r.json()["results"][1]["body"]["status"] == "failed"
    assert (await task_row(state_conn, a.task_id))["outputs"] == {"records": 1}
    for att in (c, d, e):
        assert (await task_row(state_conn, att.task_id))["status"] == "running"
    # the same batch again: completions are idempotent, the rejects stay rejected
    r2 = await http.post("/internal/task-complete-batch", json=body, headers=worker_headers())
    assert [res["code"] for res in r2.json()["results"]] == codes


# -- database errors: what the request caused is not an outage ----------------------------


def endpoint_view(pool: str, endpoint: str) -> dict[str, object]:
    view = {"endpoint": endpoint, "role": "any", "weight": 1, "state": "healthy"}
    counts = dict.fromkeys(
        ("concurrency", "requests", "throttled", "errors", "ranges", "blocks"), 0
    )
    return {"pool": pool, "endpoint": endpoint, "view": {**view, **counts}}


async def reported(conn: asyncpg.Connection, process: str) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT pool, endpoint FROM state.rpc_endpoints WHERE process = $1 ORDER BY 1, 2", process
    )
    return [(r["pool"], r["endpoint"]) for r in rows]


async def test_a_report_repeating_an_endpoint_is_refused_with_a_reason_and_records_nothing(
    http: httpx.AsyncClient, state_conn: asyncpg.Connection
) -> None:
    """schemathesis's case: one (pool, endpoint) twice in a body reached the database as a
    cardinality violation and was answered 503 `database_unavailable`."""
    twice = [endpoint_view("main", "a"), endpoint_view("main", "b"), endpoint_view("main", "a")]
    body = {"process": "fuzzed", "endpoints": twice}
    r = await http.post("/internal/rpc-endpoints", json=body, headers=worker_headers())
    assert r.status_code == 400, r.text
    assert r.json() == {
        "error": "invalid_request",
        "detail": "endpoints: entry 2 repeats pool 'main' endpoint 'a' of entry 0",
    }
    assert await reported(state_conn, "fuzzed") == []
    body["endpoints"] = twice[:2]
    r = await http.post("/internal/rpc-endpoints", json=body, headers=worker_headers())
    assert (r.status_code, r.json()) == (200, {"recorded": 2})
    assert await reported(state_conn, "fuzzed") == [("main", "a"), ("main", "b")]


@pytest.mark.parametrize(
    ("sqlstate", "status", "code"),
    [
        ("21000", 400, "invalid_request"),  # cardinality violation
        ("22003", 400, "invalid_request"),  # numeric value out of range
        ("23514", 400, "invalid_request"),  # check violation
        ("23505", 409, "conflict"),  # unique violation
        ("42P01", 500, "internal"),  # undefined table: a fault of ours
        ("XX000", 500, "internal"),
        ("40P01", 503, "database_busy"),  # deadlock: retry
        ("57P01", 503, "database_unavailable"),  # admin shutdown
        ("53300", 503, "database_unavailable"),  # too many connections
    ],
)
async def test_a_database_error_is_answered_by_what_it_says(
    http: httpx.AsyncClient, state_conn: asyncpg.Connection, sqlstate: str, status: int, code: str
) -> None:
    """A real PostgreSQL error (raised by a trigger under the real endpoint's statement)
    answers by its SQLSTATE: only an unavailable or contended database is a 503; a refused
    statement is 400/409 naming the condition, never the database's message."""
    await state_conn.execute(
        "CREATE FUNCTION state.test_forced_error() RETURNS trigger LANGUAGE plpgsql AS $$"
        f" BEGIN RAISE EXCEPTION 'forced-k9q %', NEW.endpoint USING ERRCODE = '{sqlstate}';"
        " END $$;"
        "CREATE TRIGGER test_forced_error BEFORE INSERT ON state.rpc_endpoints"
        " FOR EACH ROW EXECUTE FUNCTION state.test_forced_error()"
    )
    try:
        body = {"process": f"forced-{sqlstate}", "endpoints": [endpoint_view("main", "zq7")]}
        r = await http.post("/internal/rpc-endpoints", json=body, headers=worker_headers())
    finally:
        await state_conn.execute(
            "DROP TRIGGER test_forced_error ON state.rpc_endpoints;"
            "DROP FUNCTION state.test_forced_error()"
        )
    assert (r.status_code, r.json()["error"]) == (status, code), r.text
    assert "k9q" not in r.text and "zq7" not in r.text
    assert await reported(state_conn, f"forced-{sqlstate}") == []
    if status == 503:
        assert int(r.headers.get("Retry-After", "1")) >= 1
    # the dispatcher still serves
    body = {"process": f"after-{sqlstate}", "endpoints": [endpoint_view("main", "a")]}
    r = await http.post("/internal/rpc-endpoints", json=body, headers=worker_headers())
    assert r.status_code == 200, r.text
