"""UDF bundles end to end with real `python`/`node` sandboxed children: dispatcher invokes
the runner, the runner uploads, publishes and completes, the sink inserts (SPEC §8, §10.8)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
import uuid
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import (
    WORKER_TOKEN,
    Dbs,
    Proc,
    proc_env,
    start_dispatcher,
    start_proc,
    wait_until,
)
from tests.helpers import Attempt, create_tasks, task_row
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.bundles import build_bundle, deterministic_zip, register_bundle
from trace_platform.config import Settings
from trace_platform.db.pool import create_pool
from trace_platform.domain.bundle import bundle_id_for
from trace_platform.ports import LITE_ORG_ID

ROW_HELPER = """
import uuid as _uuid
def row(key, **payload):
    return {"alert_definition_id": str(_uuid.uuid5(_uuid.NAMESPACE_URL, "t")),
            "dedupe_key": key, "event_time": "2024-01-01T00:00:00Z", "payload": payload}
"""


@pytest.fixture(scope="module")
def udf_settings(settings: Settings) -> Settings:
    return settings.replace(runner_timeout_seconds=3.0, max_attempts=2, lease_seconds=5.0)


@pytest.fixture(scope="module")
async def stack(
    udf_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Proc]]:
    logs = tmp_path_factory.mktemp("logs")
    procs = {
        "dispatcher": await start_dispatcher(udf_settings, logs),
        "sink": start_proc(udf_settings, logs, "sink"),
    }
    yield procs
    for p in procs.values():
        p.stop()


@pytest.fixture(scope="module")
async def state_pool(dbs: Dbs) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(dbs.state, max_size=2)
    yield pool
    await pool.close()


async def register_python(pool: asyncpg.Pool, settings: Settings, code: str) -> uuid.UUID:
    data = deterministic_zip([("handler.py", (ROW_HELPER + textwrap.dedent(code)).encode())])
    reg = await register_bundle(
        pool, object_store_from_settings(settings), data, "python", "handler.handler", LITE_ORG_ID
    )
    return reg.bundle_id


async def run_udf(
    settings: Settings,
    bundle_id: uuid.UUID,
    work: dict[str, Any] | None = None,
    max_attempts: int = 2,
) -> uuid.UUID:
    payload = {
        "runtime": "lambda",
        "udf": {"bundle_id": str(bundle_id)},
        "work_payload": work or {},
    }
    (tid,) = await create_tasks(
        settings.state_database_url or "", 1, payload=payload, max_attempts=max_attempts
    )
    return tid


async def finished(conn: asyncpg.Connection, tid: uuid.UUID) -> asyncpg.Record | None:
    row = await task_row(conn, tid)
    terminal = row["status"] == "completed" or (
        row["status"] == "failed" and row["next_retry_at"] is None
    )
    return row if terminal else None


async def rows_with(conn: asyncpg.Connection, prefix: str) -> list[asyncpg.Record]:
    return list(
        await conn.fetch(
            "SELECT * FROM data.alert_events WHERE dedupe_key LIKE $1 ORDER BY dedupe_key",
            prefix + "%",
        )
    )


async def wait_rows(conn: asyncpg.Connection, prefix: str, n: int) -> list[asyncpg.Record]:
    async def enough() -> list[asyncpg.Record] | None:
        got = await rows_with(conn, prefix)
        return got if len(got) >= n else None

    return await wait_until(enough, timeout=30, what=f"{n} rows {prefix}")  # type: ignore[no-any-return]


# -- the happy paths ---------------------------------------------------------------------------


async def test_python_bundle_end_to_end_and_duplicate_invocation_adds_nothing(
    udf_settings: Settings,
    stack: dict[str, Proc],
    state_pool: asyncpg.Pool,
    state_conn: asyncpg.Connection,
    data_conn: asyncpg.Connection,
) -> None:
    tag = "py-" + uuid.uuid4().hex[:6]
    bundle = await register_python(
        state_pool,
        udf_settings,
        f'''
        def handler(event, context):
            context.log.info("hello from the sandbox")
            return [row("{tag}:" + str(i), n=i, task=context.task_id) for i in range(event["n"])]
        ''',
    )
    tid = await run_udf(udf_settings, bundle, {"n": 7})
    row = await wait_until(lambda: finished(state_conn, tid), timeout=30, what="udf done")
    assert row["status"] == "completed" and row["outputs"] == {"records": 7}, row["last_error"]
    stored = await wait_rows(data_conn, tag, 7)
    assert stored[0]["producer_task_id"] == tid and stored[0]["payload"]["task"] == str(tid)
    # A duplicated invocation (wake-up delivered again) finds the task completed: nothing new.
    from trace_platform.adapters.pgqueue import PgQueue

    await PgQueue(state_pool).publish("udf_invoke", [{"task_id": str(tid)}] * 2)
    await wait_until(lambda: _queue_empty(state_conn, "udf_invoke"), what="wake-ups consumed")
    assert len(await rows_with(data_conn, tag)) == 7
    assert (await task_row(state_conn, tid))["attempt"] == 1


async def _queue_empty(conn: asyncpg.Connection, name: str) -> bool:
    return not await conn.fetchval(
        "SELECT count(*) FROM state.queue_messages WHERE queue_name = $1", name
    )


async def test_typescript_bundle_end_to_end(
    udf_settings: Settings,
    stack: dict[str, Proc],
    state_pool: asyncpg.Pool,
    state_conn: asyncpg.Connection,
    data_conn: asyncpg.Connection,
    tmp_path: Path,
) -> None:
    tag = "ts-" + uuid.uuid4().hex[:6]
    src = tmp_path / "ts" / "src"
    src.mkdir(parents=True)
    (src / "index.ts").write_text(
        textwrap.dedent(f"""
        import {{ label }} from "./label";
        interface Ev {{ n: number }}
        export async function handler(event: Ev, context: any) {{
          const out: object[] = [];
          for (let i = 0; i < event.n; i++) {{
            out.push({{ alert_definition_id: "9a1f2b3c-4d5e-4f60-8a7b-1c2d3e4f5a6b",
                        dedupe_key: `{tag}:${{i}}`, event_time: "2024-01-01T00:00:00Z",
                        payload: {{ label: label(i), attempt: context.attempt }} }});
          }}
          return out;
        }}
        """)
    )
    (src / "label.ts").write_text("export const label = (i: number): string => `item-${i}`;\n")
    data = build_bundle(tmp_path / "ts", "node", "index.handler")
    assert data == build_bundle(tmp_path / "ts", "node", "index.handler")  # deterministic
    reg = await register_bundle(
        state_pool,
        object_store_from_settings(udf_settings),
        data,
        "node",
        "index.handler",
        LITE_ORG_ID,
    )
    tid = await run_udf(udf_settings, reg.bundle_id, {"n": 4})
    row = await wait_until(lambda: finished(state_conn, tid), timeout=30, what="ts udf done")
    assert row["status"] == "completed", row["last_error"]
    stored = await wait_rows(data_conn, tag, 4)
    assert stored[1]["payload"] == {"label": "item-1", "attempt": 1}


def test_typescript_compile_error_fails_the_build_with_the_compilers_message(
    tmp_path: Path,
) -> None:
    (tmp_path / "index.ts").write_text("export function handler( {\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "trace_platform",
            "bundle",
            "build",
            str(tmp_path),
            "--language",
            "node",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "build failed" in out.stderr and "Expected identifier" in out.stderr
    assert "index.ts:2" in out.stderr


async def test_same_content_registers_once(
    udf_settings: Settings, state_pool: asyncpg.Pool
) -> None:
    code = "def handler(e, c):\n    return []\n"
    a = await register_python(state_pool, udf_settings, code)
    b = await register_python(state_pool, udf_settings, code)
    c = await register_python(state_pool, udf_settings, code + "# changed\n")
    assert a == b and a != c


# -- integrity -----------------------------------------------------------------------------------


async def test_tampered_bundle_is_never_executed(
    udf_settings: Settings,
    stack: dict[str, Proc],
    state_pool: asyncpg.Pool,
    state_conn: asyncpg.Connection,
    data_conn: asyncpg.Connection,
) -> None:
    tag = "tamper-" + uuid.uuid4().hex[:6]
    bundle = await register_python(
        state_pool, udf_settings, f"def handler(e, c):\n    return [row('{tag}:0')]\n"
    )
    uri = await state_pool.fetchval(
        "SELECT storage_uri FROM state.udf_bundles WHERE bundle_id=$1", bundle
    )
    evil = deterministic_zip(
        [
            (
                "handler.py",
                (ROW_HELPER + f"def handler(e, c):\n    return [row('{tag}:evil')]\n").encode(),
            )
        ]
    )
    Path(uri[len("file://") :]).write_bytes(evil)
    tid = await run_udf(udf_settings, bundle)
    row = await wait_until(lambda: finished(state_conn, tid), timeout=30, what="fatal failure")
    assert row["status"] == "failed" and row["attempt"] == 1
    assert "sha256 does not match" in row["last_error"]
    assert await rows_with(data_conn, tag) == []


async def test_zip_slip_archive_is_rejected_at_upload_and_at_unpack(
    udf_settings: Settings,
    stack: dict[str, Proc],
    state_pool: asyncpg.Pool,
    state_conn: asyncpg.Connection,
) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("handler.py", "def handler(e, c):\n    return []\n")
        zf.writestr("../../escaped.py", "x = 1\n")
    data = buf.getvalue()
    from trace_platform.domain.errors import ValidationError

    with pytest.raises(ValidationError, match="unsafe path"):
        await register_bundle(
            state_pool,
            object_store_from_settings(udf_settings),
            data,
            "python",
            "handler.handler",
            LITE_ORG_ID,
        )
    # A registry row pointing at such an archive (e.g. written behind our back) still fails
    # closed in the runner, before anything runs.
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    store = object_store_from_settings(udf_settings)
    uri = store.uri_for(f"bundles/{sha}.zip")
    await store.put_bytes(uri, data)
    bid = bundle_id_for(LITE_ORG_ID, sha, "python", "handler.handler")
    await state_pool.execute(
        "INSERT INTO state.udf_bundles VALUES ($1, $2, $3, 'python', 'handler.handler', $4, $5)",
        bid,
        LITE_ORG_ID,
        sha,
        len(data),
        uri,
    )
    tid = await run_udf(udf_settings, bid)
    row = await wait_until(lambda: finished(state_conn, tid), timeout=30, what="rejected")
    assert (
        row["status"] == "failed"
        and "bundle rejected: bundle has an unsafe path" in row["last_error"]
    )
    escaped = Path(uri[len("file://") :]).parents[3] / "escaped.py"
    assert not escaped.exists()


async def test_unknown_bundle_fails_the_task_fatally(
    udf_settings: Settings, stack: dict[str, Proc], state_conn: asyncpg.Connection
) -> None:
    tid = await run_udf(udf_settings, uuid.uuid4())
    row = await wait_until(lambda: finished(state_conn, tid), timeout=30, what="fatal")
    assert row["status"] == "failed" and "unknown udf bundle" in row["last_error"]


# -- hostile handlers ------------------------------------------------------------------------------


async def hostile(
    udf_settings: Settings,
    state_pool: asyncpg.Pool,
    state_conn: asyncpg.Connection,
    data_conn: asyncpg.Connection,
    body: str,
) -> dict[str, Any]:
    """Run a handler whose findings come back as the payload of one row."""
    tag = "hostile-" + uuid.uuid4().hex[:6]
    code = f"def handler(event, context):\n    found = {{}}\n{textwrap.indent(textwrap.dedent(body), '    ')}\n    return [row('{tag}:0', **found)]\n"
    bundle = await register_python(state_pool, udf_settings, code)
    tid = await run_udf(udf_settings, bundle, {"port": int(udf_settings.port)})
    row = await wait_until(lambda: finished(state_conn, tid), timeout=40, what="hostile done")
    assert row["status"] == "completed", row["last_error"]
    (stored,) = await wait_rows(data_conn, tag, 1)
    return dict(stored["payload"])


async def test_handler_environment_holds_no_platform_secret(
    udf_settings: Settings,
    stack: dict[str, Proc],
    state_pool: asyncpg.Pool,
    state_conn: asyncpg.Connection,
    data_conn: asyncpg.Connection,
) -> None:
    found = await hostile(
        udf_settings,
        state_pool,
        state_conn,
        data_conn,
        """
        import os
        found["env"] = dict(os.environ)
        found["uid"] = os.getuid()
        """,
    )
    env_text = json.dumps(found["env"])
    assert not [k for k in found["env"] if k.startswith(("TRACE_", "AWS_", "PG"))]
    for secret in (WORKER_TOKEN, udf_settings.state_database_url or "x", "secret", "postgresql://"):
        assert secret not in env_text
    assert found["uid"] != 0


async def test_handler_cannot_reach_the_network_or_internal_endpoints(
    udf_settings: Settings,
    stack: dict[str, Proc],
    state_pool: asyncpg.Pool,
    state_conn: asyncpg.Connection,
    data_conn: asyncpg.Connection,
) -> None:
    found = await hostile(
        udf_settings,
        state_pool,
        state_conn,
        data_conn,
        """
        import socket, urllib.request
        for name, addr in (("dispatcher", ("127.0.0.1", event["port"])), ("pg", ("127.0.0.1", 5432)),
                           ("outside", ("10.0.0.1", 80))):
            s = socket.socket()
            s.settimeout(1)
            try:
                s.connect(addr)
                found[name] = "connected"
            except OSError as e:
                found[name] = type(e).__name__
        try:
            urllib.request.urlopen(urllib.request.Request(
                f"http://127.0.0.1:{event['port']}/internal/task-claim", data=b"{}", method="POST"), timeout=1)
            found["claim"] = "reached"
        except Exception as e:
            found["claim"] = type(e).__name__
        """,
    )
    assert "connected" not in found.values() and found["claim"] != "reached"
    assert found["dispatcher"] in ("ConnectionRefusedError", "OSError")


async def test_handler_sees_no_platform_file_and_cannot_write_outside_its_dir(
    udf_settings: Settings,
    stack: dict[str, Proc],
    state_pool: asyncpg.Pool,
    state_conn: asyncpg.Connection,
    data_conn: asyncpg.Connection,
) -> None:
    home = str(udf_settings.home.resolve())
    found = await hostile(
        udf_settings,
        state_pool,
        state_conn,
        data_conn,
        f"""
        import os
        def attempt(label, fn):
            try:
                fn()
                found[label] = "ok"
            except OSError as e:
                found[label] = type(e).__name__
        attempt("write_usr", lambda: open("/usr/evil", "w"))
        attempt("write_bundle", lambda: open("/bundle/evil.py", "w"))
        attempt("write_root", lambda: open("/evil", "w"))
        attempt("read_home", lambda: os.listdir({home!r}))
        attempt("read_repo", lambda: os.listdir({str(Path.cwd())!r}))
        attempt("write_cwd", lambda: open("scratch.txt", "w").write("x"))
        found["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        found["cmdlines"] = [open(f"/proc/{{p}}/cmdline", "rb").read().replace(b"\\0", b" ").decode(errors="replace")
                             for p in os.listdir("/proc") if p.isdigit()]
        """,
    )
    for label in ("write_usr", "write_bundle", "write_root"):
        assert found[label] in ("OSError", "PermissionError"), (label, found[label])
    assert found["read_home"] == "FileNotFoundError" and found["read_repo"] == "FileNotFoundError"
    assert found["write_cwd"] == "ok"
    assert len(found["pids"]) <= 3 and not any("postgres" in c for c in found["cmdlines"])


async def test_infinite_loop_is_killed_at_the_timeout_then_retried_then_failed(
    udf_settings: Settings,
    stack: dict[str, Proc],
    state_pool: asyncpg.Pool,
    state_conn: asyncpg.Connection,
) -> None:
    bundle = await register_python(
        state_pool, udf_settings, "def handler(e, c):\n    while True:\n        pass\n"
    )
    tid = await run_udf(udf_settings, bundle, max_attempts=2)
    row = await wait_until(lambda: finished(state_conn, tid), timeout=60, what="timeouts")
    assert row["status"] == "failed" and row["attempt"] == 2
    assert "timed out" in row["last_error"] or "limit" in row["last_error"]


async def test_memory_bomb_is_stopped_by_the_memory_limit(
    udf_settings: Settings,
    stack: dict[str, Proc],
    state_pool: asyncpg.Pool,
    state_conn: asyncpg.Connection,
) -> None:
    bundle = await register_python(
        state_pool,
        udf_settings,
        "def handler(e, c):\n    x = bytearray(4 * 1024**3)\n    return []\n",
    )
    tid = await run_udf(udf_settings, bundle, max_attempts=1)
    row = await wait_until(lambda: finished(state_conn, tid), timeout=60, what="memory failure")
    assert row["status"] == "failed" and "MemoryError" in row["last_error"]


async def test_fork_bomb_is_contained(
    udf_settings: Settings,
    stack: dict[str, Proc],
    state_pool: asyncpg.Pool,
    state_conn: asyncpg.Connection,
) -> None:
    bundle = await register_python(
        state_pool,
        udf_settings,
        """
