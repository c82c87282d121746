"""Apply's column check of a `kind: dag` spec (SPEC §19): before anything changes, each SQL
job's statement is bound against its inputs' columns, in job order, so a job sees its
upstream jobs' output columns (derived by binding their SQL; a UDF job's are its declared
`schema:`). A column the statement names that no input has — or a `where` column, or a
`unique_key` column the output lacks — is refused with the field path; it would only have
failed at run time, range after range.

Where an input's columns are known at apply: a decoded table's from its event ABI; a chain
stream's from the Parquet footer of its newest committed file; a registered dataset's from
the footers of its newest version's files (the version apply pins). A stream with nothing
committed yet, or a dataset with no version (or more than MAX_FOOTERS files), has no known
columns: a job reading it (and every job downstream of that one) is not checked here and
fails at run time instead, naming the column. Only a missing name is refused: a binding that
fails for another reason (a type, an aggregate) is left to the run, whose types may differ
slightly from these (a HUGEINT sum is written as DECIMAL(38, 0)).

Binding is safe by construction: trusted code, one in-memory DuckDB per apply with external
access disabled and its configuration locked, holding only empty tables of the inputs'
typed columns (no row of data), and the statement already through the gate; it is bound
(`DESCRIBE`, a view over it), never executed. A refusal names the column only, never the
SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from trace_platform.config import Settings
from trace_platform.db.sql import q
from trace_platform.domain.errors import ValidationError
from trace_platform.domain.sql_gate import shown

if TYPE_CHECKING:
    import pyarrow as pa

    from trace_platform.dag.spec import DagSpec

# Binder messages that say a name is missing (DuckDB 1.x-2.x); anything else is not refused.
_MISSING = (
    (re.compile(r'Referenced column "(?P<name>[^"]{1,200})" not found'), 'column "{}"'),
    (
        re.compile(r'"(?P<rel>[^"]{1,200})" does not have a column named "(?P<name>[^"]{1,200})"'),
        'column "{}"',
    ),
    (
        re.compile(r'Column "(?P<name>[^"]{1,200})" does not exist on (left|right) side of join'),
        'column "{}"',
    ),
    (re.compile(r'Could not find key "(?P<name>[^"]{1,200})" in struct'), 'struct field "{}"'),
    (re.compile(r'Referenced table "(?P<name>[^"]{1,200})" not found'), 'table or alias "{}"'),
)
_FOOTERS: dict[str, pa.Schema] = {}  # file uri -> its Parquet schema (files are immutable)
MAX_FOOTERS = 64  # a dataset version of more files is not checked at apply


class MissingName(Exception):
    """A name the statement uses that none of its inputs has (as a refusal shows it)."""


def missing_name(message: str) -> str | None:
    """What a DuckDB binder error says is missing (`column "x"`), or None for any other
    error. Only the name is taken from the message, never the SQL it may quote."""
    for pattern, shape in _MISSING:
        found = pattern.search(message)
        if found:
            return shape.format(shown(found.group("name")))
    return None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class ColumnBinder:
    """One in-memory DuckDB holding empty typed relations, named as a job's SQL (qualified
    at apply) reads them: `"chain.stream"`, `"dag.job"`, a dataset's name."""

    def __init__(self) -> None:
        import duckdb

        self._duckdb = duckdb
        self.con = duckdb.connect(
            ":memory:",
            config={
                "enable_external_access": False,
                "autoinstall_known_extensions": False,
                "autoload_known_extensions": False,
                "allow_community_extensions": False,
                "allow_persistent_secrets": False,
                "temp_directory": "",
                "threads": 1,
                "memory_limit": "64MB",
                "lock_configuration": True,
            },
        )

    def close(self) -> None:
        self.con.close()

    def add_empty(self, relation: str, schema: pa.Schema) -> list[str]:
        """An empty table of `schema`'s columns and types; its column names."""
        self.con.register("__schema", schema.empty_table())
        try:
            self.con.execute(f"CREATE TABLE {_quote(relation.lower())} AS SELECT * FROM __schema")
        finally:
            self.con.unregister("__schema")
        return list(schema.names)

    def bind(self, relation: str, sql: str) -> list[str] | None:
        """The output columns of `sql` (bound, not run), kept as the view `relation` for the
        jobs downstream; MissingName when it names something no input has; None when it does
        not bind for another reason, or its output repeats a name (its readers go unchecked)."""
        try:
            described = self.con.execute(f"DESCRIBE {sql}").fetchall()
        except self._duckdb.Error as exc:
            missing = missing_name(str(exc))
            if missing is not None:
                raise MissingName(missing) from None
            return None
        columns = [str(row[0]) for row in described]
        if len({c.lower() for c in columns}) != len(columns):
            return None
        self.con.execute(f"CREATE VIEW {_quote(relation.lower())} AS {sql}")
        return columns


