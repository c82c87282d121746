"""Capability token claims (SPEC §5): what an attempt may do, and nothing more."""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

AUDIENCE = "trace.task"
REQUIRED_CLAIMS = (
    "iss",
    "aud",
    "sub",
    "exp",
    "iat",
    "jti",
    "org_id",
    "task_id",
    "attempt",
    "datasets",
    "s3",
)


class StorageRef(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    scheme: Literal["s3", "file"]
    bucket: str | None = None
    prefix: str
    glob: str


class DatasetGrant(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    dataset_uuid: str
    dataset_version: str
    storage_ref: StorageRef
    name: str | None = None  # the relation's name in queries (SPEC §15)


class S3Grants(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    read_prefixes: list[str] = Field(default_factory=list)
    write_prefixes: list[str] = Field(default_factory=list)


class CapabilityClaims(BaseModel):
    """Verified claims. Unknown claims are rejected: the verifier denies by default."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    iss: str
    aud: str
    sub: str
    exp: int
    iat: int
    jti: str
    org_id: str
    task_id: str
    attempt: int = Field(ge=1)
    datasets: list[DatasetGrant]
    s3: S3Grants

    @field_validator("org_id", "task_id")
    @classmethod
    def _uuid(cls, value: str) -> str:
        return str(uuid.UUID(value))

    def check_subject(self) -> None:
        if self.sub != f"task:{self.task_id}" or self.aud != AUDIENCE:
            raise ValueError("sub/aud do not match the task")


def batch_prefix(store_root: str, task_id: uuid.UUID | str, attempt: int) -> str:
    """The attempt-scoped write prefix every token grants: `<root>/buffers/{task}/{attempt}/`."""
    return f"{store_root.rstrip('/')}/buffers/{task_id}/{attempt}/"


def build_claims(
    *,
    issuer: str,
    task_id: uuid.UUID,
    attempt: int,
    org_id: uuid.UUID,
    ttl_seconds: float,
    store_root: str,
    datasets: list[DatasetGrant] | None = None,
    read_prefixes: list[str] | None = None,
    now: float | None = None,
) -> CapabilityClaims:
    issued = int(now if now is not None else time.time())
    return CapabilityClaims(
        iss=issuer,
        aud=AUDIENCE,
        sub=f"task:{task_id}",
        exp=issued + int(ttl_seconds),
        iat=issued,
        jti=uuid.uuid4().hex,
        org_id=str(org_id),
        task_id=str(task_id),
        attempt=attempt,
        datasets=list(datasets or []),
        s3=S3Grants(
            read_prefixes=list(read_prefixes or []),
            write_prefixes=[batch_prefix(store_root, task_id, attempt)],
        ),
    )


def is_within_prefixes(uri: str, prefixes: list[str]) -> bool:
    """True when `uri` lies under one of the canonical prefixes (no `..`, no `//` tricks)."""
    if not uri or "\\" in uri or "\x00" in uri or "?" in uri or "#" in uri or "%" in uri:
        return False
    _scheme, sep, rest = uri.partition("://")
    if not sep or "//" in rest or any(part in ("..", ".") for part in rest.split("/")):
        return False
    return any(p.endswith("/") and uri.startswith(p) and len(uri) > len(p) for p in prefixes)
