"""UDF jobs in DAGs (SPEC §19) against a real anvil, cryo, Postgres, query service,
dispatcher and sandboxed runner children (python and node): a Python and a TypeScript job's
partitions hold exactly their declared types and equal the same logic computed here over
the chain's files; a row that breaks the schema fails its attempt for good, naming the row
and column, and commits (and writes) nothing; bad specs are refused at apply."""

from __future__ import annotations

import dataclasses
import json
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.chain_helpers import apply
from tests.conftest import (
    Proc,
    start_dispatcher,
    start_proc,
    start_query_service,
    wait_until,
)
from tests.helpers import run_trace
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.bundles import build_bundle, deterministic_zip, register_bundle
from trace_platform.chain.devnet import Anvil, pools_artifact
from trace_platform.config import Settings
from trace_platform.domain.errors import TraceError
from trace_platform.ops.dags import dag_status
from trace_platform.ops.datasets import query_here
from trace_platform.ops.env import open_env
from trace_platform.ports import LITE_ORG_ID

BLOCKS = 40
CHUNK = 10
SWAP = "swap(uint256,uint256,uint256,uint256,address)"

PY_HANDLER = """
from datetime import datetime, timezone

def handler(event, context):
    start, end = event["range"]
    (chain,) = [i["name"] for i in event["inputs"] if i["kind"] == "chain"]
    res = context.query(
        f'SELECT s.block_number, s.log_index, b.timestamp FROM "{chain}.pair_Swap" s'
        f' JOIN "{chain}.blocks" b USING (block_number) ORDER BY 1, 2', limit=10000)
    scale = event["config"]["scale"]
    out = []
    for block, log_index, ts in res["rows"]:
        out.append({
            "block_number": block,
            "log_index": log_index,
            "block_time": datetime.fromtimestamp(ts, timezone.utc).isoformat(),
            "odd": block % 2 == 1,
            "weight": f"{block * scale / 100:.2f}",
            "label": f"{event['config']['prefix']}{start}-{end}",
        })
    return out
"""
PY_SCHEMA = (
    "{block_number: UBIGINT NOT NULL, log_index: INTEGER NOT NULL,"
    " block_time: TIMESTAMPTZ NOT NULL, odd: BOOLEAN, weight: 'DECIMAL(20,2)', label: VARCHAR}"
)
TS_HANDLER = """
type Event = { range: [number, number]; inputs: { relation?: string }[]; config: { tag: string } };
export async function handler(event: Event, context: any) {
  const relation = event.inputs[0].relation as string;
  const res = await context.query(`SELECT block_number, log_index FROM "${relation}"`, 10000);
  const logs: number[] = res.rows.map((r: number[]) => r[1]);
  return [{
    range_start: event.range[0],
    swaps: res.rows.length,
    max_log_index: logs.length ? Math.max(...logs) : null,
    tag: event.config.tag,
    note: null,
  }];
}
"""
TS_SCHEMA = (
    "{range_start: BIGINT NOT NULL, swaps: BIGINT NOT NULL, max_log_index: INTEGER, tag: VARCHAR,"
    " note: VARCHAR}"
)
BAD_HANDLER = """
def handler(event, context):
    mode = event["config"]["mode"]
    rows = [{"k": 0, "v": 1}, {"k": 1, "v": 2}, {"k": 2, "v": 3}]
    if mode == "type":
        rows[1]["v"] = "two"
    elif mode == "null":
        rows[2]["v"] = None
    elif mode == "dup":
        rows[2]["k"] = 0
    return rows
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    """One pool with swaps spread over the blocks (some ranges hold none)."""
    anvil = Anvil(log=tmp_path_factory.mktemp("anvil") / "anvil.log").start()
    try:
        acct = anvil.accounts()
        factory = anvil.deploy_factory()
        tx = anvil.transact(factory, "createPair(address,address)", [acct[8], acct[9]])
        (log,) = anvil.receipt(tx)["logs"]
        pool = "0x" + log["data"][26:66]
        for i in range(9):
            anvil.transact(pool, SWAP, [10**18 * (i + 1), 0, 0, i, acct[1]], acct[2])
            if i % 2:
                anvil.transact(pool, SWAP, [7, 0, 0, i, acct[1]], acct[2])  # same block or next
            anvil.mine(1 + i % 2)
        anvil.mine(BLOCKS - 1 - anvil.head())
        anvil.extra = {"factory": factory.lower()}  # type: ignore[attr-defined]
        yield anvil
    finally:
        anvil.stop()  # also when seeding failed


@pytest.fixture(scope="module")
def u_settings(settings: Settings, node: Anvil) -> Settings:
    return settings.replace(
        chain_interval=0.1,
        rpc_pools=(("local", node.url),),
        runner_timeout_seconds=60.0,
        query_url=f"http://127.0.0.1:{settings.query_port}",  # as `trace up` gives runners
    )


def chain_spec(node: Anvil) -> str:
    art = pools_artifact()
    factory = node.extra["factory"]  # type: ignore[attr-defined]
    return (
        "kind: chain_sync\nname: upools\nchain_id: 31337\nrpc_pool: local\n"
        f"mode: {{kind: fixed_target, from_block: 0, to_block: {BLOCKS}}}\n"
        "streams:\n"
        f"  blocks: {{cryo_dataset: blocks, chunk_size: {CHUNK}, max_inflight: 4}}\n"
        f"  logs: {{cryo_dataset: logs, chunk_size: {CHUNK}, max_inflight: 4}}\n"
        "contracts:\n"
        f"  factory:\n    address: [{factory}]\n    abi: {json.dumps(art['factory']['abi'])}\n"
        "  pair:\n    factory: {contract: factory, event: PairCreated, parameter: pair}\n"
        f"    abi: {json.dumps(art['pair']['abi'])}\n"
    )


@pytest.fixture(scope="module")
async def stack(
    u_settings: Settings, node: Anvil, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Proc]]:
    logs = tmp_path_factory.mktemp("logs")
    procs = {
        "dispatcher": await start_dispatcher(u_settings, logs),
        "query": await start_query_service(u_settings, logs),
        "worker": start_proc(u_settings, logs, "worker"),
    }
    try:
        await apply(u_settings, chain_spec(node))
        yield procs
    finally:
        for p in procs.values():
            p.stop()


async def register(settings: Settings, data: bytes, language: str, entry: str) -> Any:
    async with open_env(settings) as env:
        return await register_bundle(
            env.state, object_store_from_settings(settings), data, language, entry, LITE_ORG_ID
        )


def python_zip(code: str) -> bytes:
    return deterministic_zip([("handler.py", textwrap.dedent(code).encode())])


async def status(settings: Settings, dag: str) -> dict[str, Any]:
    async with open_env(settings) as env:
        return dataclasses.asdict(await dag_status(env, LITE_ORG_ID, dag))


async def wait_built(settings: Settings, dag: str, tip: int, timeout: float = 90) -> Any:
    last: dict[str, Any] = {}

    async def done() -> Any:
        st = await status(settings, dag)
        last.update(st)
        ok = all(j["committed_to"] >= tip and j["in_flight"] == 0 for j in st["jobs"])
        return st if ok else None

    try:
        return await wait_until(done, timeout, 0.2, f"{dag} built to {tip}")
    except AssertionError:
        raise AssertionError(f"{dag} not built to {tip}: {last}") from None


async def partitions(settings: Settings, relation: str) -> list[tuple[int, int, list[str]]]:
    async with open_env(settings) as env:
        rows = await env.state.fetch(
            "SELECT p.range_start, p.range_end, p.files FROM state.dataset_partitions p"
            " JOIN state.datasets d USING (dataset_uuid)"
            " WHERE d.name = $1 AND p.removed_seq IS NULL ORDER BY p.range_start",
            relation,
        )
    return [
        (r["range_start"], r["range_end"], [f["uri"].removeprefix("file://") for f in r["files"]])
        for r in rows
    ]


def duck() -> Any:
    import duckdb

    return duckdb.connect()


def parquet(files: list[str]) -> str:
    return "read_parquet([" + ", ".join(f"'{f}'" for f in files) + "])"


async def test_python_and_typescript_udf_jobs_equal_the_same_logic_over_the_chain(
    u_settings: Settings, stack: dict[str, Proc], tmp_path: Path
) -> None:
    py = await register(u_settings, python_zip(PY_HANDLER), "python", "handler.handler")
    (tmp_path / "ts").mkdir()
    (tmp_path / "ts" / "index.ts").write_text(TS_HANDLER)
    ts = await register(
        u_settings, build_bundle(tmp_path / "ts", "node", "index.handler"), "node", "index.handler"
    )
    spec = (
        "kind: dag\nname: udfdag\ndefaults: {max_concurrency: 3}\njobs:\n"
        "  py_swaps:\n    inputs: [{chain: upools}]\n"
        f"    udf: {{bundle_id: '{py.bundle_id}', config: {{scale: 3, prefix: 'r'}}}}\n"
        f"    schema: {PY_SCHEMA}\n"
        "    unique_key: [block_number, log_index]\n    backfill_blocks: 15\n"
        "  ts_odd:\n    inputs: [{job: py_swaps, where: {odd: true}}]\n"
        f"    udf: {{bundle_id: '{ts.bundle_id}', config: {{tag: 'odd'}}}}\n"
        f"    schema: {TS_SCHEMA}\n    unique_key: [range_start]\n"
    )
    await apply(u_settings, spec)
    st = await wait_built(u_settings, "udfdag", BLOCKS)
    jobs = {j["job"]: j for j in st["jobs"]}
    assert all(j["status"] == "active" and j["failed"] == 0 for j in jobs.values()), jobs
    assert jobs["py_swaps"]["udf"]["language"] == "python"
    assert jobs["py_swaps"]["udf"]["sha256"] == py.sha256
    assert jobs["ts_odd"]["udf"]["schema"]["swaps"] == "BIGINT NOT NULL"

    # The reference: the same logic, computed here by DuckDB and Python over the chain's
    # own files, range by range as the Python job's committed partitions cut them.
    con = duck()
    swaps = [f for *_, fs in await partitions(u_settings, "upools.pair_Swap") for f in fs]
    blocks = [f for *_, fs in await partitions(u_settings, "upools.blocks") for f in fs]
    joined = con.execute(
        f"SELECT s.block_number, s.log_index, b.timestamp FROM {parquet(swaps)} s"
        f" JOIN {parquet(blocks)} b USING (block_number) ORDER BY 1, 2"
    ).fetchall()
    assert len(joined) == 13
    py_parts = await partitions(u_settings, "udfdag.py_swaps")
    # One partition per range, [0, BLOCKS) covered with no gap, each at most backfill_blocks.
    ends = [0] + [b for _, b, _ in py_parts]
    assert [a for a, _, _ in py_parts] == ends[:-1] and ends[-1] == BLOCKS
    assert all(b - a <= 15 for a, b, _ in py_parts) and len(py_parts) >= 3
    expected_py = []
    for a, b, _ in py_parts:
        for block, log_index, ts_ in joined:
            if a <= block < b:
                expected_py.append(
                    (
                        block,
                        log_index,
                        datetime.fromtimestamp(ts_, UTC),
                        block % 2 == 1,
                        Decimal(f"{block * 3 / 100:.2f}"),
                        f"r{a}-{b}",
                    )
                )
    files = [f for *_, fs in py_parts for f in fs]
    types = con.execute(f"DESCRIBE SELECT * FROM {parquet(files)}").fetchall()
    assert [(t[0], t[1]) for t in types] == [
        ("block_number", "UBIGINT"),
        ("log_index", "INTEGER"),
        ("block_time", "TIMESTAMP WITH TIME ZONE"),
        ("odd", "BOOLEAN"),
        ("weight", "DECIMAL(20,2)"),
        ("label", "VARCHAR"),
    ]
    con.execute("SET TimeZone = 'UTC'")
    got_py = con.execute(f"SELECT * FROM {parquet(files)} ORDER BY 1, 2").fetchall()
    assert got_py == sorted(expected_py)

    ts_parts = await partitions(u_settings, "udfdag.ts_odd")
    assert [b for _, b, _ in ts_parts][-1] == BLOCKS
    expected_ts = []
    for a, b, _ in ts_parts:
        mine = [r for r in expected_py if a <= r[0] < b and r[3]]  # where odd = true
        expected_ts.append((a, len(mine), max((r[1] for r in mine), default=None), "odd", None))
    ts_files = [f for *_, fs in ts_parts for f in fs]
    types = con.execute(f"DESCRIBE SELECT * FROM {parquet(ts_files)}").fetchall()
    assert [(t[0], t[1]) for t in types] == [
        ("range_start", "BIGINT"),
        ("swaps", "BIGINT"),
        ("max_log_index", "INTEGER"),
        ("tag", "VARCHAR"),
        ("note", "VARCHAR"),
    ]
    got_ts = con.execute(f"SELECT * FROM {parquet(ts_files)} ORDER BY 1").fetchall()
    assert got_ts == expected_ts
    assert sum(r[1] for r in got_ts) == sum(1 for r in expected_py if r[3]) > 0

    # Readers query the outputs by name like any relation.
    async with open_env(u_settings) as env:
        res = await query_here(
            env, LITE_ORG_ID, None, 'SELECT count(*) FROM "udfdag.py_swaps"', 10, None
        )
    assert [list(r) for r in res.rows] == [[13]]

    # The console's DAGs page (its template, given the same typed status) marks UDF jobs.
    from trace_platform.api.console import _env

    async with open_env(u_settings) as env:
        typed = await dag_status(env, LITE_ORG_ID, "udfdag")
    html = _env.get_template("dag_bars.html").render(dags=[typed])
    assert f"udf · python · {py.sha256[:12]}" in html
    assert f"udf · node · {ts.sha256[:12]}" in html

    # `trace dag status` shows each job's code: the UDF's bundle and its schema.
    out = run_trace(u_settings, "dag", "status", "udfdag")
    assert out.returncode == 0, out.stderr
    assert f"udf: python bundle {py.bundle_id} (sha256 {py.sha256[:12]})" in out.stdout
    assert f"udf: node bundle {ts.bundle_id}" in out.stdout
    assert "swaps BIGINT NOT NULL" in out.stdout


async def bad_job_outcome(settings: Settings, dag: str, job: str) -> dict[str, Any]:
    async with open_env(settings) as env:
        rows = await env.state.fetch(
            "SELECT t.status, t.attempt, t.last_error, t.next_retry_at FROM state.dag_ranges r"
            " JOIN state.dag_jobs j USING (job_uuid) JOIN state.dags d USING (dag_id)"
            " JOIN state.tasks t ON t.task_id = r.task_id WHERE d.name = $1 AND j.name = $2",
            dag,
            job,
        )
        parts = await env.state.fetchval(
            "SELECT count(*) FROM state.dataset_partitions p JOIN state.datasets d"
            " USING (dataset_uuid) WHERE d.name = $1",
            f"{dag}.{job}",
        )
        prefix = await env.state.fetchval(
            "SELECT storage_prefix FROM state.datasets WHERE name = $1", f"{dag}.{job}"
        )
    return {"tasks": [dict(r) for r in rows], "partitions": parts, "prefix": prefix}


async def test_a_row_breaking_the_schema_fails_the_attempt_naming_row_and_column(
    u_settings: Settings, stack: dict[str, Proc]
) -> None:
    bad = await register(u_settings, python_zip(BAD_HANDLER), "python", "handler.handler")

    def job(name: str, mode: str) -> str:
        return (
            f"  {name}:\n    inputs: [{{chain: upools}}]\n"
            f"    udf: {{bundle_id: '{bad.bundle_id}', config: {{mode: '{mode}'}}}}\n"
            "    schema: {k: BIGINT NOT NULL, v: BIGINT NOT NULL}\n"
            "    unique_key: [k]\n    backfill_blocks: 1000\n    max_concurrency: 1\n"
        )

    spec = "kind: dag\nname: udfbad\ndefaults: {max_attempts: 3}\njobs:\n" + "".join(
        [job("wrong_type", "type"), job("null_value", "null"), job("dup_key", "dup")]
    )
    await apply(u_settings, spec)
    expected = {
        "wrong_type": "row 1, column 'v': expected BIGINT (a JSON integer), got a string",
        "null_value": "row 2, column 'v': NULL in a NOT NULL column (BIGINT NOT NULL)",
        "dup_key": "row 2, column 'k': unique_key ['k'] repeats row 0's value",
    }

    async def stopped() -> Any:
        st = await status(u_settings, "udfbad")
        return st if all(j["status"] == "stopped" for j in st["jobs"]) else None

    st = await wait_until(stopped, 90, 0.2, "every bad job stopped")
    for j in st["jobs"]:
        assert expected[j["job"]] in (j["last_error"] or ""), j
        outcome = await bad_job_outcome(u_settings, "udfbad", j["job"])
        (task,) = outcome["tasks"]
        # Fatal: one attempt of three allowed, no retry scheduled; its error names the row.
        assert task["status"] == "failed" and task["attempt"] == 1, task
        assert task["next_retry_at"] is None
        assert expected[j["job"]] in task["last_error"]
        assert "the handler's rows break the job's schema" in task["last_error"]
        # Nothing committed, nothing written into the output's prefix.
        assert outcome["partitions"] == 0
        root = Path(outcome["prefix"].removeprefix("file://"))
        assert not root.exists() or not [p for p in root.rglob("*") if p.is_file()]
        assert j["rows"] == 0 and j["committed"] == 0


async def test_udf_specs_are_refused_at_apply_naming_the_field(
    u_settings: Settings, stack: dict[str, Proc]
) -> None:
    good = await register(
        u_settings,
        deterministic_zip([("h.py", b"def handler(event, context):\n    return []\n")]),
        "python",
        "h.handler",
    )

    def job(body: str) -> str:
        return f"kind: dag\nname: udfref\njobs:\n  a: {{inputs: [{{chain: upools}}], {body}}}\n"

    udf = f"udf: {{bundle_id: '{good.bundle_id}'}}"
    cases = {
        job(udf): "jobs.a: a udf job needs a schema",
        job(f"{udf}, sql: 'SELECT 1 FROM blocks', schema: {{a: BIGINT}}"): (
            "give exactly one of sql or udf"
        ),
        job(f"udf: {{bundle_id: '{uuid.uuid4()}'}}, schema: {{a: BIGINT}}"): (
            "jobs.a.udf.bundle_id: no bundle"
        ),
        job("udf: {bundle_id: nope}, schema: {a: BIGINT}"): "jobs.a.udf.bundle_id: no bundle",
        job(f"{udf}, schema: {{a: HUGEINT}}"): "a: HUGEINT cannot be carried exactly",
        job(f"{udf}, schema: {{a: 'BIGINT NOT NUL'}}"): "a: 'BIGINT NOT NUL' is not a type",
        job(f"{udf}, schema: {{a: BIGINT}}, unique_key: [b]"): "unique_key column(s) ['b']",
        job("sql: 'SELECT 1 FROM blocks', schema: {a: BIGINT}"): "schema is for udf jobs",
    }
    for text, expected in cases.items():
        with pytest.raises(TraceError) as err:
            await apply(u_settings, text)
        assert expected in err.value.detail, (expected, err.value.detail)
    async with open_env(u_settings) as env:
        assert (
            await env.state.fetchval("SELECT count(*) FROM state.dags WHERE name = 'udfref'") == 0
        )

    # The bundle's sha256 is part of the job's definition: another bundle, another generation.
    other = await register(
        u_settings,
        deterministic_zip([("h.py", b"def handler(event, context):\n    return None\n")]),
        "python",
        "h.handler",
    )
    answers = []
    for bundle in (good, other):
        spec = job(f"udf: {{bundle_id: '{bundle.bundle_id}'}}, schema: {{a: BIGINT}}")
        (answer,) = await apply(u_settings, spec)
        answers.append(answer)
    assert answers[0]["jobs_changed"] == ["a"]  # created
    assert answers[1]["changed"] and answers[1]["jobs_changed"] == ["a"], answers[1]


WHOLE_HANDLER = """
def handler(event, context):
    assert event["range"] is None  # a whole-snapshot run reads every committed row
    (relation,) = [i["relation"] for i in event["inputs"]]
    res = context.query(f'SELECT odd, count(*) FROM "{relation}" GROUP BY 1', 100)  # SQL, limit
    return [{"odd": odd, "swaps": n} for odd, n in res["rows"]]
