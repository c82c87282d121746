"""`trace apply`: validate every document of a spec file first, then apply each by kind."""

from __future__ import annotations

import uuid
from typing import Any

from trace_platform.alerts.spec import AlertSpec
from trace_platform.chain.spec import ChainSyncSpec
from trace_platform.dag.spec import DagSpec
from trace_platform.db.sql import q
from trace_platform.domain.errors import NotFoundError, ValidationError
from trace_platform.ops.alerts import apply_alert, validate_alert
from trace_platform.ops.chains import apply_chain_sync, set_paused
from trace_platform.ops.dags import apply_dag, delete_dag
from trace_platform.ops.env import OpsEnv
from trace_platform.specs import parse_spec_documents


async def apply_specs(env: OpsEnv, org_id: uuid.UUID, text: str) -> list[dict[str, Any]]:
    """Nothing is applied unless every document is valid."""
    allow_private = env.settings.delivery_allow_private
    docs = parse_spec_documents(text)
    for doc in docs:
        if isinstance(doc, AlertSpec):
            validate_alert(doc, allow_private)
    results = []
    for doc in docs:
        if isinstance(doc, AlertSpec):
            results.append(await apply_alert(env, doc, org_id, allow_private))
        elif isinstance(doc, DagSpec):
            results.append(await apply_dag(env, doc, org_id))
        else:
            assert isinstance(doc, ChainSyncSpec)
            results.append(await apply_chain_sync(env, doc, org_id))
    return results


async def list_specs(env: OpsEnv, org_id: uuid.UUID) -> list[dict[str, Any]]:
    return [dict(r) for r in await env.state.fetch(q("chain", "list_specs"), org_id)]


async def show_spec(env: OpsEnv, org_id: uuid.UUID, kind: str, name: str) -> dict[str, Any]:
    if kind == "alert":
        row = await env.state.fetchrow(q("alerts", "alert_by_name"), org_id, name)
        if row is None:
            raise NotFoundError(f"no alert named {name!r}")
        return {"kind": "alert", "name": name, "body": row["spec"], "updated_at": row["updated_at"]}
    row = await env.state.fetchrow(q("chain", "show_spec"), org_id, kind, name)
    if row is None:
        raise NotFoundError(f"no {kind} spec named {name!r}")
    return dict(row)


async def delete_spec(env: OpsEnv, org_id: uuid.UUID, kind: str, name: str) -> dict[str, Any]:
    """An alert is removed (its events stay); a chain sync is paused and its spec forgotten
    (its datasets stay, readable and queryable; applying it again resumes it)."""
    if kind == "alert":
        if await env.state.fetchval(q("alerts", "delete_alert"), org_id, name) is None:
            raise NotFoundError(f"no alert named {name!r}")
        return {"kind": kind, "name": name, "deleted": True}
    if kind == "dag":
        return await delete_dag(env, org_id, name)
    if kind != "chain_sync":
        raise ValidationError("kind must be chain_sync, alert or dag")
    await set_paused(env, org_id, name, True)
    await env.state.fetchval(q("chain", "delete_spec"), org_id, kind, name)
    return {"kind": kind, "name": name, "deleted": True, "paused": True}