def handler(e, c):
    import os
    forked = 0
    try:
        while True:
            if os.fork() == 0:
                import time
                time.sleep(60)
                os._exit(0)
            forked += 1
    except OSError as exc:
        raise RuntimeError(f"fork refused after {forked} children: {exc}")
""",
    )
    tid = await run_udf(udf_settings, bundle, max_attempts=1)
    row = await wait_until(lambda: finished(state_conn, tid), timeout=60, what="fork bomb ends")
    assert row["status"] == "failed" and "fork refused after" in row["last_error"]
    forked = int(row["last_error"].split("fork refused after ")[1].split()[0])
    assert forked < udf_settings.runner_timeout_seconds * 100  # bounded by RLIMIT_NPROC
    # and every child died with the sandbox's PID namespace
    import psutil

    async def no_sandbox_left() -> bool:
        return not [
            p
            for p in psutil.process_iter(["uids"])
            if p.info["uids"] and p.info["uids"].real == udf_settings.runner_uid
        ]

    await wait_until(no_sandbox_left, timeout=20, what="sandbox processes gone")


async def test_huge_stdout_is_truncated_and_the_runner_survives(
    udf_settings: Settings,
    stack: dict[str, Proc],
    state_pool: asyncpg.Pool,
    state_conn: asyncpg.Connection,
    data_conn: asyncpg.Connection,
) -> None:
    found = await hostile(
        udf_settings,
        state_pool,
        state_conn,
        data_conn,
        """
        import sys
        chunk = "x" * (1 << 20)
        for _ in range(100):
            sys.stdout.write(chunk)
        sys.stdout.flush()
        found["printed_mb"] = 100
        """,
    )
    assert found["printed_mb"] == 100


async def test_handler_errors_become_retryable_or_fatal_with_stderr(
    udf_settings: Settings,
    stack: dict[str, Proc],
    state_pool: asyncpg.Pool,
    state_conn: asyncpg.Connection,
) -> None:
    fatal = await register_python(
        state_pool,
        udf_settings,
        """