"""


async def test_a_whole_snapshot_udf_job_replaces_its_output_with_each_run(
    u_settings: Settings, stack: dict[str, Proc]
) -> None:
    py = await register(u_settings, python_zip(PY_HANDLER), "python", "handler.handler")
    whole = await register(u_settings, python_zip(WHOLE_HANDLER), "python", "handler.handler")
    spec = (
        "kind: dag\nname: udfall\njobs:\n"
        "  base:\n    inputs: [{chain: upools}]\n"
        f"    udf: {{bundle_id: '{py.bundle_id}', config: {{scale: 1, prefix: 'w'}}}}\n"
        f"    schema: {PY_SCHEMA}\n    backfill_blocks: 10\n"
        "  parity:\n    inputs: [{job: base}]\n    window: all\n    min_interval_seconds: 0.2\n"
        f"    udf: {{bundle_id: '{whole.bundle_id}'}}\n"
        "    schema: {odd: BOOLEAN NOT NULL, swaps: BIGINT NOT NULL}\n    unique_key: [odd]\n"
    )
    await apply(u_settings, spec)
    con = duck()

    async def recomputed() -> Any:
        chain = await partitions(u_settings, "upools.pair_Swap")
        if not chain or chain[-1][1] < BLOCKS:
            return None
        swaps = [f for *_, fs in chain for f in fs]
        rows = con.execute(f"SELECT block_number FROM {parquet(swaps)}").fetchall()
        odd = [r[0] % 2 == 1 for r in rows]
        expected = sorted({(o, odd.count(o)) for o in odd})
        parts = await partitions(u_settings, "udfall.parity")
        if len(parts) != 1:  # each run replaces the output: one live partition
            return None
        got = con.execute(f"SELECT * FROM {parquet(parts[0][2])} ORDER BY 1").fetchall()
        return parts if got == expected and len(rows) == 13 else None

    (part,) = await wait_until(recomputed, 90, 0.2, "the whole-snapshot UDF over every swap")
    types = con.execute(f"DESCRIBE SELECT * FROM {parquet(part[2])}").fetchall()
    assert [(t[0], t[1]) for t in types] == [("odd", "BOOLEAN"), ("swaps", "BIGINT")]
    st = await status(u_settings, "udfall")
    (parity,) = [j for j in st["jobs"] if j["job"] == "parity"]
    assert parity["window"] == "all" and parity["udf"]["language"] == "python"
    assert parity["snapshot"]["runs"] >= 1


WEIGHT_HANDLER = """
from decimal import Decimal

