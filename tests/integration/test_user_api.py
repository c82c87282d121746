"""The user API and the console (SPEC §13, invariant 14) against a real `trace api`, a real
query service and a real Postgres: tenancy, revocation, rate limits, pagination under
concurrent inserts, queries, the console's session and CSRF rules, XSS, and a fuzz. (Which
role may call which route: `test_api_roles.py`.)"""

from __future__ import annotations

import asyncio
import html
import os
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import (
    Proc,
    api_settings,
    api_stack,
    free_port,
    proc_env,
    start_query_service,
    wait_http_ready,
)
from tests.helpers import echoed_sql, env_of, run_trace
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.config import Settings
from trace_platform.datasets import register_dataset
from trace_platform.db.pool import create_pool
from trace_platform.ops.users import create_user
from trace_platform.ports import LITE_ORG_ID

ORG_B = uuid.UUID("0b0b0b0b-0000-4000-8000-0000000000bb")
XSS = "<script>alert('x')</script>"


@pytest.fixture(scope="module")
def u_settings(settings: Settings) -> Settings:
    return api_settings(settings, api_rate_per_second=20.0, api_rate_burst=60)


@pytest.fixture(scope="module")
async def pool(u_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(u_settings.state_database_url or "", max_size=4)
    yield p
    await p.close()


LOGS: list[Path] = []


@pytest.fixture(scope="module")
async def api(u_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    logs = tmp_path_factory.mktemp("apilogs")
    LOGS.append(logs)
    async with api_stack(u_settings, logs) as stack:
        yield stack.url


@pytest.fixture(scope="module")
async def keys(pool: asyncpg.Pool, api: str) -> dict[str, str]:
    out = {}
    for org, prefix in ((LITE_ORG_ID, ""), (ORG_B, "b-")):
        for role in ("reader", "writer", "admin"):
            key = (await create_user(env_of(pool), org, f"{prefix}{role}", role)).api_key
            out[prefix + role] = key
    return out


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
async def dataset(u_settings: Settings, pool: asyncpg.Pool, tmp_path_factory: Any) -> str:
    path = tmp_path_factory.mktemp("ds") / "t.parquet"
    pq.write_table(
        pa.table(
            {"n": list(range(100)), "label": [XSS if i == 7 else f"row{i}" for i in range(100)]}
        ),
        path,
    )
    await register_dataset(
        pool, object_store_from_settings(u_settings), "numbers", [path], LITE_ORG_ID
    )
    return "numbers"


async def test_no_key_a_bad_key_and_a_revoked_key_get_401(
    api: str, pool: asyncpg.Pool, keys: dict[str, str]
) -> None:
    key = (await create_user(env_of(pool), LITE_ORG_ID, "short-lived", "admin")).api_key
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        assert (await http.get("/v1/me")).status_code == 401
        assert (
            await http.get("/v1/me", headers={"Authorization": f"Basic {key}"})
        ).status_code == 401
        assert (await http.get("/v1/me", headers=bearer("trk_" + "x" * 43))).status_code == 401
        assert (await http.get("/v1/me", headers=bearer(key))).status_code == 200
        r = await http.post("/v1/users/short-lived/revoke", headers=bearer(keys["admin"]))
        assert r.status_code == 200
        r = await http.get("/v1/me", headers=bearer(key))  # at once: no cache
        assert r.status_code == 401 and key not in r.text


async def test_an_org_never_sees_another_orgs_tasks_datasets_or_results(
    api: str, keys: dict[str, str], dataset: str
) -> None:
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        r = await http.post(
            "/v1/tasks",
            json={"payload": {"operator": "noop", "tag": "a-only"}},
            headers=bearer(keys["writer"]),
        )
        assert r.status_code == 201
        (tid,) = r.json()["task_ids"]
        mine = await http.get(f"/v1/tasks/{tid}", headers=bearer(keys["reader"]))
        assert mine.status_code == 200 and mine.json()["payload"]["tag"] == "a-only"
        assert (
            await http.get(f"/v1/tasks/{tid}", headers=bearer(keys["b-admin"]))
        ).status_code == 404
        cancel = await http.post(f"/v1/tasks/{tid}/cancel", headers=bearer(keys["b-admin"]))
        assert cancel.status_code == 404
        listed = (await http.get("/v1/tasks?limit=200", headers=bearer(keys["b-admin"]))).json()
        assert tid not in {t["task_id"] for t in listed["tasks"]}
        b_sets = (await http.get("/v1/datasets", headers=bearer(keys["b-reader"]))).json()
        assert "numbers" not in {d["name"] for d in b_sets["datasets"]}
        assert (
            await http.get("/v1/datasets/numbers", headers=bearer(keys["b-reader"]))
        ).status_code == 404
        q = await http.post(
            "/v1/query",
            json={"dataset": "numbers", "sql": "SELECT * FROM dataset"},
            headers=bearer(keys["b-reader"]),
        )
        assert q.status_code == 404 and "numbers" in q.json()["detail"]


async def test_a_query_runs_through_the_gate_and_is_audited_per_user_without_its_sql(
    api: str, keys: dict[str, str], dataset: str, u_settings: Settings
) -> None:
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        sql = "SELECT n, label FROM dataset WHERE n % 10 = 7 ORDER BY n"
        r = await http.post(
            "/v1/query", json={"dataset": "numbers", "sql": sql}, headers=bearer(keys["reader"])
        )
        assert r.status_code == 200, r.text
        assert [row[0] for row in r.json()["rows"]] == list(range(7, 100, 10))
        bad = "SELECT * FROM read_parquet('/etc/passwd')"
        r = await http.post(
            "/v1/query", json={"dataset": "numbers", "sql": bad}, headers=bearer(keys["reader"])
        )
        assert r.status_code == 400 and "/etc/passwd" not in r.text
    data = await asyncpg.connect(u_settings.data_database_url)
    try:
        rows = await data.fetch(
            "SELECT a.user_id, a.sql_sha256, a.result_row_count FROM data.query_audit a"
            " WHERE a.user_id IS NOT NULL"
        )
    finally:
        await data.close()
    assert rows and all(len(r["sql_sha256"]) == 64 for r in rows)
    assert any(r["result_row_count"] == 10 for r in rows)


async def test_relations_are_listed_with_columns_joined_by_name_and_another_orgs_refused(
    api: str, keys: dict[str, str], dataset: str, u_settings: Settings, pool: asyncpg.Pool
) -> None:
    path = Path(LOGS[0]).parent / "labels.parquet"
    pq.write_table(pa.table({"n": [7, 17, 1000], "tag": ["seven", "seventeen", "big"]}), path)
    await register_dataset(
        pool, object_store_from_settings(u_settings), "num-labels", [path], LITE_ORG_ID
    )
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        listed = await http.get("/v1/relations", headers=bearer(keys["reader"]))
        assert listed.status_code == 200, listed.text
        by_name = {r["name"]: r for r in listed.json()["relations"]}
        assert by_name["numbers"]["columns"] == [
            {"name": "n", "type": "BIGINT"},
            {"name": "label", "type": "VARCHAR"},
        ]
        assert "num_labels" in by_name["num-labels"]["names"]
        sql = (
            'SELECT n.n, l.tag FROM numbers n JOIN "num-labels" l USING (n)'
            " JOIN num_labels l2 USING (n) ORDER BY 1"
        )
        r = await http.post("/v1/query", json={"sql": sql}, headers=bearer(keys["reader"]))
        assert r.status_code == 200, r.text
        assert r.json()["rows"] == [[7, "seven"], [17, "seventeen"]]
        # Org B has neither relation: refused by name before anything runs, SQL never echoed.
        r = await http.post("/v1/query", json={"sql": sql}, headers=bearer(keys["b-reader"]))
        assert r.status_code == 400 and r.json()["reason"] == "sql_relation_not_allowed"
        assert "JOIN" not in r.text
        b_listed = await http.get("/v1/relations", headers=bearer(keys["b-reader"]))
        assert "numbers" not in {r["name"] for r in b_listed.json()["relations"]}
        # The console's SQL page lists what the user may query, with columns.
        form = await http.get("/ui/login")
        token = re.search(r'name="login_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        r = await http.post(
            "/ui/login",
            data={"api_key": keys["reader"], "login_token": token},
            follow_redirects=False,
        )
        assert r.status_code == 303
        page = await http.get("/ui/sql")
        assert page.status_code == 200, page.text[:300]
        assert "num_labels" in page.text and "<code>label</code>" in page.text
        assert "Relations (" in page.text


ORG_C = uuid.UUID("0c0c0c0c-0000-4000-8000-0000000000cc")


async def test_a_users_query_error_names_the_column_or_the_jobs_and_never_echoes_the_sql(
    api: str, pool: asyncpg.Pool, keys: dict[str, str], dataset: str
) -> None:
    """`POST /v1/query`: a bad column answers the engine's message (column, candidates,
    position); the README's short-name join over two chain jobs holding the same tables
    answers which jobs hold the name and what to write; neither echoes the SQL."""
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        sql = "SELECT nn FROM dataset WHERE label = 'k9q-literal-secret'"
        r = await http.post(
            "/v1/query", json={"dataset": "numbers", "sql": sql}, headers=bearer(keys["reader"])
        )
        assert r.status_code == 400, r.text
        detail = r.json()["detail"]
        assert r.json()["reason"] == "query_error"
        assert 'column "nn" not found' in detail and 'Candidate bindings: "n"' in detail
        assert detail.endswith("(line 1, column 8)")
        assert "LINE" not in r.text and "k9q" not in r.text
        assert echoed_sql(sql, r.text, ("nn", "label")) == []
        key = (await create_user(env_of(pool), ORG_C, "c-writer", "writer")).api_key
        for job in ("jobs-b", "jobs-a"):
            spec = (
                f"kind: chain_sync\nname: {job}\nchain_id: 1\nrpc_pool: nowhere\n"
                "mode: {kind: fixed_target, to_block: 100}\nstreams:\n"
                "  blocks: {cryo_dataset: blocks, chunk_size: 10}\n"
                "  erc20_transfers: {cryo_dataset: erc20_transfers, chunk_size: 10}\n"
            )
            applied = await http.post("/v1/specs", content=spec, headers=bearer(key))
            assert applied.status_code == 200, applied.text
        sql = (
            "SELECT t.block_number, b.timestamp FROM erc20_transfers t"
            " JOIN blocks b USING (block_number) WHERE t.value_f64 > 12345.5"
        )
        r = await http.post("/v1/query", json={"sql": sql}, headers=bearer(key))
        assert r.status_code == 400, r.text
        assert r.json()["reason"] == "sql_relation_not_allowed"
        assert r.json()["detail"] == (
            "relation 'erc20_transfers' is ambiguous: held by chain jobs 'jobs-a' and"
            " 'jobs-b'; write \"jobs-a.erc20_transfers\" (or name a default job)"
        )
        assert echoed_sql(sql, r.text, ("jobs-a.erc20_transfers",)) == []


async def test_a_key_past_its_rate_limit_gets_429_with_retry_after(
    api: str, pool: asyncpg.Pool
) -> None:
    key = (await create_user(env_of(pool), LITE_ORG_ID, "hasty", "reader")).api_key
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        answers = await asyncio.gather(
            *(http.get("/v1/me", headers=bearer(key)) for _ in range(150))
        )
    limited = [a for a in answers if a.status_code == 429]
    assert limited and len(limited) < 150
    assert all(int(a.headers["Retry-After"]) >= 1 for a in limited)
    assert limited[0].json()["error"] == "rate_limited"


async def test_pagination_is_stable_under_concurrent_inserts(
    api: str, pool: asyncpg.Pool, keys: dict[str, str]
) -> None:
    key = (await create_user(env_of(pool), ORG_B, "pager", "writer")).api_key
    async with httpx.AsyncClient(base_url=api, timeout=30) as http:
        r = await http.post(
            "/v1/tasks", json={"payload": {"operator": "noop"}, "count": 230}, headers=bearer(key)
        )
        before = set(r.json()["task_ids"])
        seen: list[str] = []
        cursor = None
        while True:
            url = "/v1/tasks?limit=50" + (f"&cursor={cursor}" if cursor else "")
            page = (await http.get(url, headers=bearer(key))).json()
            seen += [t["task_id"] for t in page["tasks"]]
            # new tasks arrive while we page: they are newer than the cursor, never in a page
            await http.post(
                "/v1/tasks", json={"payload": {"operator": "noop"}, "count": 7}, headers=bearer(key)
            )
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert len(seen) == len(set(seen))  # no duplicates
        assert before <= set(seen)  # nothing skipped
        bad = await http.get("/v1/tasks?cursor=not-a-cursor", headers=bearer(key))
        assert bad.status_code == 400


async def test_the_console_session_is_httponly_strict_and_state_changes_need_csrf(
    api: str, keys: dict[str, str]
) -> None:
    async with httpx.AsyncClient(base_url=api, timeout=10, follow_redirects=False) as http:
        assert (await http.get("/ui")).status_code == 303  # to the login page
        # The page asked for, query string included, is where the log-in leads.
        asked = await http.get("/ui/tasks?state=failed")
        assert asked.status_code == 303
        form = await http.get(asked.headers["location"])
        token = re.search(r'name="login_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        back = re.search(r'name="next" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        no_csrf = await http.post("/ui/login", data={"api_key": keys["admin"], "login_token": "x"})
        assert no_csrf.status_code == 403
        r = await http.post(
            "/ui/login",
            data={"api_key": keys["admin"], "login_token": token, "next": html.unescape(back)},
        )
        assert r.status_code == 303 and r.headers["location"] == "/ui/tasks?state=failed"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert keys["admin"] not in cookie + r.headers.get("location", "")
        page = await http.get("/ui")
        assert page.status_code == 200 and keys["admin"] not in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        csrf = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]
        # the session alone cannot change anything
        assert (
            await http.post("/v1/tasks", json={"payload": {"operator": "noop"}})
        ).status_code == 403
        ok = await http.post(
            "/v1/tasks", json={"payload": {"operator": "noop"}}, headers={"X-CSRF-Token": csrf}
        )
        assert ok.status_code == 201
        wrong = await http.post(
            "/v1/tasks", json={"payload": {}}, headers={"X-CSRF-Token": csrf[::-1]}
        )
        assert wrong.status_code == 403


async def test_hostile_values_render_inert(api: str, keys: dict[str, str], dataset: str) -> None:
    async with httpx.AsyncClient(base_url=api, timeout=10, follow_redirects=False) as http:
        r = await http.post(
            "/v1/tasks",
            json={"payload": {"operator": "noop", "note": XSS}},
            headers=bearer(keys["writer"]),
        )
        (tid,) = r.json()["task_ids"]
        form = await http.get("/ui/login")
        token = re.search(r'name="login_token" value="([^"]+)"', form.text).group(1)  # type: ignore[union-attr]
        await http.post("/ui/login", data={"api_key": keys["reader"], "login_token": token})
        page = await http.get(f"/ui/tasks/{tid}")
        assert page.status_code == 200
        assert XSS not in page.text and "&lt;script&gt;" in page.text


async def test_every_json_document_errors_included_runs_nothing_and_is_not_sniffed(
    api: str, keys: dict[str, str]
) -> None:
    """A 404 under /ui (no such page), a refused query and an answer are JSON documents with
    a CSP that allows nothing and nosniff (a console 404 carried no CSP at all)."""
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        answers = [
            await http.get("/ui/dags/no-such-dag"),
            await http.post(
                "/v1/query", json={"sql": "SELECT * FROM range(3)"}, headers=bearer(keys["reader"])
            ),
            await http.get("/v1/tasks", headers=bearer(keys["reader"])),
        ]
    assert [r.status_code for r in answers] == [404, 400, 200]
    for r in answers:
        assert r.headers["content-type"] == "application/json"
        assert r.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
        assert r.headers["x-content-type-options"] == "nosniff"


def test_the_user_api_documents_every_route_with_resolvable_schemas(api: str) -> None:
    doc = httpx.get(f"{api}/openapi.json").json()
    paths = set(doc["paths"])
    assert {
        "/v1/tasks",
        "/v1/query",
        "/v1/specs",
        "/v1/dlq/redrive",
        "/v1/alerts/{name}/deliveries",
    } <= paths
    text = str(doc)
    for ref in re.findall(r"#/components/schemas/([A-Za-z0-9_]+)", text):
        assert ref in doc["components"]["schemas"]


async def test_fuzzing_the_user_api_with_a_valid_key_finds_no_5xx(
    api: str, pool: asyncpg.Pool, dataset: str
) -> None:
    import schemathesis
    from hypothesis import HealthCheck, given
    from hypothesis import settings as hsettings
    from schemathesis.checks import not_a_server_error

    key = (await create_user(env_of(pool), ORG_B, "fuzzer", "admin")).api_key
    schema = schemathesis.openapi.from_url(f"{api}/openapi.json")
    calls: list[str] = []

    def run_all() -> None:
        for result in schema.get_all_operations():
            operation = result.ok()
            if not operation.path.startswith("/v1/"):
                continue

            @given(case=operation.as_strategy())
            @hsettings(
                max_examples=15,
                deadline=None,
                derandomize=True,
                suppress_health_check=list(HealthCheck),
            )
            def run(case: Any) -> None:
                case.call_and_validate(headers=bearer(key), checks=[not_a_server_error])
                calls.append(case.path)

            run()

    await asyncio.to_thread(run_all)
    assert len(calls) > 100


@pytest.fixture(scope="module")
async def oidc(
    u_settings: Settings, tmp_path_factory: pytest.TempPathFactory, api: str
) -> AsyncIterator[dict[str, Any]]:
    """A second `trace api` that also accepts JWTs of a test issuer (JWKS in a file)."""
    import json

    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    key = ec.generate_private_key(ec.SECP256R1())
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    jwk["kid"] = "test-1"
    folder = tmp_path_factory.mktemp("oidc")
    (folder / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    s = u_settings.replace(
        api_port=free_port(),
        oidc_issuer="https://idp.example.com",
        oidc_audience="trace",
        oidc_jwks=str(folder / "jwks.json"),
    )
    proc = Proc(["api"], proc_env(s), folder / "api.log").start()
    url = f"http://127.0.0.1:{s.api_port}"
    await wait_http_ready(url, proc)
    yield {"url": url, "key": key}
    proc.stop()


def id_token(key: Any, kid: str = "test-1", **over: Any) -> str:
    import time

    import jwt

    now = int(time.time())
    claims = {
        "iss": "https://idp.example.com",
        "aud": "trace",
        "sub": "alice@example.com",
        "iat": now,
        "exp": now + 300,
        "trace_role": "writer",
    } | over
    body = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode(body, key, algorithm="ES256", headers={"kid": kid})


async def test_oidc_jwts_are_verified_strictly(oidc: dict[str, Any], keys: dict[str, str]) -> None:
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    key = oidc["key"]
    other = ec.generate_private_key(ec.SECP256R1())
    async with httpx.AsyncClient(base_url=oidc["url"], timeout=10) as http:
        me = await http.get("/v1/me", headers=bearer(id_token(key)))
        assert me.status_code == 200 and me.json()["role"] == "writer"
        assert me.json()["org_id"] == str(LITE_ORG_ID)
        # a writer may create, not cancel
        made = await http.post(
            "/v1/tasks", json={"payload": {"operator": "noop"}}, headers=bearer(id_token(key))
        )
        assert made.status_code == 201
        (tid,) = made.json()["task_ids"]
        refused = await http.post(f"/v1/tasks/{tid}/cancel", headers=bearer(id_token(key)))
        assert refused.status_code == 403
        other_org = id_token(key, trace_org=str(ORG_B), trace_role="admin")
        assert (await http.get(f"/v1/tasks/{tid}", headers=bearer(other_org))).status_code == 404
        for bad in (
            id_token(key, aud="someone-else"),
            id_token(key, iss="https://evil.example.com"),
            id_token(key, exp=int(__import__("time").time()) - 3600),
            id_token(key, sub=None),
            id_token(other),  # signed by a key the JWKS does not hold
            id_token(key, kid="unknown"),
            jwt.encode(
                {
                    "iss": "https://idp.example.com",
                    "aud": "trace",
                    "sub": "x",
                    "trace_role": "admin",
                },
                None,
                algorithm="none",
            ),
            jwt.encode(
                {
                    "iss": "https://idp.example.com",
                    "aud": "trace",
                    "sub": "x",
                    "iat": 1,
                    "exp": 2**40,
                    "trace_role": "admin",
                },
                "secret-key-long-enough-for-hs256!!",
                algorithm="HS256",
                headers={"kid": "test-1"},
            ),
        ):
            r = await http.get("/v1/me", headers=bearer(bad))
            assert r.status_code == 401, r.text
            assert bad not in r.text
        no_role = await http.get("/v1/me", headers=bearer(id_token(key, trace_role="root")))
        assert no_role.status_code == 403
        # API keys still work next to OIDC
        assert (await http.get("/v1/me", headers=bearer(keys["reader"]))).status_code == 200


async def test_the_cli_and_the_api_share_users_and_task_pages(
    u_settings: Settings, api: str, keys: dict[str, str]
) -> None:
    import json

    made = run_trace(u_settings, "user", "create", "from-cli", "--role", "reader", "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["api_key"]
    again = run_trace(u_settings, "user", "create", "from-cli", "--role", "admin")
    assert again.returncode == 1 and "exists" in again.stderr
    bad = run_trace(u_settings, "user", "create", "x", "--role", "root")
    assert bad.returncode == 2
    listed = run_trace(u_settings, "user", "list")
    assert "from-cli" in listed.stdout and key not in listed.stdout
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        assert (await http.get("/v1/me", headers=bearer(key))).json()["name"] == "from-cli"
        page = (await http.get("/v1/tasks?limit=20", headers=bearer(key))).json()
        out = run_trace(u_settings, "task", "list", "--limit", "20", "--json")
        assert [t["task_id"] for t in json.loads(out.stdout)["tasks"]] == [
            t["task_id"] for t in page["tasks"]
        ]
        assert run_trace(u_settings, "user", "revoke", "from-cli").returncode == 0
        assert (await http.get("/v1/me", headers=bearer(key))).status_code == 401
    assert run_trace(u_settings, "user", "revoke", "from-cli").returncode == 1  # already revoked


async def test_specs_apply_show_and_delete_through_the_api(api: str, keys: dict[str, str]) -> None:
    spec = (
        "kind: chain_sync\nname: api-chain\nchain_id: 1\nrpc_pool: nowhere\n"
        "mode: {kind: fixed_target, to_block: 100}\n"
        "streams:\n  blocks: {cryo_dataset: blocks, chunk_size: 10}\n"
    )
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        w = bearer(keys["writer"])
        r = await http.post("/v1/specs", content=spec, headers=w)
        assert r.status_code == 200 and r.json()["results"][0]["created"], r.text
        bad = await http.post(
            "/v1/specs", content=spec.replace("chunk_size", "chunk_sise"), headers=w
        )
        assert bad.status_code == 400 and "chunk_sise" in bad.json()["detail"]
        listed = (await http.get("/v1/specs", headers=bearer(keys["reader"]))).json()["specs"]
        assert ("chain_sync", "api-chain") in {(x["kind"], x["name"]) for x in listed}
        shown = await http.get("/v1/specs/chain_sync/api-chain", headers=bearer(keys["reader"]))
        assert shown.json()["body"]["rpc_pool"] == "nowhere"
        assert (
            await http.get("/v1/specs/chain_sync/api-chain", headers=bearer(keys["b-admin"]))
        ).status_code == 404
        refused = await http.delete(
            "/v1/specs/chain_sync/api-chain", headers=bearer(keys["reader"])
        )
        assert refused.status_code == 403
        gone = await http.delete("/v1/specs/chain_sync/api-chain", headers=w)
        assert gone.status_code == 200 and gone.json()["paused"] is True
        assert (await http.get("/v1/specs/chain_sync/api-chain", headers=w)).status_code == 404
        chain = (await http.get("/v1/chains/api-chain", headers=w)).json()
        assert chain["paused"] is True  # its data stays; applying again resumes it


async def test_alerts_are_org_scoped_and_no_key_reaches_a_log(
    api: str, pool: asyncpg.Pool, keys: dict[str, str]
) -> None:
    from tests.delivery_helpers import define_alert

    await define_alert(pool, LITE_ORG_ID, "org-a-alert", [])
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        mine = await http.get("/v1/alerts/org-a-alert", headers=bearer(keys["reader"]))
        assert mine.status_code == 200
        theirs = await http.get("/v1/alerts/org-a-alert", headers=bearer(keys["b-admin"]))
        assert theirs.status_code == 404
        listed = (await http.get("/v1/alerts", headers=bearer(keys["b-admin"]))).json()
        assert "org-a-alert" not in {a["name"] for a in listed["alerts"]}
        for path in ("/events", "/deliveries"):
            r = await http.get(f"/v1/alerts/org-a-alert{path}", headers=bearer(keys["b-admin"]))
            assert r.status_code == 404
    text = "".join(p.read_text(errors="replace") for d in LOGS for p in d.glob("*.log"))
    assert text  # the processes did log
    for key in keys.values():
        assert key not in text and key[10:30] not in text
    assert "read_parquet('/etc/passwd')" not in text  # nor SQL text


async def test_a_payload_postgres_cannot_store_is_a_400(api: str, keys: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=api, timeout=10) as http:
        r = await http.post(
            "/v1/tasks", json={"payload": {"k\u0000": 1}}, headers=bearer(keys["writer"])
        )
        assert r.status_code == 400 and "NUL" in r.json()["detail"]


async def test_a_users_query_has_its_own_time_limit(
    u_settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """The query service's tasks get 0.3 s here; users get what TRACE_API_QUERY_TIMEOUT_SECONDS
    says: a heavy self-join finishes for a 30 s user budget and is stopped for a 0.3 s one."""
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"n": list(range(20_000))}), path)
    await register_dataset(pool, object_store_from_settings(u_settings), "big", [path], ORG_B)
    key = (await create_user(env_of(pool), ORG_B, "analyst", "reader")).api_key
    qport = free_port()
    base = u_settings.replace(
        query_port=qport, query_url=f"http://127.0.0.1:{qport}", query_timeout_seconds=0.3
    )
    procs = [await start_query_service(base, tmp_path)]
    urls = []
    for budget in (30.0, 0.3):
        s = base.replace(api_port=free_port(), api_query_timeout_seconds=budget)
        procs.append(Proc(["api"], proc_env(s), tmp_path / f"api-{budget}.log").start())
        urls.append(f"http://127.0.0.1:{s.api_port}")
        await wait_http_ready(urls[-1], procs[-1])
    sql = "SELECT count(*) FROM dataset a, dataset b WHERE (a.n * 7 + b.n) % 1000003 = 1"
    try:
        async with httpx.AsyncClient(timeout=60) as http:
            body = {"dataset": "big", "sql": sql}
            ok = await http.post(f"{urls[0]}/v1/query", json=body, headers=bearer(key))
            assert ok.status_code == 200, ok.text
            assert ok.json()["rows"][0][0] > 0
            stopped = await http.post(f"{urls[1]}/v1/query", json=body, headers=bearer(key))
            assert stopped.status_code == 400 and "time limit" in stopped.json()["detail"]
    finally:
        for p in procs:
            p.stop()


def executors_of(pid: int) -> list[tuple[int, float]]:
    """(pid, CPU seconds) of the query executors (engine.py) descended from `pid`."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes()
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if b"engine.py" in cmdline and b"bwrap" not in cmdline.split(b"\0")[0]:
            found.append((p, sum(int(f) for f in fields[11:13]) / os.sysconf("SC_CLK_TCK")))
    return found


async def test_a_query_whose_caller_goes_away_is_stopped_and_its_executor_killed(
    u_settings: Settings, pool: asyncpg.Pool, tmp_path: Path
) -> None:
    """A caller that closes its connection before the answer starts (the console's Cancel, a
    notebook's interrupt) stops its query: the API closes its call of the query service,
    which kills the executor running it, long before the query's 30 s budget would have —
    for a JSON answer and a streamed Arrow one alike. Both processes log it."""
    path = tmp_path / "wide.parquet"
    pq.write_table(pa.table({"n": list(range(100_000))}), path)
    await register_dataset(pool, object_store_from_settings(u_settings), "wide", [path], ORG_B)
    key = (await create_user(env_of(pool), ORG_B, "quitter", "reader")).api_key
    qport = free_port()
    s = u_settings.replace(
        query_port=qport,
        query_url=f"http://127.0.0.1:{qport}",
        api_port=free_port(),
        api_query_timeout_seconds=30.0,
    )
    query = await start_query_service(s, tmp_path)
    api = Proc(["api"], proc_env(s), tmp_path / "api.log").start()
    await wait_http_ready(f"http://127.0.0.1:{s.api_port}", api)
    assert query.popen is not None
    # Billions of pairs: far longer than the waits below.
    sql = "SELECT count(*) FROM dataset a, dataset b WHERE (a.n * 7 + b.n) % 1000003 = 1"
    try:
        for fmt in ("json", "arrow"):
            body = orjson.dumps({"dataset": "wide", "sql": sql, "format": fmt})
            reader, writer = await asyncio.open_connection("127.0.0.1", s.api_port)
            writer.write(
                b"POST /v1/query HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {key}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            # Until an executor is working on it (its CPU time grows past a second).
            for _ in range(600):
                busy = [p for p, cpu in executors_of(query.popen.pid) if cpu > 1.0]
                if busy:
                    break
                await asyncio.sleep(0.05)
            assert busy, "no executor took the query"
            writer.close()
            # The executor is killed: gone within seconds, not after the query's 30 s.
            for _ in range(200):
                if not any(p in busy for p, _ in executors_of(query.popen.pid)):
                    break
                await asyncio.sleep(0.05)
            assert not any(p in busy for p, _ in executors_of(query.popen.pid)), fmt
            assert await reader.read() == b""  # nothing was answered to the gone caller
        for proc in (api, query):
            gone = [ln for ln in proc.log_path.read_text().splitlines() if "client_gone" in ln]
            assert len(gone) == 2, proc.log_path.read_text()[-2000:]
            assert all(sql not in ln and key not in ln for ln in gone)
    finally:
        api.stop()
        query.stop()


async def test_cli_json_and_the_v1_api_return_the_same_rows(
    u_settings: Settings, api: str, keys: dict[str, str], pool: asyncpg.Pool, dataset: str
) -> None:
    """One operations layer: `trace ... --json` and the /v1 route of the same verb return
    the same documents for the same org (tasks, DLQ, datasets, alert deliveries)."""
    import json

    org = ["--org-id", str(ORG_B)]
    data = await asyncpg.connect(u_settings.data_database_url)
    try:
        async with httpx.AsyncClient(base_url=api, timeout=20) as http:
            w, a = bearer(keys["b-writer"]), bearer(keys["b-admin"])
            made = await http.post(
                "/v1/tasks", json={"payload": {"operator": "noop"}, "count": 3}, headers=w
            )
            assert made.status_code == 201, made.text
            # a dead letter of org B, as the sink leaves one
            dead = uuid.uuid4()
            await pool.execute(
                "INSERT INTO state.queue_messages (message_id, queue_name, payload) VALUES ($1, 'buffer_queue_dlq', $2)",
                dead,
                {
                    "error": "bad line 3",
                    "deliveries": 5,
                    "original": {
                        "org_id": str(ORG_B),
                        "record_count": 9,
                        "batch_uri": "file:///x/b.jsonl",
                        "producer": {"task_id": str(uuid.uuid4()), "attempt": 1},
                    },
                },
            )
            # an alert of org B with a delivery and its two attempts
            spec = (
                "kind: chain_sync\nname: same-rows\nchain_id: 1\nrpc_pool: nowhere\n"
                "mode: {kind: fixed_target, to_block: 100}\n"
                "streams:\n  logs: {cryo_dataset: logs, chunk_size: 10}\n"
                "---\nkind: alert\nname: same-rows-alert\nsource: {dataset: same-rows.logs}\n"
                "rule: {sql: 'SELECT block_number FROM dataset'}\nidentity: [block_number]\n"
                "channels: [{type: webhook, url: 'https://hooks.example.com/t', secret_env: TRACE_HOOK_SECRET_X}]\n"
            )
            applied = await http.post("/v1/specs", content=spec, headers=w)
            assert applied.status_code == 200, applied.text
            alert_id = uuid.UUID(applied.json()["results"][1]["alert_id"])
            delivery = uuid.uuid4()
            await data.execute(
                "INSERT INTO data.alert_events (dedupe_key, org_id, alert_definition_id, event_time, block_number, tx_hash)"
                " VALUES ('same-rows:1', $1, $2, now(), 7, '0xabc')",
                ORG_B,
                alert_id,
            )
            await data.execute(
                "INSERT INTO data.alert_deliveries (delivery_id, org_id, dedupe_key, alert_definition_id, channel, status, attempts, max_attempts, last_status_code)"
                " VALUES ($1, $2, 'same-rows:1', $3, 0, 'delivered', 2, 12, 200)",
                delivery,
                ORG_B,
                alert_id,
            )
            await data.execute(
                "INSERT INTO data.delivery_attempts (delivery_id, attempt, started_at, duration_ms, status_code, outcome)"
                " VALUES ($1, 1, now(), 12, 500, 'retry'), ($1, 2, now(), 9, 200, 'delivered')",
                delivery,
            )
            pairs = [
                (["task", "list", "--limit", "10"], "/v1/tasks?limit=10", None),
                (["dlq", "list"], "/v1/dlq", "messages"),
                (["dataset", "list"], "/v1/datasets", "datasets"),
                (
                    ["alert", "deliveries", "same-rows-alert"],
                    "/v1/alerts/same-rows-alert/deliveries",
                    "deliveries",
                ),
                (["bundle", "list"], "/v1/bundles", "bundles"),
                (["alert", "list"], "/v1/alerts", "alerts"),
            ]
            for args, path, key in pairs:
                out = run_trace(u_settings, *args, *org, "--json")
                assert out.returncode == 0, (args, out.stderr)
                r = await http.get(path, headers=a)
                assert r.status_code == 200, r.text
                want = r.json() if key is None else r.json()[key]
                assert json.loads(out.stdout) == want, args
            # the documents hold what was made, so the comparison compared something
            tasks = json.loads(run_trace(u_settings, "task", "list", *org, "--json").stdout)[
                "tasks"
            ]
            assert {t["task_id"] for t in tasks} >= set(made.json()["task_ids"])
            (msg,) = json.loads(run_trace(u_settings, "dlq", "list", *org, "--json").stdout)
            assert msg["message_id"] == str(dead) and msg["error"] == "bad line 3"
            (d,) = json.loads(
                run_trace(
                    u_settings, "alert", "deliveries", "same-rows-alert", *org, "--json"
                ).stdout
            )
            assert [x["status_code"] for x in d["attempt_log"]] == [500, 200]
            # and the Lite org sees none of org B's rows
            lite = json.loads(run_trace(u_settings, "dlq", "list", "--json").stdout)
            assert str(dead) not in {m["message_id"] for m in lite}
    finally:
        await data.close()


def run_remote(api: str, key: str, *args: str, home: Path) -> Any:
    """`trace ARGS` against the API only (in this process: the remote path opens no database
    and no event loop), with no database it could reach."""
    from types import SimpleNamespace

    from click.testing import CliRunner

    from trace_platform.cli import cli

    env = {
        "TRACE_API_URL": api,
        "TRACE_API_KEY": key,
        "TRACE_HOME": str(home),
        "TRACE_STATE_DATABASE_URL": "postgresql://127.0.0.1:1/none",
        "TRACE_DATA_DATABASE_URL": "postgresql://127.0.0.1:1/none",
    }
    result = CliRunner().invoke(cli, list(args), env=env, prog_name="trace")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


async def test_the_remote_cli_prints_what_the_local_one_does(
    u_settings: Settings, api: str, keys: dict[str, str], dataset: str, tmp_path: Path
) -> None:
    made = run_trace(
        u_settings, "task", "create", "--payload", '{"operator": "noop"}', "--count", "3"
    )
    assert made.returncode == 0, made.stderr
    first, second, third = made.stdout.split()
    verbs = [
        ("task", "list", "--limit", "5"),
        ("task", "list", "--limit", "5", "--json"),
        ("task", "show", first),
        ("dataset", "list"),
        ("dataset", "list", "--json"),
        ("dataset", "show", dataset),
        ("alert", "list"),
        ("chain", "status"),
        ("chain", "status", "--json"),
        ("dlq", "list"),
        ("user", "list"),
        ("user", "list", "--json"),
        ("dataset", "query", dataset, "SELECT n, label FROM dataset WHERE n < 5 ORDER BY n"),
        ("dataset", "query", dataset, "SELECT count(*) AS c FROM dataset", "--json"),
        ("dlq", "redrive", "--all"),
    ]
    for args in verbs:
        local = run_trace(u_settings, *args)
        remote = run_remote(api, keys["admin"], *args, home=tmp_path)
        assert local.returncode == 0, (args, local.stderr)
        assert (remote.returncode, remote.stdout) == (0, local.stdout), (args, remote.stderr)
        assert keys["admin"] not in remote.stdout + remote.stderr
    # Writes go through the API too, with the same answers.
    local = run_trace(u_settings, "task", "cancel", second)
    remote = run_remote(api, keys["admin"], "task", "cancel", third, home=tmp_path)
    assert remote.returncode == 0 and local.returncode == 0
    assert remote.stdout.replace(third, second) == local.stdout
    for who, name in (("local", "cli-spec-a"), ("remote", "cli-spec-b")):
        spec = tmp_path / f"{name}.yaml"
        spec.write_text(
            f"kind: chain_sync\nname: {name}\nchain_id: 1\nrpc_pool: nowhere\n"
            "mode: {kind: fixed_target, to_block: 100}\n"
            "streams:\n  blocks: {cryo_dataset: blocks, chunk_size: 10}\n"
        )
        if who == "local":
            applied_local = run_trace(u_settings, "apply", str(spec))
        else:
            applied_remote = run_remote(api, keys["writer"], "apply", str(spec), home=tmp_path)
    assert applied_local.returncode == 0 and applied_remote.returncode == 0, applied_remote.stderr
    assert applied_remote.stdout.replace("cli-spec-b", "cli-spec-a") == applied_local.stdout
    made_user = run_remote(
        api, keys["admin"], "user", "create", "remote-made", "--role", "reader", home=tmp_path
    )
    assert made_user.returncode == 0 and "user remote-made (reader) created" in made_user.stdout
    assert f"console at {api.rstrip('/')}/ui" in made_user.stderr  # the deployment's, not local
    revoked = run_remote(api, keys["admin"], "user", "revoke", "remote-made", home=tmp_path)
    assert (revoked.returncode, revoked.stdout) == (0, "user remote-made: revoked\n")
    created = run_remote(api, keys["writer"], "task", "create", "--payload", "{}", home=tmp_path)
    assert created.returncode == 0, created.stderr
    shown = run_trace(u_settings, "task", "show", created.stdout.strip())
    assert shown.returncode == 0
    # Errors keep their meaning and exit codes; no key is ever printed.
    gone = run_remote(api, keys["admin"], "task", "show", str(uuid.uuid4()), home=tmp_path)
    assert gone.returncode == 1 and gone.stderr.startswith("error: ")
    denied = run_remote(api, keys["reader"], "task", "cancel", first, home=tmp_path)
    assert denied.returncode == 2 and "admin" in denied.stderr
    bad = run_remote(api, "not-a-key", "task", "list", home=tmp_path)
    assert bad.returncode == 2 and "not-a-key" not in bad.stdout + bad.stderr
    local_only = run_remote(api, keys["admin"], "dataset", "register", "x", __file__, home=tmp_path)
    assert local_only.returncode == 2
    assert "local installation only" in local_only.stderr
    down = run_remote("http://127.0.0.1:1", keys["admin"], "task", "list", home=tmp_path)
    assert down.returncode == 2 and "unreachable" in down.stderr
    assert keys["admin"] not in down.stderr
    for logs in LOGS:
        for log in logs.glob("*.log"):
            assert keys["admin"] not in log.read_text(errors="replace")


def test_the_sdk_pages_tasks_and_raises_the_api_codes(
    u_settings: Settings, api: str, keys: dict[str, str]
) -> None:
    from trace_platform.sdk import ApiError, Client

    with Client(api, keys["writer"]) as trace:
        ids = trace.create_tasks({"operator": "noop"}, count=7)
        assert len(ids) == 7
        paged = [t["task_id"] for t in trace.iter_tasks(page_size=3)]
        assert set(ids) <= set(paged) and len(paged) == len(set(paged))
        first = [t["task_id"] for t in trace.tasks(limit=200)["tasks"]]
        assert paged[: len(first)] == first  # the iterator's pages are the API's order
        with pytest.raises(ApiError) as forbidden:
            trace.cancel_task(ids[0])  # writers may not cancel
        assert (forbidden.value.status, forbidden.value.code) == (403, "forbidden")
        with pytest.raises(ApiError) as missing:
            trace.task(uuid.uuid4())
        assert missing.value.code == "not_found"
        assert keys["writer"] not in repr(trace) + str(missing.value)