def _footer(uri: str, s3: dict[str, str] | None) -> pa.Schema:
    import pyarrow.parquet as pq

    if uri.startswith("s3://"):
        from pyarrow import fs

        return pq.read_schema(uri[len("s3://") :], filesystem=fs.S3FileSystem(**(s3 or {})))
    return pq.read_schema(uri.removeprefix("file://"))


async def _footer_schema(uri: str, settings: Settings) -> pa.Schema | None:
    if uri not in _FOOTERS:
        s3 = None
        if uri.startswith("s3://"):
            from trace_platform.query.app import s3_options

            s3 = s3_options(settings)
        try:
            _FOOTERS[uri] = await asyncio.to_thread(_footer, uri, s3)
        except (OSError, ValueError):
            return None  # gone (compacted away) or unreadable: not known here
        while len(_FOOTERS) > 4096:
            _FOOTERS.pop(next(iter(_FOOTERS)))
    return _FOOTERS[uri]


async def input_schemas(
    conn: Any, settings: Settings, datasets: Sequence[uuid.UUID]
) -> dict[uuid.UUID, pa.Schema]:
    """The columns of each dataset that are known at apply (see the module docstring);
    a dataset whose columns are not known is absent."""
    from trace_platform.chain.abi import AbiError, event_of_abi

    out: dict[uuid.UUID, pa.Schema] = {}
    for row in await conn.fetch(q("dag_columns", "relation_schema_sources"), list(datasets)):
        decode = row["decode"]
        if isinstance(decode, dict) and isinstance(decode.get("event"), dict):
            # Checked when its chain spec was applied; should it not parse: not known here.
            with contextlib.suppress(AbiError):
                out[row["dataset_uuid"]] = event_of_abi(decode["event"]).schema()
            continue
        manifest = row["manifest"]
        if manifest is not None:
            # A version's files are read as one relation by column name: each file counts.
            files = manifest.get("files") if isinstance(manifest, dict) else None
        else:
            files = (row["files"] or [])[:1]  # a partition's files are one extraction's
        schema = await _files_schema(files, settings)
        if schema is not None:
            out[row["dataset_uuid"]] = schema
    return out


async def _files_schema(files: Any, settings: Settings) -> pa.Schema | None:
    """The columns of files read together (by name), or None: not known here (no file, too
    many to read at apply, one unreadable, or two giving a column different types)."""
    import pyarrow as pa

    uris = [f.get("uri") for f in files] if isinstance(files, list) else []
    if not uris or len(uris) > MAX_FOOTERS or not all(isinstance(u, str) for u in uris):
        return None
    schemas = [await _footer_schema(uri, settings) for uri in uris]
    if any(schema is None for schema in schemas):
        return None
    try:
        return pa.unify_schemas([s for s in schemas if s is not None])
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return None


