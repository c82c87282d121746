"""Saved queries' typed parameters (SPEC §21, invariant 24): a placeholder becomes a
prepared-statement parameter, a value is checked against its type and bound as a value, and
the statement the gate and DuckDB see is the same text whatever the values are."""

from __future__ import annotations

import duckdb
import pytest

from trace_platform.domain.saved_query import (
    Parameter,
    ParameterError,
    bind_values,
    coerce,
    parse_template,
)
from trace_platform.domain.sql_gate import SqlRejected, check_sql

SQL = (
    "SELECT n, label FROM t WHERE n >= {{ low: BIGINT }} AND label <> {{ skip: VARCHAR = 'x' }}"
    " AND n < {{ low }} + 100 -- {{ not_a_parameter }}\n ORDER BY n"
)
HOSTILE = [
    "1; DROP TABLE t",
    "' OR '1'='1",
    "x'); SELECT * FROM read_parquet('/etc/passwd'); --",
    "}} OR 1=1 {{",
    "/* */ UNION SELECT 1, 'a'",
    "$1",
    "\\'",
]


def run(sql: str, params: list[str]) -> list[tuple[object, ...]]:
    con = duckdb.connect()
    con.execute("CREATE TABLE t AS SELECT range AS n, 'row' || range AS label FROM range(10)")
    con.execute("CREATE TABLE secret AS SELECT 42 AS s")
    return con.execute(sql, params).fetchall()


def test_placeholders_become_typed_parameters_and_text_in_literals_and_comments_stays() -> None:
    template = parse_template(SQL)
    assert template.parameters == (
        Parameter("low", "BIGINT"),
        Parameter("skip", "VARCHAR", "x"),
    )
    assert "CAST($1 AS BIGINT)" in template.sql and "CAST($2 AS VARCHAR)" in template.sql
    assert template.sql.count("$1") == 2  # the second use of `low` is the same parameter
    assert "{{ not_a_parameter }}" in template.sql  # a comment is not code
    quoted = parse_template("SELECT '{{ a }}' AS s, \"{{ b }}\" FROM t")
    assert quoted.parameters == () and "'{{ a }}'" in quoted.sql


def test_the_statement_is_the_same_text_whatever_the_values() -> None:
    template = parse_template(SQL)
    gated = {check_sql(template.sql, None, 2).sha256 for _ in HOSTILE}
    assert len(gated) == 1
    assert run(template.sql, bind_values(template, {"low": 7})) == [
        (7, "row7"),
        (8, "row8"),
        (9, "row9"),
    ]


@pytest.mark.parametrize("value", HOSTILE)
def test_a_hostile_text_value_is_only_ever_a_value(value: str) -> None:
    template = parse_template("SELECT count(*) FROM t WHERE label = {{ label: VARCHAR }}")
    params = bind_values(template, {"label": value})
    assert params == [value]
    assert run(template.sql, params) == [(0,)]  # compared as text: matches no row


@pytest.mark.parametrize("value", [*HOSTILE, "1.5", "", "1e3", True, 1.0, None, [1], {"a": 1}])
def test_a_value_that_is_not_of_its_type_is_refused_naming_the_parameter(value: object) -> None:
    template = parse_template("SELECT * FROM t WHERE n >= {{ start_block: BIGINT }}")
    with pytest.raises(ParameterError) as caught:
        bind_values(template, {"start_block": value})
    assert "'start_block'" in caught.value.detail
    assert caught.value.status == 400
    if isinstance(value, str) and value:
        assert value not in caught.value.detail  # the value is never echoed


def test_missing_unknown_and_defaulted_parameters() -> None:
    template = parse_template("SELECT {{ a: INTEGER }} + {{ b: INTEGER = 2 }} AS s")
    assert run(template.sql, bind_values(template, {"a": "1"})) == [(3,)]
    assert run(template.sql, bind_values(template, {"a": 1, "b": -5})) == [(-4,)]
    with pytest.raises(ParameterError, match="'a' is missing"):
        bind_values(template, {})
    with pytest.raises(ParameterError, match="unknown parameter 'c'"):
        bind_values(template, {"a": 1, "c": 1})
    with pytest.raises(ParameterError, match="out of INTEGER's range"):
        bind_values(template, {"a": 2**31})


@pytest.mark.parametrize(
    ("kind", "given", "text"),
    [
        ("HUGEINT", str(10**30), str(10**30)),
        ("UBIGINT", 2**64 - 1, str(2**64 - 1)),
        ("DOUBLE", "2.5", "2.5"),
        ("BOOLEAN", "TRUE", "true"),
        ("DATE", "2024-02-29", "2024-02-29"),
        ("TIMESTAMP", "2024-01-02T03:04:05", "2024-01-02 03:04:05"),
        ("VARCHAR", "it's", "it's"),
    ],
)
def test_each_type_is_bound_exactly(kind: str, given: object, text: str) -> None:
    template = parse_template(f"SELECT CAST({{{{ v: {kind} }}}} AS VARCHAR) AS v")
    assert run(template.sql, bind_values(template, {"v": given})) == [(text,)]


@pytest.mark.parametrize(
    ("sql", "why"),
    [
        ("SELECT {{ a }}", "has no type"),
        ("SELECT {{ a: TEXTISH }}", "type must be one of"),
        ("SELECT {{ a: BIGINT }} + {{ a: INTEGER }}", "declared as BIGINT and as INTEGER"),
        ("SELECT {{ a: BIGINT", "not closed"),
        ("SELECT {{ 'x' }}", "placeholder is"),
        ("SELECT {{ a: BIGINT = nope }}", "'a' must be"),
        ("SELECT $1", "prepared-statement parameters"),
        ("SELECT ? AS q", "prepared-statement parameters"),
    ],
)
def test_a_malformed_template_is_refused_when_saved(sql: str, why: str) -> None:
    with pytest.raises(ParameterError, match=why):
        parse_template(sql)


def test_the_gate_accepts_bound_parameters_only_when_trusted_code_binds_them() -> None:
    sql = "SELECT * FROM t WHERE n >= CAST($1 AS BIGINT)"
    check_sql(sql, None, 1)
    for parameters, text in ((0, sql), (1, "SELECT $2"), (1, "SELECT ?"), (1, "SELECT $name")):
        with pytest.raises(SqlRejected):
            check_sql(text, None, parameters)


def test_coerce_never_returns_anything_but_canonical_text() -> None:
    assert coerce(Parameter("b", "BIGINT"), " 0042 ") == "42"
    assert coerce(Parameter("d", "DOUBLE"), 3) == "3.0"
    assert coerce(Parameter("t", "TIMESTAMP"), "2024-01-02T03:04:05") == "2024-01-02 03:04:05"
    with pytest.raises(ParameterError, match="no time zone"):
        coerce(Parameter("t", "TIMESTAMP"), "2024-01-02T03:04:05+01:00")
    with pytest.raises(ParameterError, match="NUL"):
        coerce(Parameter("s", "VARCHAR"), "a\x00b")
