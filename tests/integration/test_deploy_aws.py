"""The AWS deployment, offline: `trace deploy aws synth` (cdk-nag must pass), cfn-lint on its
template, the template deployed into moto's CloudFormation on loopback, each role's allow /
deny matrix under moto's IAM enforcement, Trace's own SQS/S3 adapters running a workload on
the queues and bucket the stack made, `smoke`/`diff`/`migrate` against that stack, and
aws_cdk.assertions for what moto does not create (policies, autoscaling, egress rules).

moto limits, and what covers them: its KMS passes `*` as the resource of every call, so a
key-scoped `kms:Sign` grant is checked in the template (test_roles_are_the_iam_table), not by
a call; its IAM ignores policy conditions, so the `s3:prefix` condition on ListBucket is too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import boto3
import pytest
from botocore.exceptions import ClientError

from tests.conftest import Proc, free_port, start_dispatcher, start_proc, wait_until
from tests.helpers import create_tasks
from trace_platform.config import Settings
from trace_platform.deploy import iam as table

pytestmark = pytest.mark.timeout(300)
ACCOUNT_ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:"
PARAMETERS = {
    "ImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/trace@sha256:" + "a" * 64,
    "MigrateImageUri": "123456789012.dkr.ecr.us-east-1.amazonaws.com/trace@sha256:" + "b" * 64,
    "DatabaseSecretArn": ACCOUNT_ARN + "/test/trace/database/master-AbCdEf",
    "WorkerTokenSecretArn": ACCOUNT_ARN + "/test/trace/worker/token-AbCdEf",
}
AWS = {
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def synth(out: Path, *context: str) -> Path:
    args = [sys.executable, "-m", "trace_platform", "deploy", "aws", "synth", "--out", str(out)]
    for c in context:
        args += ["-c", c]
    done = subprocess.run(args, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "cdk-nag AwsSolutions: passed" in done.stdout
    return Path(done.stdout.split()[0])


@pytest.fixture(scope="module")
def template_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synth(tmp_path_factory.mktemp("cdk"), "env=test")


@pytest.fixture(scope="module")
def nat_template_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another deployment's choices: the NAT egress path, four workers, named zones."""
    return synth(
        tmp_path_factory.mktemp("cdk-nat"),
        "env=test",
        "egress=nat",
        "desired_worker=4",
        "availability_zones=eu-west-1b,eu-west-1c",
    )


@pytest.fixture(scope="module")
def template(template_path: Path) -> dict[str, Any]:
    return dict(json.loads(template_path.read_text()))


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto server of this module's own (the IAM tests switch its enforcement on)."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto-deploy") / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **AWS},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    old = {k: os.environ.get(k) for k in (*AWS, "AWS_ENDPOINT_URL")}
    os.environ.update(AWS, AWS_ENDPOINT_URL=url)
    yield url
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(10)


@pytest.fixture(scope="module")
def stack(moto: str, template_path: Path) -> dict[str, str]:
    """The template deployed into moto's CloudFormation: its outputs."""
    cf = boto3.client("cloudformation", endpoint_url=moto)
    cf.create_stack(
        StackName="trace-test",
        TemplateBody=template_path.read_text(),
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in PARAMETERS.items()],
        Capabilities=["CAPABILITY_IAM"],
    )
    found = cf.describe_stacks(StackName="trace-test")["Stacks"][0]
    assert found["StackStatus"] == "CREATE_COMPLETE", found.get("StackStatusReason")
    return {o["OutputKey"]: o["OutputValue"] for o in found["Outputs"]}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trace_platform", *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, **(env or {})},
    )


# -- synth -------------------------------------------------------------------------------


