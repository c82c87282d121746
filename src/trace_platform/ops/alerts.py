"""Alert operations for people: apply a `kind: alert` spec (with its backfill), list, show,
events. One transaction per change; no SQL in callers."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from trace_platform.alerts.schedule import schedule_evaluations
from trace_platform.alerts.spec import AlertSpec, FromBlock, alert_id_for
from trace_platform.db.sql import q
from trace_platform.delivery.guard import UrlRefused, check_url
from trace_platform.domain.catalog import DATASET_ALIAS, job_of, relation_aliases
from trace_platform.domain.errors import ConflictError, NotFoundError, ValidationError
from trace_platform.domain.sql_gate import SqlRejected, check_relations, check_sql
from trace_platform.ops.env import OpsEnv, from_row


@dataclass(frozen=True)
class AlertSummary:
    alert_id: uuid.UUID
    name: str
    enabled: bool
    start_block: int
    spec: Any
    dataset: str
    created_at: datetime


@dataclass(frozen=True)
class AlertDetail:
    alert_id: str
    name: str
    enabled: bool
    start_block: int
    spec: Any
    evaluations: dict[str, int]
    events: int
    deliveries: dict[str, int]
    updated_at: datetime


@dataclass(frozen=True)
class AlertEvent:
    dedupe_key: str
    event_time: datetime
    block_number: int | None
    block_hash: str | None
    tx_hash: str | None
    payload: Any
    created_at: datetime


@dataclass(frozen=True)
class DeliveryAttempt:
    attempt: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    outcome: str
    error: str | None


@dataclass(frozen=True)
class Delivery:
    delivery_id: uuid.UUID
    channel: int
    status: str
    attempts: int
    max_attempts: int
    last_status_code: int | None
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None
    dedupe_key: str
    block_number: int | None
    tx_hash: str | None
    attempt_log: list[DeliveryAttempt]


@dataclass(frozen=True)
class DeliveryRetried:
    delivery_id: uuid.UUID
    status: str
    attempts: int
    max_attempts: int


def validate_alert(spec: AlertSpec, allow_private: bool = False) -> None:
    """What the schema cannot check: the rule passes the SQL gate, every channel URL passes
    the SSRF guard's static checks (DNS is checked on every delivery)."""
    if spec.rule.sql is not None:
        try:
            check_sql(spec.rule.sql, None)  # the names it reads: at apply, against its job
        except SqlRejected as exc:
            raise ValidationError(f"rule.sql: rejected by the SQL gate ({exc.reason})") from None
    for i, channel in enumerate(spec.channels):
        try:
            check_url(channel.url, allow_private)
        except UrlRefused as exc:
            hint = "" if allow_private else " (Lite: TRACE_DELIVERY_ALLOW_PRIVATE=1 allows it)"
            raise ValidationError(f"channels.{i}.url: {exc}{hint}") from None


async def _check_rule_relations(conn: Any, org_id: uuid.UUID, source: str, sql: str) -> None:
    """A SQL rule reads its source as `dataset` and any relation of the source's chain job
    (by full name, bare alias or short name); anything else is refused now, not at its
    first evaluation."""
    job = job_of(source)
    names = [r["name"] for r in await conn.fetch(q("chain", "job_relations"), org_id, job)]
    granted = set(relation_aliases(names, job)) | {DATASET_ALIAS}
    try:
        check_relations(check_sql(sql, None), granted)
    except SqlRejected as exc:
        raise ValidationError(f"rule.sql: rejected by the SQL gate ({exc.reason})") from None


async def _check_bundle(conn: Any, org_id: uuid.UUID, bundle_id: str) -> None:
    try:
        bid = uuid.UUID(bundle_id)
    except ValueError:
        raise ValidationError("rule.udf.bundle_id: not a bundle id (a UUID)") from None
    bundle = await conn.fetchrow(q("bundles", "get_bundle"), bid)
    if bundle is None or bundle["org_id"] != org_id:
        raise ValidationError(
            f"rule.udf.bundle_id: no bundle {bundle_id} in this org (upload it with"
            " `trace bundle upload`)"
        )


