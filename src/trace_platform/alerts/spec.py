"""The `kind: alert` spec (SPEC §12): strict, unknown fields rejected with their path."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, model_validator

from trace_platform.chain.spec import NAME_PATTERN

_ALERT_NS = uuid.UUID("5e2d8c1a-7b3f-4e9d-a6c5-0f1e2d3c4b5a")
_EVAL_NS = uuid.UUID("c4b3a291-8f7e-4d6c-9b5a-1e2f3a4b5c6d")
COLUMN = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Source(_Strict):
    dataset: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]


class FromBlock(_Strict):
    from_block: int = Field(ge=0)


class UdfRule(_Strict):
    bundle_id: str
    config: dict[str, object] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _json(self) -> UdfRule:
        try:
            size = len(orjson.dumps(self.config))
        except TypeError:
            raise ValueError(
                "config must be plain JSON with integers that fit in 64 bits"
                " (write larger numbers as floats, e.g. 1.0e+24, or as strings)"
            ) from None
        if size > 65536:
            raise ValueError("config is larger than 64 KiB")
        return self


class Rule(_Strict):
    sql: str | None = Field(default=None, min_length=1, max_length=20_000)
    udf: UdfRule | None = None

    @model_validator(mode="after")
    def _one(self) -> Rule:
        if (self.sql is None) == (self.udf is None):
            raise ValueError("give exactly one of sql or udf")
        return self


class Channel(_Strict):
    """Where events go. A webhook is signed (Standard Webhooks) with the secret(s) held in
    the environment variable `secret_env` of the delivery process; a slack channel posts a
    readable message to an incoming-webhook URL."""

    type: Literal["webhook", "slack"]
    url: Annotated[str, Field(min_length=8, max_length=2000, pattern=r"^https?://")]
    secret_env: Annotated[str, Field(pattern=r"^TRACE_[A-Z0-9_]{1,64}$")] | None = None

    @model_validator(mode="after")
    def _secret(self) -> Channel:
        if self.type == "webhook" and self.secret_env is None:
            raise ValueError("a webhook channel needs secret_env (the variable holding whsec_...)")
        return self


class AlertSpec(_Strict):
    kind: Literal["alert"]
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    source: Source
    start: Literal["latest"] | FromBlock = "latest"
    rule: Rule
    identity: list[Annotated[str, Field(pattern=COLUMN)]] = Field(min_length=1, max_length=8)
    severity: Literal["info", "warning", "critical"] = "warning"
    channels: list[Channel] = Field(default_factory=list, max_length=8)
    enabled: bool = True


def alert_id_for(org_id: uuid.UUID, name: str) -> uuid.UUID:
    return uuid.uuid5(_ALERT_NS, f"{org_id}:{name}")


def evaluation_task_id(alert_id: uuid.UUID, partition_id: uuid.UUID | str) -> uuid.UUID:
    """One evaluation per (alert, committed partition): a duplicate range_committed event or
    a re-apply schedules nothing twice; a range a reorg replaced is a new partition."""
    return uuid.uuid5(_EVAL_NS, f"{alert_id}:{partition_id}")