def test_cfn_lint_reports_no_errors(template_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cfnlint", str(template_path)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    # cfn-lint's exit code is a bit field: 2 = errors, 4 = warnings, 8 = informational.
    assert done.returncode & 2 == 0, done.stdout[-3000:]
    assert not [line for line in done.stdout.splitlines() if line[:1] == "E"], done.stdout


def test_cdk_nag_fails_the_synth_of_a_stack_that_breaks_a_rule() -> None:
    """The checks are wired, not decorative: a bucket without TLS enforcement or logs fails."""
    from trace_platform.deploy.aws import cdk  # sets jsii's environment before it starts
    from trace_platform.deploy.nag import check

    s3 = cdk.aws_s3

    app = cdk.App(analytics_reporting=False)
    bad = cdk.Stack(
        app, "Bad", synthesizer=cdk.DefaultStackSynthesizer(generate_bootstrap_version_rule=False)
    )
    s3.Bucket(bad, "Open")
    check(app)
    with pytest.raises(RuntimeError, match="AwsSolutions-S10"):
        app.synth()


def test_bad_context_is_a_one_line_error(tmp_path: Path) -> None:
    done = cli("deploy", "aws", "synth", "--out", str(tmp_path), "-c", "egress=maybe")
    assert done.returncode == 1
    assert done.stderr.strip() == "error: context egress must be none or nat"
    done = cli("deploy", "aws", "synth", "--out", str(tmp_path), "-c", "novalue")
    assert done.returncode == 1 and "is not KEY=VALUE" in done.stderr
    assert not list(tmp_path.glob("*.template.json"))  # nothing half-written


# -- the stack in moto ------------------------------------------------------------------


def test_the_stack_creates_what_trace_needs(moto: str, stack: dict[str, str]) -> None:
    sqs = boto3.client("sqs", endpoint_url=moto)
    prefix = stack["QueuePrefix"]
    assert prefix == "trace-test-"
    for q in table.QUEUES:
        name = table.queue_physical_name(prefix, q)
        url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        redrive = json.loads(attrs["RedrivePolicy"])
        assert redrive["deadLetterTargetArn"].endswith(":" + name + table.REDRIVE_SUFFIX)
        assert int(redrive["maxReceiveCount"]) == 10
        sqs.get_queue_url(QueueName=name + table.REDRIVE_SUFFIX)
    s3 = boto3.client("s3", endpoint_url=moto)
    rules = s3.get_bucket_encryption(Bucket=stack["Bucket"])["ServerSideEncryptionConfiguration"]
    assert rules["Rules"][0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "aws:kms"
    key = boto3.client("kms", endpoint_url=moto).get_public_key(KeyId=stack["TokenKeyArn"])
    assert stack["TokenKeyArn"].endswith(key["KeyId"].rsplit("/", 1)[-1])
    iam = boto3.client("iam", endpoint_url=moto)
    for component in table.COMPONENTS:
        role = stack[f"Role{component.capitalize()}Arn"].split("/")[-1]
        assert (
            iam.get_role(RoleName=role)["Role"]["Arn"] == stack[f"Role{component.capitalize()}Arn"]
        )
    fn = boto3.client("lambda", endpoint_url=moto).get_function_configuration(
        FunctionName=stack["RunnerFunction"]
    )
    assert sorted(fn["VpcConfig"]["SubnetIds"]) == sorted(stack["PrivateSubnets"].split(","))
    assert fn["VpcConfig"]["SecurityGroupIds"]
    assert fn["Role"] == stack["RoleRunnerArn"]
    ecs = boto3.client("ecs", endpoint_url=moto)
    services = ecs.list_services(cluster=stack["ClusterName"])["serviceArns"]
    assert len(services) == len(table.SERVICES)
    described = ecs.describe_services(cluster=stack["ClusterName"], services=services)
    commands = set()
    for service in described["services"]:
        task = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])
        container = task["taskDefinition"]["containerDefinitions"][0]
        commands.add(container["command"][0])
        env = {e["name"]: e["value"] for e in container["environment"]}
        assert env["TRACE_QUEUE_BACKEND"] == "sqs" and env["TRACE_SQS_QUEUE_PREFIX"] == prefix
        assert env["TRACE_OBJECT_STORE_URL"] == f"s3://{stack['Bucket']}/"
        secrets = {s["name"] for s in container["secrets"]}
        assert {"PGUSER", "PGPASSWORD", "TRACE_WORKER_TOKEN"} <= secrets
        assert not any("PASSWORD" in k or "TOKEN" in k for k in env)  # no secret in plain env
    assert commands == {table.COMMANDS[s] for s in table.SERVICES}
    db = boto3.client("rds", endpoint_url=moto).describe_db_instances()["DBInstances"]
    assert len(db) == 1 and db[0]["StorageEncrypted"] and db[0]["Engine"] == "postgres"


