"""A fault-injecting JSON-RPC proxy for tests: a small aiohttp server in front of a real node
(anvil), on loopback, in its own thread with its own event loop (usable from sync and async
tests alike). Every fault is an attribute that can be changed while it runs:

- `delay`: seconds added to every request;
- `throttle_ratio`: the share of requests answered 429 (at random), with `Retry-After:
  <retry_after>` when `retry_after` is set;
- `throttle_for(seconds)`: every request answered 429 for that long (a hard throttle);
- `rate_limit`: requests per second allowed (a token bucket holding one second's worth);
  requests over it are answered 429, as a provider's plan limit does;
- `throttle_body`: what a 429 carries: `"text"` (a plain body, as a gateway such as nginx's
  `limit_req` sends) or `"jsonrpc"` (a JSON-RPC error with code 429, as Alchemy or Infura
  send; cryo 0.3.2 retries only these);
- `drop_ratio`: the share of requests whose connection is closed without an answer;
- `lag`: the node's head as this endpoint shows it is `lag` blocks behind (`eth_blockNumber`,
  and `eth_getBlockByNumber` of a later block answers null);
- `chain_id`: `eth_chainId` answers this chain instead;
- `hold(from_block)`: requests naming a block at or above `from_block` wait (unanswered,
  not forwarded) until `release()`; `held` counts those waiting.

It counts `requests`, `throttled` and `dropped`, and keeps `calls`: each request's arrival
(wall clock), methods and the block spans it names (block-number parameters, `eth_getLogs`
ranges), so a test can tell which blocks were asked for when.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web


@dataclass(frozen=True)
class Call:
    at: float  # time.time() at arrival
    methods: tuple[str, ...]
    spans: tuple[tuple[int, int], ...]  # inclusive block spans the request names

    def names_blocks(self, lo: int, hi: int) -> bool:
        """Whether the request names a block in [lo, hi)."""
        return any(a < hi and b >= lo for a, b in self.spans)


BY_NUMBER = {  # methods whose first parameter is a block number
    "eth_getBlockByNumber",
    "eth_getBlockReceipts",
    "eth_getBlockTransactionCountByNumber",
    "eth_getTransactionByBlockNumberAndIndex",
    "trace_block",
    "trace_replayBlockTransactions",
    "debug_traceBlockByNumber",
}
BY_FILTER = {"eth_getLogs", "trace_filter"}  # a filter with fromBlock / toBlock


def _block(value: Any) -> int | None:
    if isinstance(value, str) and value.startswith("0x") and len(value) <= 18:
        return int(value, 16)
    return value if type(value) is int else None


def _spans(items: list[Any]) -> tuple[tuple[int, int], ...]:
    """The block spans a batch of JSON-RPC calls names (tags such as "latest" name none)."""
    spans: list[tuple[int, int]] = []
    for item in items:
        params = item.get("params") if isinstance(item, dict) else None
        if not isinstance(params, list) or not params:
            continue
        method, first = item.get("method"), params[0]
        if method in BY_NUMBER and (n := _block(first)) is not None:
            spans.append((n, n))
        elif method in BY_FILTER and isinstance(first, dict) and "blockHash" not in first:
            lo, hi = _block(first.get("fromBlock")), _block(first.get("toBlock"))
            spans.append((0 if lo is None else lo, 2**62 if hi is None else hi))  # tags: open
    return tuple(spans)


class FaultProxy:
    def __init__(self, upstream: str, delay: float = 0.0, seed: int = 7) -> None:
        self.upstream = upstream
        self.delay = delay
        self.throttle_ratio = 0.0
        self.retry_after: float | None = None
        self.rate_limit: float | None = None
        self.throttle_body = "text"
        self._tokens, self._refilled = 0.0, time.monotonic()
        self.drop_ratio = 0.0
        self.lag = 0
        self.chain_id: int | None = None
        self.requests = self.throttled = self.dropped = self.held = 0
        self.calls: list[Call] = []
        self.hold_from: int | None = None
        self._hard_until = 0.0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        self.url = f"http://127.0.0.1:{self.port}"

    def throttle_for(self, seconds: float) -> None:
        self._hard_until = time.monotonic() + seconds

    def hold(self, from_block: int) -> None:
        """Hold every request naming a block >= `from_block` until `release()`."""
        self._loop.call_soon_threadsafe(self._released.clear)
        self.hold_from = from_block

    def release(self) -> None:
        self.hold_from = None
        self._loop.call_soon_threadsafe(self._released.set)

    def calls_since(self, at: float) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.at >= at]

    # -- server -----------------------------------------------------------------------------

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._released = asyncio.Event()
        self._released.set()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        app = web.Application(client_max_size=64 << 20)
        app.router.add_post("/", self._handle)
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def _over_limit(self) -> bool:
        if not self.rate_limit:
            return False
        with self._lock:
            now = time.monotonic()
            self._tokens = min(
                self.rate_limit, self._tokens + (now - self._refilled) * self.rate_limit
            )
            self._refilled = now
            if self._tokens >= 1:
                self._tokens -= 1
                return False
            return True

    def _roll(self, ratio: float) -> bool:
        with self._lock:
            return ratio > 0 and self._random.random() < ratio

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self.requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self._roll(self.drop_ratio):
            with self._lock:
                self.dropped += 1
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if (
            time.monotonic() < self._hard_until
            or self._roll(self.throttle_ratio)
            or self._over_limit()
        ):
            with self._lock:
                self.throttled += 1
            headers = {} if self.retry_after is None else {"Retry-After": f"{self.retry_after:g}"}
            if self.throttle_body == "jsonrpc":
                error = {"code": 429, "message": "Your app has exceeded its capacity"}
                body = {"jsonrpc": "2.0", "id": None, "error": error}
                return web.json_response(body, status=429, headers=headers)
            return web.Response(status=429, text="rate limited", headers=headers)
        body = await request.read()
        calls = json.loads(body)
        single = isinstance(calls, dict)
        items = [calls] if single else list(calls)
        spans = _spans(items)
        with self._lock:
            methods = tuple(str(i.get("method")) for i in items if isinstance(i, dict))
            self.calls.append(Call(time.time(), methods, spans))
        hold = self.hold_from
        if hold is not None and any(b >= hold for _, b in spans):
            with self._lock:
                self.held += 1
            try:
                await self._released.wait()
            finally:
                with self._lock:
                    self.held -= 1
        answers: dict[Any, Any] = {}
        forward = []
        head = await self._head() if self.lag else None
        for item in items:
            method, params = item.get("method"), item.get("params") or []
            if method == "eth_chainId" and self.chain_id is not None:
                answers[item["id"]] = hex(self.chain_id)
            elif method == "eth_blockNumber" and head is not None:
                answers[item["id"]] = hex(head - self.lag)
            elif (
                method == "eth_getBlockByNumber"
                and head is not None
                and isinstance(params[0], str)
                and params[0].startswith("0x")
                and int(params[0], 16) > head - self.lag
            ):
                answers[item["id"]] = None
            else:
                forward.append(item)
        results: list[dict[str, Any]] = []
        if forward:
            async with self._session.post(
                self.upstream,
                data=json.dumps(forward if not single else forward[0]),
                headers={"content-type": "application/json"},
            ) as resp:
                got = await resp.json(content_type=None)
            results = [got] if isinstance(got, dict) else list(got)
        results += [{"jsonrpc": "2.0", "id": i, "result": r} for i, r in answers.items()]
        out: Any = results[0] if single else results
        return web.json_response(out)

    async def _head(self) -> int:
        async with self._session.post(
            self.upstream, json={"jsonrpc": "2.0", "id": 0, "method": "eth_blockNumber"}
        ) as resp:
            return int((await resp.json(content_type=None))["result"], 16)

    def close(self) -> None:
        async def stop() -> None:
            await self._runner.cleanup()
            await self._session.close()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
