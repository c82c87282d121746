"""The `kind: dag` spec (SPEC §19): strict, unknown fields rejected with their path, the job
graph checked whole (`domain.dag.job_order`) before anything is applied.

What the engine runs today: per-range SQL and UDF jobs (a UDF job names a registered bundle
and declares its output `schema:`, column → DuckDB type, `NOT NULL` after the type refusing
NULL); whole-snapshot jobs (`window: all`), refreshed on upstream change (at most once per
`min_interval_seconds`, default 10) or once per UTC cron slot (`schedule:`, 5 fields or 6
with seconds first; a schedule implies `window: all`). The original design's reserved
backpressure fields are refused always.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from trace_platform.domain.dag import RESERVED_JOB_FIELDS, GraphError, job_order
from trace_platform.domain.dag_schedule import (
    DEFAULT_MIN_INTERVAL_SECONDS,
    ScheduleError,
    check_schedule,
)
from trace_platform.domain.sql_gate import shown
from trace_platform.domain.udf_schema import SchemaError, parse_schema

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
JOB_PATTERN = r"^[a-z][a-z0-9_]{0,39}$"
COLUMN_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,62}$"
MAX_JOBS = 64
MAX_INPUTS = 8
MAX_WHERE_VALUES = 1000
# While behind its inputs a job's tasks hold up to this many input rows each (unless the
# job sets `backfill_blocks`, a fixed span): few large tasks over sparse history, bounded
# ones over dense history. Jobs applied before it existed keep their stored 10,000 blocks.
DEFAULT_BACKFILL_ROWS = 1_000_000
MAX_SPAN_BLOCKS = 10_000_000


def backfill_limits(definition: dict[str, Any]) -> tuple[int, int | None]:
    """A per-range job's (blocks, rows) limits of one task while it is behind: its
    `backfill_blocks` (else no limit) and its `backfill_rows` (else DEFAULT_BACKFILL_ROWS,
    unless `backfill_blocks` alone is set: a fixed span, as every job applied before rows
    counted has stored)."""
    blocks = definition.get("backfill_blocks")
    rows = definition.get("backfill_rows")
    if rows is None and blocks is None:
        rows = DEFAULT_BACKFILL_ROWS
    return int(blocks or MAX_SPAN_BLOCKS), (int(rows) if rows is not None else None)


_DAG_NS = uuid.UUID("5a0c3e9d-8f21-4b7a-9c6e-2d4f8a1b3c70")
_DAG_RANGE_NS = uuid.UUID("c4e1b7a2-3d9f-4e68-8a15-7b2c9d0e6f31")

Scalar = Annotated[str, Field(max_length=256)] | int | float | bool
WhereValue = Scalar | Annotated[list[Scalar], Field(min_length=1, max_length=MAX_WHERE_VALUES)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Input(_Strict):
    # column → value or list of values; applied by trusted code as a typed predicate
    where: dict[Annotated[str, Field(pattern=COLUMN_PATTERN)], WhereValue] | None = Field(
        default=None, min_length=1, max_length=16
    )


class ChainInput(_Input):
    """Every raw and decoded relation of a chain job, bounded to the job's range."""

    chain: Annotated[str, Field(pattern=NAME_PATTERN)]


class DatasetInput(_Input):
    """A registered dataset, read whole at the snapshot pinned when the task is claimed."""

    dataset: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]


class JobInput(_Input):
    """Another job of the same DAG, bounded to the job's range."""

    job: Annotated[str, Field(pattern=JOB_PATTERN)]


def _shown(value: Any) -> str:
    """A value a user wrote, as an error may show it: quoted, printable, at most 64 chars."""
    return repr(shown(str(value))) if isinstance(value, str) else shown(repr(value))


def _input_kind(value: Any) -> str | None:
    """Which input a mapping is (by its one key), or which an input model is."""
    if isinstance(value, dict):
        found = [k for k in ("chain", "dataset", "job") if k in value]
        return found[0] if len(found) == 1 else None
    for kind, model in (("chain", ChainInput), ("dataset", DatasetInput), ("job", JobInput)):
        if isinstance(value, model):
            return kind
    return None


Input = Annotated[
    Annotated[ChainInput, Tag("chain")]
    | Annotated[DatasetInput, Tag("dataset")]
    | Annotated[JobInput, Tag("job")],
    Discriminator(
        _input_kind,
        custom_error_type="input_kind",
        custom_error_message="an input is one of {chain: JOB}, {dataset: NAME} or {job: NAME}",
    ),
]


class UdfRef(_Strict):
    bundle_id: Annotated[str, Field(min_length=1, max_length=128)]
    config: dict[str, Any] = Field(default_factory=dict)


class Defaults(_Strict):
    max_attempts: int = Field(default=5, ge=1, le=100)
    max_concurrency: int = Field(default=8, ge=1, le=256)


