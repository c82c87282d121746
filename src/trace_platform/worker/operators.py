"""The built-in row operators (`noop`, `emit_alerts`), registered in `trace_platform.operators`.

`emit_alerts` derives every dedupe_key from the seed and the row index (never from the
attempt), so a retried task produces the same keys and the sink inserts nothing twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from trace_platform.operators import FatalTaskError, OperatorContext, operator

MAX_EMIT = 10_000_000
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)


@operator("noop")
async def noop(_ctx: OperatorContext) -> AsyncIterator[dict[str, Any]]:
    return
    yield  # pragma: no cover - makes this an async generator


@operator("emit_alerts")
async def emit_alerts(ctx: OperatorContext) -> AsyncIterator[dict[str, Any]]:
    count = ctx.payload.get("count", 10)
    seed = ctx.payload.get("seed", "seed")
    if type(count) is not int or not 0 <= count <= MAX_EMIT:
        raise FatalTaskError(f"emit_alerts: count must be an integer in [0, {MAX_EMIT}]")
    if type(seed) is not str or not seed or len(seed) > 200:
        raise FatalTaskError("emit_alerts: seed must be a non-empty string")
    # Optional think time, to model a slow source (and to test leases).
    pause = ctx.payload.get("sleep_seconds", 0)
    if type(pause) not in (int, float) or not 0 <= pause <= 3600:
        raise FatalTaskError("emit_alerts: sleep_seconds must be a number in [0, 3600]")
    if pause:
        await asyncio.sleep(pause)
    definition = str(uuid.uuid5(uuid.NAMESPACE_URL, f"trace:alert-definition:{seed}"))
    if "alert_definition_id" in ctx.payload:  # events of a real alert, delivered to its channels
        try:
            definition = str(uuid.UUID(str(ctx.payload["alert_definition_id"])))
        except ValueError:
            raise FatalTaskError("emit_alerts: alert_definition_id must be a UUID") from None
    channels = ctx.payload.get("channels")
    extra = {"channels": channels} if channels is not None else {}
    for i in range(count):
        tx = hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()
        yield extra | {
            "alert_definition_id": definition,
            "dedupe_key": f"{seed}:{i}",
            "event_time": (_EPOCH + timedelta(seconds=i)).isoformat(),
            "chain_id": 1,
            "block_number": 19_000_000 + i,
            "block_hash": "0x" + tx[::-1],
            "tx_hash": "0x" + tx,
            "payload": {"rule": "demo", "value_wei": str((i * 7919) % 10**21)},
        }
