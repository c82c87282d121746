"""What a query's error may say (SPEC §4, §9): the engine's message — the column, its
candidates, the position — and never the SQL: no quoted excerpt, no literal of the query,
whatever quotes a literal smuggles in. Real DuckDB messages, through the real gate; and the
catalog's refusal of a short name several chain jobs hold."""

from __future__ import annotations

import re

import duckdb
import pytest

from tests.helpers import echoed_sql
from trace_platform.domain.catalog import unresolved_reason
from trace_platform.domain.query_errors import public_reason
from trace_platform.domain.sql_gate import SqlRejected, check_relations, check_sql

RELATION = "local-anvil.erc20_transfers"
COLUMNS = ("block_number", "from_address", "value_f64")
NAMES = ("dataset", RELATION, *COLUMNS)


def engine() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(
        f'CREATE TABLE "{RELATION}" AS SELECT 1::BIGINT AS block_number,'
        " 'abc' AS from_address, 2.0 AS value_f64"
    )
    con.execute(f'CREATE VIEW dataset AS SELECT * FROM "{RELATION}"')
    return con


def reason_of(sql: str) -> tuple[str, str]:
    """(DuckDB's raw message, what the caller may read) for a query the gate passes."""
    gated = check_sql(sql, None)
    with pytest.raises(duckdb.Error) as failed:
        engine().execute(gated.sql).fetchall()
    raw = str(failed.value)
    return raw, public_reason(raw, sql, gated.sql, NAMES, "query failed")


def test_a_bad_column_is_named_with_its_candidates_and_position_but_not_the_sql() -> None:
    sql = "SELECT from_address,\n  block_numbr\nFROM dataset WHERE from_address = 'k9q-secret'"
    raw, shown = reason_of(sql)
    assert "LINE 1:" in raw and "k9q" in raw  # DuckDB did quote the query (as it ran it)
    assert '"block_numbr" not found' in shown and 'Candidate bindings: "block_number"' in shown
    assert shown.endswith("(line 2, column 3)")
    assert "LINE" not in shown and "^" not in shown and "k9q" not in shown
    assert echoed_sql(sql, shown, ("block_numbr", "block_number", "from_address")) == []


@pytest.mark.parametrize(
    ("sql", "secret"),
    [
        ("SELECT CAST('hunter2-k9q' AS INTEGER) FROM dataset", "hunter2-k9q"),
        ("SELECT * FROM dataset WHERE block_number = 'xyzzy-77q'", "xyzzy-77q"),
        ("SELECT CAST('2020-13-45 wq-secret' AS TIMESTAMP) FROM dataset", "wq-secret"),
        ("SELECT 987654321987654321987::INTEGER FROM dataset", "987654321987654321987"),
        # a literal bringing its own quotes (or posing as DuckDB's list of candidates)
        # cannot get a word out
        ("SELECT CAST('x'' leakyword ''' AS INTEGER) FROM dataset", "leakyword"),
        ("SELECT CAST('x\" leakyword \"' AS INTEGER) FROM dataset", "leakyword"),
        ("SELECT 'x\n\tCandidate functions:\n\tleakyword' + 1 FROM dataset", "leakyword"),
    ],
)
def test_a_literal_of_the_query_never_reaches_the_reason(sql: str, secret: str) -> None:
    raw, shown = reason_of(sql)
    assert secret in raw or secret.split("-")[-1] in raw  # DuckDB itself quotes it
    assert secret not in shown and secret.split("-")[-1] not in shown, shown
    assert "LINE" not in shown
    assert shown.startswith(("Conversion Error", "Binder Error"))
    # DuckDB's own words ("No function matches") may match a literal's: not an echo
    assert echoed_sql(sql, shown, ("Candidate functions",)) == []


def test_a_value_of_the_data_is_elided_but_the_column_named() -> None:
    _, shown = reason_of("SELECT CAST(from_address AS INTEGER) FROM dataset")
    assert "'abc'" not in shown and "from_address" in shown and "INT32" in shown


def test_a_function_signature_and_its_types_are_kept_its_candidate_list_dropped() -> None:
    raw, shown = reason_of("SELECT sum(from_address) FROM dataset")
    assert "Candidate functions" in raw
    assert "'sum(VARCHAR)'" in shown and "Candidate functions" not in shown
    assert "\n" not in shown and len(shown) < 300


def test_nothing_useful_left_gives_the_fallback() -> None:
    assert (
        public_reason("LINE 1: SELECT 'x'\n       ^", "SELECT 'x'", "SELECT 'x'", (), "fb") == "fb"
    )


def test_a_short_name_two_chain_jobs_hold_names_both_jobs() -> None:
    held = ["a.erc20_transfers", "b.erc20_transfers", "a.blocks", "b.blocks", "prices"]
    gated = check_sql("SELECT * FROM erc20_transfers t JOIN prices USING (x)", None)
    with pytest.raises(SqlRejected) as refused:
        check_relations(gated, {"prices", "a_erc20_transfers", "b_erc20_transfers"}, held)
    reason = refused.value.reason
    assert reason == (
        "relation 'erc20_transfers' is ambiguous: held by chain jobs 'a' and 'b';"
        ' write "a.erc20_transfers" (or name a default job)'
    )
    assert "JOIN" not in reason and "SELECT" not in reason


def test_other_unresolved_names_say_what_to_write_or_that_nothing_holds_them() -> None:
    held = ["a.erc20_transfers", "b.blocks", "x-y.logs", "x_y.logs"]
    assert unresolved_reason("erc20_transfers", held, "erc20_transfers") == (
        "relation 'erc20_transfers' is not granted by that name; write \"a.erc20_transfers\""
    )
    assert re.search(
        r"bare alias of 'x-y\.logs' and 'x_y\.logs'",
        unresolved_reason("x_y_logs", held, "x_y_logs"),
    )
    assert unresolved_reason("secrets", held, "secrets") == "relation 'secrets' is not granted"
