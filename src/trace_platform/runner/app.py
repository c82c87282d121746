"""`trace runner`: reads one invocation payload (JSON) on stdin and runs it.

Started by the Lite invoker with a clean environment; on AWS the same code is the Lambda
function's body. Exit code 0 whatever the task's outcome (it was reported); 2 for a bad
payload, 3 when the sandbox is weaker than required."""

from __future__ import annotations

import sys

import uvloop
from pydantic import ValidationError as PydanticValidationError

from trace_platform.logs import get_logger
from trace_platform.runner.config import RunnerConfig
from trace_platform.runner.service import Runner, read_payload
from trace_platform.sandbox import Limits, detect_isolation

log = get_logger(__name__)


PROCESSES_PER_HANDLER = 32


def run_runner(settings: RunnerConfig, raw: bytes) -> int:
    isolation = detect_isolation()
    if not isolation.strong and not settings.runner_allow_weak_sandbox:
        missing = [k for k, v in isolation.features.items() if not v]
        log.error("runner.sandbox_too_weak", missing=missing)
        print(
            f"error: sandbox lacks {', '.join(missing)} (install bubblewrap, or set "
            "TRACE_RUNNER_ALLOW_WEAK_SANDBOX=1 to accept a weaker one)",
            file=sys.stderr,
        )
        return 3
    try:
        payload = read_payload(raw)
    except PydanticValidationError:
        print("error: invalid invocation payload", file=sys.stderr)
        return 2
    limits = Limits(
        wall_seconds=settings.runner_timeout_seconds,
        cpu_seconds=max(1, int(settings.runner_timeout_seconds)),
        memory_mb=settings.runner_memory_mb,
        # RLIMIT_NPROC counts every thread of the handlers' uid, and the handlers of one
        # runner host share it: a budget per concurrent handler (node alone runs ~11).
        processes=PROCESSES_PER_HANDLER * settings.runner_concurrency,
    )
    runner = Runner(
        settings.dispatcher_url,
        isolation,
        limits,
        uid=settings.runner_uid,
        query_url=settings.query_url,
    )
    uvloop.run(runner.run(payload))
    return 0
