"""UDF bundles for people: upload (checked, content-addressed, immutable) and list, per org."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

from trace_platform.bundles import RegisteredBundle, register_bundle
from trace_platform.db.sql import q
from trace_platform.ops.env import OpsEnv, from_row


@dataclass(frozen=True)
class BundleSummary:
    bundle_id: uuid.UUID
    sha256: str
    language: str
    entrypoint: str
    size_bytes: int
    created_at: datetime


async def upload_bundle(
    env: OpsEnv, org_id: uuid.UUID, data: bytes, language: str, entrypoint: str
) -> RegisteredBundle:
    return await register_bundle(env.state, env.store, data, language, entrypoint, org_id)


async def list_bundles(env: OpsEnv, org_id: uuid.UUID, limit: int = 100) -> list[BundleSummary]:
    rows = await env.state.fetch(q("console", "bundles_of_org"), org_id, limit)
    return [from_row(BundleSummary, r) for r in rows]
