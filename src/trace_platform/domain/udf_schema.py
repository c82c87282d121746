"""A UDF job's declared schema (SPEC §19) and the check of the rows its handler returns.

`schema:` maps each output column to a DuckDB type, optionally followed by `NOT NULL`
(`{pool: VARCHAR NOT NULL, swaps: BIGINT}`). The handler's rows arrive as JSON objects; trusted
code (the runner, never the bundle) checks every row — an object, no column outside the
schema, each value of its column's type, no NULL (or missing value) in a NOT NULL column, no
two rows sharing the job's `unique_key` — and only then builds the Arrow table written as the
partition's Parquet file. The first violation raises `RowViolation` naming the row index (0
based, in the order the handler returned them) and the column.

Values as JSON carries them: integers as JSON integers (range-checked per type); FLOAT/DOUBLE
as numbers; DECIMAL(p,s) as a number or a decimal string (exact); VARCHAR as a string; BLOB as
a `0x` hex string; DATE as `YYYY-MM-DD`; TIMESTAMP/TIMESTAMPTZ as ISO 8601 strings (an offset
is converted to UTC; TIMESTAMPTZ without one is UTC). HUGEINT/UHUGEINT are refused (JSON
numbers cannot carry them exactly): use DECIMAL(38,0) given as a string.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Context, Decimal
from typing import Any

MAX_COLUMNS = 256

_INT_RANGES = {
    "TINYINT": (-(2**7), 2**7 - 1),
    "SMALLINT": (-(2**15), 2**15 - 1),
    "INTEGER": (-(2**31), 2**31 - 1),
    "BIGINT": (-(2**63), 2**63 - 1),
    "UTINYINT": (0, 2**8 - 1),
    "USMALLINT": (0, 2**16 - 1),
    "UINTEGER": (0, 2**32 - 1),
    "UBIGINT": (0, 2**64 - 1),
}
_ALIASES = {
    "BOOL": "BOOLEAN",
    "LOGICAL": "BOOLEAN",
    "INT1": "TINYINT",
    "INT2": "SMALLINT",
    "SHORT": "SMALLINT",
    "INT": "INTEGER",
    "INT4": "INTEGER",
    "SIGNED": "INTEGER",
    "INT8": "BIGINT",
    "LONG": "BIGINT",
    "FLOAT4": "FLOAT",
    "REAL": "FLOAT",
    "FLOAT8": "DOUBLE",
    "NUMERIC": "DECIMAL",
    "TEXT": "VARCHAR",
    "STRING": "VARCHAR",
    "CHAR": "VARCHAR",
    "BPCHAR": "VARCHAR",
    "BYTEA": "BLOB",
    "BINARY": "BLOB",
    "VARBINARY": "BLOB",
    "DATETIME": "TIMESTAMP",
    "TIMESTAMP WITH TIME ZONE": "TIMESTAMPTZ",
}
_SIMPLE = {
    "BOOLEAN",
    "FLOAT",
    "DOUBLE",
    "VARCHAR",
    "BLOB",
    "DATE",
    "TIMESTAMP",
    "TIMESTAMPTZ",
    *_INT_RANGES,
}
_DECL = re.compile(
    r"^(?P<type>[A-Z][A-Z0-9]*(?: WITH TIME ZONE)?)"
    r"\s*(?:\(\s*(?P<p>\d{1,2})\s*(?:,\s*(?P<s>\d{1,2})\s*)?\))?"
    r"(?P<nn>\s+NOT\s+NULL)?$"
)
_DECIMAL_TEXT = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
_HEX = re.compile(r"^0x([0-9a-fA-F]{2})*$")
_DECIMAL_CTX = Context(prec=100)


class SchemaError(ValueError):
    """A declared type the platform cannot hold; the message says why."""


class RowViolation(ValueError):
    """A returned row breaks the declared schema: which row, which column, why."""

    def __init__(self, row: int, column: str | None, reason: str) -> None:
        where = f"row {row}" + (f", column {column!r}" if column is not None else "")
        super().__init__(f"{where}: {reason}")
        self.row, self.column, self.reason = row, column, reason


@dataclass(frozen=True)
class ColumnType:
    """One declared column: its canonical DuckDB type, DECIMAL's precision and scale, and
    whether NULL is refused."""

    name: str  # BIGINT, DECIMAL, ...
    not_null: bool = False
    precision: int = 18
    scale: int = 3

    def sql(self) -> str:
        base = f"DECIMAL({self.precision},{self.scale})" if self.name == "DECIMAL" else self.name
        return base + (" NOT NULL" if self.not_null else "")


def parse_type(text: str) -> ColumnType:
    """`BIGINT`, `varchar not null`, `DECIMAL(38, 0)` → ColumnType; SchemaError naming why."""
    norm = " ".join(text.strip().upper().split())
    m = _DECL.match(norm)
    if m is None:
        raise SchemaError(f"{text!r} is not a type (e.g. BIGINT, VARCHAR NOT NULL, DECIMAL(38,0))")
    name = _ALIASES.get(m["type"], m["type"])
    if name in ("HUGEINT", "UHUGEINT", "INT128", "UINT128"):
        raise SchemaError(
            f"{name} cannot be carried exactly by JSON rows; use DECIMAL(38,0) (values as strings)"
        )
    not_null = m["nn"] is not None
    if name == "DECIMAL":
        p = int(m["p"]) if m["p"] is not None else 18
        s = int(m["s"]) if m["s"] is not None else (0 if m["p"] is not None else 3)
        if not 1 <= p <= 38 or s > p:
            raise SchemaError(f"{text!r}: DECIMAL(p,s) needs 1 <= p <= 38 and s <= p")
        return ColumnType(name, not_null, p, s)
    if m["p"] is not None and name != "VARCHAR":
        raise SchemaError(f"{text!r}: only DECIMAL (and VARCHAR) take a size")
    if name not in _SIMPLE:
        supported = ", ".join(sorted(_SIMPLE | {"DECIMAL(p,s)"}))
        raise SchemaError(f"{text!r} is not supported in a UDF schema (one of {supported})")
    return ColumnType(name, not_null)


def parse_schema(schema: Mapping[str, str]) -> dict[str, ColumnType]:
    """Every column's type, or SchemaError naming the column."""
    if not schema:
        raise SchemaError("a schema needs at least one column")
    if len(schema) > MAX_COLUMNS:
        raise SchemaError(f"at most {MAX_COLUMNS} columns")
    out: dict[str, ColumnType] = {}
    seen: set[str] = set()
    for column, text in schema.items():
        if column.lower() in seen:
            raise SchemaError(f"{column}: two columns differ only in case")
        seen.add(column.lower())
        try:
            out[column] = parse_type(text)
        except SchemaError as exc:
            raise SchemaError(f"{column}: {exc}") from None
    return out


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(
        type(value), "a list" if isinstance(value, list) else "an object"
    )


