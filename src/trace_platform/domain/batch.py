"""Buffer batches: the pointer message (SPEC §6) and the strict alert_events row schema (§7).

A batch is accepted whole or not at all: the first bad line rejects it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

MAX_DEDUPE_KEY = 512
MAX_HASH = 256
INT64 = (-(2**63), 2**63 - 1)

REQUIRED_FIELDS = frozenset({"alert_definition_id", "dedupe_key", "event_time"})
OPTIONAL_FIELDS = frozenset(
    {"chain_id", "block_number", "block_hash", "tx_hash", "payload", "channels"}
)
MAX_CHANNELS = 8  # an alert's channels are numbered 0..7 (SPEC §12)
# Trusted columns: the sink takes them from the queue message and ignores row values.
IGNORED_FIELDS = frozenset({"org_id", "producer_task_id"})
KNOWN_FIELDS = REQUIRED_FIELDS | OPTIONAL_FIELDS | IGNORED_FIELDS

# Column order of the staging table / COPY records.
STAGING_COLUMNS = (
    "dedupe_key",
    "alert_definition_id",
    "event_time",
    "chain_id",
    "block_number",
    "block_hash",
    "tx_hash",
    "payload",
    "channels",
)

StagingRecord = tuple[
    str, uuid.UUID, datetime, int | None, int | None, str | None, str | None, str, list[int] | None
]


class BatchRejected(ValueError):
    """The whole batch is rejected; `reason` is safe to log (no row content)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Producer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: uuid.UUID
    attempt: int = Field(ge=1)


class BufferPointer(BaseModel):
    """The `buffer_queue` message: a pointer, never records."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["buffer_batch"]
    org_id: uuid.UUID
    dataset_uuid: uuid.UUID | None = None
    dataset_version: str | None = None
    batch_uri: str = Field(min_length=1, max_length=2048)
    content_type: Literal["application/jsonl"]
    record_count: int = Field(ge=0)
    producer: Producer


def _opt_int(row: dict[str, Any], name: str, line: int) -> int | None:
    value = row.get(name)
    if value is None:
        return None
    if type(value) is not int or not INT64[0] <= value <= INT64[1]:
        raise BatchRejected(f"line {line}: {name} must be a 64-bit integer or null")
    return value


def _opt_str(row: dict[str, Any], name: str, line: int) -> str | None:
    value = row.get(name)
    if value is None:
        return None
    if type(value) is not str or len(value) > MAX_HASH:
        raise BatchRejected(f"line {line}: {name} must be a string of at most {MAX_HASH} chars")
    return value


def _channels(row: dict[str, Any], line: int) -> list[int] | None:
    """The channels of the event's alert to deliver it to: a delivery row per channel is
    created with the event. The channel configuration itself is the alert's (state DB)."""
    value = row.get("channels")
    if value is None:
        return None
    if (
        type(value) is not list
        or len(value) > MAX_CHANNELS
        or any(type(c) is not int or not 0 <= c < MAX_CHANNELS for c in value)
        or len(set(value)) != len(value)
    ):
        raise BatchRejected(
            f"line {line}: channels must be a list of distinct integers 0..{MAX_CHANNELS - 1}"
        )
    return value or None


def parse_row(raw: bytes, line: int) -> StagingRecord:
    """Parse and validate one JSONL line into a staging record (or reject the batch)."""
    if b"\\u0000" in raw:
        raise BatchRejected(f"line {line}: NUL characters cannot be stored")
    try:
        row = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise BatchRejected(f"line {line}: not valid JSON") from None
    if type(row) is not dict:
        raise BatchRejected(f"line {line}: a row must be a JSON object")
    keys = row.keys()
    if not keys <= KNOWN_FIELDS:
        unknown = sorted(keys - KNOWN_FIELDS)[:3]
        raise BatchRejected(f"line {line}: unknown field(s) {', '.join(unknown)}")
    if not keys >= REQUIRED_FIELDS:
        missing = sorted(REQUIRED_FIELDS - keys)
        raise BatchRejected(f"line {line}: missing field(s) {', '.join(missing)}")
    dedupe_key = row["dedupe_key"]
    if type(dedupe_key) is not str or not dedupe_key or len(dedupe_key) > MAX_DEDUPE_KEY:
        raise BatchRejected(f"line {line}: dedupe_key must be a non-empty string")
    definition = row["alert_definition_id"]
    try:
        if type(definition) is not str:
            raise ValueError
        definition_id = uuid.UUID(definition)
    except ValueError:
        raise BatchRejected(f"line {line}: alert_definition_id must be a UUID string") from None
    event_time = row["event_time"]
    try:
        if type(event_time) is not str or "T" not in event_time.upper():
            raise ValueError
        when = datetime.fromisoformat(event_time)
        if when.tzinfo is None:
            raise ValueError
    except ValueError:
        raise BatchRejected(f"line {line}: event_time must be RFC 3339 with an offset") from None
    payload = row.get("payload", {})
    if type(payload) is not dict:
        raise BatchRejected(f"line {line}: payload must be a JSON object")
    return (
        dedupe_key,
        definition_id,
        when,
        _opt_int(row, "chain_id", line),
        _opt_int(row, "block_number", line),
        _opt_str(row, "block_hash", line),
        _opt_str(row, "tx_hash", line),
        orjson.dumps(payload).decode(),
        _channels(row, line),
    )


def producer_prefix(store_root: str, producer: Producer) -> str:
    return f"{store_root.rstrip('/')}/buffers/{producer.task_id}/{producer.attempt}/"
