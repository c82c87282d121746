import pytest

from trace_platform.db.migrate import load_migrations
from trace_platform.db.sql import parse_named_sql, queries


def test_parse_named_sql_splits_by_name() -> None:
    text = "-- header\n-- name: a\nSELECT 1;\n\n-- name: b_2\nSELECT 2\n"
    assert parse_named_sql(text) == {"a": "SELECT 1", "b_2": "SELECT 2"}


def test_duplicate_names_are_rejected() -> None:
    with pytest.raises(ValueError):
        parse_named_sql("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;")


@pytest.mark.parametrize("group", ["tasks", "outbox", "queue"])
def test_every_group_loads_and_statements_are_parameterised(group: str) -> None:
    stmts = queries(group)
    assert stmts
    for sql in stmts.values():
        assert "{" not in sql and "%s" not in sql  # no string formatting of values


def test_migrations_are_numbered_without_gaps() -> None:
    for component in ("state", "data"):
        versions = [m.version for m in load_migrations(component)]
        assert versions == list(range(1, len(versions) + 1))