async def apply_alert(
    env: OpsEnv, spec: AlertSpec, org_id: uuid.UUID, allow_private: bool = False
) -> dict[str, Any]:
    """Create or update the alert. `start: latest` evaluates ranges committed from now on;
    `start: {from_block: N}` also evaluates every committed range ending after N, once."""
    validate_alert(spec, allow_private)
    body = spec.model_dump(mode="json")
    alert_id = alert_id_for(org_id, spec.name)
    async with env.state.acquire() as conn, conn.transaction():
        ds = await conn.fetchrow(q("chain", "partitioned_dataset"), org_id, spec.source.dataset)
        if ds is None:
            raise ValidationError(
                f"source.dataset: {spec.source.dataset!r} is not a chain dataset of this org"
            )
        if spec.rule.udf is not None:
            await _check_bundle(conn, org_id, spec.rule.udf.bundle_id)
        if spec.rule.sql is not None:
            await _check_rule_relations(conn, org_id, spec.source.dataset, spec.rule.sql)
        if isinstance(spec.start, FromBlock):
            start_block = spec.start.from_block
        else:
            start_block = int(await conn.fetchval(q("alerts", "committed_end"), ds["dataset_uuid"]))
        row = await conn.fetchrow(
            q("alerts", "upsert_alert"),
            alert_id,
            org_id,
            spec.name,
            ds["dataset_uuid"],
            body,
            start_block,
            spec.enabled,
        )
        assert row is not None
        backfilled = 0
        if spec.enabled:
            parts = await conn.fetch(
                q("alerts", "partitions_after"), ds["dataset_uuid"], row["start_block"]
            )
            alert = await conn.fetchrow(q("alerts", "alert_by_name"), org_id, spec.name)
            backfilled = await schedule_evaluations(
                conn,
                ds["dataset_uuid"],
                [(str(p["partition_id"]), p["range_start"], p["range_end"]) for p in parts],
                [alert],
            )
    return {
        "kind": "alert",
        "name": spec.name,
        "alert_id": str(alert_id),
        "changed": True,
        "created": bool(row["created"]),
        "start_block": row["start_block"],
        "evaluations_scheduled": backfilled,
    }


async def list_alerts(env: OpsEnv, org_id: uuid.UUID) -> list[AlertSummary]:
    rows = await env.state.fetch(q("alerts", "list_alerts"), org_id)
    return [from_row(AlertSummary, r) for r in rows]


async def _alert(env: OpsEnv, org_id: uuid.UUID, name: str) -> Any:
    alert = await env.state.fetchrow(q("alerts", "alert_by_name"), org_id, name)
    if alert is None:
        raise NotFoundError(f"no alert named {name!r}")
    return alert


async def alert_events(
    env: OpsEnv, org_id: uuid.UUID, name: str, limit: int = 100
) -> list[AlertEvent]:
    alert = await _alert(env, org_id, name)
    rows = await env.data.fetch(q("alerts", "alert_events"), org_id, alert["alert_id"], limit)
    return [from_row(AlertEvent, r) for r in rows]


async def show_alert(env: OpsEnv, org_id: uuid.UUID, name: str) -> AlertDetail:
    """The definition (channels without secrets: only the variable names), evaluation and
    delivery counts, events so far."""
    alert = await _alert(env, org_id, name)
    evaluations = {
        r["status"]: r["n"]
        for r in await env.state.fetch(q("alerts", "evaluation_counts"), str(alert["alert_id"]))
    }
    deliveries = {
        r["status"]: r["n"]
        for r in await env.data.fetch(q("delivery", "delivery_counts"), org_id, alert["alert_id"])
    }
    events = await env.data.fetchval(q("alerts", "event_count"), org_id, alert["alert_id"])
    return AlertDetail(
        alert_id=str(alert["alert_id"]),
        name=alert["name"],
        enabled=alert["enabled"],
        start_block=alert["start_block"],
        spec=alert["spec"],
        evaluations=evaluations,
        events=int(events),
        deliveries=deliveries,
        updated_at=alert["updated_at"],
    )


DELIVERY_STATUSES = ("pending", "delivered", "failed")


async def alert_deliveries(
    env: OpsEnv, org_id: uuid.UUID, name: str, status: str | None = None, limit: int = 50
) -> list[Delivery]:
    """Deliveries of an alert, newest first, each with its attempts."""
    if status is not None and status not in DELIVERY_STATUSES:
        raise ValidationError(f"status must be one of {', '.join(DELIVERY_STATUSES)}")
    alert = await _alert(env, org_id, name)
    rows = await env.data.fetch(
        q("delivery", "deliveries_of_alert"), org_id, alert["alert_id"], status, limit
    )
    out = []
    for r in rows:
        attempts = await env.data.fetch(q("delivery", "attempts_of_delivery"), r["delivery_id"])
        log = [from_row(DeliveryAttempt, a) for a in attempts]
        out.append(from_row(Delivery, r, attempt_log=log))
    return out


async def retry_delivery(
    env: OpsEnv, org_id: uuid.UUID, delivery_id: uuid.UUID, attempts: int | None = None
) -> DeliveryRetried:
    """Make a failed delivery due now with a fresh attempt budget (default
    TRACE_DELIVERY_MAX_ATTEMPTS; a delivered one is left alone: the receiver has it)."""
    attempts = attempts or env.settings.delivery_max_attempts
    row = await env.data.fetchrow(q("delivery", "retry_delivery"), delivery_id, org_id, attempts)
    if row is None:
        current = await env.data.fetchrow(q("delivery", "delivery_by_id"), delivery_id, org_id)
        if current is None:
            raise NotFoundError(f"no delivery {delivery_id}")
        raise ConflictError(f"delivery {delivery_id} is {current['status']}; nothing to retry")
    return from_row(DeliveryRetried, row)