class JobSpec(_Strict):
    inputs: list[Input] = Field(min_length=1, max_length=MAX_INPUTS)
    sql: Annotated[str, Field(min_length=1, max_length=100_000)] | None = None
    udf: UdfRef | None = None
    schema_: dict[Annotated[str, Field(pattern=COLUMN_PATTERN)], str] | None = Field(
        default=None, alias="schema", max_length=256
    )
    unique_key: list[Annotated[str, Field(pattern=COLUMN_PATTERN)]] | None = Field(
        default=None, min_length=1, max_length=16
    )
    window: Literal["range", "all"] = "range"
    schedule: Annotated[str, Field(max_length=128)] | None = None
    min_interval_seconds: float | None = Field(default=None, ge=0, le=86_400)
    max_concurrency: int | None = Field(default=None, ge=1, le=256)
    max_attempts: int | None = Field(default=None, ge=1, le=100)
    # While the job is behind its inputs (backfill): the input rows one task may hold
    # (default DEFAULT_BACKFILL_ROWS), and the blocks it may cover (default: no limit; set
    # alone, a fixed span in blocks).
    backfill_rows: int | None = Field(default=None, ge=1, le=100_000_000)
    backfill_blocks: int | None = Field(default=None, ge=1, le=10_000_000)

    # Reserved by the original design for backpressure controls: refused, never ignored.
    max_queue_depth: Any = None
    max_queue_age: Any = None
    backpressure_mode: Any = None

    @field_validator(*RESERVED_JOB_FIELDS)
    @classmethod
    def _reserved(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("reserved for future backpressure controls; not supported")
        return value

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                check_schedule(value)
            except ScheduleError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("window", mode="before")
    @classmethod
    def _known_window(cls, value: Any) -> Any:
        if value not in ("range", "all"):
            raise ValueError(f"{_shown(value)} is not a window: range (the default) or all")
        return value

    @model_validator(mode="before")
    @classmethod
    def _scheduled_is_whole(cls, data: Any) -> Any:
        # A job with a schedule is a whole-snapshot job (SPEC §19): `window: all` implied.
        if isinstance(data, dict) and data.get("schedule") is not None:
            window = data.get("window", "all")
            if window != "all":
                raise ValueError(
                    f"window {_shown(window)} does not go with a schedule: a job with a"
                    " schedule is a whole-snapshot job (window: all, or leave window out)"
                )
            return {**data, "window": "all"}
        return data

    @field_validator("schema_")
    @classmethod
    def _types(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None:
            try:
                parse_schema(value)
            except SchemaError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _refresh(self) -> JobSpec:
        if self.min_interval_seconds is not None and (
            self.window != "all" or self.schedule is not None
        ):
            raise ValueError(
                "min_interval_seconds is for whole-snapshot jobs refreshed on change"
                " (window: all without a schedule)"
            )
        return self

    def refresh_interval(self) -> float:
        """Seconds between two runs on upstream change, at least."""
        if self.min_interval_seconds is None:
            return DEFAULT_MIN_INTERVAL_SECONDS
        return self.min_interval_seconds

    @model_validator(mode="after")
    def _one_body(self) -> JobSpec:
        if (self.sql is None) == (self.udf is None):
            raise ValueError("give exactly one of sql or udf")
        if self.udf is not None and self.schema_ is None:
            raise ValueError("a udf job needs a schema: {column: DuckDB type [NOT NULL]}")
        if self.sql is not None and self.schema_ is not None:
            raise ValueError("schema is for udf jobs (a SQL job's result has its own types)")
        if self.schema_ is not None and self.unique_key:
            missing = [c for c in self.unique_key if c not in self.schema_]
            if missing:
                raise ValueError(f"unique_key column(s) {missing} are not in the schema")
        return self

    def job_inputs(self) -> list[str]:
        return [i.job for i in self.inputs if isinstance(i, JobInput)]


class DagSpec(_Strict):
    kind: Literal["dag"]
    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    defaults: Defaults = Defaults()
    jobs: dict[Annotated[str, Field(pattern=JOB_PATTERN)], JobSpec] = Field(
        min_length=1, max_length=MAX_JOBS
    )

    @model_validator(mode="after")
    def _acyclic(self) -> DagSpec:
        try:
            job_order({name: job.job_inputs() for name, job in self.jobs.items()})
        except GraphError as exc:
            raise ValueError(str(exc)) from None
        return self

    def order(self) -> list[str]:
        """The jobs, inputs first."""
        return job_order({name: job.job_inputs() for name, job in self.jobs.items()})

    def output_name(self, job: str) -> str:
        return f"{self.name}.{job}"


def dag_id_for(org_id: uuid.UUID, name: str) -> uuid.UUID:
    return uuid.uuid5(_DAG_NS, f"{org_id}:{name}")


def job_uuid_for(dag_id: uuid.UUID, job: str) -> uuid.UUID:
    return uuid.uuid5(_DAG_NS, f"{dag_id}:{job}")


def dag_range_task_id(
    job_uuid: uuid.UUID, generation: str, epoch: int, start: int, end: int
) -> uuid.UUID:
    """Deterministic: planning the same range of the same generation twice schedules one
    task. A replacement of its inputs bumps the job's epoch, so the recompute is a new task
    (a new partition); a new generation is new tasks throughout."""
    return uuid.uuid5(_DAG_RANGE_NS, f"{job_uuid}:{generation}:{epoch}:{start}:{end}")
