"""Capability token claims (SPEC §5): what an attempt may do, and nothing more."""

from __future__ import annotations

import re
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


WhereValue = str | int | float | bool
# column -> the values it may hold (a DAG input's `where`), applied by the engine as a typed
# predicate on the relation; never part of any SQL text.
Where = tuple[tuple[str, tuple[WhereValue, ...]], ...]


MAX_WHERE_BYTES = 4096
_WHERE_COLUMN = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def parse_where(raw: object) -> Where | None:
    """An input's `where` ({column: value or [values]}) as a grant holds it, in column order;
    ValueError names what is wrong. Columns are plain names, values scalars, the whole small
    (it travels in the token)."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or not raw or len(raw) > 16:
        raise ValueError("where must map 1 to 16 columns to values")
    out: list[tuple[str, tuple[WhereValue, ...]]] = []
    for column in sorted(raw):
        if not isinstance(column, str) or not _WHERE_COLUMN.match(column):
            raise ValueError("a where column must be a plain column name")
        value = raw[column]
        values = tuple(value) if isinstance(value, list | tuple) else (value,)
        if not values or not all(type(v) in (str, int, float, bool) for v in values):
            raise ValueError(f"where {column}: values must be strings, numbers or booleans")
        out.append((column, values))
    if len(repr(out)) > MAX_WHERE_BYTES:
        raise ValueError(f"where is larger than {MAX_WHERE_BYTES} bytes")
    return tuple(out)


class DatasetGrant(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    dataset_uuid: str
    dataset_version: str
    storage_ref: StorageRef
    name: str | None = None  # the relation's name in queries (SPEC §15)
    where: Where | None = None

    @field_validator("where", mode="before")
    @classmethod
    def _tuples(cls, value: object) -> object:
        """A token holds JSON arrays; the grant holds tuples (hashable, so comparable)."""
        if isinstance(value, list):
            return tuple(
                (c[0], tuple(c[1]))
                if isinstance(c, list) and len(c) == 2 and isinstance(c[1], list)
                else c
                for c in value
            )
        return value


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
    output_prefixes: list[str] | None = None,
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
            # The attempt's batch prefix first (upload-url's default); then, for a DAG UDF
            # range, the attempt's own prefix under the job's dataset.
            write_prefixes=[batch_prefix(store_root, task_id, attempt), *(output_prefixes or [])],
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
