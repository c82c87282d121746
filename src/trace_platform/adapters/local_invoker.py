"""Lite RuntimeInvoker: one `trace runner` child process per invocation, with a clean
environment (no database URL, worker token, key ring or TRACE_HOME) and the payload on stdin."""

from __future__ import annotations

import asyncio
import contextlib
import sys

from trace_platform.config import Settings
from trace_platform.domain.bundle import InvocationPayload
from trace_platform.logs import get_logger

log = get_logger(__name__)
RUNNER_GRACE_SECONDS = 30.0


class LocalRuntimeInvoker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def runner_env(self) -> dict[str, str]:
        s = self.settings
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "TRACE_DISPATCHER_URL": s.resolved_dispatcher_url,
            "TRACE_RUNNER_TIMEOUT_SECONDS": str(s.runner_timeout_seconds),
            "TRACE_RUNNER_MEMORY_MB": str(s.runner_memory_mb),
            "TRACE_RUNNER_UID": str(s.runner_uid),
            "TRACE_LOG_LEVEL": s.log_level,
            # The runner must not create or touch the platform's home.
            "TRACE_HOME": "/nonexistent/trace-runner",
        }
        if s.runner_allow_weak_sandbox:
            env["TRACE_RUNNER_ALLOW_WEAK_SANDBOX"] = "1"
        if s.query_url:
            env["TRACE_QUERY_URL"] = s.query_url
        return env

    async def invoke(self, payload: InvocationPayload) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "trace_platform",
            "runner",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=None,  # runner logs (JSON) join the dispatcher's stderr
            env=self.runner_env(),
            cwd="/",
            start_new_session=True,
        )
        deadline = self.settings.runner_timeout_seconds + RUNNER_GRACE_SECONDS
        try:
            await asyncio.wait_for(proc.communicate(payload.model_dump_json().encode()), deadline)
        except TimeoutError:
            log.error("invoker.runner_stuck", task_id=str(payload.task_id), attempt=payload.attempt)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if proc.returncode:
            log.warning(
                "invoker.runner_failed",
                task_id=str(payload.task_id),
                attempt=payload.attempt,
                code=proc.returncode,
            )
