"""Lite RuntimeInvoker: one `trace runner` child process per invocation, with a clean
environment (no database URL, worker token, key ring or TRACE_HOME) and the payload on stdin."""

from __future__ import annotations

import asyncio
import signal
import sys

import orjson

from trace_platform.aio import signal_child
from trace_platform.config import Settings
from trace_platform.domain.bundle import InvocationPayload
from trace_platform.logs import get_logger

log = get_logger(__name__)
RUNNER_GRACE_SECONDS = 30.0


class LocalRuntimeInvoker:
    """Runs invocations through a runner fork server (`python -m trace_platform.runner
    --serve`): imports are paid once, each invocation gets its own forked runner process and
    each handler a fresh sandboxed exec. If the server dies it is restarted; invocations in
    flight are abandoned to the lease reaper."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._server: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[int]] = {}
        self._lock = asyncio.Lock()
        self._next = 0

    def runner_env(self) -> dict[str, str]:
        s = self.settings
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "TRACE_DISPATCHER_URL": s.resolved_dispatcher_url,
            "TRACE_RUNNER_TIMEOUT_SECONDS": str(s.runner_timeout_seconds),
            "TRACE_RUNNER_MEMORY_MB": str(s.runner_memory_mb),
            "TRACE_RUNNER_UID": str(s.runner_uid),
            "TRACE_RUNNER_CONCURRENCY": str(s.runner_concurrency),
            "TRACE_LOG_LEVEL": s.log_level,
            # The runner must not create or touch the platform's home.
            "TRACE_HOME": "/nonexistent/trace-runner",
        }
        if s.runner_allow_weak_sandbox:
            env["TRACE_RUNNER_ALLOW_WEAK_SANDBOX"] = "1"
        if s.query_url:
            env["TRACE_QUERY_URL"] = s.query_url
        return env

    async def start(self) -> None:
        await self._ensure_server()

    async def _ensure_server(self) -> asyncio.subprocess.Process:
        async with self._lock:
            if self._server is not None and self._server.returncode is None:
                return self._server
            self._server = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "trace_platform.runner",
                "--serve",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,  # runner logs (JSON) join the dispatcher's stderr
                env=self.runner_env(),
                cwd="/",
                start_new_session=True,
            )
            self._reader = asyncio.create_task(self._read_answers(self._server))
            return self._server

    async def _read_answers(self, server: asyncio.subprocess.Process) -> None:
        assert server.stdout is not None
        while line := await server.stdout.readline():
            answer = orjson.loads(line)
            fut = self._waiting.pop(str(answer.get("id")), None)
            if fut is not None and not fut.done():
                fut.set_result(int(answer.get("code", 1)))
        for fut in self._waiting.values():  # the server died: the reaper recovers these
            if not fut.done():
                fut.set_result(-1)
        self._waiting.clear()

    async def invoke(self, payload: InvocationPayload) -> None:
        server = await self._ensure_server()
        assert server.stdin is not None
        self._next += 1
        req_id = str(self._next)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiting[req_id] = fut
        line = orjson.dumps({"id": req_id, "payload": payload.model_dump(mode="json")})
        server.stdin.write(line + b"\n")
        await server.stdin.drain()
        deadline = self.settings.runner_timeout_seconds + RUNNER_GRACE_SECONDS
        try:
            code = await asyncio.wait_for(fut, deadline)
        except TimeoutError:
            self._waiting.pop(req_id, None)
            log.error("invoker.runner_stuck", task_id=str(payload.task_id), attempt=payload.attempt)
            return
        if code:
            log.warning(
                "invoker.runner_failed",
                task_id=str(payload.task_id),
                attempt=payload.attempt,
                code=code,
            )

    async def close(self) -> None:
        if self._server is not None and self._server.returncode is None:
            signal_child(self._server, signal.SIGKILL)  # not kill(): it can reap before asyncio
            await self._server.wait()
        if self._reader is not None:
            self._reader.cancel()