def _integer(t: ColumnType) -> Callable[[Any], Any]:
    lo, hi = _INT_RANGES[t.name]

    def check(v: Any) -> int:
        if type(v) is not int:
            raise ValueError(f"expected {t.name} (a JSON integer), got {_kind(v)}")
        if not lo <= v <= hi:
            raise ValueError(f"{v} is out of range for {t.name}")
        return v

    return check


def _floating(t: ColumnType) -> Callable[[Any], Any]:
    def check(v: Any) -> float:
        if type(v) not in (int, float):
            raise ValueError(f"expected {t.name} (a number), got {_kind(v)}")
        return float(v)

    return check


def _decimal(t: ColumnType) -> Callable[[Any], Any]:
    step = Decimal(1).scaleb(-t.scale)

    def check(v: Any) -> Decimal:
        if type(v) is str and _DECIMAL_TEXT.match(v.strip()):
            d = Decimal(v.strip())
        elif type(v) is int:
            d = Decimal(v)
        elif type(v) is float:
            d = Decimal(repr(v))  # the shortest text of the number, as JSON carried it
        else:
            raise ValueError(f"expected {t.sql()} (a number or decimal string), got {_kind(v)}")
        if not d.is_finite():
            raise ValueError(f"expected {t.sql()}, got a non-finite number")
        fixed = d.quantize(step, context=_DECIMAL_CTX)
        if fixed != d:
            raise ValueError(f"has more than {t.scale} decimal places for {t.sql()}")
        if len(fixed.as_tuple().digits) > t.precision:
            raise ValueError(f"does not fit {t.sql()}")
        return fixed

    return check


def _text(t: ColumnType) -> Callable[[Any], Any]:
    def check(v: Any) -> str:
        if type(v) is not str:
            raise ValueError(f"expected VARCHAR (a string), got {_kind(v)}")
        return v

    return check


def _blob(_t: ColumnType) -> Callable[[Any], Any]:
    def check(v: Any) -> bytes:
        if type(v) is not str or not _HEX.match(v):
            raise ValueError(f"expected BLOB (a 0x hex string), got {_kind(v)}")
        return bytes.fromhex(v[2:])

    return check


def _boolean(_t: ColumnType) -> Callable[[Any], Any]:
    def check(v: Any) -> bool:
        if type(v) is not bool:
            raise ValueError(f"expected BOOLEAN (true or false), got {_kind(v)}")
        return v

    return check


def _date(_t: ColumnType) -> Callable[[Any], Any]:
    def check(v: Any) -> date:
        if type(v) is not str:
            raise ValueError(f"expected DATE (a YYYY-MM-DD string), got {_kind(v)}")
        try:
            return date.fromisoformat(v)
        except ValueError:
            raise ValueError("expected DATE (a YYYY-MM-DD string), got another string") from None

    return check


