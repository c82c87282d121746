"""The platform-operator plug-in API: what an operator gets, and the registry the worker
looks names up in. Capability packages register their operators here at import
(`chain.ingest` registers `cryo_ingest`, `alerts.evaluate` registers `alert_eval`); the
worker never names one.

Two shapes: a *row operator* yields `alert_events` rows, which the worker writes as one
JSONL batch into the attempt's prefix and buffer-publishes; an *output operator* writes
what it produces itself (inside the attempt's prefix) and returns the completion's
`outputs`. Both end an attempt early by raising `FatalTaskError` or `RetryableTaskError`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trace_platform.domain.lifecycle import FatalTaskError, RetryableTaskError
from trace_platform.logs import EventLogger

if TYPE_CHECKING:
    from trace_platform.config import Settings
    from trace_platform.ports import ObjectStore

__all__ = [
    "OPERATORS",
    "OUTPUT_OPERATORS",
    "FatalTaskError",
    "OperatorContext",
    "RetryableTaskError",
    "operator",
    "output_operator",
]


@dataclass(frozen=True)
class OperatorContext:
    """One claimed attempt, as an operator sees it (trusted code in the worker)."""

    task_id: uuid.UUID
    attempt: int
    payload: dict[str, Any]
    log: EventLogger
    capability_token: str = ""
    store: ObjectStore | None = None
    settings: Settings | None = None

    def require(self) -> tuple[ObjectStore, Settings]:
        """The store and settings an operator that does I/O needs (the worker gives both)."""
        if self.store is None or self.settings is None:
            raise FatalTaskError("this operator needs the worker's object store and settings")
        return self.store, self.settings


RowOperator = Callable[[OperatorContext], AsyncIterator[dict[str, Any]]]
OutputOperator = Callable[[OperatorContext], Awaitable[dict[str, Any]]]
OPERATORS: dict[str, RowOperator] = {}
OUTPUT_OPERATORS: dict[str, OutputOperator] = {}


def operator(name: str) -> Callable[[RowOperator], RowOperator]:
    """Register a row operator under `name` (plugins call this at import)."""

    def register(fn: RowOperator) -> RowOperator:
        OPERATORS[name] = fn
        return fn

    return register


def output_operator(name: str) -> Callable[[OutputOperator], OutputOperator]:
    """Register an operator that writes its own files and returns `outputs`."""

    def register(fn: OutputOperator) -> OutputOperator:
        OUTPUT_OPERATORS[name] = fn
        return fn

    return register
