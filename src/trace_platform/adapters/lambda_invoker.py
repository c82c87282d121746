"""AWS RuntimeInvoker: a synchronous invoke of the platform-managed runner Lambda function
(`TRACE_RUNTIME_INVOKER=lambda`, extra `[aws]`).

The function's body is `trace_platform.runner.lambda_entry.handler`: the same runner as Lite,
given the same invocation payload. Lambda's own retries are never used (the SDK makes one
attempt and asynchronous invocation is not used): a runner that fails or vanishes is
recovered by the lease reaper, like a lost local runner. The runner reports the task's
outcome itself; this invoker only logs how the invocation ended.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from trace_platform.domain.bundle import InvocationPayload
from trace_platform.logs import get_logger

log = get_logger(__name__)
GRACE_SECONDS = 30


class LambdaRuntimeInvoker:
    def __init__(self, function_name: str, timeout_seconds: float, client: Any = None) -> None:
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "lambda",
                config=Config(
                    read_timeout=int(timeout_seconds) + GRACE_SECONDS,
                    connect_timeout=10,
                    retries={"max_attempts": 1, "mode": "standard"},  # one attempt, no retry
                ),
            )
        self._lambda = client
        self.function_name = function_name

    async def start(self) -> None:
        return None

    async def invoke(self, payload: InvocationPayload) -> None:
        await self.call(payload)

    async def call(self, payload: InvocationPayload) -> dict[str, Any]:
        """Invoke the runner function and return its answer: `{"code": N}` from the runner,
        `{"function_error": kind}` when the function failed, `{"error": code}` when Lambda
        could not be reached. Never raises for these: the lease reaper owns recovery."""
        from botocore.exceptions import BotoCoreError, ClientError

        ids = {"task_id": str(payload.task_id), "attempt": payload.attempt}
        try:
            reply = await asyncio.to_thread(
                self._lambda.invoke,
                FunctionName=self.function_name,
                InvocationType="RequestResponse",
                Payload=orjson.dumps(payload.model_dump(mode="json")),
            )
            body = await asyncio.to_thread(reply["Payload"].read)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            log.error("invoker.lambda_unreachable", error=code, **ids)
            return {"error": code}
        except BotoCoreError as exc:
            log.error("invoker.lambda_unreachable", error=type(exc).__name__, **ids)
            return {"error": type(exc).__name__}
        if reply.get("FunctionError"):
            log.warning("invoker.lambda_function_error", kind=reply["FunctionError"], **ids)
            return {"function_error": reply["FunctionError"]}
        try:
            answer = orjson.loads(body) if body else {}
        except orjson.JSONDecodeError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if answer.get("code"):
            log.warning("invoker.runner_failed", code=answer["code"], **ids)
        return answer

    async def close(self) -> None:
        return None
