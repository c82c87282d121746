"""Wire models of the dispatcher API. Unknown fields are rejected."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from trace_platform.domain.jsonb import JsonObject, JsonText


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ClaimRequest(_Strict):
    task_id: uuid.UUID
    worker_id: str | None = Field(default=None, max_length=200)


class ClaimBatchRequest(_Strict):
    task_ids: list[uuid.UUID] = Field(min_length=1, max_length=256)
    worker_id: str | None = Field(default=None, max_length=200)


class CancelRequest(_Strict):
    task_id: uuid.UUID


class Fence(_Strict):
    """Every /v1/task/* body names the attempt it speaks for."""

    task_id: uuid.UUID
    attempt: int = Field(ge=1)
    lease_token: uuid.UUID


class HeartbeatRequest(Fence):
    pass


class BufferPublishRequest(Fence):
    batch_uri: str = Field(min_length=1, max_length=2048)
    record_count: int = Field(ge=0)
    content_type: Literal["application/jsonl"] = "application/jsonl"
    batch_size_bytes: int | None = Field(default=None, ge=0)
    dataset_uuid: uuid.UUID | None = None
    dataset_version: str | None = Field(default=None, max_length=200)


class UploadUrlRequest(Fence):
    name: str = Field(min_length=1, max_length=200)
    content_type: str | None = Field(default=None, max_length=200)
    size_bytes: int | None = Field(default=None, ge=0)
    # `batch`: the attempt's batch prefix; `output`: a DAG UDF range's partition prefix
    # (granted only to such attempts).
    target: Literal["batch", "output"] = "batch"


class BlockHeadersRequest(Fence):
    numbers: list[Annotated[int, Field(ge=0, le=2**63 - 1)]] = Field(
        min_length=1, max_length=10_000
    )


class EventsRequest(Fence):
    events: list[JsonObject] = Field(max_length=1000)


class CompleteRequest(Fence):
    outcome: Literal["success", "retryable_error", "fatal_error"]
    error_message: str | None = Field(default=None, max_length=65536)
    events: list[JsonObject] | None = Field(default=None, max_length=1000)
    outputs: JsonObject | None = None


_LABEL = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
_Count = Annotated[int, Field(ge=0, le=2**63 - 1)]
_Rate = Annotated[float, Field(ge=0, le=1e9, allow_inf_nan=False)]


class EndpointState(_Strict):
    """One endpoint as one process sees it (`Health.view`): labels and figures, no URL."""

    endpoint: str = Field(pattern=_LABEL)
    role: Literal["any", "archive", "head"]
    weight: int = Field(ge=1, le=1000)
    state: Literal["healthy", "throttled", "out", "refused"]
    reason: JsonText | None = Field(default=None, max_length=500)
    last_error: JsonText | None = Field(default=None, max_length=500)
    rps: _Rate | None = None
    ceiling: _Rate | None = None
    concurrency: int = Field(ge=0, le=10_000)
    requests: _Count
    throttled: _Count
    errors: _Count
    ranges: _Count
    blocks: _Count
    latency_p50_ms: _Rate | None = None
    head: _Count | None = None
    lag: int | None = Field(default=None, ge=-(2**62), le=2**62)


class EndpointView(_Strict):
    pool: str = Field(pattern=r"^[a-z0-9_]{1,64}$")
    endpoint: str = Field(pattern=_LABEL)
    view: EndpointState


class EndpointReport(_Strict):
    process: JsonText = Field(min_length=1, max_length=200)
    endpoints: list[EndpointView] = Field(max_length=256)

    @field_validator("endpoints")
    @classmethod
    def _one_view_per_endpoint(cls, endpoints: list[EndpointView]) -> list[EndpointView]:
        """A process reports each (pool, endpoint) once: a second view of one is refused
        here, before the database sees two rows for one key."""
        seen: dict[tuple[str, str], int] = {}
        for i, e in enumerate(endpoints):
            first = seen.setdefault((e.pool, e.endpoint), i)
            if first != i:
                raise PydanticCustomError(
                    "duplicate_endpoint",
                    "entry {i} repeats pool '{pool}' endpoint '{endpoint}' of entry {first}",
                    {"i": i, "pool": e.pool, "endpoint": e.endpoint, "first": first},
                )
        return endpoints


class ClaimResponse(BaseModel):
    task_id: uuid.UUID
    attempt: int
    lease_token: uuid.UUID
    lease_expires_at: datetime
    capability_token: str
    work_payload: dict[str, Any]


class ErrorResponse(BaseModel):
    error: str
    detail: str


class CompleteBatchItem(CompleteRequest):
    capability_token: str = Field(min_length=1, max_length=16384)


class CompleteBatchRequest(_Strict):
    items: list[CompleteBatchItem] = Field(min_length=1, max_length=256)
