"""The AWS deployment of Trace as one CDK stack (extra `[deploy]`: aws-cdk-lib, constructs,
cdk-nag). `trace deploy aws synth` and `deploy/aws/app.py` build it; see docs/deploy-aws.md.

What it makes: a VPC (or uses yours: context `vpc_id`, `private_subnet_ids`,
`availability_zones`) with isolated subnets, VPC endpoints for S3, SQS, KMS, Logs, Secrets
Manager, STS, ECR and no NAT unless `egress=nat`; security groups that deny egress but for the
rules written here; RDS PostgreSQL (encrypted; deletion protection and Multi-AZ with
`env=prod`); one SQS queue per Trace queue, each with a redrive DLQ, TLS-only; one S3 bucket
(SSE-KMS, TLS-only, public access blocked); the capability-token KMS key (ECC_NIST_P256,
SIGN_VERIFY); an ECS cluster with a Fargate service per process behind an internal ALB; the
runner Lambda in the VPC with a role that has logs and network interfaces only; a one-off
migration task definition (`trace deploy aws migrate` runs it before services update); worker
autoscaling on its queue's visible messages. Roles come from `trace_platform.deploy.iam`.

Offline: no lookups, no assets, no custom resources, no bootstrap rule; account and region
stay unset (an environment-agnostic template), availability zones are given or derived with
`Fn::GetAZs`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

# jsii prints a banner for node 20 (end of life) at start; synth works on it (22+ preferred).
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import aws_cdk as cdk
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_rds as rds
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as sm
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from trace_platform.deploy import iam as table
from trace_platform.ports import BUFFER_QUEUE, TASK_WAKEUP

PORTS = {"dispatcher": 8080, "query": 8081, "api": 8090}
DB_NAME = "trace"
REDRIVE_AFTER = 10  # receives before SQS moves a message to its queue's redrive DLQ


@dataclass(frozen=True)
class Options:
    """What a deployment chooses (CDK context keys of the same names)."""

    env: str = "dev"
    vpc_id: str | None = None
    private_subnet_ids: tuple[str, ...] = ()
    availability_zones: tuple[str, ...] = ()
    egress: str = "none"  # "none" or "nat"
    db_instance: str = "t4g.medium"
    db_storage_gb: int = 50
    cpu: int = 512
    memory_mb: int = 1024
    desired: dict[str, int] = field(
        default_factory=lambda: {s: (2 if s == "worker" else 1) for s in table.SERVICES}
    )
    worker_max: int = 10
    rpc_pools: tuple[str, ...] = ()
    certificate_arn: str | None = None

    @classmethod
    def from_context(cls, get: Any) -> Options:
        def items(key: str) -> tuple[str, ...]:
            raw = get(key)
            if raw is None:
                return ()
            values = raw if isinstance(raw, list) else str(raw).split(",")
            return tuple(str(v).strip() for v in values if str(v).strip())

        desired = cls().desired
        for s in table.SERVICES:
            if get(f"desired_{s}") is not None:
                desired[s] = int(get(f"desired_{s}"))
        env = str(get("env") or "dev")
        egress = str(get("egress") or "none")
        if egress not in ("none", "nat"):
            raise ValueError("context egress must be none or nat")
        if get("vpc_id") and not items("private_subnet_ids"):
            raise ValueError("context vpc_id needs private_subnet_ids (and availability_zones)")
        return cls(
            env=env,
            vpc_id=get("vpc_id"),
            private_subnet_ids=items("private_subnet_ids"),
            availability_zones=items("availability_zones"),
            egress=egress,
            db_instance=str(get("db_instance") or cls.db_instance),
            db_storage_gb=int(get("db_storage_gb") or cls.db_storage_gb),
            cpu=int(get("cpu") or cls.cpu),
            memory_mb=int(get("memory_mb") or cls.memory_mb),
            desired=desired,
            worker_max=int(get("worker_max") or cls.worker_max),
            rpc_pools=tuple(p.upper() for p in items("rpc_pools")),
            certificate_arn=get("certificate_arn"),
        )


class TraceStack(cdk.Stack):  # type: ignore[misc]  # aws_cdk is not analysed (follow_imports skip)
    def __init__(self, scope: Construct, construct_id: str, options: Options, **kw: Any) -> None:
        super().__init__(scope, construct_id, **kw)
        self.options = o = options
        prod = o.env == "prod"
        removal = cdk.RemovalPolicy.RETAIN if prod else cdk.RemovalPolicy.DESTROY

        image = cdk.CfnParameter(
            self, "ImageUri", description="The Trace image of the services and the runner"
        )
        migrate_image = cdk.CfnParameter(
            self,
            "MigrateImageUri",
            description=(
                "The image of the migration task: on an upgrade, set it to the new image first,"
                " run `trace deploy aws migrate`, then move ImageUri (docs/deploy-aws.md)"
            ),
        )
        worker_token = cdk.CfnParameter(
            self,
            "WorkerTokenSecretArn",
            description=f"Secret holding TRACE_WORKER_TOKEN (/{o.env}/trace/worker/token)",
            no_echo=True,
        )
        db_secret_arn = cdk.CfnParameter(
            self,
            "DatabaseSecretArn",
            description=(
                "Secret (JSON: username, password) of the database's master user"
                f" (/{o.env}/trace/database/master)"
            ),
            no_echo=True,
        )
        rpc_secret = (
            cdk.CfnParameter(
                self,
                "RpcPoolsSecretArn",
                description=(
                    "Secret (JSON) holding TRACE_RPC_POOL_<NAME>_URLS for each pool of context"
                    f" rpc_pools (/{o.env}/trace/worker/rpc-pools)"
                ),
                no_echo=True,
            )
            if o.rpc_pools
            else None
        )
        prefix = f"trace-{o.env}-"
        self.queue_prefix = prefix

        # -- network ----------------------------------------------------------------------
        if o.vpc_id:
            vpc = ec2.Vpc.from_vpc_attributes(
                self,
                "Vpc",
                vpc_id=o.vpc_id,
                availability_zones=list(o.availability_zones)
                or [f"az{i}" for i in range(len(o.private_subnet_ids))],
                private_subnet_ids=list(o.private_subnet_ids),
            )
            subnets = ec2.SubnetSelection(subnets=vpc.private_subnets)
        else:
            subnet_config = [
                ec2.SubnetConfiguration(
                    name="private",
                    subnet_type=(
                        ec2.SubnetType.PRIVATE_WITH_EGRESS
                        if o.egress == "nat"
                        else ec2.SubnetType.PRIVATE_ISOLATED
                    ),
                    cidr_mask=20,
                )
            ]
            if o.egress == "nat":
                subnet_config.append(
                    ec2.SubnetConfiguration(
                        name="public", subnet_type=ec2.SubnetType.PUBLIC, cidr_mask=24
                    )
                )
            new_vpc = ec2.Vpc(
                self,
                "Vpc",
                ip_addresses=ec2.IpAddresses.cidr("10.40.0.0/16"),
                # CDK takes one of the two: named zones, or the first two of the region's.
                **(
                    {"availability_zones": list(o.availability_zones)}
                    if o.availability_zones
                    else {"max_azs": 2}
                ),
                nat_gateways=1 if o.egress == "nat" else 0,
                subnet_configuration=subnet_config,
                restrict_default_security_group=False,  # that option is a custom resource
            )
            flow_logs = logs.LogGroup(
                self,
                "FlowLogs",
                retention=logs.RetentionDays.ONE_MONTH,
                removal_policy=removal,
            )
            new_vpc.add_flow_log(
                "FlowLog", destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs)
            )
            vpc = new_vpc
            subnets = ec2.SubnetSelection(subnet_group_name="private")
        self.vpc = vpc

        endpoint_sg = self._sg("Endpoints", "VPC interface endpoints: 443 from the VPC")
        endpoint_sg.add_ingress_rule(ec2.Peer.ipv4(vpc.vpc_cidr_block), ec2.Port.tcp(443))
        vpc.add_gateway_endpoint("S3Endpoint", service=ec2.GatewayVpcEndpointAwsService.S3)
        for name, service in (
            ("Sqs", ec2.InterfaceVpcEndpointAwsService.SQS),
            ("Kms", ec2.InterfaceVpcEndpointAwsService.KMS),
            ("Logs", ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS),
            ("Secrets", ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER),
            ("Sts", ec2.InterfaceVpcEndpointAwsService.STS),
            ("Ecr", ec2.InterfaceVpcEndpointAwsService.ECR),
            ("EcrDocker", ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER),
            ("Lambda", ec2.InterfaceVpcEndpointAwsService.LAMBDA_),
        ):
            vpc.add_interface_endpoint(
                f"{name}Endpoint",
                service=service,
                subnets=subnets,
                security_groups=[endpoint_sg],
                private_dns_enabled=True,
            )

        # -- data -------------------------------------------------------------------------
        self.data_key = kms.Key(
            self,
            "DataKey",
            description=f"Trace {o.env}: bucket, queues, logs",
            enable_key_rotation=True,
            removal_policy=removal,
        )
        self.signing_key = kms.Key(
            self,
            "TokenKey",
            description=f"Trace {o.env}: capability tokens (ES256)",
            key_spec=kms.KeySpec.ECC_NIST_P256,
            key_usage=kms.KeyUsage.SIGN_VERIFY,
            removal_policy=removal,
        )
        access_logs = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            removal_policy=removal,
        )
        self.bucket = s3.Bucket(
            self,
            "Objects",
            encryption=s3.BucketEncryption.KMS,
            encryption_key=self.data_key,
            bucket_key_enabled=True,
            enforce_ssl=True,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            versioned=False,
            server_access_logs_bucket=access_logs,
            server_access_logs_prefix="objects/",
            removal_policy=removal,
        )
        self.queues: dict[str, sqs.Queue] = {}
        self.redrive: dict[str, sqs.Queue] = {}
        for name in table.QUEUES:
            physical = table.queue_physical_name(prefix, name)
            dlq = sqs.Queue(
                self,
                f"Redrive{_pascal(name)}",
                queue_name=physical + table.REDRIVE_SUFFIX,
                encryption=sqs.QueueEncryption.KMS,
                encryption_master_key=self.data_key,
                enforce_ssl=True,
                retention_period=cdk.Duration.days(14),
                removal_policy=removal,
            )
            self.redrive[name] = dlq
            self.queues[name] = sqs.Queue(
                self,
                f"Queue{_pascal(name)}",
                queue_name=physical,
                encryption=sqs.QueueEncryption.KMS,
                encryption_master_key=self.data_key,
                enforce_ssl=True,
                visibility_timeout=cdk.Duration.seconds(60),
                retention_period=cdk.Duration.days(4),
                dead_letter_queue=sqs.DeadLetterQueue(max_receive_count=REDRIVE_AFTER, queue=dlq),
                removal_policy=removal,
            )

        db_secret = sm.Secret.from_secret_complete_arn(
            self, "DatabaseSecret", db_secret_arn.value_as_string
        )
        db_sg = self._sg("Database", "RDS PostgreSQL: 5432 from the Trace services only")
        self.db = rds.DatabaseInstance(
            self,
            "Database",
            engine=rds.DatabaseInstanceEngine.postgres(version=rds.PostgresEngineVersion.VER_17_6),
            instance_type=ec2.InstanceType(o.db_instance),
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[db_sg],
            credentials=rds.Credentials.from_secret(db_secret),
            database_name=DB_NAME,
            allocated_storage=o.db_storage_gb,
            storage_encrypted=True,
            storage_encryption_key=self.data_key,
            multi_az=prod,
            deletion_protection=prod,
            backup_retention=cdk.Duration.days(7 if prod else 1),
            removal_policy=cdk.RemovalPolicy.SNAPSHOT if prod else cdk.RemovalPolicy.DESTROY,
            publicly_accessible=False,
            enable_performance_insights=False,
        )

        # -- compute ----------------------------------------------------------------------
        self.cluster = ecs.Cluster(
            self,
            "Cluster",
            vpc=vpc,
            container_insights_v2=ecs.ContainerInsights.ENABLED,
        )
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=logs.RetentionDays.ONE_MONTH,
            encryption_key=None,
            removal_policy=removal,
        )
        alb_sg = self._sg("Alb", "Internal ALB: the API/console, the dispatcher, the query service")
        self.alb = elbv2.ApplicationLoadBalancer(
            self,
            "Alb",
            vpc=vpc,
            internet_facing=False,
            vpc_subnets=subnets,
            security_group=alb_sg,
        )
        base = f"http://{self.alb.load_balancer_dns_name}"
        dispatcher_url = f"{base}:{PORTS['dispatcher']}"
        query_url = f"{base}:{PORTS['query']}"
        db_url = (
            # PGUSER and PGPASSWORD come from the database secret
            f"postgresql://{self.db.db_instance_endpoint_address}:"
            f"{self.db.db_instance_endpoint_port}/{DB_NAME}?sslmode=require"
        )
        key_ring = json.dumps(
            {"keys": [{"kid": f"{o.env}-1", "alg": "ES256", "kms_key_id": "KEY_ARN"}]}
        ).replace("KEY_ARN", self.signing_key.key_arn)

        # The runner: a VPC-attached Lambda whose role may write its logs and manage its
        # network interfaces, nothing else.
        runner_sg = self._sg("Runner", "Runner Lambda: the dispatcher and the query service only")
        self.runner_logs = runner_logs = logs.LogGroup(
            self, "RunnerLogs", retention=logs.RetentionDays.ONE_MONTH, removal_policy=removal
        )
        self.roles: dict[str, iam.Role] = {}
        runner_role = iam.Role(
            self,
            "RoleRunner",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description="Trace runner Lambda: logs and network interfaces only",
        )
        self.roles["runner"] = runner_role
        self.runner = lambda_.CfnFunction(
            self,
            "Runner",
            package_type="Image",
            code=lambda_.CfnFunction.CodeProperty(image_uri=image.value_as_string),
            image_config=lambda_.CfnFunction.ImageConfigProperty(
                command=["trace_platform.runner.lambda_entry.handler"],
                entry_point=["/app/.venv/bin/python", "-m", "awslambdaric"],
            ),
            role=runner_role.role_arn,
            memory_size=1024,
            timeout=120,
            reserved_concurrent_executions=50,
            vpc_config=lambda_.CfnFunction.VpcConfigProperty(
                security_group_ids=[runner_sg.security_group_id],
                subnet_ids=vpc.select_subnets(**_subnet_kwargs(subnets)).subnet_ids,
            ),
            logging_config=lambda_.CfnFunction.LoggingConfigProperty(
                log_group=runner_logs.log_group_name
            ),
            environment=lambda_.CfnFunction.EnvironmentProperty(
                variables={
                    "TRACE_DISPATCHER_URL": dispatcher_url,
                    "TRACE_QUERY_URL": query_url,
                    "TRACE_RUNNER_TIMEOUT_SECONDS": "60",
                    "TRACE_RUNNER_MEMORY_MB": "768",
                    "TRACE_RUNNER_ALLOW_WEAK_SANDBOX": "1",
                }
            ),
        )

        common_env = {
            "TRACE_STATE_DATABASE_URL": db_url,
            "TRACE_DATA_DATABASE_URL": db_url,
            "TRACE_QUEUE_BACKEND": "sqs",
            "TRACE_SQS_QUEUE_PREFIX": prefix,
            "TRACE_OBJECT_STORE_URL": f"s3://{self.bucket.bucket_name}/",
            "TRACE_TASK_KEYS": key_ring,
            "TRACE_DISPATCHER_URL": dispatcher_url,
            "TRACE_QUERY_URL": query_url,
            "TRACE_RUNTIME_INVOKER": "lambda",
            "TRACE_LAMBDA_FUNCTION": self.runner.ref,
            "TRACE_HOST": "0.0.0.0",  # noqa: S104 - in the VPC, behind its security group
            "TRACE_HOME": "/tmp/trace",  # noqa: S108 - staging only; state is in RDS and S3
            "AWS_REGION": self.region,
        }
        secrets = {
            "PGUSER": ecs.Secret.from_secrets_manager(db_secret, "username"),
            "PGPASSWORD": ecs.Secret.from_secrets_manager(db_secret, "password"),
            "TRACE_WORKER_TOKEN": ecs.Secret.from_secrets_manager(
                sm.Secret.from_secret_complete_arn(
                    self, "WorkerToken", worker_token.value_as_string
                )
            ),
        }
        rpc_pools = (
            sm.Secret.from_secret_complete_arn(self, "RpcPools", rpc_secret.value_as_string)
            if rpc_secret is not None
            else None
        )

        self.services: dict[str, ecs.FargateService] = {}
        self.sgs: dict[str, ec2.SecurityGroup] = {}
        self.task_definitions: dict[str, ecs.FargateTaskDefinition] = {}
        for component in (*table.SERVICES, "migrate"):
            role = iam.Role(
                self,
                f"Role{_pascal(component)}",
                assumed_by=iam.ServicePrincipal("ecs-tasks.amazonaws.com"),
                description=f"Trace {component}: see docs/deploy-aws.md",
            )
            self.roles[component] = role
            task = ecs.FargateTaskDefinition(
                self,
                f"Task{_pascal(component)}",
                cpu=o.cpu,
                memory_limit_mib=o.memory_mb,
                task_role=role,
                runtime_platform=ecs.RuntimePlatform(
                    cpu_architecture=ecs.CpuArchitecture.X86_64,
                    operating_system_family=ecs.OperatingSystemFamily.LINUX,
                ),
            )
            env = dict(common_env)
            if component == "query":
                env["TRACE_QUERY_PORT"] = str(PORTS["query"])
            if component == "api":
                env["TRACE_API_PORT"] = str(PORTS["api"])
            task_secrets = dict(secrets)
            if component == "worker" and rpc_pools is not None:
                for pool in o.rpc_pools:
                    name = f"TRACE_RPC_POOL_{pool}_URLS"
                    task_secrets[name] = ecs.Secret.from_secrets_manager(rpc_pools, name)
            container = task.add_container(
                "trace",
                image=ecs.ContainerImage.from_registry(
                    (migrate_image if component == "migrate" else image).value_as_string
                ),
                command=[table.COMMANDS[component]],
                memory_limit_mib=o.memory_mb,  # the task's memory, as the container's limit
                environment=env,
                secrets=task_secrets,
                logging=ecs.LogDrivers.aws_logs(stream_prefix=component, log_group=self.log_group),
                readonly_root_filesystem=False,
                user="10001",
            )
            if component in PORTS:
                container.add_port_mappings(ecs.PortMapping(container_port=PORTS[component]))
            self.task_definitions[component] = task
            sg = self._sg(_pascal(component), f"Trace {component}")
            self.sgs[component] = sg
            if component == "migrate":
                continue
            self.services[component] = ecs.FargateService(
                self,
                f"Service{_pascal(component)}",
                cluster=self.cluster,
                task_definition=task,
                desired_count=o.desired[component],
                security_groups=[sg],
                vpc_subnets=subnets,
                assign_public_ip=False,
                min_healthy_percent=100 if component != "worker" else 50,
                circuit_breaker=ecs.DeploymentCircuitBreaker(rollback=True),
            )

        self._grant_all()
        self._network(alb_sg, db_sg, endpoint_sg, runner_sg)
        self._listeners()
        self._autoscale()

        for name, value in (
            ("QueuePrefix", prefix),
            ("Bucket", self.bucket.bucket_name),
            ("TokenKeyArn", self.signing_key.key_arn),
            ("ClusterName", self.cluster.cluster_name),
            ("MigrateTaskDefinition", self.task_definitions["migrate"].task_definition_arn),
            ("MigrateSecurityGroup", self.sgs["migrate"].security_group_id),
            (
                "PrivateSubnets",
                ",".join(vpc.select_subnets(**_subnet_kwargs(subnets)).subnet_ids),
            ),
            ("RunnerFunction", self.runner.ref),
            ("ApiUrl", f"{base}:{PORTS['api'] if not o.certificate_arn else 443}"),
            ("DatabaseEndpoint", self.db.db_instance_endpoint_address),
            *((f"Role{_pascal(c)}Arn", r.role_arn) for c, r in self.roles.items()),
            *((f"Queue{_pascal(q)}Url", self.queues[q].queue_url) for q in table.QUEUES),
        ):
            cdk.CfnOutput(self, name, value=value)
        self._suppress()

    # -- pieces ---------------------------------------------------------------------------

    def _sg(self, name: str, description: str) -> ec2.SecurityGroup:
        return ec2.SecurityGroup(
            self,
            f"Sg{name}",
            vpc=self.vpc,
            description=description,
            allow_all_outbound=False,
        )

    def _grant_all(self) -> None:
        """Each role gets exactly its rows of the IAM table, as one inline policy."""
        for component, grants in table.COMPONENTS.items():
            role = self.roles[component]
            statements = [self._statement(g) for g in grants]
            if statements:
                iam.Policy(self, f"Policy{_pascal(component)}", statements=statements, roles=[role])
            # KMS: the bucket and queues are encrypted with the data key; a role that reads
            # or writes them needs to use the key for that (and for nothing else).
            if any(g.kind in ("queue", "prefix") for g in grants):
                role.add_to_policy(
                    iam.PolicyStatement(
                        actions=["kms:Decrypt", "kms:GenerateDataKey"],
                        resources=[self.data_key.key_arn],
                    )
                )

    def _statement(self, g: table.Grant) -> iam.PolicyStatement:
        if g.kind == "queue":
            return iam.PolicyStatement(
                actions=list(g.actions), resources=[self.queues[g.target].queue_arn]
            )
        if g.kind == "prefix":
            return iam.PolicyStatement(
                actions=list(g.actions), resources=[self.bucket.arn_for_objects(f"{g.target}*")]
            )
        if g.kind == "bucket":
            return iam.PolicyStatement(
                actions=list(g.actions),
                resources=[self.bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{g.target}*"]}},
            )
        if g.kind == "key":
            return iam.PolicyStatement(
                actions=list(g.actions), resources=[self.signing_key.key_arn]
            )
        if g.kind == "function":
            return iam.PolicyStatement(
                actions=list(g.actions),
                resources=[self.runner.attr_arn],
            )
        if g.kind == "logs":
            return iam.PolicyStatement(
                actions=list(g.actions), resources=[self.runner_logs.log_group_arn]
            )
        if g.kind == "eni":
            return iam.PolicyStatement(actions=list(g.actions), resources=["*"])
        raise ValueError(f"unknown grant kind {g.kind!r}")

    def _network(
        self,
        alb_sg: ec2.SecurityGroup,
        db_sg: ec2.SecurityGroup,
        endpoint_sg: ec2.SecurityGroup,
        runner_sg: ec2.SecurityGroup,
    ) -> None:
        """Egress is denied by default; each rule below is one path a process needs."""
        https = ec2.Port.tcp(443)
        vpc_cidr = ec2.Peer.ipv4(self.vpc.vpc_cidr_block)
        s3_list = cdk.CfnParameter(
            self,
            "S3PrefixListId",
            description="The region's S3 prefix list (com.amazonaws.<region>.s3), for egress",
            default="pl-63a5400a",
        )
        s3_peer = ec2.Peer.prefix_list(s3_list.value_as_string)
        alb_sg.add_ingress_rule(vpc_cidr, ec2.Port.tcp(PORTS["api"]), "API from the VPC")
        if self.options.certificate_arn:
            alb_sg.add_ingress_rule(vpc_cidr, https, "API (TLS) from the VPC")
        alb_sg.add_ingress_rule(vpc_cidr, ec2.Port.tcp(PORTS["dispatcher"]), "task API")
        alb_sg.add_ingress_rule(vpc_cidr, ec2.Port.tcp(PORTS["query"]), "query API")
        for component, port in PORTS.items():
            sg = self.sgs[component]
            alb_sg.add_egress_rule(sg, ec2.Port.tcp(port), f"to {component}")
            sg.add_ingress_rule(alb_sg, ec2.Port.tcp(port), "from the ALB")
        for component, sg in self.sgs.items():
            sg.add_egress_rule(db_sg, ec2.Port.tcp(5432), "PostgreSQL")
            db_sg.add_ingress_rule(sg, ec2.Port.tcp(5432), f"from {component}")
            sg.add_egress_rule(endpoint_sg, https, "AWS APIs through VPC endpoints")
            sg.add_egress_rule(s3_peer, https, "S3 and ECR layers (gateway endpoint)")
            if component not in ("migrate", "deliver"):
                sg.add_egress_rule(alb_sg, ec2.Port.tcp(PORTS["dispatcher"]), "task API")
                sg.add_egress_rule(alb_sg, ec2.Port.tcp(PORTS["query"]), "query API")
        runner_sg.add_egress_rule(alb_sg, ec2.Port.tcp(PORTS["dispatcher"]), "task API")
        runner_sg.add_egress_rule(alb_sg, ec2.Port.tcp(PORTS["query"]), "query API")
        runner_sg.add_egress_rule(endpoint_sg, https, "CloudWatch Logs endpoint")
        if self.options.egress == "nat":
            # The explicit egress path: webhooks (deliver) and RPC providers (worker,
            # dispatcher's head observer) over HTTPS, through the NAT gateway.
            for component in ("deliver", "worker", "dispatcher"):
                self.sgs[component].add_egress_rule(
                    ec2.Peer.any_ipv4(), https, "HTTPS egress (webhooks, RPC) via NAT"
                )

    def _listeners(self) -> None:
        for component, port in PORTS.items():
            if component == "api" and self.options.certificate_arn:
                listener = self.alb.add_listener(
                    "ListenerApi",
                    port=443,
                    protocol=elbv2.ApplicationProtocol.HTTPS,
                    certificates=[elbv2.ListenerCertificate(self.options.certificate_arn)],
                    open=False,
                )
            else:
                listener = self.alb.add_listener(
                    f"Listener{_pascal(component)}",
                    port=port,
                    protocol=elbv2.ApplicationProtocol.HTTP,
                    open=False,
                )
            listener.add_targets(
                f"Targets{_pascal(component)}",
                port=port,
                protocol=elbv2.ApplicationProtocol.HTTP,
                targets=[self.services[component]],
                health_check=elbv2.HealthCheck(path="/healthz"),
            )

    def _autoscale(self) -> None:
        """Workers scale on their queue's visible messages, not on CPU."""
        worker = self.services["worker"]
        scaling = worker.auto_scale_task_count(
            min_capacity=self.options.desired["worker"], max_capacity=self.options.worker_max
        )
        depth = self.queues[TASK_WAKEUP].metric_approximate_number_of_messages_visible(
            period=cdk.Duration.minutes(1), statistic="Maximum"
        )
        scaling.scale_on_metric(
            "QueueDepth",
            metric=depth,
            scaling_steps=[
                appscaling.ScalingInterval(upper=0, change=-1),
                appscaling.ScalingInterval(lower=100, change=+1),
                appscaling.ScalingInterval(lower=1000, change=+3),
            ],
            adjustment_type=appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
            cooldown=cdk.Duration.minutes(2),
        )
        sink = self.queues[BUFFER_QUEUE].metric_approximate_age_of_oldest_message(
            period=cdk.Duration.minutes(5)
        )
        cw.Alarm(
            self,
            "SinkBacklog",
            metric=sink,
            threshold=900,
            evaluation_periods=1,
            alarm_description="buffer_queue's oldest message is older than 15 minutes",
        )
        for name, dlq in self.redrive.items():
            cw.Alarm(
                self,
                f"Redrive{_pascal(name)}Alarm",
                metric=dlq.metric_approximate_number_of_messages_visible(
                    period=cdk.Duration.minutes(5)
                ),
                threshold=1,
                evaluation_periods=1,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                alarm_description=f"messages of {name} were redriven to its DLQ",
            )

    def _suppress(self) -> None:
        from trace_platform.deploy.nag import suppress

        suppress(self)


