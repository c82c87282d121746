"""The console overview's numbers: per org, task counts and queue depths sampled at most
every SAMPLE_SECONDS, with a short history for the charts (throughput = completed per
second between samples). A stale sample is served while a fresh one is taken in the
background, so no page waits for the count (an index-only scan: ~150 ms at a million
tasks) after the first. Each background refresh is watched: one that dies is logged and
the next page view takes a fresh one; the API's shutdown cancels those in flight."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from trace_platform.aio import watch
from trace_platform.db.pool import DB_ERRORS
from trace_platform.logs import get_logger
from trace_platform.ops import status as status_ops
from trace_platform.ops import tasks as task_ops
from trace_platform.ops.env import OpsEnv

log = get_logger(__name__)
SAMPLE_SECONDS = 2.0
HISTORY = 300  # samples kept per org (10 minutes at one per 2 s)


class Samples:
    def __init__(self) -> None:
        self.by_org: dict[uuid.UUID, list[dict[str, Any]]] = {}
        self.refreshing: dict[uuid.UUID, asyncio.Task[None]] = {}

    async def _take(self, env: OpsEnv, org_id: uuid.UUID) -> None:
        history = self.by_org.setdefault(org_id, [])
        counts = await task_ops.task_counts(env, org_id)
        depths = await status_ops.queue_depths(env)
        now = time.time()
        rate = 0.0
        if history:
            prev = history[-1]
            done = counts.get("completed", 0) - prev["counts"].get("completed", 0)
            rate = max(0, done) / max(1e-3, now - prev["at"])
        history.append({"at": now, "counts": counts, "depths": depths, "rate": rate})
        del history[:-HISTORY]

    async def _refresh(self, env: OpsEnv, org_id: uuid.UUID) -> None:
        try:
            await self._take(env, org_id)
        except DB_ERRORS as exc:  # the last sample stays; the next page view tries again
            log.warning("console.sample_skipped", error=type(exc).__name__)

    @staticmethod
    def _died(name: str, exc: BaseException) -> None:
        log.error("console.sample_failed", task=name, error=type(exc).__name__, detail=str(exc))

    async def current(self, env: OpsEnv, org_id: uuid.UUID) -> dict[str, Any]:
        history = self.by_org.get(org_id)
        if not history:
            await self._take(env, org_id)
            return self.by_org[org_id][-1]
        if time.time() - history[-1]["at"] >= SAMPLE_SECONDS and org_id not in self.refreshing:
            task = watch(asyncio.create_task(self._refresh(env, org_id)), "refresh", self._died)
            self.refreshing[org_id] = task
            task.add_done_callback(lambda _t: self.refreshing.pop(org_id, None))
        return history[-1]

    def series(self, org_id: uuid.UUID) -> dict[str, list[float]]:
        h = self.by_org.get(org_id, [])[-60:]
        return {
            "rate": [s["rate"] for s in h],
            "depth": [float(sum(s["depths"].values())) for s in h],
        }

    async def close(self) -> None:
        tasks = list(self.refreshing.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def sparkline(values: list[float], width: int = 360, height: int = 60) -> str:
    """An inline SVG polyline (rendered server-side: no chart library)."""
    if len(values) < 2:
        return ""
    top = max(values) or 1.0
    step = width / (len(values) - 1)
    points = " ".join(
        f"{i * step:.1f},{height - 4 - (v / top) * (height - 8):.1f}" for i, v in enumerate(values)
    )
    return (
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}"'
        f' role="img"><polyline fill="none" stroke="currentColor" stroke-width="2"'
        f' points="{points}"/></svg>'
    )
