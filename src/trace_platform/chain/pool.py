"""RPC pools at run time (SPEC §16): each endpoint's health and budget, and the choice of an
endpoint for a range or for the head.

Each process that calls a pool (a worker extracting ranges, the dispatcher watching heads)
holds one `RpcPool` per configured pool. Every endpoint has:

- a **state**: `healthy`; `throttled` (it answered 429: nothing goes there until its
  `Retry-After`, or a short backoff without one); `out` (it failed `OUT_AFTER` times in a row:
  probed back in after a backoff that doubles up to `PROBE_MAX`); `refused` (it serves another
  chain than the job's: for good, with the reason shown);
- a **budget** passed to cryo: requests per second (unmetered until the endpoint throttles
  once the rate its cryo calls send is known, then halved on each 429, timeout or connection
  error, at most once per `DECREASE_EVERY`, and raised by a tenth of the rate it was
  throttled at on each success, up to that rate or the configured `;rps=`) and concurrent
  requests (halved and raised by one the same way);
- measured **latency** of Trace's own calls (p50 of the last 256) and **speed**: the blocks
  per second its cryo calls extracted successfully (an EWMA; a failed call counts its seconds
  and no blocks).

Which endpoint extracts which range is `domain.range_assignment`'s decision (`assign`): each
range to the available endpoint that would finish it first at its measured speed, so work
shifts to where it succeeds. An endpoint that throttles (a 429 within `THROTTLE_MEMORY`) is
sent only what it has proven to serve since it began throttling (twice its largest clean call
of that time: nothing before one) while another endpoint can take the rest; the calls it was
running when it began throttling are its proof, and once its 429s are `THROTTLE_MEMORY` old
it is measured afresh. Endpoints not asked their chain yet are asked together before a batch
is assigned, so a dead or wrong-chain endpoint costs one round trip, not a range's tries.

cryo retries rate-limited requests itself (10 times, 500 ms apart), so its 429s are seen
through the outcome and speed of each extraction and through the calls Trace makes around it
(a burst of chain-id requests when the endpoint is first used, block hashes before and after
each call), which go to the same endpoint.

How cryo retries shapes the budget (`call_plan`). cryo 0.3.2's retry client (ethers'
`RetryClient`) adds `min(queued, ahead) / 19` seconds to the backoff of every 429 once more
than 19 requests are in flight (a compute-unit heuristic with Alchemy's 330 CU/s), so one call
at cryo's default 100 concurrent requests waits up to 5 s per 429: measured here, 2,000 blocks
behind a proxy answering 20% of requests 429 took 78 s that way against 1.2 s clean. An
endpoint that has throttled within `THROTTLE_MEMORY` therefore gets its concurrency spread
over several calls of at most `ETHERS_QUEUE` requests each, with a short first backoff: the
same measurement took 1.4-1.6 s (4 calls of 19, 20-50 ms). A healthy endpoint keeps one call
(several calls cost ~10% more CPU here).

A URL never leaves this module's objects: states, logs, errors and metrics name the label.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from trace_platform.chain.rpc import RpcClient, RpcError, RpcThrottled, RpcUnavailable
from trace_platform.config import Settings
from trace_platform.db.sql import q
from trace_platform.domain.endpoints import Endpoint
from trace_platform.domain.range_assignment import EndpointCapacity, Range, assign_ranges
from trace_platform.logs import get_logger
from trace_platform.metrics import RPC_CALLS, RPC_ENDPOINT

log = get_logger(__name__)
T = TypeVar("T")

HEALTHY, THROTTLED, OUT, REFUSED = "healthy", "throttled", "out", "refused"
STATES = (HEALTHY, THROTTLED, OUT, REFUSED)
OUT_AFTER = 3  # consecutive failures that take an endpoint out
PROBE_BASE, PROBE_MAX = 2.0, 60.0
THROTTLE_BACKOFF = 1.0  # seconds a 429 without Retry-After keeps an endpoint aside
DECREASE_EVERY = 1.0
MIN_RPS = 2.0
CONCURRENCY = 100  # cryo's concurrent requests per endpoint (its own default) until one goes wrong
ETHERS_QUEUE = 330 // 17  # requests in flight past which cryo's retry client adds seconds per 429
THROTTLED_BACKOFF_MS = 50  # cryo's first retry backoff on an endpoint that throttles
THROTTLE_MEMORY = 120.0  # seconds an endpoint counts as throttling after its last 429
MAX_CALLS = 5  # cryo calls one piece is spread over on such an endpoint
PROBE_BURST = 16  # concurrent requests of the first check of an endpoint


@dataclass(frozen=True)
class CallPlan:
    """cryo calls for one piece: how many, and each one's requests per second (None:
    unmetered), concurrent requests and first retry backoff in ms (None: cryo's 500)."""

    calls: int
    rps: int | None
    concurrency: int
    backoff_ms: int | None


class PoolUnavailable(Exception):
    """No endpoint of the pool can take the call now (the message names why, never a URL);
    `wait` is how long until one may (None: not known)."""

    def __init__(self, message: str, wait: float | None = None) -> None:
        super().__init__(message)
        self.wait = wait


class PoolRefused(PoolUnavailable):
    """Every endpoint of the pool serves another chain than the job's."""


@dataclass
class Health:
    endpoint: Endpoint
    state: str = HEALTHY
    reason: str | None = None
    rps: float | None = None
    ceiling: float | None = None
    concurrency: int = CONCURRENCY
    until: float = 0.0
    failures: int = 0
    requests: int = 0
    throttled: int = 0
    errors: int = 0
    ranges: int = 0
    blocks: int = 0
    busy: int = 0  # cryo calls bound for the endpoint (running or waiting for a slot)
    queued: int = 0  # blocks of the ranges assigned to it and not finished
    running: int = 0  # cryo calls running on it
    head: int | None = None
    chain_id: int | None = None
    speed: float | None = None  # blocks/s its cryo calls extracted successfully (an EWMA)
    proven: int = 0  # blocks of its largest clean call since it began throttling
    last_decrease: float = 0.0
    throttled_at: float | None = None  # monotonic time of its last 429
    call_rate: float | None = None  # requests per second its cryo calls sent (an EWMA)
    lag: int | None = None
    last_error: str | None = None

    def __post_init__(self) -> None:
        self.rps = self.ceiling = self.endpoint.rps
        self.latencies: deque[float] = deque(maxlen=256)

    @property
    def label(self) -> str:
        return self.endpoint.label

    def available(self, now: float) -> bool:
        return self.state != REFUSED and now >= self.until

    def throttling(self, now: float) -> bool:
        """Whether the endpoint answered 429 within `THROTTLE_MEMORY`."""
        return self.throttled_at is not None and now - self.throttled_at < THROTTLE_MEMORY

    def allowance(self, now: float) -> int | None:
        """Most blocks one assignment may give it: what it has proven while throttling (None:
        no cap, it does not throttle)."""
        return 2 * self.proven if self.throttling(now) else None

    def latency_p50(self) -> float | None:
        return statistics.median(self.latencies) if self.latencies else None

    def view(self) -> dict[str, Any]:
        """What status pages show: no URL, ever."""
        p50 = self.latency_p50()
        return {
            "endpoint": self.label,
            "role": self.endpoint.role,
            "weight": self.endpoint.weight,
            "state": self.state,
            "reason": self.reason,
            "last_error": self.last_error,
            "rps": None if self.rps is None else round(self.rps, 1),
            "ceiling": None if self.ceiling is None else round(self.ceiling, 1),
            "concurrency": self.concurrency,
            "requests": self.requests,
            "throttled": self.throttled,
            "errors": self.errors,
            "ranges": self.ranges,
            "blocks": self.blocks,
            "latency_p50_ms": None if p50 is None else round(p50 * 1000, 1),
            "head": self.head,
            "lag": self.lag,
        }


class RpcPool:
    def __init__(self, name: str, endpoints: tuple[Endpoint, ...], timeout: float) -> None:
        self.name = name
        self.health = [Health(e) for e in endpoints]
        self.timeout = timeout
        self._clients: dict[str, RpcClient] = {}
        self._checks: dict[str, asyncio.Lock] = {}

    def client(self, h: Health) -> RpcClient:
        rpc = self._clients.get(h.label)
        if rpc is None:
            rpc = self._clients[h.label] = RpcClient(h.endpoint.url, self.timeout)
        return rpc

    async def close(self) -> None:
        for rpc in self._clients.values():
            await rpc.close()
        self._clients.clear()

    # -- outcomes -----------------------------------------------------------------------

    def _set_state(self, h: Health, state: str, reason: str | None) -> None:
        if h.state == state:
            h.reason = reason if state != HEALTHY else None
            return
        h.state, h.reason = state, (reason if state != HEALTHY else None)
        event = log.warning if state != HEALTHY else log.info
        event("rpc.endpoint_state", pool=self.name, endpoint=h.label, state=state, reason=reason)

    def ok(self, h: Health, latency: float | None = None, requests: int = 1) -> None:
        h.requests += requests
        RPC_CALLS.labels(self.name, h.label, "ok").inc(requests)
        if latency is not None:
            h.latencies.append(latency)
        h.failures = 0
        if h.rps is not None and h.ceiling is not None:
            h.rps = min(h.ceiling, h.rps + max(1.0, h.ceiling / 10))
        h.concurrency = min(CONCURRENCY, h.concurrency + 1)
        if h.state in (THROTTLED, OUT) and time.monotonic() >= h.until:
            self._set_state(h, HEALTHY, None)

    def throttled_by(
        self,
        h: Health,
        retry_after: float | None,
        sent_rate: float | None,
        count: int = 1,
        aside: bool = True,
    ) -> None:
        """`count` 429s (answers to requests sent together): aside until `Retry-After` (or,
        when `aside`, a short backoff), budget decreased once."""
        h.requests += count
        h.throttled += count
        h.last_error = "HTTP 429"
        if not h.throttling(time.monotonic()):
            h.proven = 0  # a new episode: it proves itself again
        h.throttled_at = time.monotonic()
        RPC_CALLS.labels(self.name, h.label, "throttled").inc(count)
        wait = THROTTLE_BACKOFF if retry_after is None else retry_after
        if aside or retry_after is not None:
            h.until = max(h.until, time.monotonic() + wait)
        self._decrease(h, sent_rate, force=retry_after is not None)
        self._set_state(h, THROTTLED, f"HTTP 429, retry in {wait:.1f} s")

    def failed(self, h: Health, reason: str, sent_rate: float | None = None) -> None:
        """A timeout, a dropped connection or an extraction that failed there."""
        h.requests += 1
        h.errors += 1
        h.failures += 1
        h.last_error = reason
        RPC_CALLS.labels(self.name, h.label, "error").inc()
        self._decrease(h, sent_rate)
        if h.failures >= OUT_AFTER:
            backoff = min(PROBE_MAX, PROBE_BASE * 2 ** (h.failures - OUT_AFTER))
            h.until = time.monotonic() + backoff
            self._set_state(h, OUT, f"{reason}; probed again in {backoff:.0f} s")

    def refuse(self, h: Health, reason: str) -> None:
        self._set_state(h, REFUSED, reason)

    def _decrease(self, h: Health, sent_rate: float | None, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - h.last_decrease < DECREASE_EVERY:
            return
        h.last_decrease = now
        if h.rps is None:
            # First metering: from what was being sent (the call's rate, else its cryo calls'
            # measured rate, else what the window allows at the measured latency).
            p50 = h.latency_p50()
            sent_rate = sent_rate or h.call_rate or (p50 and h.concurrency / max(p50, 0.001))
            h.ceiling = h.rps = sent_rate if sent_rate and sent_rate > MIN_RPS else None
        if h.rps is not None:  # (a rate never measured stays unmetered: the window shrinks)
            h.rps = max(MIN_RPS, h.rps * 0.5)
        h.concurrency = max(1, h.concurrency // 2)

    def extracted(
        self,
        h: Health,
        blocks: int,
        seconds: float,
        rate: float | None = None,
        clean: bool = True,
    ) -> None:
        """A cryo call on `h` extracted `blocks` successfully in `seconds` (0 when it failed;
        `clean`: nothing of it failed), sending about `rate` requests per second (what a
        later throttle's decrease starts from)."""
        h.ranges += 1
        h.blocks += blocks
        speed = blocks / max(seconds, 0.001)
        h.speed = speed if h.speed is None else 0.7 * h.speed + 0.3 * speed
        if clean and blocks and h.throttling(time.monotonic()):
            h.proven = max(h.proven, blocks)
        if rate is not None:
            h.call_rate = rate if h.call_rate is None else 0.7 * h.call_rate + 0.3 * rate

    # -- choice -------------------------------------------------------------------------

    def choose(self, for_head: bool = False, exclude: frozenset[str] = frozenset()) -> Health:
        """The endpoint with capacity for a range (or the head) now; PoolUnavailable (with
        the earliest time one frees up) or PoolRefused when there is none."""
        candidates = self._candidates(for_head, exclude)
        speeds = [h.speed for h in candidates if h.speed]
        fastest = max(speeds) if speeds else None

        def cost(h: Health) -> tuple[float, float]:
            slow = (fastest / h.speed) if (fastest and h.speed) else 1.0
            return ((h.busy + 1) * slow / h.endpoint.weight, h.latency_p50() or 0.0)

        return min(candidates, key=cost)

    def _candidates(self, for_head: bool, exclude: frozenset[str]) -> list[Health]:
        """The available endpoints (of the role asked for, if any), else PoolUnavailable with
        the earliest time one frees up, or PoolRefused when every one is refused."""
        if all(h.state == REFUSED for h in self.health):
            raise PoolRefused("; ".join(sorted({str(h.reason) for h in self.health})))
        now = time.monotonic()
        ok = [h for h in self.health if h.available(now) and h.label not in exclude]
        preferred = [
            h for h in ok if (h.endpoint.serves_head() if for_head else h.endpoint.serves_ranges())
        ]
        candidates = preferred or ok
        if not candidates:
            waiting = [h.until for h in self.health if h.state != REFUSED]
            raise PoolUnavailable(self._why(exclude), min(waiting, default=now) - now)
        return candidates

    def _why(self, exclude: frozenset[str]) -> str:
        parts = [
            f"{h.label} {h.state}" + (f" ({h.reason})" if h.reason else "")
            for h in self.health
            if h.label not in exclude or h.state != HEALTHY
        ]
        return f"no endpoint of pool {self.name!r} can take it now: " + "; ".join(parts)

    async def acquire(
        self, deadline: float, for_head: bool = False, exclude: frozenset[str] = frozenset()
    ) -> Health:
        """`choose`, waiting for a throttled or out endpoint's time when none is available
        (never past `deadline`, a monotonic time)."""
        while True:
            try:
                return self.choose(for_head, exclude)
            except PoolRefused:
                raise
            except PoolUnavailable as exc:
                await self._wait(exc, deadline)

    @staticmethod
    async def _wait(exc: PoolUnavailable, deadline: float) -> None:
        wait = exc.wait or 0.0
        if time.monotonic() + wait > deadline:
            raise PoolUnavailable(str(exc)) from None
        await asyncio.sleep(max(wait, 0.01))

    async def assign(
        self, ranges: list[Range], chain_id: int, deadline: float, exclude: frozenset[str]
    ) -> list[tuple[Health, list[Range]]]:
        """`ranges` over the available endpoints as `assign_ranges` decides (endpoints whose
        chain was verified first), each one's `queued` blocks raised by its share (the
        caller lowers them as its calls end); waits as `acquire` does when none is
        available."""
        while True:
            try:
                candidates = self._candidates(False, exclude)
                break
            except PoolRefused:
                raise
            except PoolUnavailable as exc:
                await self._wait(exc, deadline)
        verified = [h for h in candidates if h.chain_id == chain_id]
        candidates = verified or candidates
        now = time.monotonic()
        shares = assign_ranges(
            ranges,
            [
                EndpointCapacity(h.label, h.endpoint.weight, h.speed, h.queued, h.allowance(now))
                for h in candidates
            ],
        )
        out = []
        for h in candidates:
            if h.label in shares:
                h.queued += sum(e - s for s, e in shares[h.label])
                out.append((h, shares[h.label]))
        return out

    def budget(self, h: Health) -> tuple[int | None, int]:
        """(requests per second, concurrent requests) for one more cryo call on `h`, its
        share of the endpoint's budget with the calls already running there."""
        share = max(1, h.running)
        rps = None if h.rps is None else max(1, int(h.rps / share))
        return rps, max(1, h.concurrency // share)

    def call_plan(self, h: Health, ranges: int) -> CallPlan:
        """How one piece of `ranges` ranges runs on `h`: one cryo call with the piece's
        budget, or, on an endpoint that throttles, up to `MAX_CALLS` calls of at most
        `ETHERS_QUEUE` concurrent requests sharing it, each with a short first backoff."""
        rps, concurrency = self.budget(h)
        if not h.throttling(time.monotonic()):
            return CallPlan(1, rps, concurrency, None)
        calls = max(1, min(MAX_CALLS, ranges, -(-concurrency // ETHERS_QUEUE)))
        return CallPlan(
            calls,
            None if rps is None else max(1, rps // calls),
            max(1, min(ETHERS_QUEUE, -(-concurrency // calls))),
            THROTTLED_BACKOFF_MS,
        )

    # -- calls --------------------------------------------------------------------------

    async def verify_chain(self, h: Health, chain_id: int) -> None:
        """Ask the endpoint its chain once; one serving another chain is refused for good."""
        if h.chain_id is None:
            lock = self._checks.setdefault(h.label, asyncio.Lock())
            async with lock:
                if h.chain_id is None:
                    h.chain_id = await self._first_check(h)
        if h.chain_id != chain_id and h.state != REFUSED:
            self.refuse(
                h,
                f"chain_id_mismatch: endpoint {h.label} serves chain {h.chain_id},"
                f" the job is of chain {chain_id}",
            )

    async def check_chains(self, chain_id: int) -> None:
        """Ask every available endpoint not asked yet its chain, all at once (their failures
        are counted on each; a range is not assigned to them until one answers)."""
        now = time.monotonic()
        unasked = [h for h in self.health if h.chain_id is None and h.available(now)]

        async def one(h: Health) -> None:
            with contextlib.suppress(RpcUnavailable, RpcError):
                await self.verify_chain(h, chain_id)

        await asyncio.gather(*(one(h) for h in unasked))

    async def _first_check(self, h: Health) -> int:
        """The endpoint's chain id, asked `PROBE_BURST` times at once: an endpoint that
        throttles bursts shows it here (and its first cryo call is planned for it) rather
        than inside a call of 100 concurrent requests."""
        rpc, started = self.client(h), time.monotonic()
        answers = await asyncio.gather(
            *(rpc.chain_id() for _ in range(PROBE_BURST)), return_exceptions=True
        )
        ids = [a for a in answers if isinstance(a, int)]
        if ids:
            self.ok(h, time.monotonic() - started, requests=len(ids))
        throttled = [a for a in answers if isinstance(a, RpcThrottled)]
        if throttled:
            # A burst partly served shows a limit (the budget is cut, calls are planned for
            # it), not an endpoint to wait for, unless it says how long.
            hints = [a.retry_after for a in throttled if a.retry_after is not None]
            retry_after = max(hints, default=None)
            self.throttled_by(h, retry_after, None, count=len(throttled), aside=not ids)
        if ids:
            return ids[0]
        failure = next(a for a in answers if isinstance(a, BaseException))
        if isinstance(failure, RpcUnavailable) and not isinstance(failure, RpcThrottled):
            self.failed(h, str(failure))
        raise failure

    async def timed(self, h: Health, call: Awaitable[T], started: float) -> T:
        """Await one of Trace's own calls on `h`, its outcome and latency counted there."""
        try:
            result = await call
        except RpcThrottled as exc:
            self.throttled_by(h, exc.retry_after, None)
            raise
        except RpcUnavailable as exc:
            self.failed(h, str(exc))
            raise
        self.ok(h, time.monotonic() - started)
        return result

    async def call(
        self,
        fn: Callable[[RpcClient], Awaitable[T]],
        chain_id: int | None,
        for_head: bool = False,
        wait_seconds: float = 0.0,
    ) -> tuple[T, Health]:
        """Run `fn` on the best endpoint, failing over to the next on a throttle, a timeout
        or a dropped connection (RpcError, a node's own answer, is not failed over)."""
        tried: set[str] = set()
        deadline = time.monotonic() + wait_seconds
        last: Exception | None = None
        while len(tried) < len(self.health):
            try:
                h = await self.acquire(deadline, for_head, frozenset(tried))
            except PoolUnavailable as exc:
                if last is not None and not isinstance(exc, PoolRefused):
                    raise PoolUnavailable(f"{exc}; last: {last}") from None
                raise
            tried.add(h.label)
            try:
                if chain_id is not None:
                    await self.verify_chain(h, chain_id)
                    if h.state == REFUSED:
                        continue
                return await self.timed(h, fn(self.client(h)), time.monotonic()), h
            except RpcUnavailable as exc:
                last = exc
        raise PoolUnavailable(self._why(frozenset()) + (f"; last: {last}" if last else ""))

    def views(self) -> list[dict[str, Any]]:
        return [h.view() for h in self.health]

    def describe(self) -> str:
        """Each endpoint by label with why it is not serving (never a URL)."""
        return "; ".join(f"{h.label}: {h.reason or h.last_error or h.state}" for h in self.health)


async def head_of_pool(pool: RpcPool, chain_id: int) -> list[tuple[int, RpcClient]]:
    """(head, client) of every head endpoint that answered, asked at once; each endpoint's
    `head` and `lag` behind the best are kept for status."""
    now = time.monotonic()
    ask = [h for h in pool.health if h.endpoint.serves_head() and h.available(now)]
    if not ask:
        ask = [h for h in pool.health if h.available(now)]

    async def one(h: Health) -> tuple[int, RpcClient] | None:
        try:
            await pool.verify_chain(h, chain_id)
            if h.state == REFUSED:
                return None
            rpc = pool.client(h)
            h.head = await pool.timed(h, rpc.block_number(), time.monotonic())
            return h.head, rpc
        except RpcUnavailable:
            return None

    answers = [a for a in await asyncio.gather(*(one(h) for h in ask)) if a is not None]
    if answers:
        best = max(head for head, _ in answers)
        for h in pool.health:
            h.lag = None if h.head is None else best - h.head
    return answers


FRESH_SECONDS = 30.0  # a report older than this tells counters, not the current state


def aggregate_views(rows: list[Any]) -> dict[str, list[dict[str, Any]]]:
    """Per pool, one view per endpoint from every process's report (`pool_endpoints` rows,
    newest first): counters summed; state, rate and latency from the fresh reports (a
    refusal anywhere wins, else the newest state; rates and their ceilings summed, since each
    process spends its own budget; the slowest p50)."""
    by: dict[tuple[str, str], list[Any]] = {}
    for r in rows:
        by.setdefault((r["pool"], r["endpoint"]), []).append(r)
    out: dict[str, list[dict[str, Any]]] = {}
    for (pool, _label), reports in by.items():
        views = [r["view"] for r in reports]
        fresh = [r["view"] for r in reports if r["age"] <= FRESH_SECONDS] or views[:1]
        view = dict(fresh[0])
        for key in ("requests", "throttled", "errors", "ranges", "blocks"):
            view[key] = sum(int(v.get(key) or 0) for v in views)
        refused = [v for v in fresh if v.get("state") == REFUSED]
        if refused:
            view["state"], view["reason"] = REFUSED, refused[0].get("reason")
        metered = [v for v in fresh if v.get("rps") is not None]
        view["rps"] = round(sum(float(v["rps"]) for v in metered), 1) if metered else None
        ceilings = [float(v["ceiling"]) for v in metered if v.get("ceiling") is not None]
        view["ceiling"] = round(sum(ceilings), 1) if ceilings else None
        p50s = [float(v["latency_p50_ms"]) for v in fresh if v.get("latency_p50_ms") is not None]
        view["latency_p50_ms"] = max(p50s) if p50s else None
        heads = [int(v["head"]) for v in fresh if v.get("head") is not None]
        view["head"] = max(heads) if heads else None
        lags = [int(v["lag"]) for v in fresh if v.get("lag") is not None]
        view["lag"] = min(lags) if lags else None  # only the head watcher measures it
        view["processes"] = len(reports)
        out.setdefault(pool, []).append(view)
    for views in out.values():
        views.sort(key=lambda v: str(v["endpoint"]))
    return out


def export_metrics(aggregated: dict[str, list[dict[str, Any]]]) -> None:
    for pool, views in aggregated.items():
        for v in views:
            gauge = RPC_ENDPOINT.labels
            for key in ("requests", "throttled", "errors", "ranges"):
                gauge(pool, v["endpoint"], key).set(v[key])
            gauge(pool, v["endpoint"], "rps").set(-1 if v["rps"] is None else v["rps"])
            p50 = v.get("latency_p50_ms")
            gauge(pool, v["endpoint"], "latency_p50_seconds").set((p50 or 0) / 1000)
            for state in STATES:
                gauge(pool, v["endpoint"], f"state_{state}").set(int(v["state"] == state))


async def endpoint_status(db: Any, pools: list[str]) -> dict[str, list[dict[str, Any]]]:
    return aggregate_views(list(await db.fetch(q("chain", "pool_endpoints"), pools)))


async def record_endpoint_views(db: Any, process: str, pools: list[RpcPool]) -> None:
    """Replace this process's rows of `state.rpc_endpoints` with its current views."""
    rows = [(p.name, v["endpoint"], v) for p in pools for v in p.views()]
    if not rows:
        return
    await db.execute(
        q("chain", "report_endpoints"),
        [r[0] for r in rows],
        [r[1] for r in rows],
        process[:200],
        [r[2] for r in rows],
    )


_POOLS: dict[tuple[str, tuple[Endpoint, ...]], RpcPool] = {}


def rpc_pool(settings: Settings, name: str) -> RpcPool | None:
    """This process's pool `name` (None when the pool is not configured here)."""
    endpoints = settings.rpc_endpoints(name)
    if not endpoints:
        return None
    key = (name, endpoints)
    pool = _POOLS.get(key)
    if pool is None:
        pool = _POOLS[key] = RpcPool(name, endpoints, settings.chain_rpc_timeout_seconds)
    return pool


def pools_in_process() -> list[RpcPool]:
    return list(_POOLS.values())


__all__ = ["PoolRefused", "PoolUnavailable", "RpcError", "RpcPool", "rpc_pool"]
