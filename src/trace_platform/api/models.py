"""Request bodies of the user API: strict (unknown fields are a 400), bounded."""

from __future__ import annotations

import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from trace_platform.domain.jsonb import JsonObject

MAX_SPEC_BYTES = 1 << 20


class TaskCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    payload: JsonObject
    count: int = Field(default=1, ge=1, le=1000)
    max_attempts: int | None = Field(default=None, ge=1, le=100)


class QueryBody(BaseModel):
    """`dataset`: read as relation `dataset` (optional: every relation of the org is read by
    its catalog name); `job`: the chain job whose relations answer to short names."""

    model_config = ConfigDict(extra="forbid")
    dataset: str | None = Field(default=None, min_length=1, max_length=128)
    job: str | None = Field(default=None, min_length=1, max_length=63)
    sql: str = Field(min_length=1, max_length=20_000)
    # JSON: 1..10,000 (default 1,000); arrow, csv, parquet: up to TRACE_QUERY_MAX_EXPORT_ROWS
    limit: int | None = Field(default=None, ge=1)
    # json (default), arrow, csv or parquet; wins over the Accept header
    format: str | None = Field(default=None, max_length=16)


class RedriveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    message_ids: list[uuid.UUID] | None = Field(default=None, max_length=1000)


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    role: Literal["reader", "writer", "admin"]


class BundleUpload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    language: Literal["python", "node"]
    entrypoint: str = Field(min_length=3, max_length=200)
    zip_base64: str = Field(min_length=4, max_length=70_000_000)


ParamValue = str | int | float | bool


class SavedQueryCreate(BaseModel):
    """A saved query: `sql` with typed `{{ name: TYPE }}` parameters (SPEC §21)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    sql: str = Field(min_length=1, max_length=20_000)
    description: str = Field(default="", max_length=2_000)
    job: str | None = Field(default=None, min_length=1, max_length=63)


class SavedQueryUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sql: str = Field(min_length=1, max_length=20_000)
    description: str = Field(default="", max_length=2_000)
    job: str | None = Field(default=None, min_length=1, max_length=63)


class SavedQueryRun(BaseModel):
    """`params`: a value per parameter (text or a JSON scalar, checked against its type);
    `format` and `limit` as for `POST /v1/query`."""

    model_config = ConfigDict(extra="forbid")
    params: dict[str, ParamValue] = Field(default_factory=dict, max_length=32)
    limit: int | None = Field(default=None, ge=1)
    format: str | None = Field(default=None, max_length=16)


class SavedQueryRunStart(SavedQueryRun):
    """A saved query's query run (`POST /v1/saved-queries/{name}/runs`): as a run of it,
    plus `idempotency_key` (the same key with the same values and format is the same run;
    other values or format: 409)."""

    idempotency_key: str | None = Field(default=None, min_length=1, max_length=128)
