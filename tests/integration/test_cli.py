"""The CLI as a user runs it: real subprocesses against a real database."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import orjson
import pytest

from tests.conftest import proc_env
from trace_platform.config import Settings


def trace(settings: Settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trace_platform", *args],
        env=proc_env(settings),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_help_lists_every_command(settings: Settings) -> None:
    out = trace(settings, "--help")
    assert out.returncode == 0
    for cmd in ("migrate", "dispatcher", "worker", "sink", "up", "demo", "task", "status", "dlq"):
        assert cmd in out.stdout
    assert "trace config" in out.stdout  # where the settings are documented


def test_migrate_is_idempotent(settings: Settings) -> None:
    out = trace(settings, "migrate")
    assert out.returncode == 0 and out.stdout.splitlines() == [
        "state: up to date",
        "data: up to date",
    ]


async def test_task_create_many_show_cancel_and_status(
    settings: Settings, state_conn: asyncpg.Connection
) -> None:
    out = trace(
        settings,
        "task",
        "create",
        "--payload",
        '{"operator": "noop"}',
        "--count",
        "10000",
        "--max-attempts",
        "5",
    )
    assert out.returncode == 0, out.stderr
    ids = [uuid.UUID(line) for line in out.stdout.splitlines()]
    assert len(set(ids)) == 10000
    assert (
        await state_conn.fetchval(
            "SELECT count(*) FROM state.tasks WHERE task_id = ANY($1) AND max_attempts = 5", ids
        )
        == 10000
    )
    assert (
        await state_conn.fetchval(
            "SELECT count(*) FROM state.outbox WHERE topic = 'enqueue_task'"
            " AND (payload->>'task_id')::uuid = ANY($1)",
            ids,
        )
        == 10000
    )

    shown = trace(settings, "task", "show", str(ids[0]))
    view = orjson.loads(shown.stdout)
    assert view["status"] == "queued" and view["payload"] == {"operator": "noop"}

    assert trace(settings, "task", "cancel", str(ids[0])).returncode == 0
    again = trace(settings, "task", "cancel", str(ids[0]))
    assert again.returncode == 1 and "canceled" in again.stderr

    status = orjson.loads(trace(settings, "status", "--json").stdout)
    assert status["tasks"]["queued"] >= 9999 and status["tasks"]["canceled"] >= 1
    table = trace(settings, "status").stdout
    assert "queued" in table and "outbox:" in table and "queues:" in table


def test_bad_input_gets_a_clear_one_line_error_and_changes_nothing(settings: Settings) -> None:
    cases = [
        (["task", "create", "--payload", "{nope"], "not valid JSON"),
        (["task", "create", "--payload", "[1]"], "must be a JSON object"),
        (["task", "create", "--payload", "{}", "--count", "0"], "0"),
        (["task", "show", "not-a-uuid"], "not-a-uuid"),
        (["task", "show", str(uuid.uuid4())], "unknown task"),
        (["--lease-seconds", "-1", "status"], "TRACE_LEASE_SECONDS"),
        (["dlq", "redrive"], "--all"),
    ]
    for args, needle in cases:
        out = trace(settings, *args)
        assert out.returncode != 0, args
        assert needle in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr


def test_dlq_commands_say_what_to_do_on_the_sqs_backend(settings: Settings) -> None:
    out = trace(settings.replace(queue_backend="sqs"), "dlq", "list")
    assert out.returncode == 2 and out.stdout == ""
    (line,) = out.stderr.strip().splitlines()
    assert "TRACE_QUEUE_BACKEND=sqs" in line and "trace-buffer_queue_dlq" in line


def test_unknown_queue_backend_is_a_clear_error(settings: Settings) -> None:
    out = trace(settings, "--queue-backend", "kafka", "status")
    assert out.returncode == 2 and "TRACE_QUEUE_BACKEND must be postgres or sqs" in out.stderr


def test_dataset_query_runs_gated_sql_in_the_sandbox(settings: Settings, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "blocks.parquet"
    pq.write_table(pa.table({"block": list(range(100)), "v": [i % 4 for i in range(100)]}), path)
    assert trace(settings, "dataset", "register", "cli-blocks", str(path)).returncode == 0
    sql = "SELECT v, count(*) AS n FROM dataset WHERE block >= 20 GROUP BY v ORDER BY v"
    out = trace(settings, "dataset", "query", "cli-blocks", sql)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["v", "n"] and [line.split() for line in lines[1:]] == [
        ["0", "20"],
        ["1", "20"],
        ["2", "20"],
        ["3", "20"],
    ]
    assert "(4 rows)" in out.stderr
    as_json = trace(settings, "dataset", "query", "cli-blocks", sql, "--json", "--limit", "2")
    doc = orjson.loads(as_json.stdout)
    assert doc["rows"] == [[0, 20], [1, 20]] and doc["truncated"] is True

    secret = "SELECT * FROM read_csv('/etc/passwd')"
    denied = trace(settings, "dataset", "query", "cli-blocks", secret)
    assert denied.returncode == 2 and "SQL rejected (sql_" in denied.stderr
    assert "/etc/passwd" not in denied.stderr + denied.stdout  # never echoes the SQL
    missing = trace(settings, "dataset", "query", "no-such-dataset", "SELECT 1 FROM dataset")
    assert missing.returncode == 1 and "unknown dataset" in missing.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["task", "show", "00000000-0000-4000-8000-000000000009"],
        ["dlq", "list"],
        ["dataset", "list"],
        ["chain", "status"],
        ["bundle", "list"],
    ],
)
def test_read_only_commands_never_create_a_trace_home(args: list[str], tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACE_")}
    out = subprocess.run(
        [sys.executable, "-m", "trace_platform", *args],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip() == (
        "error: no Trace home at ./.trace — run 'trace up' here or set TRACE_HOME"
    )
    assert list(tmp_path.iterdir()) == []  # nothing was initialised


def test_help_shows_the_commands_first_and_config_lists_every_setting(tmp_path: Path) -> None:
    from trace_platform.config import SETTINGS

    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACE_")}
    env["COLUMNS"] = "100"
    top = subprocess.run(
        [sys.executable, "-m", "trace_platform", "--help"], env=env, capture_output=True, text=True
    )
    assert top.returncode == 0
    lines = top.stdout.splitlines()
    assert len(lines) <= 50
    assert (
        lines.index("Run the stack:") < lines.index("Operate:") < lines.index("Build and deploy:")
    )
    assert "[env TRACE_" not in top.stdout  # settings are documented once, by `config`
    env.update(TRACE_WORKER_TOKEN="super-secret-token", TRACE_RPC_POOL_MAIN_URL="http://k/ey")
    out = subprocess.run(
        [sys.executable, "-m", "trace_platform", "--lease-seconds", "7", "config", "--json"],
        env=env,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr
    rows = {r["env"]: r for r in orjson.loads(out.stdout)}
    assert set(rows) >= {s.env for s in SETTINGS} | {"TRACE_RPC_POOL_MAIN_URLS"}
    assert rows["TRACE_LEASE_SECONDS"]["source"] == "flag"
    assert rows["TRACE_LEASE_SECONDS"]["value"] == "7.0"
    assert rows["TRACE_WORKER_TOKEN"]["source"] == "env"
    assert rows["TRACE_HOME"]["source"] == "default"
    assert "super-secret-token" not in out.stdout and "k/ey" not in out.stdout
    assert list(tmp_path.iterdir()) == []  # config reads settings only


async def test_dataset_query_is_audited_and_refuses_files_outside_the_prefix(
    settings: Settings, tmp_path: Path
) -> None:
    """`trace dataset query` takes the query service's binding: the same audit row as
    /v1/query (source `cli`, the SQL's hash, never its text) and the same prefix checks."""
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "audited.parquet"
    pq.write_table(pa.table({"n": list(range(10))}), path)
    reg = trace(settings, "dataset", "register", "cli-audited", str(path))
    assert reg.returncode == 0, reg.stderr
    ds_uuid = uuid.UUID(reg.stdout.split()[0])
    sql = "SELECT sum(n) AS total FROM dataset WHERE n > 2"
    data = await asyncpg.connect(settings.data_database_url)
    state = await asyncpg.connect(settings.state_database_url)
    try:
        out = trace(settings, "dataset", "query", "cli-audited", sql, "--json")
        assert out.returncode == 0, out.stderr
        assert orjson.loads(out.stdout)["rows"] == [[42]]
        row = await data.fetchrow(
            "SELECT * FROM data.query_audit WHERE dataset_id = $1 ORDER BY id DESC LIMIT 1",
            ds_uuid,
        )
        assert row is not None and row["source"] == "cli"
        assert row["sql_sha256"] == hashlib.sha256(sql.encode()).hexdigest()
        assert row["result_row_count"] == 1 and row["task_id"] is None
        assert sql not in str(dict(row))  # a hash only
        # A manifest entry that points outside the dataset's prefix is refused, unread.
        await state.execute(
            "UPDATE state.dataset_versions SET manifest = jsonb_set(manifest, '{files,0,uri}',"
            " to_jsonb('file://' || $2::text)) WHERE dataset_uuid = $1",
            ds_uuid,
            str(path),
        )
        before = await data.fetchval(
            "SELECT count(*) FROM data.query_audit WHERE dataset_id = $1", ds_uuid
        )
        refused = trace(settings, "dataset", "query", "cli-audited", sql)
        assert refused.returncode == 2, refused.stderr
        assert "outside the granted prefix" in refused.stderr and "Traceback" not in refused.stderr
        assert str(path) not in refused.stderr
        after = await data.fetchval(
            "SELECT count(*) FROM data.query_audit WHERE dataset_id = $1", ds_uuid
        )
        assert after == before  # nothing ran, nothing audited
    finally:
        await data.close()
        await state.close()
