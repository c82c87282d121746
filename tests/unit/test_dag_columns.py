"""Apply's column check (SPEC §19), without a database: a DAG's SQL bound in job order
against empty tables of its inputs' typed columns; a name no input has is refused with the
field path and the name only; an input whose columns are not known leaves its readers
unchecked; the binding database can read no file and its settings cannot be changed."""

from __future__ import annotations

import uuid
from typing import Any

import duckdb
import pyarrow as pa
import pytest
import yaml

from trace_platform.dag.spec import DagSpec
from trace_platform.domain.dag import qualify_relations
from trace_platform.domain.errors import ValidationError
from trace_platform.domain.sql_gate import check_sql
from trace_platform.ops.dag_columns import ColumnBinder, JobColumns, _check, missing_name
from trace_platform.specs import parse_spec

SWAP, BLOCKS = uuid.uuid4(), uuid.uuid4()
SCHEMAS = {
    SWAP: pa.schema(
        [("block_number", pa.uint32()), ("address", pa.string()), ("amount1In_raw", pa.string())]
    ),
    BLOCKS: pa.schema([("block_number", pa.uint32()), ("timestamp", pa.uint32())]),
}
LEVEL1 = (
    "SELECT s.block_number, s.address, b.timestamp AS block_time"
    " FROM pair_Swap s JOIN blocks b USING (block_number)"
)
LEVEL2 = "SELECT address AS pool, count(*) AS n FROM swaps GROUP BY 1"
LEVEL3 = "SELECT pool, sum(n) AS n FROM vol GROUP BY 1"


def spec() -> DagSpec:
    doc = {
        "kind": "dag",
        "name": "dex",
        "jobs": {
            "swaps": {"inputs": [{"chain": "pools"}], "sql": LEVEL1},
            "vol": {"inputs": [{"job": "swaps"}], "sql": LEVEL2},
            "top": {"inputs": [{"job": "vol"}], "sql": LEVEL3},
        },
    }
    parsed = parse_spec(doc)
    assert isinstance(parsed, DagSpec)
    return parsed


def run_sql(sql: str, names: dict[str, str]) -> str:
    gated = check_sql(sql, None)
    return qualify_relations(gated.sql, names, gated.ctes)


def jobs(
    level1: str = LEVEL1,
    level2: str = LEVEL2,
    level3: str = LEVEL3,
    wheres: Any = (),
    unique_key: Any = (),
) -> dict[str, JobColumns]:
    chain = {"pair_swap": "pools.pair_Swap", "blocks": "pools.blocks"}
    return {
        "swaps": JobColumns(
            run_sql(level1, chain),
            {"pools.pair_Swap": SWAP, "pools.blocks": BLOCKS},
            unique_key=unique_key,
        ),
        "vol": JobColumns(
            run_sql(level2, {"swaps": "dex.swaps"}), {"dex.swaps": uuid.uuid4()}, None, wheres
        ),
        "top": JobColumns(run_sql(level3, {"vol": "dex.vol"}), {"dex.vol": uuid.uuid4()}),
    }


def refused(**kw: Any) -> str:
    with pytest.raises(ValidationError) as err:
        _check(spec(), jobs(**kw), SCHEMAS)
    return err.value.detail


def test_a_dag_whose_columns_exist_binds_at_every_level() -> None:
    _check(spec(), jobs(), SCHEMAS)


def test_a_column_no_input_has_is_refused_with_the_path_and_the_name_only() -> None:
    assert refused(level1="SELECT s.amount_usd FROM pair_Swap s") == (
        'jobs.swaps.sql: column "amount_usd" not found in any input'
    )
    assert refused(level1="SELECT gas_used FROM blocks WHERE block_number > 7") == (
        'jobs.swaps.sql: column "gas_used" not found in any input'
    )
    detail = refused(level1="SELECT 1 AS one FROM pair_Swap s JOIN blocks b USING (log_index)")
    assert detail == 'jobs.swaps.sql: column "log_index" not found in any input'


def test_a_downstream_job_sees_only_the_columns_its_upstream_produces() -> None:
    # amount1In_raw is in pair_Swap, but level 1 does not select it.
    assert refused(level2="SELECT max(amount1In_raw) AS m FROM swaps") == (
        'jobs.vol.sql: column "amount1In_raw" not found in any input'
    )
    assert refused(level3="SELECT pool, block_time FROM vol") == (
        'jobs.top.sql: column "block_time" not found in any input'
    )


def test_a_where_or_unique_key_column_the_relation_lacks_is_refused() -> None:
    assert refused(wheres=[(0, "dex.swaps", None, ["foo"])]) == (
        "jobs.vol.inputs.0.where.foo: column not in dex.swaps"
    )
    _check(spec(), jobs(wheres=[(0, "dex.swaps", None, ["address"])]), SCHEMAS)
    assert refused(unique_key=["log_index"]) == (
        "jobs.swaps.unique_key: column 'log_index' is not in the job's output"
    )


def test_an_input_whose_columns_are_not_known_leaves_its_readers_unchecked() -> None:
    unknown = {SWAP: SCHEMAS[SWAP]}  # blocks: nothing committed yet
    _check(spec(), jobs(level2="SELECT nope FROM swaps"), unknown)


def test_other_binding_errors_are_left_to_the_run() -> None:
    # A type error is the run's to report (its types may differ slightly from these).
    _check(spec(), jobs(level2="SELECT sum(address) AS s FROM swaps"), SCHEMAS)


def test_a_refusal_never_echoes_the_sql() -> None:
    detail = refused(level1="SELECT s.nope FROM pair_Swap s WHERE s.address = 'top-secret'")
    assert "top-secret" not in detail and "SELECT" not in detail
    assert missing_name('Binder Error: Referenced column "x" not found!\nLINE 1: SELECT x') == (
        'column "x"'
    )
    assert missing_name("Binder Error: No function matches 'sum(VARCHAR)'") is None


def test_the_binding_database_reads_no_file_and_stays_locked(tmp_path: Any) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a\n1\n")
    binder = ColumnBinder()
    try:
        with pytest.raises(duckdb.Error):
            binder.con.execute(f"SELECT * FROM read_csv('{path}')")
        with pytest.raises(duckdb.Error):
            binder.con.execute("SET enable_external_access = true")
    finally:
        binder.close()


def test_a_scheduled_job_with_another_window_names_the_value() -> None:
    text = (
        "kind: dag\nname: x\njobs:\n  a: {inputs: [{chain: c}], sql: SELECT 1 FROM blocks,"
        ' window: weekly, schedule: "*/5 * * * *"}\n'
    )
    with pytest.raises(ValidationError) as err:
        parse_spec(yaml.safe_load(text))
    assert err.value.detail.startswith("jobs.a: window 'weekly' does not go with a schedule")
    with pytest.raises(ValidationError) as err:
        parse_spec(yaml.safe_load(text.replace(', schedule: "*/5 * * * *"', "")))
    assert err.value.detail.startswith("jobs.a.window: 'weekly' is not a window")
