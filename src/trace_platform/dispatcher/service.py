"""Task lifecycle service: one short transaction per lifecycle call. The HTTP layer calls this.

Every state change goes through the outbox in the same transaction; every transition is a
compare-and-swap on the row that was read (SPEC §3).
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from trace_platform.config import Settings
from trace_platform.dag.run import output_prefix
from trace_platform.datasets import resolve_inputs
from trace_platform.db.sql import q
from trace_platform.domain.capability import CapabilityClaims, DatasetGrant, build_claims
from trace_platform.domain.errors import (
    ConflictError,
    NotClaimedError,
    NotFoundError,
    StaleFenceError,
    TraceError,
    ValidationError,
)
from trace_platform.domain.jsonb import storable
from trace_platform.domain.lifecycle import (
    Outcome,
    TaskFence,
    check_report_fence,
    claim_refusal,
    decide_completion,
    retry_delay,
)
from trace_platform.logs import get_logger
from trace_platform.metrics import TASK_TRANSITIONS
from trace_platform.ports import LITE_ORG_ID, CompletionRejected, SuccessHook, TokenSigner

log = get_logger(__name__)
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

_OUTBOX_NS = uuid.UUID("6f1c1f0e-3b7a-4c55-9a43-7d1f3e0c2b11")
SLOW_COMPLETIONS = 4  # completions of one batch that are not plain successes, at once


ResolvedInputs = tuple[list[DatasetGrant], list[str]]  # a task's grants and read prefixes


def buffer_outbox_id(task_id: uuid.UUID, attempt: int, batch_uri: str) -> uuid.UUID:
    """Deterministic: a retried buffer-publish adds no second outbox row."""
    return uuid.uuid5(_OUTBOX_NS, f"buffer:{task_id}:{attempt}:{batch_uri}")


def event_key(task_id: uuid.UUID, attempt: int, event: dict[str, Any]) -> str:
    digest = hashlib.sha256(orjson.dumps(event, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"{task_id}:{attempt}:{digest}"


def _fence(row: asyncpg.Record) -> TaskFence:
    return TaskFence(
        task_id=row["task_id"],
        status=row["status"],
        attempt=row["attempt"],
        lease_token=row["lease_token"],
        last_outcome=row["last_outcome"],
        max_attempts=row["max_attempts"],
    )


@dataclass(frozen=True)
class Claimed:
    task_id: uuid.UUID
    org_id: uuid.UUID
    attempt: int
    lease_token: uuid.UUID
    lease_expires_at: datetime
    capability_token: str
    payload: dict[str, Any]


class TaskService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        signer: TokenSigner,
        settings: Settings,
        outbox_poke: asyncio.Event | None = None,
        hooks: Sequence[SuccessHook] = (),
    ) -> None:
        self.pool = pool
        self.signer = signer
        self.settings = settings
        self.store_root = settings.resolved_object_store_url
        self.outbox_poke = outbox_poke or asyncio.Event()
        self.hooks = tuple(hooks)
        self.hook_keys = [h.payload_key for h in self.hooks]

    # -- creation and operator verbs -------------------------------------------------------

    async def create_tasks(
        self,
        payloads: Sequence[dict[str, Any]],
        org_id: uuid.UUID = LITE_ORG_ID,
        max_attempts: int | None = None,
    ) -> list[uuid.UUID]:
        """Insert queued tasks and their wake-ups in one transaction."""
        for payload in payloads:
            try:
                storable(payload, "payload")
            except ValueError as e:
                raise ValidationError(str(e)) from None
        ids = [uuid.uuid4() for _ in payloads]
        attempts = max_attempts or self.settings.max_attempts
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(q("tasks", "insert_tasks"), ids, list(payloads), org_id, attempts)
            await conn.execute(q("outbox", "notify_outbox"))
        self.outbox_poke.set()
        TASK_TRANSITIONS.labels("created").inc(len(ids))
        log.info("task.created", count=len(ids), first_task_id=str(ids[0]) if ids else None)
        return ids

    async def record_endpoints(self, process: str, rows: list[dict[str, Any]]) -> None:
        """A worker's view of its RPC pool endpoints replaces that worker's rows."""
        if rows:
            await self.pool.execute(
                q("chain", "report_endpoints"),
                [r["pool"] for r in rows],
                [r["endpoint"] for r in rows],
                process,
                [r["view"] for r in rows],
            )

    async def cancel(self, task_id: uuid.UUID) -> dict[str, Any]:
        async with self.pool.acquire() as conn:
            canceled = await conn.fetchrow(q("tasks", "cancel_tasks"), [task_id], None)
            if canceled is None:
                row = await conn.fetchrow(q("tasks", "task_state"), task_id)
                if row is None:
                    raise NotFoundError("unknown task")
                raise ConflictError(f"task is {row['status']} and cannot be canceled")
            attempt = canceled["attempt"]
        TASK_TRANSITIONS.labels("canceled").inc()
        log.info("task.canceled", task_id=str(task_id), attempt=attempt)
        return {"task_id": str(task_id), "status": "canceled", "attempt": attempt}

    async def view(self, task_id: uuid.UUID) -> dict[str, Any]:
        row = await self.pool.fetchrow(q("tasks", "task_view"), task_id)
        if row is None:
            raise NotFoundError("unknown task")
        return dict(row)

    # -- worker-facing ----------------------------------------------------------------------

    async def claim(self, task_id: uuid.UUID, worker_id: str | None) -> Claimed:
        lease = uuid.uuid4()
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                q("tasks", "claim_task"), task_id, lease, self.settings.lease_seconds, worker_id
            )
            if row is None:
                state = await conn.fetchrow(q("tasks", "task_state"), task_id)
                if state is None:
                    raise NotFoundError("unknown task")
                raise NotClaimedError(claim_refusal(state["status"]))
            token = await self._token_for(conn, row)
        TASK_TRANSITIONS.labels("claimed").inc()
        log.info("task.claimed", task_id=str(task_id), attempt=row["attempt"], worker_id=worker_id)
        return _claimed(row, token)

    async def claim_many(
        self, task_ids: Sequence[uuid.UUID], worker_id: str | None
    ) -> tuple[list[Claimed], list[tuple[uuid.UUID, str]]]:
        """Claim several queued tasks in one statement; returns (claimed, [(id, reason)])."""
        unique = list(dict.fromkeys(task_ids))
        async with self.pool.acquire() as conn:
            rows = await conn.fetch(
                q("tasks", "claim_tasks"), unique, self.settings.lease_seconds, worker_id
            )
            missing = set(unique) - {r["task_id"] for r in rows}
            refused: list[tuple[uuid.UUID, str]] = []
            if missing:
                states = {
                    r["task_id"]: r["status"]
                    for r in await conn.fetch(q("tasks", "task_statuses"), list(missing))
                }
                refused = [
                    (t, claim_refusal(states[t]) if t in states else "not_found") for t in missing
                ]
        claimed = []
        # Tasks of one batch with the same inputs (an alert's rules over one new range)
        # share one resolution of their snapshots: one set of lookups, the same pins.
        resolved: dict[tuple[uuid.UUID, bytes], ResolvedInputs | ValidationError] = {}
        for row in rows:
            try:
                if _has_inputs(row):
                    async with self.pool.acquire() as conn:
                        token = await self._token_for(conn, row, resolved)
                else:  # the hot path: no grants to resolve, no round trip
                    token = await self.mint_token(row["task_id"], row["attempt"], row["org_id"])
            except NotClaimedError:
                refused.append((row["task_id"], "failed"))
                continue
            claimed.append(_claimed(row, token))
            log.info(
                "task.claimed",
                task_id=str(row["task_id"]),
                attempt=row["attempt"],
                worker_id=worker_id,
            )
        TASK_TRANSITIONS.labels("claimed").inc(len(claimed))
        return claimed, refused

    async def _token_for(
        self,
        conn: Conn,
        row: asyncpg.Record,
        resolved: dict[tuple[uuid.UUID, bytes], ResolvedInputs | ValidationError] | None = None,
    ) -> str:
        """Mint the attempt's token with its input grants resolved to pinned versions
        (`resolved`: resolutions already made for this claim, by org and inputs). An unknown
        input fails the task at once: never a token with rights it should not have."""
        payload = row["payload"]
        grants: list[DatasetGrant] = []
        prefixes: list[str] = []
        if _has_inputs(row):
            key = (row["org_id"], orjson.dumps(payload.get("inputs"), option=orjson.OPT_SORT_KEYS))
            try:
                found = None if resolved is None else resolved.get(key)
                if found is None:
                    try:
                        found = await resolve_inputs(conn, row["org_id"], payload)
                    except ValidationError as exc:
                        found = exc
                    if resolved is not None:
                        resolved[key] = found
                if isinstance(found, ValidationError):
                    raise found
                grants, prefixes = found
            except ValidationError as exc:
                await self.complete(
                    row["task_id"],
                    row["attempt"],
                    row["lease_token"],
                    Outcome.FATAL_ERROR,
                    f"cannot grant inputs: {exc.detail}",
                    None,
                    None,
                )
                raise NotClaimedError("failed") from None
        return await self.mint_token(
            row["task_id"],
            row["attempt"],
            row["org_id"],
            grants,
            prefixes,
            _output_prefixes(self.store_root, row),
        )

    async def mint_token(
        self,
        task_id: uuid.UUID,
        attempt: int,
        org_id: uuid.UUID,
        datasets: list[DatasetGrant] | None = None,
        read_prefixes: list[str] | None = None,
        output_prefixes: list[str] | None = None,
    ) -> str:
        ttl = max(self.settings.token_ttl_seconds, self.settings.lease_seconds * 2)
        claims = build_claims(
            issuer=self.signer.issuer,  # the ring's issuer: what verification expects
            task_id=task_id,
            attempt=attempt,
            org_id=org_id,
            ttl_seconds=ttl,
            store_root=self.store_root,
            datasets=datasets,
            read_prefixes=read_prefixes,
            output_prefixes=output_prefixes,
        )
        return await self.signer.sign_async(claims)

    # -- attempt-scoped (capability token already verified and bound to the body) -----------

    async def heartbeat(self, task_id: uuid.UUID, attempt: int, lease_token: uuid.UUID) -> datetime:
        async with self.pool.acquire() as conn:
            expires = await conn.fetchval(
                q("tasks", "heartbeat"), task_id, attempt, lease_token, self.settings.lease_seconds
            )
            if expires is None:
                await self._raise_fence_error(conn, task_id, attempt, lease_token)
        assert isinstance(expires, datetime)
        return expires

    async def _raise_fence_error(
        self, conn: Conn, task_id: uuid.UUID, attempt: int, lease: uuid.UUID
    ) -> None:
        row = await conn.fetchrow(q("tasks", "task_state"), task_id)
        if row is None:
            raise NotFoundError("unknown task")
        fence = _fence(row)
        check_report_fence(fence, attempt, lease)
        # The fence holds but the call still changed nothing: a heartbeat needs a live run.
        raise StaleFenceError(f"task is {fence.status}; the lease cannot be extended")

    async def check_reporting(
        self, task_id: uuid.UUID, attempt: int, lease_token: uuid.UUID
    ) -> None:
        """Raise unless this attempt may still report (running, or a late reply)."""
        row = await self.pool.fetchrow(q("tasks", "task_state"), task_id)
        if row is None:
            raise NotFoundError("unknown task")
        check_report_fence(_fence(row), attempt, lease_token)

    async def buffer_publish(
        self,
        claims: CapabilityClaims,
        lease_token: uuid.UUID,
        batch_uri: str,
        record_count: int,
        dataset_uuid: uuid.UUID | None,
        dataset_version: str | None,
    ) -> dict[str, Any]:
        task_id, attempt = uuid.UUID(claims.task_id), claims.attempt
        outbox_id = buffer_outbox_id(task_id, attempt, batch_uri)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q("tasks", "share_task_state"), task_id)
            if row is None:
                raise NotFoundError("unknown task")
            fence = _fence(row)
            try:
                check_report_fence(fence, attempt, lease_token)
            except StaleFenceError:
                raise
            except ConflictError:
                # Finished attempt: repeating a publish it already made is still a success.
                if await conn.fetchval(q("outbox", "outbox_exists"), outbox_id):
                    return {"outbox_id": str(outbox_id), "duplicate": True}
                raise
            message = {
                "kind": "buffer_batch",
                "org_id": str(row["org_id"]),  # from the trusted row, never from the producer
                "batch_uri": batch_uri,
                "content_type": "application/jsonl",
                "record_count": record_count,
                "producer": {"task_id": str(task_id), "attempt": attempt},
            }
            if dataset_uuid is not None:
                message["dataset_uuid"] = str(dataset_uuid)
            if dataset_version is not None:
                message["dataset_version"] = dataset_version
            inserted = await conn.fetchval(
                q("outbox", "insert_outbox"), outbox_id, "buffer_batch", message
            )
        if inserted is not None:
            self.outbox_poke.set()
            log.info(
                "task.buffer_published",
                task_id=str(task_id),
                attempt=attempt,
                record_count=record_count,
            )
        return {"outbox_id": str(outbox_id), "duplicate": inserted is None}

    async def record_events(
        self,
        task_id: uuid.UUID,
        attempt: int,
        lease_token: uuid.UUID,
        events: Sequence[dict[str, Any]],
    ) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q("tasks", "share_task_state"), task_id)
            if row is None:
                raise NotFoundError("unknown task")
            check_report_fence(_fence(row), attempt, lease_token)
            await self._insert_events(conn, task_id, attempt, events)
        return len(events)

    @staticmethod
    async def _insert_events(
        conn: Conn, task_id: uuid.UUID, attempt: int, events: Sequence[dict[str, Any]]
    ) -> None:
        if events:
            keys = [event_key(task_id, attempt, e) for e in events]
            await conn.execute(q("tasks", "insert_events"), task_id, attempt, keys, list(events))

    async def complete_many(
        self, reports: Sequence[CompletionReport]
    ) -> list[tuple[int, dict[str, Any]]]:
        """Apply many completions: successes of running attempts in one statement, every
        other report through `complete`. Returns (status, body) per report, in order."""
        fast = [r for r in reports if r.outcome == Outcome.SUCCESS and not r.events]
        done: set[uuid.UUID] = set()
        if fast:
            rows = await self.pool.fetch(
                q("tasks", "complete_running_successes"),
                [r.task_id for r in fast],
                [r.attempt for r in fast],
                [r.lease_token for r in fast],
                [r.outputs for r in fast],
                self.hook_keys,
            )
            done = {row["task_id"] for row in rows}
            TASK_TRANSITIONS.labels("completed").inc(len(done))
            for r in fast:
                if r.task_id in done:
                    log.info(
                        "task.completed",
                        task_id=str(r.task_id),
                        attempt=r.attempt,
                        outcome="success",
                    )
        tried = {r.task_id for r in fast}
        slots = asyncio.Semaphore(SLOW_COMPLETIONS)

        async def one(r: CompletionReport) -> tuple[int, dict[str, Any]]:
            if r.task_id in done and r.outcome == Outcome.SUCCESS and not r.events:
                return 200, _completion_answer(r.task_id, r.attempt, "completed", None)
            async with slots:
                try:
                    body = await self.complete(
                        r.task_id,
                        r.attempt,
                        r.lease_token,
                        r.outcome,
                        r.error_message,
                        r.events,
                        r.outputs,
                        fast_tried=r.task_id in tried,
                    )
                except TraceError as exc:
                    return exc.status, exc.body()
                return 200, body

        # The rest (hooked commits, failures, repeats) a few at a time: each is its own
        # transaction on its own connection; one task's report never waits for another's.
        return list(await asyncio.gather(*(one(r) for r in reports)))

    async def complete(
        self,
        task_id: uuid.UUID,
        attempt: int,
        lease_token: uuid.UUID,
        outcome: Outcome,
        error_message: str | None,
        events: Sequence[dict[str, Any]] | None,
        outputs: dict[str, Any] | None,
        fast_tried: bool = False,
    ) -> dict[str, Any]:
        if outcome == Outcome.SUCCESS and not events and not fast_tried:
            # One round trip for the common case; falls through when the row is not running.
            status = await self.pool.fetchval(
                q("tasks", "complete_running_success"),
                task_id,
                attempt,
                lease_token,
                outputs,
                self.hook_keys,
            )
            if status is not None:
                TASK_TRANSITIONS.labels("completed").inc()
                log.info(
                    "task.completed", task_id=str(task_id), attempt=attempt, outcome=outcome.value
                )
                return _completion_answer(task_id, attempt, status, None)
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(q("tasks", "lock_task_state"), task_id, self.hook_keys)
            if row is None:
                raise NotFoundError("unknown task")
            decision = decide_completion(_fence(row), attempt, lease_token, outcome)
            if decision.repeat:
                view = await conn.fetchrow(q("tasks", "task_view"), task_id)
                assert view is not None
                return _completion_answer(task_id, attempt, view["status"], view["next_retry_at"])
            hooks = [h for h in self.hooks if h.payload_key in row["hook_keys"]]
            if outcome == Outcome.SUCCESS:
                for hook in hooks:
                    try:
                        async with conn.transaction():  # a savepoint: a rejection leaves no trace
                            await hook.on_success(conn, task_id, attempt, outputs)
                    except CompletionRejected as exc:
                        outcome = Outcome.FATAL_ERROR if exc.final else Outcome.RETRYABLE_ERROR
                        error_message = f"commit rejected: {exc}"
                        decision = decide_completion(_fence(row), attempt, lease_token, outcome)
                        break
            delay = (
                retry_delay(
                    attempt, self.settings.retry_base_seconds, self.settings.retry_max_seconds
                )
                if decision.retry
                else None
            )
            error = (error_message or "")[:8192] or None if outcome != Outcome.SUCCESS else None
            updated = await conn.fetchrow(
                q("tasks", "finish_attempt"),
                task_id,
                attempt,
                lease_token,
                decision.new_status.value,
                outcome.value,
                error,
                delay,
                outputs,
            )
            assert updated is not None  # the row is locked and the fence was checked
            await self._insert_events(conn, task_id, attempt, events or [])
        for hook in hooks:
            hook.committed()  # after the commit: e.g. the planner sees the freed slot
        if hooks and outcome == Outcome.SUCCESS:
            # A commit announces itself in the outbox (`dataset.range_committed`, whose
            # listeners schedule alert evaluations): drain it now, not at the next poll.
            self.outbox_poke.set()
        transition = (
            "completed"
            if outcome == Outcome.SUCCESS
            else ("retry_scheduled" if decision.retry else "failed")
        )
        TASK_TRANSITIONS.labels(transition).inc()
        log.info(f"task.{transition}", task_id=str(task_id), attempt=attempt, outcome=outcome.value)
        return _completion_answer(task_id, attempt, updated["status"], updated["next_retry_at"])


@dataclass(frozen=True)
class CompletionReport:
    task_id: uuid.UUID
    attempt: int
    lease_token: uuid.UUID
    outcome: Outcome
    error_message: str | None = None
    events: Sequence[dict[str, Any]] | None = None
    outputs: dict[str, Any] | None = None


def _claimed(row: asyncpg.Record, token: str) -> Claimed:
    return Claimed(
        task_id=row["task_id"],
        org_id=row["org_id"],
        attempt=row["attempt"],
        lease_token=row["lease_token"],
        lease_expires_at=row["lease_expires_at"],
        capability_token=token,
        payload=row["payload"],
    )


def _output_prefixes(store_root: str, row: asyncpg.Record) -> list[str]:
    """A DAG UDF range's runner writes the job's partition itself (through an upload URL):
    its token also grants the attempt's own prefix under the job's dataset (from the
    planner's trusted payload, never from the runner)."""
    payload = row["payload"]
    if not isinstance(payload, dict) or payload.get("runtime") != "lambda":
        return []
    dag = payload.get("dag")
    if not isinstance(dag, dict):
        return []
    try:
        ds = uuid.UUID(str(dag.get("dataset_uuid")))
    except ValueError:
        return []
    return [output_prefix(store_root, str(ds), row["task_id"], row["attempt"])]


def _has_inputs(row: asyncpg.Record) -> bool:
    payload = row["payload"]
    return isinstance(payload, dict) and bool(payload.get("inputs"))


def _completion_answer(
    task_id: uuid.UUID, attempt: int, status: str, next_retry_at: datetime | None
) -> dict[str, Any]:
    return {
        "task_id": str(task_id),
        "attempt": attempt,
        "status": status,
        "next_retry_at": next_retry_at.isoformat() if next_retry_at else None,
    }
