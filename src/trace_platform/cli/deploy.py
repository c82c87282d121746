"""`trace deploy aws synth|diff|migrate|smoke|iam`: the AWS deployment (docs/deploy-aws.md).

`synth` runs offline (the CDK app in-process, node for jsii); the others talk to AWS through
boto3's usual chain (AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import orjson

CONTEXT_HELP = (
    "CDK context KEY=VALUE (repeatable): env, vpc_id, private_subnet_ids, availability_zones,"
    " egress (none|nat), db_instance, db_storage_gb, cpu, memory_mb, desired_<service>,"
    " worker_max, rpc_pools, certificate_arn."
)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _context(pairs: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            _fail(f"context {pair!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def synthesize(context: dict[str, Any], out: Path) -> Path:
    """The stack's template in `out` (the cloud assembly); exits with the reason on failure."""
    try:
        from trace_platform.deploy.aws import build
    except ImportError as exc:
        _fail(f"the deploy extra is missing ({exc.name}): pip install 'trace-platform[deploy]'")
    try:
        app = build(context, outdir=str(out))
        assembly = app.synth()
    except ValueError as exc:
        _fail(str(exc))
    except RuntimeError as exc:  # jsii: validation failures and CDK errors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        _fail(f"synth failed: {reason}")
    stack = assembly.stacks[0]
    return out / str(stack.template_file)


@click.group(name="deploy")
def deploy() -> None:
    """Deploy Trace to a cloud (today: AWS, with the CDK). See docs/deploy-aws.md."""


@deploy.group(name="aws")
def aws() -> None:
    """The AWS stack: synth (offline), diff, migrate, smoke, and the IAM table."""


@aws.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("cdk.out"), show_default=True)
@click.option("-c", "--context", "pairs", multiple=True, metavar="KEY=VALUE", help=CONTEXT_HELP)
def synth(out: Path, pairs: tuple[str, ...]) -> None:
    """Synthesize the CloudFormation template offline (cdk-nag AwsSolutions checks must
    pass). Deploy it with `cdk deploy --app cdk.out` or CloudFormation."""
    template = synthesize(_context(pairs), out)
    resources = orjson.loads(template.read_bytes()).get("Resources", {})
    click.echo(f"{template}  ({len(resources)} resources; cdk-nag AwsSolutions: passed)")


@aws.command()
@click.option("--stack", required=True, help="The deployed stack's name.")
@click.option("--out", type=click.Path(path_type=Path), default=Path("cdk.out"), show_default=True)
@click.option("-c", "--context", "pairs", multiple=True, metavar="KEY=VALUE", help=CONTEXT_HELP)
@click.option(
    "--template",
    type=click.Path(path_type=Path, exists=True, dir_okay=False),
    default=None,
    help="Compare this synthesized template instead of synthesizing one.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def diff(
    stack: str, out: Path, pairs: tuple[str, ...], template: Path | None, as_json: bool
) -> None:
    """Resources a new synth adds, removes or changes against the deployed stack."""
    from trace_platform.deploy.operate import DeployError
    from trace_platform.deploy.operate import diff as run_diff

    if template is None:
        template = synthesize(_context(pairs), out)
    try:
        changes = run_diff(stack, template)
    except DeployError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(orjson.dumps(changes).decode())
        return
    if not any(changes.values()):
        click.echo(f"{stack}: no changes")
        return
    for kind, sign in (("added", "+"), ("removed", "-"), ("changed", "~")):
        for logical in changes[kind]:
            click.echo(f"{sign} {logical}")


@aws.command()
@click.option("--stack", required=True, help="The deployed stack's name.")
@click.option("--no-wait", is_flag=True, help="Start the task and return.")
@click.option("--timeout", type=float, default=900.0, show_default=True, help="Seconds to wait.")
def migrate(stack: str, no_wait: bool, timeout: float) -> None:
    """Run the migration task (`trace migrate` on Fargate) before services update."""
    from trace_platform.deploy.operate import DeployError
    from trace_platform.deploy.operate import migrate as run_migrate

    try:
        result = run_migrate(stack, wait=not no_wait, timeout=timeout)
    except DeployError as exc:
        _fail(str(exc))
    click.echo(f"migration task {result['task']}: {result['status']}", nl=False)
    click.echo("" if result["exit_code"] is None else f", exit code {result['exit_code']}")


@aws.command()
@click.option("--stack", required=True, help="The deployed stack's name.")
@click.option("--api-url", default=None, help="Also GET this URL's /healthz (inside the VPC).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def smoke(stack: str, api_url: str | None, as_json: bool) -> None:
    """Check a deployed stack: queues and their DLQs, bucket, key, runner, services, API."""
    from trace_platform.deploy.operate import DeployError
    from trace_platform.deploy.operate import smoke as run_smoke

    try:
        checks = run_smoke(stack, api_url)
    except DeployError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(orjson.dumps([c.__dict__ for c in checks]).decode())
    else:
        for c in checks:
            click.echo(f"{'ok  ' if c.ok else 'FAIL'}  {c.name:<22} {c.detail}")
    if not all(c.ok for c in checks):
        sys.exit(1)


@aws.command(name="iam")
def iam_table() -> None:
    """The least-privilege table (Markdown): what each component's role may do."""
    from trace_platform.deploy.iam import table

    click.echo("| component | actions | resource | why |")
    click.echo("|---|---|---|---|")
    for row in table():
        click.echo("| " + " | ".join(row) + " |")
