"""cdk-nag's AwsSolutions checks on the stack, and every suppression with its reason.

A finding not suppressed here fails `trace deploy aws synth` (and the tests): a new resource
either passes the rules or says here why the rule does not fit.
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from trace_platform.deploy.iam import PREFIXES

# rule id -> why it does not apply (stack-wide).
STACK_SUPPRESSIONS: dict[str, str] = {
    "AwsSolutions-ECS2": (
        "Environment variables hold configuration only (queue prefix, bucket, URLs of the"
        " internal ALB); secrets come from Secrets Manager through `secrets`."
    ),
    "AwsSolutions-RDS11": (
        "The default port is not a control: the database security group admits only Trace's"
        " task security groups."
    ),
    "AwsSolutions-RDS3": "Multi-AZ is on with env=prod; dev and staging run one instance.",
    "AwsSolutions-RDS10": "Deletion protection is on with env=prod.",
    "AwsSolutions-RDS2": "Storage is encrypted (storage_encrypted, the data key).",
    "AwsSolutions-ELB2": (
        "The ALB is internal; its access logs need a bucket policy for the region's ELB account,"
        " which an environment-agnostic template cannot name. Enable per region when deployed."
    ),
    "AwsSolutions-EC23": "Ingress is from the VPC's CIDR only (an internal ALB).",
    "AwsSolutions-KMS5": "Asymmetric KMS keys (the ES256 token key) cannot rotate automatically.",
    "AwsSolutions-IAM4": "No managed policies are attached by Trace (CDK's own roles only).",
    "AwsSolutions-L1": "The runner is a container-image function; it has no runtime version.",
}


def suppress(stack: Any) -> None:
    """Acknowledge the stack-wide rules above, and each IAM wildcard finding one by one:
    object keys under one prefix of the bucket, the runner's own log streams, and the
    network-interface actions AWS offers no ARN for (docs/deploy-aws.md lists every row)."""
    validations = cdk.Validations.of(stack)
    for rule, why in STACK_SUPPRESSIONS.items():
        validations.acknowledge(cdk.Acknowledgment(id=rule, reason=why))
    bucket = stack.get_logical_id(stack.bucket.node.default_child)
    for prefix in PREFIXES:
        validations.acknowledge(
            cdk.Acknowledgment(
                id=f"AwsSolutions-IAM5[Resource::<{bucket}.Arn>/{prefix}*]",
                reason=f"Objects under {prefix} only: keys are task and dataset ids.",
            )
        )
    logs = stack.get_logical_id(stack.runner_logs.node.default_child)
    validations.acknowledge(
        cdk.Acknowledgment(
            id=f"AwsSolutions-IAM5[Resource::<{logs}.Arn>]",
            reason="The runner's own log group (its streams are named by Lambda).",
        ),
        cdk.Acknowledgment(
            id="AwsSolutions-IAM5[Resource::*]",
            reason="EC2 network-interface actions of a VPC-attached Lambda have no resource ARN.",
        ),
    )


def check(app: cdk.App) -> None:
    """cdk-nag 3: a validation plugin; synthesis fails on any unacknowledged finding."""
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app, verbose=True))