def handler(event, context):
    (relation,) = [i["relation"] for i in event["inputs"]]
    res = context.query(f'SELECT weight FROM "{relation}"', 10000)
    total = sum((Decimal(str(w)) for (w,) in res["rows"]), Decimal(0))
    return [{"range_start": event["range"][0], "total": str(total)}]
"""


async def test_a_changed_udf_config_builds_a_new_generation_then_cuts_over(
    u_settings: Settings, stack: dict[str, Proc]
) -> None:
    """The downstream job reads the upstream's building generation (by the event's
    `relation`) while readers keep the current one; after the cut-over both hold rows of
    the new config."""
    py = await register(u_settings, python_zip(PY_HANDLER), "python", "handler.handler")
    sums = await register(u_settings, python_zip(WEIGHT_HANDLER), "python", "handler.handler")

    def spec(scale: int) -> str:
        return (
            "kind: dag\nname: udfgen\njobs:\n"
            "  py_swaps:\n    inputs: [{chain: upools}]\n"
            f"    udf: {{bundle_id: '{py.bundle_id}', config: {{scale: {scale}, prefix: 'g'}}}}\n"
            f"    schema: {PY_SCHEMA}\n    backfill_blocks: 20\n"
            "  weights:\n    inputs: [{job: py_swaps}]\n"
            f"    udf: {{bundle_id: '{sums.bundle_id}'}}\n"
            "    schema: {range_start: BIGINT NOT NULL, total: 'DECIMAL(20,2)'}\n"
        )

    async def rows(relation: str) -> list[tuple[Any, ...]]:
        files = [f for *_, fs in await partitions(u_settings, relation) for f in fs]
        return duck().execute(f"SELECT * FROM {parquet(files)}").fetchall() if files else []

    await apply(u_settings, spec(3))
    await wait_built(u_settings, "udfgen", BLOCKS)
    (answer,) = await apply(u_settings, spec(5))
    assert set(answer["jobs_changed"]) == {"py_swaps", "weights"}

    async def cut_over() -> Any:
        st = await status(u_settings, "udfgen")
        done = st["building_generation"] is None and st["generation"] == 2
        return st if done and all(j["committed_to"] >= BLOCKS for j in st["jobs"]) else None

    st = await wait_until(cut_over, 90, 0.2, "udfgen's second generation current")
    assert all(j["failed"] == 0 for j in st["jobs"]), st
    py_rows = await rows("udfgen.py_swaps")
    assert len(py_rows) == 13
    assert all(r[4] == Decimal(f"{r[0] * 5 / 100:.2f}") for r in py_rows)
    # The downstream job summed the new generation's weights, range by range.
    weights = await rows("udfgen.weights")
    assert sum(r[1] for r in weights) == sum(r[4] for r in py_rows)
