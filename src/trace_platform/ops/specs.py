"""`trace apply`: validate every document of a spec file first, then apply each by kind."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from trace_platform.alerts.spec import AlertSpec
from trace_platform.chain.spec import ChainSyncSpec
from trace_platform.db.sql import q
from trace_platform.domain.errors import NotFoundError, ValidationError
from trace_platform.ops.alerts import apply_alert, validate_alert
from trace_platform.ops.chains import apply_chain_sync
from trace_platform.specs import parse_spec_documents


async def apply_specs(
    pool: asyncpg.Pool,
    text: str,
    org_id: uuid.UUID,
    store_root: str,
    allow_private: bool = False,
) -> list[dict[str, Any]]:
    """Nothing is applied unless every document is valid."""
    docs = parse_spec_documents(text)
    for doc in docs:
        if isinstance(doc, AlertSpec):
            validate_alert(doc, allow_private)
    results = []
    for doc in docs:
        if isinstance(doc, AlertSpec):
            results.append(await apply_alert(pool, doc, org_id, allow_private))
        else:
            assert isinstance(doc, ChainSyncSpec)
            results.append(await apply_chain_sync(pool, doc, org_id, store_root))
    return results


async def list_specs(pool: asyncpg.Pool, org_id: uuid.UUID) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch(q("chain", "list_specs"), org_id)]


async def show_spec(pool: asyncpg.Pool, org_id: uuid.UUID, kind: str, name: str) -> dict[str, Any]:
    if kind == "alert":
        row = await pool.fetchrow(q("alerts", "alert_by_name"), org_id, name)
        if row is None:
            raise NotFoundError(f"no alert named {name!r}")
        return {"kind": "alert", "name": name, "body": row["spec"], "updated_at": row["updated_at"]}
    row = await pool.fetchrow(q("chain", "show_spec"), org_id, kind, name)
    if row is None:
        raise NotFoundError(f"no {kind} spec named {name!r}")
    return dict(row)


async def delete_spec(
    pool: asyncpg.Pool, org_id: uuid.UUID, kind: str, name: str
) -> dict[str, Any]:
    """An alert is removed (its events stay); a chain sync is paused and its spec forgotten
    (its datasets stay, readable and queryable; applying it again resumes it)."""
    from trace_platform.ops.chains import set_paused

    if kind == "alert":
        if await pool.fetchval(q("alerts", "delete_alert"), org_id, name) is None:
            raise NotFoundError(f"no alert named {name!r}")
        return {"kind": kind, "name": name, "deleted": True}
    if kind != "chain_sync":
        raise ValidationError("kind must be chain_sync or alert")
    await set_paused(pool, org_id, name, True)
    await pool.fetchval(q("chain", "delete_spec"), org_id, kind, name)
    return {"kind": kind, "name": name, "deleted": True, "paused": True}
