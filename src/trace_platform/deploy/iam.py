"""Least privilege on AWS, per component: the one table the CDK stack, the docs and the tests
read (`docs/deploy-aws.md` prints it with `trace deploy aws iam`).

A grant names actions on a resource *kind*, not an ARN: the stack resolves kinds to its own
resources (a queue, its dead-letter queue, a prefix of the bucket, the signing key), the
tests resolve them to the resources a deployed stack reports. A component is granted nothing
that is not here: no wildcard actions, no `*` resources but where AWS has none to name
(a Lambda's network interfaces, which the VPC-attached function creates itself).

Secrets are not here: ECS injects them at task start with the task's *execution* role, which
may read only the secrets that task names; the process itself never reads Secrets Manager.
"""

from __future__ import annotations

from dataclasses import dataclass

from trace_platform.ports import BUFFER_DLQ, BUFFER_QUEUE, TASK_WAKEUP, UDF_QUEUE

# Queues the stack creates: Trace's queue names (ports), each with a redrive DLQ of its own.
QUEUES = (TASK_WAKEUP, UDF_QUEUE, BUFFER_QUEUE, BUFFER_DLQ)
REDRIVE_SUFFIX = "-redrive"  # the SQS dead-letter queue of queue Q is Q + this
# Prefixes of the one bucket (SPEC §5 storage layout).
PREFIXES = ("buffers/", "datasets/", "bundles/")

SEND = ("sqs:SendMessage", "sqs:GetQueueUrl", "sqs:GetQueueAttributes")
CONSUME = (
    "sqs:ReceiveMessage",
    "sqs:DeleteMessage",
    "sqs:ChangeMessageVisibility",
    "sqs:GetQueueUrl",
    "sqs:GetQueueAttributes",
)
READ = ("s3:GetObject",)
WRITE = ("s3:PutObject", "s3:AbortMultipartUpload")
LIST = ("s3:ListBucket",)


@dataclass(frozen=True)
class Grant:
    actions: tuple[str, ...]
    kind: str  # "queue", "bucket", "prefix", "key", "function", "logs", "eni"
    target: str = ""  # a queue name, a prefix, or "" for the stack's one key / function
    why: str = ""


COMPONENTS: dict[str, tuple[Grant, ...]] = {
    "dispatcher": (
        Grant(SEND, "queue", TASK_WAKEUP, "wakes workers (outbox drain)"),
        Grant(SEND, "queue", UDF_QUEUE, "queues UDF invocations"),
        Grant(CONSUME, "queue", UDF_QUEUE, "invokes the runner for queued UDF calls"),
        Grant(("kms:Sign", "kms:GetPublicKey"), "key", "", "signs capability tokens"),
        Grant(("lambda:InvokeFunction",), "function", "", "runs UDF attempts in the runner"),
        Grant(WRITE, "prefix", "buffers/", "pre-signed upload URLs for attempts' batches"),
        Grant(WRITE, "prefix", "datasets/", "pre-signed upload URLs for DAG UDF partitions"),
        Grant(READ, "prefix", "bundles/", "hands bundles to the runner"),
        Grant(READ, "prefix", "datasets/", "checks chain range files at commit"),
        Grant(LIST, "bucket", "datasets/", "lists a range's files at commit"),
    ),
    "worker": (
        Grant(CONSUME, "queue", TASK_WAKEUP, "claims tasks on wake-up"),
        Grant(READ + WRITE, "prefix", "datasets/", "writes extracted chain ranges"),
        Grant(LIST, "bucket", "datasets/", "compaction lists a dataset's parts"),
        Grant(READ + WRITE, "prefix", "buffers/", "operators' batches"),
    ),
    "sink": (
        Grant(CONSUME, "queue", BUFFER_QUEUE, "receives published batches"),
        Grant(SEND, "queue", BUFFER_QUEUE, "redelivers a rejected batch later"),
        Grant(SEND, "queue", BUFFER_DLQ, "dead-letters a poison batch"),
        Grant(CONSUME, "queue", BUFFER_DLQ, "`trace dlq` lists and replays"),
        Grant(READ, "prefix", "buffers/", "reads batches to upsert"),
    ),
    "query": (
        Grant(READ, "prefix", "datasets/", "reads granted datasets"),
        Grant(LIST, "bucket", "datasets/", "expands a dataset's glob"),
        Grant(("kms:GetPublicKey",), "key", "", "verifies capability tokens"),
    ),
    "deliver": (),  # webhooks: the data database and HTTPS egress only
    "api": (
        Grant(WRITE, "prefix", "bundles/", "uploads bundles"),
        Grant(READ, "prefix", "bundles/", "serves bundle details"),
        Grant(SEND, "queue", BUFFER_DLQ, "`dlq` replay through the API"),
        Grant(CONSUME, "queue", BUFFER_DLQ, "`dlq` list through the API"),
    ),
    "migrate": (),  # the one-off migration task: the databases only
    "runner": (
        Grant(
            ("logs:CreateLogStream", "logs:PutLogEvents"),
            "logs",
            "",
            "its own log group",
        ),
        Grant(
            (
                "ec2:CreateNetworkInterface",
                "ec2:DescribeNetworkInterfaces",
                "ec2:DeleteNetworkInterface",
                "ec2:AssignPrivateIpAddresses",
                "ec2:UnassignPrivateIpAddresses",
            ),
            "eni",
            "",
            "a VPC-attached Lambda's interfaces (AWS has no ARN to scope them to)",
        ),
    ),
}

# The ECS services of the stack (one Fargate service each); the runner is a Lambda and
# migrate a one-off task definition.
SERVICES = ("dispatcher", "worker", "sink", "query", "deliver", "api")
# The process each service runs (`trace <command>`).
COMMANDS = {
    "dispatcher": "dispatcher",
    "worker": "worker",
    "sink": "sink",
    "query": "query-service",
    "deliver": "deliver",
    "api": "api",
    "migrate": "migrate",
}


def queue_physical_name(prefix: str, queue: str) -> str:
    """The SQS name the adapters use for a Trace queue (`TRACE_SQS_QUEUE_PREFIX` + name)."""
    return f"{prefix}{queue}"


def table() -> list[tuple[str, str, str, str]]:
    """(component, actions, resource, why) rows, for docs and `trace deploy aws iam`."""
    rows = []
    for component, grants in COMPONENTS.items():
        if not grants:
            rows.append((component, "(none)", "-", "databases and network only"))
        for g in grants:
            resource = {
                "queue": f"queue {g.target}",
                "prefix": f"bucket/{g.target}*",
                "bucket": f"bucket (ListBucket, prefix {g.target})",
                "key": "the token-signing KMS key",
                "function": "the runner Lambda",
                "logs": "its log group",
                "eni": "*",
            }[g.kind]
            rows.append((component, ", ".join(g.actions), resource, g.why))
    return rows
