"""What a person may query (SPEC §15): every relation of the org with the names the catalog
gives it and its columns, read from the Parquet footer of one of its files (trusted code;
files are immutable, so a footer is read once)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from trace_platform.domain.catalog import (
    DATASET_ALIAS,
    RelationInfo,
    default_job,
    relation_aliases,
)
from trace_platform.domain.errors import TraceError
from trace_platform.query.binding import Binder, QueryCaller

# Arrow's names for the types DuckDB shows the same columns as.
_DUCKDB_TYPES = {
    "string": "VARCHAR",
    "large_string": "VARCHAR",
    "binary": "BLOB",
    "large_binary": "BLOB",
    "bool": "BOOLEAN",
    "int8": "TINYINT",
    "int16": "SMALLINT",
    "int32": "INTEGER",
    "int64": "BIGINT",
    "uint8": "UTINYINT",
    "uint16": "USMALLINT",
    "uint32": "UINTEGER",
    "uint64": "UBIGINT",
    "float": "FLOAT",
    "double": "DOUBLE",
}
_SCHEMAS: dict[str, list[dict[str, str]]] = {}


def duckdb_type(arrow_type: Any) -> str:
    """The type DuckDB shows for an Arrow type (LIST as T[], STRUCT(name T, ...))."""
    import pyarrow as pa

    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return duckdb_type(arrow_type.value_type) + "[]"
    if pa.types.is_struct(arrow_type):
        fields = ", ".join(
            f"{arrow_type.field(i).name} {duckdb_type(arrow_type.field(i).type)}"
            for i in range(arrow_type.num_fields)
        )
        return f"STRUCT({fields})"
    text = str(arrow_type)
    if text.startswith("decimal"):
        return text.replace("decimal128", "DECIMAL").replace("decimal256", "DECIMAL")
    return _DUCKDB_TYPES.get(text, text.upper())


def display_name(alias: str, full: str) -> str:
    """An alias as the catalog holds it (lower case) written with the relation's own case
    and quoted where SQL needs it: `pair_swap` of `j.pair_Swap` is `pair_Swap`, its full
    name `"j.pair_Swap"`."""
    shown = alias
    for candidate in (full, full.partition(".")[2], re.sub(r"[^A-Za-z0-9_]", "_", full)):
        if candidate and candidate.lower() == alias:
            shown = candidate
            break
    # As SQL needs it written: a name that is not a plain word is quoted.
    return shown if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", shown) else f'"{shown}"'


def _schema(uri: str, s3: dict[str, str] | None) -> list[dict[str, str]]:
    import pyarrow.parquet as pq

    if uri.startswith("s3://"):
        from pyarrow import fs

        schema = pq.read_schema(uri[len("s3://") :], filesystem=fs.S3FileSystem(**(s3 or {})))
    else:
        schema = pq.read_schema(uri[len("file://") :])
    return [{"name": f.name, "type": duckdb_type(f.type)} for f in schema]


async def columns_of(binder: Binder, caller: QueryCaller, name: str, chain: bool) -> list[Any]:
    """The columns of NAME's newest version or snapshot ([] while it has no file)."""
    try:
        grant, _prefix = await binder.resolve(caller.org_id, name, None, chain=chain)
        row = await binder.version_row(grant)
    except TraceError:
        return []
    files = (row or {}).get("manifest", {}).get("files") or []
    if row is None or row["org_id"] != caller.org_id or not files:
        return []
    uri = str(files[0].get("uri", ""))
    if uri not in _SCHEMAS:
        try:
            _SCHEMAS[uri] = await asyncio.to_thread(_schema, uri, binder.s3_options)
        except OSError:
            return []
        while len(_SCHEMAS) > 4096:
            _SCHEMAS.pop(next(iter(_SCHEMAS)))
    return _SCHEMAS[uri]


async def describe(binder: Binder, caller: QueryCaller) -> list[RelationInfo]:
    """Every relation of the caller's org, by the names its queries may use."""
    rows = await binder.org_relations(caller.org_id, fresh=True)
    kinds = {r["name"]: r["kind"] == "partitions" for r in rows}
    derived = {r["name"] for r in rows if r["derived"]}
    chain = [n for n, is_chain in kinds.items() if is_chain and n not in derived]
    aliases = relation_aliases(kinds, caller.job or default_job(kinds, chain))
    names: dict[str, list[str]] = {}
    for alias, full in aliases.items():
        names.setdefault(full, []).append(display_name(alias, full))
    if caller.primary is not None and caller.primary in names:
        names[caller.primary].append(DATASET_ALIAS)
    out = []
    for name, is_chain in kinds.items():
        columns = await columns_of(binder, caller, name, is_chain)
        out.append(
            RelationInfo(
                name,
                "derived" if name in derived else "chain" if is_chain else "versions",
                tuple(sorted(names.get(name, []), key=lambda a: (len(a), a))),
                tuple(columns),
            )
        )
    return out