from trace_udf import FatalError
def handler(e, c):
    import sys
    print("diagnostic on stderr", file=sys.stderr)
    raise FatalError("input is unusable")
""",
    )
    flaky = await register_python(
        state_pool, udf_settings, "def handler(e, c):\n    raise ValueError('flaky source')\n"
    )
    t1, t2 = await run_udf(udf_settings, fatal), await run_udf(udf_settings, flaky)
    r1 = await wait_until(lambda: finished(state_conn, t1), timeout=40, what="fatal")
    r2 = await wait_until(lambda: finished(state_conn, t2), timeout=40, what="retried")
    assert r1["attempt"] == 1 and "FatalError: input is unusable" in r1["last_error"]
    assert "diagnostic on stderr" in r1["last_error"]
    assert r2["attempt"] == 2 and "ValueError: flaky source" in r2["last_error"]


# -- stale invocations ----------------------------------------------------------------------------


async def test_stale_invocation_cannot_publish_or_complete(
    udf_settings: Settings,
    stack: dict[str, Proc],
    state_pool: asyncpg.Pool,
    state_conn: asyncpg.Connection,
    data_conn: asyncpg.Connection,
) -> None:
    tag = "stale-" + uuid.uuid4().hex[:6]
    bundle = await register_python(
        state_pool, udf_settings, f"def handler(e, c):\n    return [row('{tag}:0')]\n"
    )
    payload = {"runtime": "lambda", "udf": {"bundle_id": str(bundle)}, "work_payload": {}}
    (tid,) = await create_tasks(
        udf_settings.state_database_url or "", 1, payload=payload, wake=False
    )
    base = stack["dispatcher"].url or ""
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        old = await Attempt.claim(http, tid)
        await state_conn.execute(
            "UPDATE state.tasks SET status='queued', attempt=2, lease_token=NULL WHERE task_id=$1",
            tid,
        )
        new = await Attempt.claim(http, tid)
    assert new.attempt == 2
    store = object_store_from_settings(udf_settings)
    b = await state_pool.fetchrow("SELECT * FROM state.udf_bundles WHERE bundle_id=$1", bundle)
    invocation = {
        "task_id": str(tid),
        "attempt": 1,
        "lease_token": old.lease_token,
        "lease_expires_at": old.body["lease_expires_at"],
        "capability_token": old.token,
        "bundle_url": store.presign(b["storage_uri"], "GET", 60),
        "bundle_sha256": b["sha256"],
        "language": "python",
        "entrypoint": "handler.handler",
        "work_payload": {},
    }
    env = proc_env(udf_settings)
    out = subprocess.run(
        [sys.executable, "-m", "trace_platform.runner"],
        input=json.dumps(invocation),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "runner.fenced" in out.stderr
    row = await task_row(state_conn, tid)
    assert row["status"] == "running" and row["attempt"] == 2
    assert not await state_conn.fetchval(
        "SELECT count(*) FROM state.outbox WHERE topic='buffer_batch' AND payload->'producer'->>'task_id'=$1",
        str(tid),
    )
    assert await rows_with(data_conn, tag) == []