def test_smoke_diff_and_migrate_against_the_stack(moto: str, stack: dict[str, str]) -> None:
    done = cli("deploy", "aws", "smoke", "--stack", "trace-test", "--json")
    checks = {c["name"]: c for c in json.loads(done.stdout)}
    # moto's CloudFormation does not apply a bucket's PublicAccessBlockConfiguration (the
    # template sets it: test_bucket_blocks_public_access), so smoke says so, and fails.
    assert done.returncode == 1
    assert "NoSuchPublicAccessBlockConfiguration" in checks.pop("bucket public access")["detail"]
    # moto's CloudFormation also makes every KMS key symmetric whatever its KeySpec says (the
    # template asks for ECC_NIST_P256 SIGN_VERIFY: test_roles_are_the_iam_table), and smoke
    # reports what the key really is.
    assert checks.pop("token key")["detail"] == "None ENCRYPT_DECRYPT"
    failed = {k: c["detail"] for k, c in checks.items() if not c["ok"]}
    assert checks and not failed, failed
    assert len([c for c in checks if c.startswith("queue ")]) == len(table.QUEUES)

    done = cli("deploy", "aws", "smoke", "--stack", "no-such-stack")
    assert done.returncode == 1 and done.stderr.startswith("error: ValidationError")

    done = cli("deploy", "aws", "migrate", "--stack", "trace-test", "--no-wait")
    assert done.returncode == 0, done.stderr
    ecs = boto3.client("ecs", endpoint_url=moto)
    tasks = ecs.list_tasks(cluster=stack["ClusterName"], startedBy="trace-deploy-migrate")
    assert len(tasks["taskArns"]) == 1
    task = ecs.describe_tasks(cluster=stack["ClusterName"], tasks=tasks["taskArns"])["tasks"][0]
    assert task["taskDefinitionArn"] == stack["MigrateTaskDefinition"]
    definition = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])
    container = definition["taskDefinition"]["containerDefinitions"][0]
    assert container["image"] == PARAMETERS["MigrateImageUri"]  # migrations lead an upgrade
    assert container["command"] == ["migrate"]


