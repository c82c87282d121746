"""All TRACE_* settings, parsed and validated once, then passed down.

Every setting has a default that works on one machine, an environment variable
(`TRACE_<NAME>`) and a global CLI flag (`trace --<name> ...`). Nothing else in the
package reads `os.environ` for configuration.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trace_platform.domain.endpoints import Endpoint, parse_endpoints
from trace_platform.domain.errors import ConfigError


@dataclass(frozen=True)
class Setting:
    name: str
    kind: type
    default: Any
    help: str
    secret: bool = False

    @property
    def env(self) -> str:
        return "TRACE_" + self.name.upper()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def flags(self) -> tuple[str, ...]:
        """Its global flags: a boolean setting is an on/off pair (`--x` / `--no-x`) that takes
        no value, so `trace --delivery-allow-private up` runs `up`."""
        return (self.flag, "--no-" + self.flag[2:]) if self.kind is bool else (self.flag,)


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "home", Path, Path(".trace"), "Directory for Lite state: embedded Postgres, keys, objects."
    ),
    Setting("state_database_url", str, None, "State DB URL; unset = embedded Postgres.", True),
    Setting("data_database_url", str, None, "Data DB URL; unset = embedded Postgres.", True),
    Setting("task_keys", str, None, "Capability key ring: path to JSON or inline JSON.", True),
    Setting("worker_token", str, None, "Worker token for /internal/*; unset = generated.", True),
    Setting("worker_token_next", str, None, "Next worker token, accepted during rotation.", True),
    Setting("issuer", str, "trace-dispatcher", "Issuer (iss) of capability tokens."),
    Setting("lease_seconds", float, 30.0, "Task lease length."),
    Setting("token_ttl_seconds", float, 900.0, "Capability token lifetime (>= lease)."),
    Setting("retry_base_seconds", float, 1.0, "First retry delay (doubles each attempt)."),
    Setting("retry_max_seconds", float, 300.0, "Upper bound of a retry delay."),
    Setting("max_attempts", int, 3, "Default attempts per task."),
    Setting("outbox_interval", float, 0.2, "Outbox drainer poll interval (seconds)."),
    Setting("retry_interval", float, 0.5, "Retry scheduler interval (seconds)."),
    Setting("reaper_interval", float, 1.0, "Lease reaper interval (seconds)."),
    Setting("host", str, "127.0.0.1", "Dispatcher bind address."),
    Setting("port", int, 8080, "Dispatcher port."),
    Setting(
        "dispatcher_url", str, None, "Dispatcher base URL for workers; default from host/port."
    ),
    Setting("db_pool_size", int, 8, "Max DB connections per process."),
    Setting(
        "object_store_url", str, None, "file:///dir or s3://bucket/prefix; unset = HOME/objects."
    ),
    Setting("s3_endpoint_url", str, None, "S3-compatible endpoint URL (for non-AWS S3)."),
    Setting("worker_concurrency", int, 256, "Tasks a worker runs at once."),
    Setting("visibility_seconds", float, 30.0, "Queue visibility timeout for received messages."),
    Setting("queue_backend", str, "postgres", "Queues: postgres (pgqueue) or sqs (extra [aws])."),
    Setting("sqs_queue_prefix", str, "trace-", "SQS queue names are this prefix + queue name."),
    Setting("sink_max_deliveries", int, 5, "Deliveries before a buffer batch goes to the DLQ."),
    Setting("sink_retry_base_seconds", float, 1.0, "First redelivery delay of a rejected batch."),
    Setting("sink_concurrency", int, 2, "Batches the sink ingests at once."),
    Setting("runner_concurrency", int, 4, "UDF invocations the dispatcher runs at once (Lite)."),
    Setting("runner_timeout_seconds", float, 60.0, "Wall-clock limit of one UDF handler run."),
    Setting("runner_memory_mb", int, 1024, "Address-space limit of a UDF handler (MiB)."),
    Setting("runner_uid", int, 65534, "Unprivileged uid UDF handlers run as (when root)."),
    Setting("runner_allow_weak_sandbox", bool, False, "Run UDFs even without bubblewrap."),
    Setting("runtime_invoker", str, "local", "UDF runner: local (sandboxed child) or lambda."),
    Setting("lambda_function", str, "trace-udf-runner", "Runner Lambda function (name or ARN)."),
    Setting("query_url", str, None, "Query service base URL given to UDF runners."),
    Setting("query_port", int, 8081, "Query service port."),
    Setting("query_executors", int, 2, "DuckDB executor processes of the query service."),
    Setting("query_memory_mb", int, 512, "DuckDB memory limit per executor (MiB)."),
    Setting("query_timeout_seconds", float, 10.0, "Per-query time limit."),
    Setting("query_uid", int, 65533, "Unprivileged uid query executors run as (when root)."),
    Setting("esbuild", str, None, "Path of esbuild for TypeScript bundles (default: tools/)."),
    Setting("chain_interval", float, 0.5, "Chain planner and head observer tick (seconds)."),
    Setting("chain_watch_depth", int, 64, "Blocks below the head re-checked for reorgs."),
    Setting("chain_rpc_timeout_seconds", float, 10.0, "Timeout of one RPC call (head, hashes)."),
    Setting("chain_max_attempts", int, 20, "Attempts of one chain range (RPC faults retry)."),
    Setting("cryo_concurrency", int, 8, "Ranges a worker extracts with cryo at once."),
    Setting("cryo_timeout_seconds", float, 300.0, "Wall-clock limit of one range extraction."),
    Setting("cryo_max_bytes", int, 1 << 30, "Largest output of one range extraction (bytes)."),
    Setting(
        "delivery_concurrency", int, 64, "Webhook requests the delivery process makes at once."
    ),
    Setting("delivery_timeout_seconds", float, 10.0, "Time limit of one webhook request."),
    Setting("delivery_max_attempts", int, 12, "Attempts of one delivery before it is failed."),
    Setting(
        "delivery_retry_base_seconds", float, 8.0, "First retry delay of a delivery (x2.4 each)."
    ),
    Setting(
        "delivery_interval",
        float,
        0.1,
        "How often the delivery process looks for work when it cannot listen for it.",
    ),
    Setting(
        "delivery_allow_private",
        bool,
        False,
        "Lite only: allow http:// and private/loopback webhook addresses (the SSRF guard off).",
    ),
    Setting("api_port", int, 8090, "User API and console port (`trace api`)."),
    Setting("api_url", str, None, "Remote CLI: a deployment's user API; verbs call its /v1."),
    Setting("api_key", str, None, "Remote CLI: the user API key for TRACE_API_URL.", True),
    Setting("api_timeout_seconds", float, 60.0, "Remote CLI: time limit of one API call."),
    Setting("api_rate_per_second", float, 20.0, "Requests per second per API key (429 beyond)."),
    Setting("api_rate_burst", int, 60, "Burst of requests per API key above the rate."),
    Setting("api_query_timeout_seconds", float, 60.0, "Time limit of a user's POST /v1/query."),
    Setting(
        "query_max_export_rows",
        int,
        10_000_000,
        "Most rows of a query answered as Arrow, CSV or Parquet.",
    ),
    Setting("query_run_timeout", float, 300.0, "Time limit of one query run (seconds, <= 600)."),
    Setting(
        "query_result_ttl", float, 604_800.0, "How long a query run's result is kept (seconds)."
    ),
    Setting("oidc_issuer", str, None, "OIDC: accept bearer JWTs of this issuer (iss) too."),
    Setting("oidc_audience", str, None, "OIDC: the audience (aud) those JWTs must carry."),
    Setting("oidc_jwks", str, None, "OIDC: JWKS of the issuer: an https URL or a file path."),
    Setting("oidc_role_claim", str, "trace_role", "OIDC: claim holding reader|writer|admin."),
    Setting("oidc_org_claim", str, "trace_org", "OIDC: claim holding the org id (default Lite)."),
    Setting("log_level", str, "info", "Log level: debug, info, warning, error."),
)

# RPC endpoints live only in the environment (their URLs carry API keys): one variable per
# pool, TRACE_RPC_POOL_<NAME>_URLS (several endpoints, domain/endpoints.py) or the single-URL
# TRACE_RPC_POOL_<NAME>_URL; a spec names the pool, never a URL.
RPC_POOL_ENV = re.compile(r"^TRACE_RPC_POOL_([A-Z0-9_]+)_URLS?$")

_BY_NAME = {s.name: s for s in SETTINGS}


def rpc_pools_from_env(env: Mapping[str, str]) -> dict[str, str]:
    """Pool name (lower case) -> its endpoints, from TRACE_RPC_POOL_<NAME>_URLS or _URL. One
    pool given by both variables is a ConfigError naming the two: which one is meant?"""
    pools: dict[str, str] = {}
    given: dict[str, str] = {}
    for key, value in sorted(env.items()):
        if not value or (match := RPC_POOL_ENV.match(key)) is None:
            continue
        name = match.group(1).lower()
        if name in given:
            single, several = sorted((given[name], key))
            raise ConfigError(
                f"RPC pool {name!r} is set by both {single} and {several}: keep one"
                f" ({single} takes one URL, {several} a comma-separated list)"
            )
        given[name], pools[name] = key, value
    return pools


@dataclass(frozen=True)
class Settings:
    home: Path = Path(".trace")
    state_database_url: str | None = None
    data_database_url: str | None = None
    task_keys: str | None = None
    api_url: str | None = None
    api_key: str | None = None
    api_timeout_seconds: float = 60.0
    worker_token: str | None = None
    worker_token_next: str | None = None
    issuer: str = "trace-dispatcher"
    lease_seconds: float = 30.0
    token_ttl_seconds: float = 900.0
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    max_attempts: int = 3
    outbox_interval: float = 0.2
    retry_interval: float = 0.5
    reaper_interval: float = 1.0
    host: str = "127.0.0.1"
    port: int = 8080
    dispatcher_url: str | None = None
    db_pool_size: int = 8
    object_store_url: str | None = None
    s3_endpoint_url: str | None = None
    worker_concurrency: int = 256
    visibility_seconds: float = 30.0
    queue_backend: str = "postgres"
    sqs_queue_prefix: str = "trace-"
    sink_max_deliveries: int = 5
    sink_retry_base_seconds: float = 1.0
    sink_concurrency: int = 2
    runner_concurrency: int = 4
    runner_timeout_seconds: float = 60.0
    runner_memory_mb: int = 1024
    runner_uid: int = 65534
    runner_allow_weak_sandbox: bool = False
    runtime_invoker: str = "local"
    lambda_function: str = "trace-udf-runner"
    query_url: str | None = None
    query_port: int = 8081
    query_executors: int = 2
    query_memory_mb: int = 512
    query_timeout_seconds: float = 10.0
    query_uid: int = 65533
    esbuild: str | None = None
    chain_interval: float = 0.5
    chain_watch_depth: int = 64
    chain_rpc_timeout_seconds: float = 10.0
    chain_max_attempts: int = 20
    cryo_concurrency: int = 8
    cryo_timeout_seconds: float = 300.0
    cryo_max_bytes: int = 1 << 30
    delivery_concurrency: int = 64
    delivery_timeout_seconds: float = 10.0
    delivery_max_attempts: int = 12
    delivery_retry_base_seconds: float = 8.0
    delivery_interval: float = 0.1
    delivery_allow_private: bool = False
    api_port: int = 8090
    api_rate_per_second: float = 20.0
    api_rate_burst: int = 60
    api_query_timeout_seconds: float = 60.0
    query_max_export_rows: int = 10_000_000
    query_run_timeout: float = 300.0
    query_result_ttl: float = 604_800.0
    oidc_issuer: str | None = None
    oidc_audience: str | None = None
    oidc_jwks: str | None = None
    oidc_role_claim: str = "trace_role"
    oidc_org_claim: str = "trace_org"
    log_level: str = "info"
    rpc_pools: tuple[tuple[str, str], ...] = ()

    @classmethod
    def load(
        cls, overrides: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None
    ) -> Settings:
        """Build settings from defaults < environment < explicit overrides (CLI flags)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for s in SETTINGS:
            raw: Any = None
            if overrides and overrides.get(s.name) is not None:
                raw = overrides[s.name]
            elif env.get(s.env) not in (None, ""):
                raw = env[s.env]
            if raw is None:
                continue
            values[s.name] = _coerce(s, raw)
        pools = rpc_pools_from_env(env)
        if overrides and overrides.get("rpc_pools"):
            pools.update({str(k).lower(): str(v) for k, v in overrides["rpc_pools"].items()})
        values["rpc_pools"] = tuple(sorted(pools.items()))
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        positive = (
            "lease_seconds",
            "token_ttl_seconds",
            "retry_base_seconds",
            "retry_max_seconds",
            "outbox_interval",
            "retry_interval",
            "reaper_interval",
            "visibility_seconds",
            "sink_retry_base_seconds",
            "runner_timeout_seconds",
            "chain_interval",
            "chain_rpc_timeout_seconds",
            "cryo_timeout_seconds",
            "delivery_timeout_seconds",
            "delivery_retry_base_seconds",
            "delivery_interval",
            "api_rate_per_second",
            "api_query_timeout_seconds",
            "query_run_timeout",
            "query_result_ttl",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{_BY_NAME[name].env} must be > 0")
        for name in (
            "max_attempts",
            "db_pool_size",
            "worker_concurrency",
            "sink_max_deliveries",
            "sink_concurrency",
            "runner_concurrency",
            "cryo_concurrency",
            "chain_max_attempts",
            "chain_watch_depth",
            "cryo_max_bytes",
            "delivery_concurrency",
            "delivery_max_attempts",
            "api_rate_burst",
            "query_max_export_rows",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{_BY_NAME[name].env} must be >= 1")
        if self.runner_memory_mb < 64:
            raise ConfigError("TRACE_RUNNER_MEMORY_MB must be >= 64")
        if not 0 < self.port < 65536:
            raise ConfigError("TRACE_PORT must be a TCP port number")
        if self.retry_max_seconds < self.retry_base_seconds:
            raise ConfigError("TRACE_RETRY_MAX_SECONDS must be >= TRACE_RETRY_BASE_SECONDS")
        if self.runtime_invoker not in ("local", "lambda"):
            raise ConfigError("TRACE_RUNTIME_INVOKER must be local or lambda")
        if self.queue_backend not in ("postgres", "sqs"):
            raise ConfigError("TRACE_QUEUE_BACKEND must be postgres or sqs")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise ConfigError("TRACE_LOG_LEVEL must be debug, info, warning or error")
        if self.api_query_timeout_seconds > 600:
            raise ConfigError("TRACE_API_QUERY_TIMEOUT_SECONDS must be <= 600")
        if self.query_run_timeout > 600:  # the engine's own bound on any query
            raise ConfigError("TRACE_QUERY_RUN_TIMEOUT must be <= 600")
        oidc = (self.oidc_issuer, self.oidc_audience, self.oidc_jwks)
        if any(oidc) and not all(oidc):
            raise ConfigError(
                "OIDC needs TRACE_OIDC_ISSUER, TRACE_OIDC_AUDIENCE and TRACE_OIDC_JWKS together"
            )
        for pool, raw in self.rpc_pools:
            parse_endpoints(pool, raw)  # a malformed pool fails at start, naming the entry

    @property
    def resolved_dispatcher_url(self) -> str:
        if self.dispatcher_url:
            return self.dispatcher_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host  # noqa: S104
        return f"http://{host}:{self.port}"

    @property
    def resolved_query_url(self) -> str:
        """Where the query service answers: TRACE_QUERY_URL, else this host's query port."""
        return (self.query_url or f"http://127.0.0.1:{self.query_port}").rstrip("/")

    @property
    def resolved_object_store_url(self) -> str:
        """Canonical object store root: `file:///abs/dir` or `s3://bucket/prefix`; no /."""
        if self.object_store_url:
            url = self.object_store_url.rstrip("/")
            if url.startswith("file://"):
                return "file://" + str(Path(url[len("file://") :]).resolve())
            return url
        return "file://" + str((self.home / "objects").resolve())

    def rpc_endpoints(self, pool: str) -> tuple[Endpoint, ...]:
        """The endpoints of an RPC pool (TRACE_RPC_POOL_<NAME>_URLS), empty when it is not set."""
        raw = dict(self.rpc_pools).get(pool.lower().replace("-", "_"))
        return parse_endpoints(pool, raw) if raw else ()

    @staticmethod
    def rpc_pool_env(pool: str) -> str:
        return f"TRACE_RPC_POOL_{pool.upper().replace('-', '_')}_URLS"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def child_env(self) -> dict[str, str]:
        """Environment that reproduces these settings in a child process."""
        out: dict[str, str] = {}
        for s in SETTINGS:
            value = getattr(self, s.name)
            if value is not None:
                out[s.env] = str(value)
        for pool, raw in self.rpc_pools:
            out[self.rpc_pool_env(pool)] = raw
        return out


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _coerce(setting: Setting, raw: Any) -> Any:
    try:
        if setting.kind is Path:
            return Path(raw)
        if setting.kind is bool:
            text = str(raw).strip().lower()
            if text not in _TRUE + _FALSE:
                raise ValueError(text)
            return text in _TRUE
        return setting.kind(raw)
    except (TypeError, ValueError):
        if setting.kind is bool:
            raise ConfigError(f"{setting.env} must be 1, 0, true or false") from None
        raise ConfigError(f"{setting.env} must be a {setting.kind.__name__}") from None
