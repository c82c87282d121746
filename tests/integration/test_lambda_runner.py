"""The AWS runtime for UDFs, as far as this machine can run it:

- the runner's Lambda entry point is called the way Lambda's Python runtime calls it
  (`handler(event, context)` in a process holding only the function's configuration), with a
  real invocation for a real task: it fetches and verifies the bundle, runs the handler in
  the sandbox, uploads, publishes and completes through a real dispatcher, and the sink
  inserts the rows;
- the Lambda invoker sends that invocation to the named function over the Lambda API of an
  AWS-protocol server (moto's; without docker it echoes the event instead of running it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator

import asyncpg
import boto3
import httpx
import pytest

from tests.conftest import Proc, wait_until
from tests.helpers import create_tasks, task_row, worker_headers
from tests.integration.test_object_stores import aws_env, s3_endpoint  # noqa: F401 - fixtures
from tests.integration.test_udf import (  # noqa: F401 - fixtures
    register_python,
    rows_with,
    stack,
    udf_settings,
)
from trace_platform.adapters.lambda_invoker import LambdaRuntimeInvoker
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.config import Settings
from trace_platform.db.pool import create_pool
from trace_platform.db.sql import q
from trace_platform.domain.bundle import InvocationPayload


async def invocation_for(
    settings: Settings, http: httpx.AsyncClient, tid: uuid.UUID
) -> InvocationPayload:
    """What the dispatcher's UDF path hands an invoker: claim, then the bundle's signed URL."""
    claimed = await http.post(
        "/internal/task-claim",
        json={"task_id": str(tid), "worker_id": "dispatcher-udf"},
        headers=worker_headers(),
    )
    assert claimed.status_code == 200, claimed.text
    c = claimed.json()
    pool = await create_pool(settings.state_database_url or "", max_size=1)
    try:
        task = await pool.fetchrow("SELECT payload FROM state.tasks WHERE task_id = $1", tid)
        bundle = await pool.fetchrow(
            q("bundles", "get_bundle"), uuid.UUID(task["payload"]["udf"]["bundle_id"])
        )
    finally:
        await pool.close()
    return InvocationPayload(
        task_id=tid,
        attempt=c["attempt"],
        lease_token=c["lease_token"],
        lease_expires_at=c["lease_expires_at"],
        capability_token=c["capability_token"],
        bundle_url=object_store_from_settings(settings).presign(bundle["storage_uri"], "GET", 300),
        bundle_sha256=bundle["sha256"],
        language=bundle["language"],
        entrypoint=bundle["entrypoint"],
        work_payload=task["payload"].get("work_payload", {}),
    )


async def test_the_runner_runs_as_the_lambda_function_body(
    udf_settings: Settings,  # noqa: F811
    stack: dict[str, Proc],  # noqa: F811
    state_conn: asyncpg.Connection,
    data_conn: asyncpg.Connection,
) -> None:
    tag = "lambda-" + uuid.uuid4().hex[:6]
    pool = await create_pool(udf_settings.state_database_url or "", max_size=1)
    try:
        bundle_id = await register_python(
            pool,
            udf_settings,
            f"def handler(event, context):\n"
            f"    return [row('{tag}:' + str(i), n=i) for i in range(event['n'])]\n",
        )
    finally:
        await pool.close()
    (tid,) = await create_tasks(
        udf_settings.state_database_url or "",
        1,
        payload={
            "runtime": "lambda",
            "udf": {"bundle_id": str(bundle_id)},
            "work_payload": {"n": 3},
        },
        wake=False,  # no wake-up: the dispatcher's own UDF path stays out of it
    )
    async with httpx.AsyncClient(base_url=stack["dispatcher"].url or "", timeout=10) as http:
        event = await invocation_for(udf_settings, http, tid)
    # The function's configuration: where the dispatcher and query service are, the limits,
    # weak sandbox accepted (Lambda's micro-VM is the boundary) — and nothing secret.
    function_env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "TRACE_DISPATCHER_URL": udf_settings.resolved_dispatcher_url,
        "TRACE_RUNNER_TIMEOUT_SECONDS": "10",
        "TRACE_RUNNER_ALLOW_WEAK_SANDBOX": "1",
        "TRACE_HOME": "/nonexistent/lambda",
    }
    lambda_runtime = (
        "import json, sys\n"
        "from trace_platform.runner.lambda_entry import handler\n"
        "print(json.dumps(handler(json.load(sys.stdin), None)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", lambda_runtime],
        input=event.model_dump_json(),
        env=function_env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"code": 0}
    row = await task_row(state_conn, tid)
    assert row["status"] == "completed" and row["attempt"] == 1

    async def three() -> bool:
        return len(await rows_with(data_conn, tag)) == 3

    await wait_until(three, timeout=30, what="the Lambda-run handler's rows")


@pytest.fixture(scope="module")
def lambda_api(s3_endpoint: str) -> Iterator[str]:  # noqa: F811 - moto serves every service
    # Without docker, moto's Lambda echoes each invocation's event back as its answer.
    req = urllib.request.Request(
        s3_endpoint + "/moto-api/config",
        data=json.dumps({"lambda": {"use_docker": False}}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    urllib.request.urlopen(req, timeout=10).read()
    old = {k: os.environ.get(k) for k in ("AWS_ENDPOINT_URL_LAMBDA", "AWS_ENDPOINT_URL_IAM")}
    os.environ.update(AWS_ENDPOINT_URL_LAMBDA=s3_endpoint, AWS_ENDPOINT_URL_IAM=s3_endpoint)
    role = boto3.client("iam").create_role(
        RoleName="trace-runner-" + uuid.uuid4().hex[:6],
        AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
    )["Role"]["Arn"]
    boto3.client("lambda").create_function(
        FunctionName="trace-udf-runner",
        Runtime="python3.11",
        Role=role,
        Handler="trace_platform.runner.lambda_entry.handler",
        Code={"ZipFile": b"PK\x05\x06" + b"\x00" * 18},
    )
    yield s3_endpoint
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def sample_invocation() -> InvocationPayload:
    return InvocationPayload(
        task_id=uuid.uuid4(),
        attempt=2,
        lease_token=uuid.uuid4(),
        lease_expires_at="2026-01-01T00:00:00+00:00",
        capability_token="a.b.c",
        bundle_url="https://example.invalid/bundle.zip",
        bundle_sha256="0" * 64,
        language="python",
        entrypoint="handler.handler",
        work_payload={"k": [1, 2]},
    )


async def test_the_lambda_invoker_hands_the_invocation_to_the_runner_function(
    lambda_api: str,
) -> None:
    invocation = sample_invocation()
    answer = await LambdaRuntimeInvoker("trace-udf-runner", 10).call(invocation)
    assert answer == json.loads(invocation.model_dump_json())  # the event arrived unchanged


async def test_an_unreachable_lambda_api_is_logged_not_raised(lambda_api: str) -> None:
    # The lease reaper owns recovery: the invoker reports and returns, it never crashes the
    # dispatcher's UDF loop.
    client = boto3.client("lambda", endpoint_url="http://127.0.0.1:1")
    invoker = LambdaRuntimeInvoker("trace-udf-runner", 10, client=client)
    answer = await invoker.call(sample_invocation())
    assert answer == {"error": "EndpointConnectionError"}