def _pascal(name: str) -> str:
    return "".join(p.capitalize() for p in name.replace("-", "_").split("_"))


def _subnet_kwargs(selection: ec2.SubnetSelection) -> dict[str, Any]:
    if selection.subnets is not None:
        return {"subnets": selection.subnets}
    return {"subnet_group_name": selection.subnet_group_name}


def build(context: dict[str, Any] | None = None, outdir: str | None = None) -> cdk.App:
    """The app with its one stack, synthesized into `outdir` (cdk.out by default)."""
    context = dict(context or {})
    context.setdefault("aws:cdk:enable-path-metadata", False)
    # Server access logs are delivered under a bucket policy, not the legacy ACL.
    context.setdefault("@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy", True)
    context.setdefault("aws:cdk:disable-version-reporting", True)
    app = cdk.App(outdir=outdir, context=context, analytics_reporting=False)
    options = Options.from_context(app.node.try_get_context)
    TraceStack(
        app,
        f"Trace-{options.env}",
        options,
        synthesizer=cdk.DefaultStackSynthesizer(generate_bootstrap_version_rule=False),
        description=f"Trace {options.env}: kernel, chain sync, alerts, API (docs/deploy-aws.md)",
    )
    from trace_platform.deploy.nag import check

    check(app)
    return app
