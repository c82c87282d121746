"""A UDF job's schema and the trusted check of its rows (domain.udf_schema): declared types,
NOT NULL, unique_key; the first violation names the row and the column."""

from __future__ import annotations

import io
from datetime import UTC, date, datetime
from decimal import Decimal

import pyarrow.parquet as pq
import pytest

from trace_platform.domain.udf_schema import (
    RowViolation,
    SchemaError,
    parse_schema,
    parse_type,
    rows_to_parquet,
)

SCHEMA = {
    "block_number": "UBIGINT NOT NULL",
    "pool": "varchar not null",
    "amount": "DECIMAL(38, 0)",
    "price": "decimal(10,2)",
    "ratio": "DOUBLE",
    "live": "BOOLEAN",
    "at": "TIMESTAMPTZ",
    "day": "DATE",
    "raw": "BLOB",
}


def test_rows_become_parquet_of_exactly_the_declared_types_in_declared_order() -> None:
    rows = [
        {
            "block_number": 7,
            "pool": "0xab",
            "amount": "123456789012345678901234567890123456",
            "price": 1.5,
            "ratio": 2,
            "live": True,
            "at": "2024-01-01T02:00:00+02:00",
            "day": "2024-01-02",
            "raw": "0x00ff",
        },
        {"block_number": 9, "pool": "0xcd"},  # missing columns are NULL
    ]
    data, facts = rows_to_parquet(rows, SCHEMA, ["block_number", "pool"])
    assert facts == {"rows": 2, "min_block": 7, "max_block": 9}
    table = pq.read_table(io.BytesIO(data))
    assert table.column_names == list(SCHEMA)
    assert [str(t) for t in table.schema.types] == [
        "uint64",
        "string",
        "decimal128(38, 0)",
        "decimal128(10, 2)",
        "double",
        "bool",
        "timestamp[us, tz=UTC]",
        "date32[day]",
        "binary",
    ]
    first, second = table.to_pylist()
    assert first["amount"] == Decimal("123456789012345678901234567890123456")
    assert first["price"] == Decimal("1.50")
    assert first["at"] == datetime(2024, 1, 1, 0, 0, tzinfo=UTC)
    assert first["day"] == date(2024, 1, 2) and first["raw"] == b"\x00\xff"
    assert second["amount"] is None and second["live"] is None
    empty, facts = rows_to_parquet([], SCHEMA)
    assert facts == {"rows": 0} and pq.read_table(io.BytesIO(empty)).column_names == list(SCHEMA)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([{"block_number": "7", "pool": "a"}], "row 0, column 'block_number': expected UBIGINT"),
        ([{"block_number": 7.0, "pool": "a"}], "got a number"),
        ([{"block_number": -1, "pool": "a"}], "-1 is out of range for UBIGINT"),
        ([{"block_number": True, "pool": "a"}], "got a boolean"),
        ([{"block_number": 1}], "row 0, column 'pool': NULL in a NOT NULL column"),
        ([{"block_number": 1, "pool": None}], "NULL in a NOT NULL column (VARCHAR NOT NULL)"),
        ([{"block_number": 1, "pool": "a", "price": "1.234"}], "more than 2 decimal places"),
        ([{"block_number": 1, "pool": "a", "price": "123456789.5"}], "does not fit DECIMAL(10,2)"),
        (
            [{"block_number": 1, "pool": "a", "at": "yesterday"}],
            "column 'at': expected TIMESTAMPTZ",
        ),
        ([{"block_number": 1, "pool": "a", "raw": "00ff"}], "expected BLOB (a 0x hex string)"),
        ([{"block_number": 1, "pool": "a", "extra": 1}], "column 'extra': the column is not in"),
        ([{"block_number": 1, "pool": "a"}, [1, "a"]], "row 1: a row must be an object"),
        (
            [
                {"block_number": 1, "pool": "a"},
                {"block_number": 2, "pool": "a"},
                {"block_number": 1, "pool": "a"},
            ],
            "row 2, column 'block_number, pool': unique_key ['block_number', 'pool'] repeats row 0",
        ),
    ],
)
def test_a_row_breaking_the_schema_is_named_by_row_and_column(rows: list, message: str) -> None:
    with pytest.raises(RowViolation) as err:
        rows_to_parquet(rows, SCHEMA, ["block_number", "pool"])
    assert message in str(err.value)


def test_types_and_not_null_are_parsed_and_bad_ones_refused() -> None:
    assert parse_type("timestamp with time zone not null").sql() == "TIMESTAMPTZ NOT NULL"
    assert parse_type("INT").sql() == "INTEGER" and parse_type("numeric(20,4)").sql() == (
        "DECIMAL(20,4)"
    )
    for bad, why in [
        ("HUGEINT", "use DECIMAL(38,0)"),
        ("BIGINT NOT NUL", "is not a type"),
        ("LIST", "is not supported in a UDF schema"),
        ("DECIMAL(40,2)", "1 <= p <= 38"),
        ("BIGINT(3)", "only DECIMAL"),
    ]:
        with pytest.raises(SchemaError) as err:
            parse_type(bad)
        assert why in str(err.value)
    with pytest.raises(SchemaError, match="differ only in case"):
        parse_schema({"a": "BIGINT", "A": "BIGINT"})
