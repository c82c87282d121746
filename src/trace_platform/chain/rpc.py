"""A small async JSON-RPC client for the head observer and the extractor's checks.

Every call has a timeout; errors surface as RpcUnavailable (connection, timeout, HTTP status)
or RpcError (the node answered with an error). Messages never carry the URL: pool URLs hold
API keys.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson


class RpcUnavailable(Exception):
    """The node could not be reached or did not answer in time (retryable)."""


class RpcThrottled(RpcUnavailable):
    """The node answered 429 (or a rate-limit error); `retry_after` is its hint in seconds."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RpcError(Exception):
    """The node answered the call with a JSON-RPC error."""


def retry_after_seconds(value: str | None) -> float | None:
    """A `Retry-After` header as seconds (delta-seconds or an HTTP date), capped at 10 min."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        import time

        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), 600.0)


class RpcClient:
    def __init__(self, url: str, timeout_seconds: float = 10.0) -> None:
        self.url = url  # never in a message: it may carry an API key
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> RpcClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def _post(self, body: object) -> Any:
        try:
            async with self._client().post(
                self.url, data=orjson.dumps(body), headers={"content-type": "application/json"}
            ) as resp:
                if resp.status == 429:
                    wait = retry_after_seconds(resp.headers.get("Retry-After"))
                    raise RpcThrottled("the node answered HTTP 429", wait)
                if resp.status != 200:
                    raise RpcUnavailable(f"the node answered HTTP {resp.status}")
                return orjson.loads(await resp.read())
        except RpcUnavailable:
            raise
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise RpcUnavailable(f"the node is unreachable ({type(exc).__name__})") from None
        except orjson.JSONDecodeError:
            raise RpcUnavailable("the node answered with something that is not JSON") from None

    async def call(self, method: str, params: Sequence[Any] = ()) -> Any:
        answer = await self._post(
            {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
        )
        if not isinstance(answer, dict):
            raise RpcUnavailable("malformed JSON-RPC answer")
        if answer.get("error") is not None:
            raise _answer_error(answer["error"])
        return answer.get("result")

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]]) -> list[Any]:
        """Several calls in one request; results in order (an error item raises RpcError)."""
        if not calls:
            return []
        base = next(self._ids)
        body = [
            {"jsonrpc": "2.0", "id": base + i, "method": m, "params": list(p)}
            for i, (m, p) in enumerate(calls)
        ]
        answer = await self._post(body)
        if not isinstance(answer, list):
            raise RpcUnavailable("malformed JSON-RPC batch answer")
        by_id = {item.get("id"): item for item in answer if isinstance(item, dict)}
        out = []
        for i in range(len(calls)):
            item = by_id.get(base + i)
            if item is None:
                raise RpcUnavailable("the node dropped a call of a batch")
            if item.get("error") is not None:
                raise _answer_error(item["error"])
            out.append(item.get("result"))
        return out

    async def chain_id(self) -> int:
        return int(await self.call("eth_chainId"), 16)

    async def block_number(self) -> int:
        return int(await self.call("eth_blockNumber"), 16)

    async def block_headers(self, numbers: Sequence[int]) -> dict[int, tuple[str, int] | None]:
        """(hash, timestamp) of each block number on the node's canonical chain (None past
        the head)."""
        results: dict[int, tuple[str, int] | None] = {}
        numbers = sorted(set(numbers))
        for i in range(0, len(numbers), 100):
            part = numbers[i : i + 100]
            blocks = await self.batch([("eth_getBlockByNumber", [hex(n), False]) for n in part])
            for n, block in zip(part, blocks, strict=True):
                ok = isinstance(block, dict) and isinstance(block.get("hash"), str)
                results[n] = (block["hash"], int(block["timestamp"], 16)) if ok else None
        return results

    async def block_hashes(self, numbers: Sequence[int]) -> dict[int, str | None]:
        """Hash of each block number on the node's canonical chain (None past the head)."""
        headers = await self.block_headers(numbers)
        return {n: (h[0] if h else None) for n, h in headers.items()}


def _answer_error(error: Any) -> Exception:
    """A JSON-RPC error item as an exception: rate-limit codes and messages (-32005, 429,
    "rate limit", "too many requests") are throttling, anything else an RpcError."""
    if not isinstance(error, dict):
        return RpcError("error")
    message = str(error.get("message", "error"))[:200]
    lowered = message.lower()
    if error.get("code") in (-32005, 429) or "rate limit" in lowered or "too many" in lowered:
        data = error.get("data")
        hint = data.get("backoff_seconds") if isinstance(data, dict) else None
        return RpcThrottled(f"the node is rate limiting: {message}", _number(hint))
    return RpcError(message)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and value >= 0 else None