def test_diff_reports_what_a_new_synth_changes(
    moto: str, stack: dict[str, str], template_path: Path, nat_template_path: Path
) -> None:
    done = cli(
        "deploy", "aws", "diff", "--stack", "trace-test", "--template", str(template_path),
        "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"added": [], "removed": [], "changed": []}
    done = cli(
        "deploy", "aws", "diff", "--stack", "trace-test", "--template", str(nat_template_path),
        "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    changes = json.loads(done.stdout)
    assert any(a.startswith("VpcpublicSubnet") for a in changes["added"])  # the NAT's subnets
    assert not changes["removed"]
    assert any(c.startswith("ServiceWorker") for c in changes["changed"])  # desired 2 -> 4
    done = cli(
        "deploy", "aws", "diff", "--stack", "trace-test", "--template", str(nat_template_path)
    )
    assert done.returncode == 0 and "~ ServiceWorker" in done.stdout


# -- least privilege, by behaviour ---------------------------------------------------------

ALLOW, DENY = True, False


def _matrix() -> list[tuple[str, str, bool]]:
    return [
        ("dispatcher", "send task_wakeup", ALLOW),
        ("dispatcher", "receive task_wakeup", DENY),
        ("dispatcher", "send buffer_queue", DENY),
        ("dispatcher", "put buffers/", ALLOW),
        ("dispatcher", "put datasets/", ALLOW),  # a DAG UDF range's partition upload URL
        ("dispatcher", "get secret", DENY),
        ("worker", "receive task_wakeup", ALLOW),
        ("worker", "send buffer_queue", DENY),
        ("worker", "put datasets/", ALLOW),
        ("worker", "put bundles/", DENY),
        ("worker", "receive task_wakeup redrive", DENY),
        ("sink", "receive buffer_queue", ALLOW),
        ("sink", "send buffer_queue_dlq", ALLOW),
        ("sink", "get buffers/", ALLOW),
        ("sink", "put datasets/", DENY),
        ("sink", "put buffers/", DENY),
        ("sink", "receive buffer_queue redrive", DENY),
        ("query", "get datasets/", ALLOW),
        ("query", "get buffers/", DENY),
        ("query", "put datasets/", DENY),
        ("query", "receive task_wakeup", DENY),
        ("api", "put bundles/", ALLOW),
        ("api", "get datasets/", DENY),
        ("deliver", "get datasets/", DENY),
        ("deliver", "send task_wakeup", DENY),
        ("runner", "get datasets/", DENY),
        ("runner", "put buffers/", DENY),
        ("runner", "send task_wakeup", DENY),
        ("runner", "receive udf_invoke", DENY),
        ("runner", "kms public key", DENY),
        ("runner", "get secret", DENY),
    ]


@pytest.fixture(scope="module")
def assumed(moto: str, stack: dict[str, str]) -> dict[str, dict[str, str]]:
    """Credentials of each role (assumed while moto does not check yet), and the objects the
    matrix reads."""
    s3 = boto3.client("s3", endpoint_url=moto)
    for key in ("datasets/d/x.parquet", "buffers/t/1/b.jsonl", "bundles/b.zip"):
        s3.put_object(Bucket=stack["Bucket"], Key=key, Body=b"x")
    sts = boto3.client("sts", endpoint_url=moto)
    out = {}
    for component in table.COMPONENTS:
        arn = stack[f"Role{component.capitalize()}Arn"]
        out[component] = sts.assume_role(RoleArn=arn, RoleSessionName=component)["Credentials"]
    return out


def _auth(moto: str, count: str) -> None:
    request = urllib.request.Request(
        moto + "/moto-api/reset-auth",
        data=count.encode(),
        method="POST",
        headers={"Content-Type": "text/plain"},
    )
    urllib.request.urlopen(request, timeout=10)


@pytest.fixture
def enforced(
    moto: str, stack: dict[str, str], assumed: dict[str, dict[str, str]]
) -> Iterator[None]:
    _auth(moto, "0")  # every request from here on is authenticated and authorized
    yield
    _auth(moto, "inf")
    sqs = boto3.client("sqs", endpoint_url=moto)  # what an allowed send left behind
    for q in table.QUEUES:
        for name in (q, q + table.REDRIVE_SUFFIX):
            url = sqs.get_queue_url(QueueName=stack["QueuePrefix"] + name)["QueueUrl"]
            while got := sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages"):
                for m in got:
                    sqs.delete_message(QueueUrl=url, ReceiptHandle=m["ReceiptHandle"])


@pytest.mark.parametrize(("component", "action", "allowed"), _matrix())
def test_each_role_may_do_its_rows_and_nothing_listed_beyond(
    moto: str,
    stack: dict[str, str],
    assumed: dict[str, dict[str, str]],
    enforced: None,
    component: str,
    action: str,
    allowed: bool,
) -> None:
    creds = assumed[component]

    def client(service: str) -> Any:
        return boto3.client(
            service,
            endpoint_url=moto,
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
        )

    def queue_url(name: str) -> str:
        physical = table.queue_physical_name(stack["QueuePrefix"], name.split()[0])
        if name.endswith(" redrive"):
            physical += table.REDRIVE_SUFFIX
        return f"{moto}/123456789012/{physical}"

    verb, _, target = action.partition(" ")
    bucket = stack["Bucket"]
    calls: dict[str, Callable[[], Any]] = {
        "send": lambda: client("sqs").send_message(QueueUrl=queue_url(target), MessageBody="{}"),
        "receive": lambda: client("sqs").receive_message(
            QueueUrl=queue_url(target), VisibilityTimeout=0
        ),
        "put": lambda: client("s3").put_object(Bucket=bucket, Key=f"{target}m/y", Body=b"y"),
        "get": lambda: client("s3").get_object(
            Bucket=bucket,
            Key={
                "datasets/": "datasets/d/x.parquet",
                "buffers/": "buffers/t/1/b.jsonl",
                "bundles/": "bundles/b.zip",
            }[target],
        ),
        "kms": lambda: client("kms").get_public_key(KeyId=stack["TokenKeyArn"]),
    }
    if verb == "get" and target == "secret":
        call: Callable[[], Any] = lambda: client("secretsmanager").get_secret_value(  # noqa: E731
            SecretId=PARAMETERS["WorkerTokenSecretArn"]
        )
    else:
        call = calls[verb]
    if allowed:
        call()
        return
    with pytest.raises(ClientError) as denied:
        call()
    code = denied.value.response["Error"]["Code"]
    assert code in ("AccessDenied", "AccessDeniedException", "403"), code


# -- Trace's adapters on the stack's resources ---------------------------------------------


async def test_the_kernel_runs_on_the_stack_queues_and_bucket(
    moto: str,
    stack: dict[str, str],
    settings: Settings,
    tmp_path: Path,
    state_conn: asyncpg.Connection,
    data_conn: asyncpg.Connection,
) -> None:
    """Dispatcher, worker and sink with TRACE_QUEUE_BACKEND=sqs on the queues the stack made
    (its prefix; they create nothing) and the stack's bucket: tasks complete, rows land, and
    nothing reaches a dead-letter queue."""
    s = settings.replace(
        queue_backend="sqs",
        sqs_queue_prefix=stack["QueuePrefix"],
        object_store_url=f"s3://{stack['Bucket']}/",
        s3_endpoint_url=moto,
    )
    procs: list[Proc] = [
        await start_dispatcher(s, tmp_path),
        start_proc(s, tmp_path, "sink"),
        start_proc(s, tmp_path, "worker", "--concurrency", "4"),
    ]
    try:
        seed = "stack-" + uuid.uuid4().hex[:6]
        ids = await create_tasks(
            s.state_database_url or "",
            5,
            payload={"operator": "emit_alerts", "count": 20, "seed": seed},
        )

        async def done() -> bool:
            n = await state_conn.fetchval(
                "SELECT count(*) FROM state.tasks WHERE task_id = ANY($1) AND status = 'completed'",
                ids,
            )
            return bool(n == len(ids))

        async def rows() -> bool:
            n = await data_conn.fetchval(
                "SELECT count(*) FROM data.alert_events WHERE dedupe_key LIKE $1", f"{seed}:%"
            )
            return bool(n == 20)

        await wait_until(done, timeout=90, what="tasks completed on the stack's queues")
        await wait_until(rows, timeout=90, what="rows through the stack's buffer queue")
        assert await state_conn.fetchval("SELECT count(*) FROM state.queue_messages") == 0
        sqs = boto3.client("sqs", endpoint_url=moto)
        for q in table.QUEUES:
            for name in (q, q + table.REDRIVE_SUFFIX):
                if name == q and q != table.BUFFER_DLQ:
                    continue
                url = sqs.get_queue_url(QueueName=stack["QueuePrefix"] + name)["QueueUrl"]
                attrs = sqs.get_queue_attributes(
                    QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"]
                )
                assert attrs["Attributes"]["ApproximateNumberOfMessages"] == "0", name
        # The batches went through the stack's bucket, under buffers/.
        objects = boto3.client("s3", endpoint_url=moto).list_objects_v2(
            Bucket=stack["Bucket"], Prefix="buffers/"
        )
        assert objects.get("KeyCount", 0) >= 1
    finally:
        for p in procs:
            p.stop()
    for p in procs:
        assert "Traceback" not in p.log_path.read_text(errors="replace")


# -- what moto does not create: aws_cdk.assertions on the template -------------------------


@pytest.fixture(scope="module")
def assertions(template: dict[str, Any]) -> Any:
    from aws_cdk.assertions import Template

    return Template.from_json(template)


def _deny_insecure() -> Any:
    from aws_cdk.assertions import Match

    return Match.object_like(
        {
            "PolicyDocument": Match.object_like(
                {
                    "Statement": Match.array_with(
                        [
                            Match.object_like(
                                {
                                    "Effect": "Deny",
                                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                                }
                            )
                        ]
                    )
                }
            )
        }
    )


def test_bucket_and_queues_refuse_requests_without_tls(
    assertions: Any, template: dict[str, Any]
) -> None:
    assertions.all_resources_properties("AWS::S3::BucketPolicy", _deny_insecure())
    assertions.all_resources_properties("AWS::SQS::QueuePolicy", _deny_insecure())
    queues = [r for r in template["Resources"].values() if r["Type"] == "AWS::SQS::Queue"]
    policies = [r for r in template["Resources"].values() if r["Type"] == "AWS::SQS::QueuePolicy"]
    assert len(queues) == 2 * len(table.QUEUES) == len(policies)


def test_bucket_blocks_public_access(assertions: Any) -> None:
    assertions.has_resource_properties(
        "AWS::S3::Bucket",
        {
            "PublicAccessBlockConfiguration": {
                "BlockPublicAcls": True,
                "BlockPublicPolicy": True,
                "IgnorePublicAcls": True,
                "RestrictPublicBuckets": True,
            },
            "BucketEncryption": {
                "ServerSideEncryptionConfiguration": [
                    {
                        "ServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms"},
                        "BucketKeyEnabled": True,
                    }
                ]
            },
        },
    )


def test_workers_scale_on_their_queue_depth(assertions: Any, template: dict[str, Any]) -> None:
    from aws_cdk.assertions import Match

    assertions.resource_count_is("AWS::ApplicationAutoScaling::ScalableTarget", 1)
    assertions.has_resource_properties(
        "AWS::ApplicationAutoScaling::ScalableTarget",
        {"ScalableDimension": "ecs:service:DesiredCount", "MinCapacity": 2, "MaxCapacity": 10},
    )
    assertions.has_resource_properties(
        "AWS::ApplicationAutoScaling::ScalingPolicy", {"PolicyType": "StepScaling"}
    )
    wakeup = next(
        k
        for k, r in template["Resources"].items()
        if r["Type"] == "AWS::SQS::Queue"
        and r["Properties"]["QueueName"] == "trace-test-task_wakeup"
    )
    assertions.has_resource_properties(
        "AWS::CloudWatch::Alarm",
        {
            "MetricName": "ApproximateNumberOfMessagesVisible",
            "Namespace": "AWS/SQS",
            "Dimensions": [{"Name": "QueueName", "Value": {"Fn::GetAtt": [wakeup, "QueueName"]}}],
            "AlarmActions": Match.any_value(),
        },
    )


def _internet_egress(resources: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Egress rules to 0.0.0.0/0 by security group (inline rules and rule resources)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for key, r in resources.items():
        if r["Type"] == "AWS::EC2::SecurityGroup":
            rules = [(key, rule) for rule in r["Properties"].get("SecurityGroupEgress", [])]
        elif r["Type"] == "AWS::EC2::SecurityGroupEgress":
            rules = [(r["Properties"]["GroupId"]["Fn::GetAtt"][0], r["Properties"])]
        else:
            continue
        for group, rule in rules:
            if rule.get("CidrIp") == "0.0.0.0/0":
                out.setdefault(group, []).append(rule)
    return out


def test_egress_is_denied_but_for_written_paths(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    groups = [r for r in resources.values() if r["Type"] == "AWS::EC2::SecurityGroup"]
    assert len(groups) >= len(table.SERVICES) + 1
    for g in groups:  # CDK's "no egress" marker where a group has no rule of its own
        for rule in g["Properties"].get("SecurityGroupEgress", []):
            assert rule.get("CidrIp") in (None, "255.255.255.255/32"), rule
    egress = [r for r in resources.values() if r["Type"] == "AWS::EC2::SecurityGroupEgress"]
    assert egress
    assert _internet_egress(resources) == {}
    assert template["Resources"] and not [
        r for r in template["Resources"].values() if r["Type"] == "AWS::EC2::NatGateway"
    ]


def test_the_nat_egress_path_opens_https_for_deliver_worker_and_dispatcher_only(
    nat_template_path: Path,
) -> None:
    nat = json.loads(nat_template_path.read_text())
    resources = nat["Resources"]
    assert [r for r in resources.values() if r["Type"] == "AWS::EC2::NatGateway"]
    opened = _internet_egress(resources)
    for rules in opened.values():
        assert [(p["IpProtocol"], p["FromPort"], p["ToPort"]) for p in rules] == [("tcp", 443, 443)]
    assert {g[: -len("XXXXXXXX")] for g in opened} == {"SgDeliver", "SgWorker", "SgDispatcher"}
    zones = {
        r["Properties"]["AvailabilityZone"]
        for r in resources.values()
        if r["Type"] == "AWS::EC2::Subnet"
    }
    assert zones == {"eu-west-1b", "eu-west-1c"}  # the zones named, offline


def test_secrets_are_parameters_by_arn(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    for name in ("DatabaseSecretArn", "WorkerTokenSecretArn"):
        assert params[name]["Type"] == "String" and params[name]["NoEcho"] is True
    # No secret is made here (an attachment records the database's host in the given one).
    assert not [
        r for r in template["Resources"].values() if r["Type"] == "AWS::SecretsManager::Secret"
    ]
    text = json.dumps(template)
    assert '"Ref": "WorkerTokenSecretArn"' in text and '"Ref": "DatabaseSecretArn"' in text


def test_roles_are_the_iam_table(template: dict[str, Any]) -> None:
    """Each component's inline policy holds exactly its table rows (and the data key for the
    encrypted bucket and queues): generated from one place, nothing more."""
    resources = template["Resources"]
    role_of = {
        k: next(c for c in table.COMPONENTS if k.startswith(f"Role{c.capitalize()}"))
        for k, r in resources.items()
        if r["Type"] == "AWS::IAM::Role" and k.startswith("Role")
    }
    granted: dict[str, set[str]] = {c: set() for c in table.COMPONENTS}
    for r in resources.values():
        if r["Type"] != "AWS::IAM::Policy":
            continue
        for role in r["Properties"]["Roles"]:
            component = role_of.get(role["Ref"])
            if component is None:
                continue  # CDK's execution roles (image pull, logs, secrets injection)
            for st in r["Properties"]["PolicyDocument"]["Statement"]:
                actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
                granted[component] |= set(actions)
    for component, grants in table.COMPONENTS.items():
        expected = {a for g in grants for a in g.actions}
        if any(g.kind in ("queue", "prefix") for g in grants):
            expected |= {"kms:Decrypt", "kms:GenerateDataKey"}
        assert granted[component] == expected, component
    assert not any("*" in a for actions in granted.values() for a in actions)
    # The signing key: the dispatcher signs, the query service reads the public key, no one
    # else may use it.
    key = next(
        k for k, r in resources.items() if r["Type"] == "AWS::KMS::Key" and k.startswith("TokenKey")
    )
    users = set()
    for r in resources.values():
        if r["Type"] == "AWS::IAM::Policy":
            for st in r["Properties"]["PolicyDocument"]["Statement"]:
                if st.get("Resource") == {"Fn::GetAtt": [key, "Arn"]}:
                    users |= {role_of.get(x["Ref"]) for x in r["Properties"]["Roles"]}
    assert users == {"dispatcher", "query"}
    assert resources[key]["Properties"]["KeySpec"] == "ECC_NIST_P256"
    assert resources[key]["Properties"]["KeyUsage"] == "SIGN_VERIFY"


def test_the_dockerfile_passes_hadolint_and_pins_its_bases() -> None:
    dockerfile = Path(__file__).resolve().parents[2] / "Dockerfile"
    done = subprocess.run(
        [str(Path(sys.executable).parent / "hadolint"), str(dockerfile)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = dockerfile.read_text()
    froms = [line for line in text.splitlines() if line.startswith("FROM ")]
    assert len(froms) >= 3 and all("@sha256:" in line for line in froms)  # multi-stage, pinned
    assert "USER 10001" in text and "bubblewrap=" in text and "/usr/local/bin/node" in text
    assert "awslambdaric" in text  # the runner Lambda's entry point (deploy/aws.py)


def test_the_docs_iam_table_is_the_generated_one() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "deploy-aws.md").read_text()
    start = doc.index("<!-- iam-table")
    body = doc[doc.index("\n", start) + 1 : doc.index("<!-- /iam-table -->")]
    done = cli("deploy", "aws", "iam")
    assert done.returncode == 0
    assert body == done.stdout
