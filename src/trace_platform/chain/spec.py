"""The `kind: chain_sync` spec (SPEC §11): strict, unknown fields rejected with their path."""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
STREAM_PATTERN = r"^[a-z0-9][a-z0-9_]{0,39}$"
_JOB_NS = uuid.UUID("2b8f6d2e-54a1-4c8e-9f0a-6a3e1d7c9b45")
_RANGE_NS = uuid.UUID("9d3c2a1b-7e6f-4a58-8b0c-1f2e3d4c5b6a")

# Datasets this version of cryo is known to extract; another name is tried and, if cryo
# refuses it, the stream stops with a clear error (a newer cryo may know more).
KNOWN_CRYO_DATASETS = frozenset(
    {
        "blocks",
        "transactions",
        "logs",
        "native_transfers",
        "erc20_transfers",
        "erc20_approvals",
        "erc721_transfers",
        "contracts",
        "traces",
    }
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class FollowHead(_Strict):
    kind: Literal["follow_head"]
    from_block: int = Field(default=0, ge=0)
    tail_lag: int = Field(default=2, ge=0, le=10_000)
    head_poll_seconds: float = Field(default=1.0, gt=0, le=3600)
    max_head_age_seconds: float = Field(default=30.0, gt=0, le=86_400)


class FixedTarget(_Strict):
    kind: Literal["fixed_target"]
    from_block: int = Field(default=0, ge=0)
    to_block: int = Field(gt=0)  # end-exclusive

    @model_validator(mode="after")
    def _ordered(self) -> FixedTarget:
        if self.to_block <= self.from_block:
            raise ValueError("to_block must be greater than from_block (end-exclusive)")
        return self


class StreamSpec(_Strict):
    cryo_dataset: Annotated[str, Field(pattern=r"^[a-z0-9_]{1,40}$")]
    chunk_size: int = Field(default=100, ge=1, le=100_000)
    max_inflight: int = Field(default=4, ge=1, le=256)


class CompactionSpec(_Strict):
    """Partitions that ended more than `finality_depth` blocks below the head are merged
    into partitions of up to `target_blocks` blocks."""

    enabled: bool = True
    finality_depth: int = Field(default=1024, ge=1)
    target_blocks: int = Field(default=10_000, ge=2, le=10_000_000)


class ChainSyncSpec(_Strict):
    kind: Literal["chain_sync"]
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    chain_id: int = Field(ge=1)
    rpc_pool: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
    mode: Annotated[FollowHead | FixedTarget, Field(discriminator="kind")]
    streams: dict[Annotated[str, Field(pattern=STREAM_PATTERN)], StreamSpec] = Field(
        min_length=1, max_length=32
    )
    compaction: CompactionSpec = CompactionSpec()

    def dataset_name(self, stream: str) -> str:
        return f"{self.name}.{stream}"


def job_id_for(org_id: uuid.UUID, name: str) -> uuid.UUID:
    return uuid.uuid5(_JOB_NS, f"{org_id}:{name}")


def range_task_id(
    job_id: uuid.UUID, stream: str, start: int, end: int, generation: int
) -> uuid.UUID:
    """Deterministic: planning the same range twice schedules one task. A reorg bumps the
    stream's generation, so the re-synced range is a new task (a new partition)."""
    suffix = "" if generation == 0 else f":g{generation}"
    return uuid.uuid5(_RANGE_NS, f"{job_id}:{stream}:{start}:{end}{suffix}")


def aligned_start(from_block: int, chunk_size: int, block: int) -> int:
    """Start of the range (of this stream's chunking) that holds `block`."""
    if block <= from_block:
        return from_block
    return from_block + ((block - from_block) // chunk_size) * chunk_size
