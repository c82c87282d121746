"""The runner as the body of the platform-managed Lambda function (AWS profile).

Handler: `trace_platform.runner.lambda_entry.handler`. The event is the invocation payload
(SPEC §8); the answer is `{"code": N}` with the runner's exit code (0 whatever the task's
outcome: the runner reported it). The function's configuration holds what the Lite invoker
puts in the runner's environment — `TRACE_DISPATCHER_URL`, `TRACE_QUERY_URL`,
`TRACE_RUNNER_TIMEOUT_SECONDS`, `TRACE_RUNNER_MEMORY_MB` — and nothing secret. Lambda offers
no user namespaces for bubblewrap: the function's micro-VM is the isolation boundary, so it
runs with `TRACE_RUNNER_ALLOW_WEAK_SANDBOX=1` (clean environment and rlimits per handler)
and an execution role with no permissions.
"""

from __future__ import annotations

from typing import Any

import orjson

from trace_platform import logs
from trace_platform.runner.app import run_runner
from trace_platform.runner.config import RunnerConfig


def handler(event: Any, context: Any) -> dict[str, int]:
    settings = RunnerConfig.from_env()
    logs.configure("runner", settings.log_level)
    return {"code": run_runner(settings, orjson.dumps(event))}
