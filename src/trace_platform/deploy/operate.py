"""`trace deploy aws diff|migrate|smoke`: what the CLI does with a deployed stack, through
boto3 (its usual chain: AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL for an AWS-protocol server).

Every function raises DeployError with a one-line reason; none prints a secret (the stack's
outputs hold names and ARNs only).
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trace_platform.deploy import iam as table


class DeployError(Exception):
    """A deployment step failed; the message is the one-line reason."""


def _client(service: str) -> Any:
    try:
        import boto3
        from botocore.exceptions import BotoCoreError
    except ImportError:
        raise DeployError("boto3 is missing: pip install 'trace-platform[aws]'") from None
    try:
        return boto3.client(service)
    except BotoCoreError as exc:  # no region, no credentials chain, a bad profile
        raise DeployError(f"{type(exc).__name__}: {exc}") from None


def _call(fn: Any, **kwargs: Any) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return fn(**kwargs)
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise DeployError(f"{error.get('Code', 'error')}: {error.get('Message', '')}") from None
    except BotoCoreError as exc:
        raise DeployError(f"{type(exc).__name__}: {exc}") from None


def outputs(stack: str) -> dict[str, str]:
    """The stack's outputs (names, ARNs, URLs)."""
    cf = _client("cloudformation")
    reply = _call(cf.describe_stacks, StackName=stack)
    found = reply["Stacks"][0]
    status = found["StackStatus"]
    if not status.endswith("_COMPLETE") or "ROLLBACK" in status or "DELETE" in status:
        raise DeployError(f"stack {stack} is {status}")
    return {o["OutputKey"]: o["OutputValue"] for o in found.get("Outputs", [])}


def diff(stack: str, template: Path) -> dict[str, list[str]]:
    """Resources the synthesized template adds, removes or changes against the deployed one
    (by logical id; changed = other type or properties)."""
    cf = _client("cloudformation")
    body = _call(cf.get_template, StackName=stack, TemplateStage="Original")["TemplateBody"]
    deployed = json.loads(body) if isinstance(body, str) else body
    new = json.loads(template.read_text())
    old_r, new_r = deployed.get("Resources", {}), new.get("Resources", {})
    return {
        "added": sorted(set(new_r) - set(old_r)),
        "removed": sorted(set(old_r) - set(new_r)),
        "changed": sorted(k for k in set(old_r) & set(new_r) if old_r[k] != new_r[k]),
    }


def migrate(stack: str, wait: bool = True, timeout: float = 900.0) -> dict[str, Any]:
    """Run the stack's one-off migration task (`trace migrate`) on Fargate and, with `wait`,
    until it stops: services should update only after it exits 0."""
    out = outputs(stack)
    ecs = _client("ecs")
    reply = _call(
        ecs.run_task,
        cluster=out["ClusterName"],
        taskDefinition=out["MigrateTaskDefinition"],
        launchType="FARGATE",
        count=1,
        networkConfiguration={
            "awsvpcConfiguration": {
                "subnets": out["PrivateSubnets"].split(","),
                "securityGroups": [out["MigrateSecurityGroup"]],
                "assignPublicIp": "DISABLED",
            }
        },
        startedBy="trace-deploy-migrate",
    )
    if reply.get("failures"):
        raise DeployError(f"the migration task did not start: {reply['failures'][0]}")
    task = reply["tasks"][0]
    result = {"task": task["taskArn"], "status": task.get("lastStatus"), "exit_code": None}
    if not wait:
        return result
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        described = _call(ecs.describe_tasks, cluster=out["ClusterName"], tasks=[task["taskArn"]])
        task = described["tasks"][0]
        if task.get("lastStatus") == "STOPPED":
            code = next(
                (c.get("exitCode") for c in task.get("containers", []) if "exitCode" in c), None
            )
            result.update(status="STOPPED", exit_code=code)
            if code != 0:
                raise DeployError(
                    f"the migration task stopped with exit code {code}"
                    f" ({task.get('stoppedReason', 'no reason given')}); see its logs"
                )
            return result
        time.sleep(5)
    raise DeployError(f"the migration task did not stop within {timeout:.0f} s")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def smoke(stack: str, api_url: str | None = None) -> list[Check]:
    """What a deployed stack must have for Trace to run: its queues with their redrive DLQs,
    the bucket (encrypted, public access blocked), the signing key, the runner Lambda in the
    VPC, the ECS services, and (when reachable) the API's /healthz."""
    out = outputs(stack)
    checks: list[Check] = []
    sqs = _client("sqs")
    prefix = out["QueuePrefix"]
    for q in table.QUEUES:
        name = table.queue_physical_name(prefix, q)
        try:
            url = _call(sqs.get_queue_url, QueueName=name)["QueueUrl"]
            attrs = _call(sqs.get_queue_attributes, QueueUrl=url, AttributeNames=["All"])
            redrive = json.loads(attrs["Attributes"].get("RedrivePolicy", "{}"))
            ok = str(redrive.get("deadLetterTargetArn", "")).endswith(name + table.REDRIVE_SUFFIX)
            checks.append(Check(f"queue {q}", ok, f"redrive to {name}{table.REDRIVE_SUFFIX}"))
        except DeployError as exc:
            checks.append(Check(f"queue {q}", False, str(exc)))
    s3 = _client("s3")
    try:
        enc = _call(s3.get_bucket_encryption, Bucket=out["Bucket"])
        rules = enc["ServerSideEncryptionConfiguration"]["Rules"]
        algo = rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"]
        checks.append(Check("bucket encryption", algo == "aws:kms", algo))
    except DeployError as exc:
        checks.append(Check("bucket encryption", False, str(exc)))
    try:
        block = _call(s3.get_public_access_block, Bucket=out["Bucket"])
        conf = block["PublicAccessBlockConfiguration"]
        checks.append(Check("bucket public access", all(conf.values()), "all four blocks on"))
    except DeployError as exc:
        checks.append(Check("bucket public access", False, str(exc)))
    kms = _client("kms")
    try:
        key = _call(kms.get_public_key, KeyId=out["TokenKeyArn"])
        spec = f"{key.get('KeySpec')} {key.get('KeyUsage')}"
        checks.append(Check("token key", spec == "ECC_NIST_P256 SIGN_VERIFY", spec))
    except DeployError as exc:
        checks.append(Check("token key", False, str(exc)))
    lam = _client("lambda")
    try:
        fn = _call(lam.get_function_configuration, FunctionName=out["RunnerFunction"])
        subnets = fn.get("VpcConfig", {}).get("SubnetIds") or []
        checks.append(Check("runner in the VPC", bool(subnets), f"{len(subnets)} subnet(s)"))
    except DeployError as exc:
        checks.append(Check("runner in the VPC", False, str(exc)))
    ecs = _client("ecs")
    try:
        arns = _call(ecs.list_services, cluster=out["ClusterName"])["serviceArns"]
        checks.append(
            Check(
                "ECS services",
                len(arns) == len(table.SERVICES),
                f"{len(arns)} of {len(table.SERVICES)}",
            )
        )
    except DeployError as exc:
        checks.append(Check("ECS services", False, str(exc)))
    if api_url:
        try:
            with urllib.request.urlopen(api_url.rstrip("/") + "/healthz", timeout=10) as r:  # noqa: S310
                checks.append(Check("API /healthz", r.status == 200, f"HTTP {r.status}"))
        except OSError as exc:
            checks.append(Check("API /healthz", False, type(exc).__name__))
    return checks
