"""The `kind: chain_sync` spec (SPEC §11): strict, unknown fields rejected with their path."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from trace_platform.chain.abi import AbiError, Event, event_abi, events_of_abi, parse_signature

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
    # None: the planner's default, from the pool's endpoints (AUTO_INFLIGHT per endpoint).
    max_inflight: int | None = Field(default=None, ge=1, le=256)
    # Range size while far behind (a multiple of chunk_size); None: the planner's default,
    # the largest multiple of chunk_size up to BACKFILL_BLOCKS. chunk_size turns it off.
    backfill_blocks: int | None = Field(default=None, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _backfill_in_chunks(self) -> StreamSpec:
        b = self.backfill_blocks
        if b is not None and (b < self.chunk_size or b % self.chunk_size):
            raise ValueError("backfill_blocks must be a multiple of chunk_size")
        return self


class CompactionSpec(_Strict):
    """Partitions that ended more than `finality_depth` blocks below the head are merged
    into partitions of up to `target_blocks` blocks."""

    enabled: bool = True
    finality_depth: int = Field(default=1024, ge=1)
    target_blocks: int = Field(default=10_000, ge=2, le=10_000_000)


CONTRACT_PATTERN = r"^[a-z][a-z0-9_]{0,30}$"
ADDRESS_PATTERN = r"^0x[0-9a-fA-F]{40}$"
DECODE = "decode"  # the cryo_dataset of a decoded table's stream: decoded, never extracted
MAX_CONTRACT_EVENTS = 64


class FactorySpec(_Strict):
    """Children of a factory: every address the `parameter` of the parent contract's
    `event` carries is an instance of this contract from that event's block on."""

    contract: Annotated[str, Field(pattern=CONTRACT_PATTERN)]
    event: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
    parameter: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]


class ContractSpec(_Strict):
    """A contract whose events become tables `<contract>_<Event>`: `address` (a list) or
    `factory`, and its events as a JSON ABI (`abi`, or `abi_file` beside the spec, which
    `trace apply` reads) and/or human-readable signatures (`events`)."""

    address: list[Annotated[str, Field(pattern=ADDRESS_PATTERN)]] | None = Field(
        default=None, min_length=1, max_length=1000
    )
    factory: FactorySpec | None = None
    abi: list[dict[str, Any]] | None = Field(default=None, max_length=2000)
    abi_file: str | None = None
    events: list[Annotated[str, Field(min_length=8, max_length=2000)]] | None = Field(
        default=None, min_length=1, max_length=MAX_CONTRACT_EVENTS
    )
    start_block: int | None = Field(default=None, ge=0)

    @field_validator("address", mode="before")
    @classmethod
    def _yaml_hex(cls, value: Any) -> Any:
        """YAML reads an unquoted 0x… address as an integer: take it back, exactly."""
        if isinstance(value, list):
            return [f"0x{v:040x}" if type(v) is int and 0 <= v < 2**160 else v for v in value]
        return value

    @model_validator(mode="after")
    def _one_source(self) -> ContractSpec:
        if (self.address is None) == (self.factory is None):
            raise ValueError("give exactly one of address (a list) or factory")
        if self.abi_file is not None:
            raise ValueError(
                "abi_file is read by `trace apply FILE` (beside the spec); elsewhere give"
                " abi inline"
            )
        if self.abi is None and self.events is None:
            raise ValueError("give the contract's events: abi, abi_file or events")
        return self

    def parsed_events(self) -> list[Event]:
        out = events_of_abi(self.abi or [])
        out += [parse_signature(text) for text in self.events or []]
        return out


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
    contracts: dict[Annotated[str, Field(pattern=CONTRACT_PATTERN)], ContractSpec] = Field(
        default_factory=dict, max_length=64
    )

    def dataset_name(self, stream: str) -> str:
        return f"{self.name}.{stream}"

    @model_validator(mode="after")
    def _decodable(self) -> ChainSyncSpec:
        decoded_streams(self)  # raises ValueError naming what cannot be decoded
        return self


def logs_stream(spec: ChainSyncSpec) -> str | None:
    return next((k for k, s in spec.streams.items() if s.cryo_dataset == "logs"), None)


def decoded_streams(spec: ChainSyncSpec) -> dict[str, dict[str, Any]]:
    """The decoded tables of a spec: stream name `<contract>_<Event>` → its decode config
    (the event as ABI JSON, topic0, addresses or factory source, and the contracts it feeds
    as a factory). ValueError names what is wrong."""
    if not spec.contracts:
        return {}
    source = logs_stream(spec)
    if source is None:
        raise ValueError("contracts: decoding needs a stream with cryo_dataset: logs")
    events: dict[str, list[Event]] = {}
    for name, contract in spec.contracts.items():
        try:
            parsed = contract.parsed_events()
        except AbiError as exc:
            raise ValueError(f"contracts.{name}: {exc}") from None
        seen: set[str] = set()
        for e in parsed:
            if e.name in seen:
                raise ValueError(f"contracts.{name}: event {e.name} is declared twice")
            seen.add(e.name)
        if not parsed:
            raise ValueError(f"contracts.{name}: the ABI declares no event")
        events[name] = parsed
    feeds: dict[str, list[dict[str, str]]] = {}
    for name, contract in spec.contracts.items():
        f = contract.factory
        if f is None:
            continue
        if f.contract not in spec.contracts or f.contract == name:
            raise ValueError(f"contracts.{name}.factory.contract: no other contract {f.contract!r}")
        parent = next((e for e in events[f.contract] if e.name == f.event), None)
        if parent is None:
            raise ValueError(f"contracts.{name}.factory.event: {f.contract} has no event {f.event}")
        param = next((p for p in parent.params if p.name == f.parameter), None)
        if param is None or param.type != "address":
            raise ValueError(
                f"contracts.{name}.factory.parameter: {f.event} has no address parameter"
                f" {f.parameter}"
            )
        if spec.contracts[f.contract].factory is not None:
            raise ValueError(f"contracts.{name}.factory: a factory's parent must list addresses")
        feeds.setdefault(f"{f.contract}_{f.event}", []).append(
            {"contract": name, "parameter": f.parameter}
        )
    out: dict[str, dict[str, Any]] = {}
    for name, contract in spec.contracts.items():
        for e in events[name]:
            table = f"{name}_{e.name}"
            if table.lower() in {k.lower() for k in spec.streams} or len(table) > 40:
                raise ValueError(
                    f"contracts.{name}: table {table} clashes with a stream or is too long"
                )
            f = contract.factory
            out[table] = {
                "contract": name,
                "event": event_abi(e),
                "signature": e.signature,
                "topic0": e.topic0,
                "addresses": sorted(a.lower() for a in contract.address or []) or None,
                "factory": None
                if f is None
                else {"contract": f.contract, "table": f"{f.contract}_{f.event}"},
                "feeds": feeds.get(table, []),
                "start_block": contract.start_block,
                "source": source,
            }
    return out


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
