"""What an operation runs with: the databases, the settings, and the services built from
them once. The API builds one per process (in its lifespan); a CLI command opens one for
the command (`open_env`) and closes it after."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields, is_dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar

import asyncpg

from trace_platform.config import Settings
from trace_platform.db.embedded import resolve_databases
from trace_platform.db.pool import create_pool

if TYPE_CHECKING:  # (imported where used: a CLI verb loads only what it runs)
    from trace_platform.client import TaskClient
    from trace_platform.dispatcher.service import TaskService
    from trace_platform.ports import ObjectStore

T = TypeVar("T")


@dataclass(frozen=True)
class Caller:
    """Who asks: an org, and the user where a person's key made the call (None for an
    operator at this installation's CLI)."""

    org_id: uuid.UUID
    user_id: uuid.UUID | None = None


@dataclass
class OpsEnv:
    settings: Settings
    state: asyncpg.Pool
    data: asyncpg.Pool
    embedded: bool = False
    # The user API's: its client of the query service and the credential it sends there.
    query_client: TaskClient | None = None
    worker_token: str | None = None

    @cached_property
    def tasks(self) -> TaskService:
        from trace_platform.adapters.local_keys import load_key_ring
        from trace_platform.dispatcher.service import TaskService

        return TaskService(self.state, load_key_ring(self.settings), self.settings)

    @cached_property
    def store(self) -> ObjectStore:
        from trace_platform.adapters.stores import object_store_from_settings

        return object_store_from_settings(self.settings)


@asynccontextmanager
async def open_env(settings: Settings, size: int = 2) -> AsyncIterator[OpsEnv]:
    """An environment for one command: small pools, closed when it is done."""
    urls = await resolve_databases(settings)
    state = await create_pool(urls.state, max_size=size)
    try:
        data = await create_pool(urls.data, max_size=1)
        try:
            yield OpsEnv(settings, state, data, urls.embedded)
        finally:
            await data.close()
    finally:
        await state.close()


def from_row(cls: type[T], row: Mapping[str, Any] | asyncpg.Record, **more: Any) -> T:
    """A result dataclass from a database row: its fields taken by name (a field the row
    lacks keeps its default)."""
    assert is_dataclass(cls)
    keys = set(row.keys())
    values = {f.name: row[f.name] for f in fields(cls) if f.name not in more and f.name in keys}
    return cls(**values, **more)