@dataclass(frozen=True)
class JobColumns:
    """What the check needs of one planned job: the SQL that runs (relations written by
    their full names) and the dataset of each relation it reads; a UDF job's declared
    schema instead; each input's `where` with the relation it filters."""

    run_sql: str | None
    relations: Mapping[str, uuid.UUID]  # full name -> dataset
    declared: Mapping[str, str] | None = None  # a UDF job's schema (column -> type)
    wheres: Sequence[tuple[int, str, uuid.UUID | None, Sequence[str]]] = ()
    unique_key: Sequence[str] = ()


def _declared_schema(declared: Mapping[str, str]) -> pa.Schema:
    import pyarrow as pa

    from trace_platform.domain.udf_schema import arrow_type, parse_schema

    return pa.schema([(c, arrow_type(t)) for c, t in parse_schema(declared).items()])


async def check_columns(
    conn: Any, settings: Settings, spec: DagSpec, jobs: Mapping[str, JobColumns]
) -> None:
    """Refuse (ValidationError with the field path) a job whose SQL, `where` or `unique_key`
    names a column its inputs (or its output) do not have, where those columns are known.
    `jobs`: the jobs of the spec to check (by name), checked in the spec's job order."""
    if not any(j.run_sql is not None or j.wheres for j in jobs.values()):
        return
    outputs = {spec.output_name(name) for name in spec.jobs}
    wanted = {ds for j in jobs.values() for full, ds in j.relations.items() if full not in outputs}
    wanted |= {ds for j in jobs.values() for _, _, ds, _ in j.wheres if ds is not None}
    schemas = await input_schemas(conn, settings, sorted(wanted))
    # DuckDB's binding is CPU work: off the event loop (the API serves others meanwhile).
    await asyncio.to_thread(_check, spec, jobs, schemas)


def _check(
    spec: DagSpec, jobs: Mapping[str, JobColumns], schemas: Mapping[uuid.UUID, pa.Schema]
) -> None:
    outputs = {spec.output_name(name) for name in spec.jobs}
    binder = ColumnBinder()
    try:
        known: dict[str, list[str] | None] = {}  # relation (full name) -> columns; None: unknown
        for each in jobs.values():
            for full, ds in each.relations.items():
                if full not in outputs and full not in known:
                    schema = schemas.get(ds)
                    known[full] = None if schema is None else binder.add_empty(full, schema)
        for name in spec.order():
            plan = jobs.get(name)
            out = spec.output_name(name)
            known[out] = (
                None
                if plan is None
                else _check_job(binder, f"jobs.{name}", out, plan, known, schemas)
            )
    finally:
        binder.close()


def _check_job(
    binder: ColumnBinder,
    at: str,
    out: str,
    plan: JobColumns,
    known: Mapping[str, list[str] | None],
    schemas: Mapping[uuid.UUID, pa.Schema],
) -> list[str] | None:
    """One job's output columns (None: not known here), or ValidationError at `at`."""
    for index, relation, ds, columns in plan.wheres:
        have = known.get(relation) if ds is None else _names(schemas.get(ds))
        lacking = [c for c in columns if have is not None and c not in have]
        if lacking:
            raise ValidationError(
                f"{at}.inputs.{index}.where.{lacking[0]}: column not in {relation}"
            )
    if plan.declared is not None:
        return binder.add_empty(out, _declared_schema(plan.declared))
    if plan.run_sql is None or any(known.get(r) is None for r in plan.relations):
        return None  # an input's columns are not known here: the run reports what it lacks
    try:
        output = binder.bind(out, plan.run_sql)
    except MissingName as exc:
        raise ValidationError(f"{at}.sql: {exc} not found in any input") from None
    lacking = [c for c in plan.unique_key if output is not None and c not in output]
    if lacking:
        raise ValidationError(
            f"{at}.unique_key: column {shown(lacking[0])!r} is not in the job's output"
        )
    return output


def _names(schema: pa.Schema | None) -> list[str] | None:
    return None if schema is None else list(schema.names)