def _timestamp(t: ColumnType) -> Callable[[Any], Any]:
    zoned = t.name == "TIMESTAMPTZ"

    def check(v: Any) -> datetime:
        if type(v) is not str:
            raise ValueError(f"expected {t.name} (an ISO 8601 string), got {_kind(v)}")
        try:
            at = datetime.fromisoformat(v)
        except ValueError:
            raise ValueError(
                f"expected {t.name} (an ISO 8601 string), got another string"
            ) from None
        if at.tzinfo is not None:
            at = at.astimezone(UTC)
            return at if zoned else at.replace(tzinfo=None)
        return at.replace(tzinfo=UTC) if zoned else at

    return check


def _checker(t: ColumnType) -> Callable[[Any], Any]:
    if t.name in _INT_RANGES:
        return _integer(t)
    make = {
        "BOOLEAN": _boolean,
        "FLOAT": _floating,
        "DOUBLE": _floating,
        "DECIMAL": _decimal,
        "VARCHAR": _text,
        "BLOB": _blob,
        "DATE": _date,
        "TIMESTAMP": _timestamp,
        "TIMESTAMPTZ": _timestamp,
    }[t.name]
    return make(t)


def check_rows(
    rows: Sequence[Any], schema: Mapping[str, ColumnType], unique_key: Sequence[str] = ()
) -> dict[str, list[Any]]:
    """The rows as columns of checked values (in schema order), or RowViolation at the first
    row that breaks the schema or repeats the unique key."""
    columns: dict[str, list[Any]] = {name: [] for name in schema}
    checkers = {name: _checker(t) for name, t in schema.items()}
    keys: dict[tuple[Any, ...], int] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RowViolation(
                i, None, f"a row must be an object of column values, got {_kind(row)}"
            )
        for column in row:
            if column not in schema:
                raise RowViolation(i, str(column)[:64], "the column is not in the job's schema")
        for name, t in schema.items():
            value = row.get(name)
            if value is None:
                if t.not_null:
                    raise RowViolation(i, name, f"NULL in a NOT NULL column ({t.sql()})")
                columns[name].append(None)
                continue
            try:
                columns[name].append(checkers[name](value))
            except ValueError as exc:
                raise RowViolation(i, name, str(exc)) from None
        if unique_key:
            key = tuple(columns[k][-1] for k in unique_key)
            first = keys.setdefault(key, i)
            if first != i:
                raise RowViolation(
                    i,
                    unique_key[0] if len(unique_key) == 1 else ", ".join(unique_key),
                    f"unique_key {list(unique_key)} repeats row {first}'s value",
                )
    return columns


def arrow_type(t: ColumnType) -> Any:
    import pyarrow as pa

    simple = {
        "BOOLEAN": pa.bool_(),
        "TINYINT": pa.int8(),
        "SMALLINT": pa.int16(),
        "INTEGER": pa.int32(),
        "BIGINT": pa.int64(),
        "UTINYINT": pa.uint8(),
        "USMALLINT": pa.uint16(),
        "UINTEGER": pa.uint32(),
        "UBIGINT": pa.uint64(),
        "FLOAT": pa.float32(),
        "DOUBLE": pa.float64(),
        "VARCHAR": pa.string(),
        "BLOB": pa.binary(),
        "DATE": pa.date32(),
        "TIMESTAMP": pa.timestamp("us"),
        "TIMESTAMPTZ": pa.timestamp("us", tz="UTC"),
    }
    if t.name == "DECIMAL":
        return pa.decimal128(t.precision, t.scale)
    return simple[t.name]


def rows_to_parquet(
    rows: Sequence[Any], schema: Mapping[str, str], unique_key: Sequence[str] = ()
) -> tuple[bytes, dict[str, Any]]:
    """Check the rows (RowViolation) and write them as one Parquet file of exactly the
    declared types (no rows: an empty file of that schema); returns the bytes and the file's
    facts (`rows`, and `min_block`/`max_block` when a `block_number` column holds values)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    types = parse_schema(schema)
    columns = check_rows(rows, types, unique_key)
    fields = [pa.field(n, arrow_type(t), nullable=not t.not_null) for n, t in types.items()]
    table = pa.Table.from_arrays(
        [pa.array(columns[f.name], type=f.type) for f in fields], schema=pa.schema(fields)
    )
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    facts: dict[str, Any] = {"rows": table.num_rows}
    blocks = [b for b in columns.get("block_number", []) if type(b) is int]
    if blocks and types["block_number"].name in _INT_RANGES:
        facts["min_block"], facts["max_block"] = min(blocks), max(blocks)
    return sink.getvalue(), facts
