"""Range extraction with cryo through an RPC pool, batched.

Ranges that arrive together for one pool (the planner schedules a job's streams in step, the
worker claims their wake-ups in one batch) are extracted in as few `cryo.freeze` calls as the
pool allows: ranges of the same size and the same set of datasets go into one call
(`blocks=[a:b, c:d, ...]`, `chunk_size` the range size, so each range is one cryo chunk and
one file per dataset), which fetches each block once for all its datasets and pays cryo's
start-up once. A batch's ranges are assigned over the pool's available endpoints by what each
has measured (`RpcPool.assign`: the one that would finish a range first takes it; a throttling
endpoint only what it has proven to serve), each endpoint's share split at `MAX_CALL_BLOCKS`
and run with its share of that endpoint's budget (`requests_per_second`,
`max_concurrent_requests`).

Around each call, one batched request reads the hashes of every range's first parent and last
block before and after (the operator refuses a range that changed under the extractor), and
tells which ranges the endpoint has not reached yet (a lagging endpoint). The ranges a piece
could not extract on an endpoint (unreachable, throttled, cryo failing, past its head) are
assigned again among the endpoints it has not tried, so they go to the best one left;
a call that fails for several datasets is retried one dataset at a time, so one bad dataset
never fails its neighbours. Each call gets a fresh staging directory (cryo skips files that
exist) and its own thread (cryo blocks one while its runtime does the I/O). A range whose
every waiting attempt was stopped (its task was canceled, e.g. a reorg replaced the range) is
dropped before the next request: a canceled range costs the node nothing more.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import shutil
import time
import uuid
from collections import defaultdict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trace_platform.chain.pool import REFUSED, CallPlan, Health, PoolUnavailable, RpcPool
from trace_platform.chain.rpc import RpcError, RpcThrottled, RpcUnavailable
from trace_platform.chain.spec import KNOWN_CRYO_DATASETS
from trace_platform.logs import get_logger

log = get_logger(__name__)
COALESCE_WINDOW = 0.05  # seconds a first request waits for siblings
HEADER_RETRIES = 3  # quick retries of a throttled header read
MAX_CALL_BLOCKS = 20_000  # blocks of one cryo call (one call costs less CPU than several)
Range = tuple[int, int]
Headers = dict[int, tuple[str, int] | None]


class ExtractionFailed(Exception):
    """cryo refused the call (its binding reports every failure the same way)."""


@dataclass
class _Directory:
    path: Path
    users: int = 0

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0:
            shutil.rmtree(self.path, ignore_errors=True)


@dataclass
class Extraction:
    """Files cryo wrote for one (dataset, range), the endpoint's headers around the call;
    `release()` when the files have been uploaded."""

    files: list[Path]
    endpoint: str
    before: Headers
    after: Headers
    _directory: _Directory

    def release(self) -> None:
        self._directory.release()


@dataclass
class _Batch:
    key: tuple[int, int]
    pool: RpcPool
    chain_id: int
    deadline: float
    wants: dict[Range, set[str]] = field(default_factory=lambda: defaultdict(set))
    waiting: dict[Range, int] = field(default_factory=lambda: defaultdict(int))  # attempts
    done: dict[Range, asyncio.Future[dict[str, Extraction | Exception]]] = field(
        default_factory=dict
    )

    def wanted(self, ranges: list[Range]) -> list[Range]:
        """The ranges some attempt still waits for; the others (every attempt of theirs was
        stopped: their tasks were canceled) are dropped before another request is sent."""
        dropped = [r for r in ranges if self.waiting[r] <= 0]
        if not dropped:
            return ranges
        for r in dropped:
            self.done[r].cancel()
        log.info("chain.extract_dropped", ranges=len(dropped), first=dropped[0][0])
        return [r for r in ranges if self.waiting[r] > 0]


def _freeze(
    datasets: list[str],
    ranges: list[Range],
    rpc: str,
    out: Path,
    plan: CallPlan,
) -> dict[str, int]:
    import cryo  # the Rust extractor; imported only where ranges are extracted

    options: dict[str, Any] = {"requests_per_second": plan.rps} if plan.rps else {}
    if plan.backoff_ms is not None:
        options["initial_backoff"] = plan.backoff_ms
    try:
        result: dict[str, int] = cryo.freeze(
            datasets,
            blocks=[f"{s}:{e}" for s, e in ranges],
            rpc=rpc,
            output_dir=str(out),
            hex=True,
            verbose=False,
            overwrite=True,
            # Every range has this size, so each is one chunk (cryo chunks the union of the
            # ranges' blocks by count).
            chunk_size=ranges[0][1] - ranges[0][0],
            max_concurrent_requests=plan.concurrency,
            # Every row names its block by hash too (logs do not by default): decoded
            # events carry it, and joins need no blocks stream for it.
            include_columns=["block_hash"],
            # No footer statistics: cryo's (Polars) claim null_count 0 for columns holding
            # NULLs (a contract creation's to_address, a log's missing topic3), and DuckDB's
            # reader then skipped row groups for `IS NULL` — wrong answers. Without them it
            # reads the values; compaction writes true statistics into merged files.
            no_stats=True,
            **options,
        )
    except TypeError as exc:
        raise ExtractionFailed(str(exc)) from None
    return result


def _files(directory: Path) -> dict[tuple[str, Range], Path]:
    """cryo's files by (dataset, range): `<network>__<dataset>__<first>_to_<last>.parquet`."""
    out: dict[tuple[str, Range], Path] = {}
    for path in directory.glob("*.parquet"):
        parts = path.name[: -len(".parquet")].split("__")
        if len(parts) != 3 or "_to_" not in parts[2]:
            continue
        first, _, last = parts[2].partition("_to_")
        with contextlib.suppress(ValueError):
            out[(parts[1], (int(first), int(last) + 1))] = path
    return out


class RangeExtractor:
    def __init__(self, staging: Path, concurrency: int, window: float = COALESCE_WINDOW) -> None:
        self.staging = staging
        self.window = window
        self.slots = asyncio.Semaphore(concurrency)
        self.threads = concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="cryo")
        self._open: dict[tuple[int, int], _Batch] = {}
        self._running: set[asyncio.Task[None]] = set()

    async def extract(
        self, pool: RpcPool, chain_id: int, dataset: str, start: int, end: int, deadline: float
    ) -> Extraction:
        """The Parquet files of `dataset` for blocks [start, end) (ExtractionFailed when cryo
        refuses this dataset, PoolUnavailable when no endpoint could serve the range)."""
        key = (id(pool), chain_id)
        batch = self._open.get(key)
        if batch is None:
            batch = _Batch(key, pool, chain_id, deadline)
            self._open[key] = batch
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        batch.deadline = max(batch.deadline, deadline)
        batch.wants[(start, end)].add(dataset)
        future = batch.done.get((start, end))
        if future is None:
            future = batch.done[(start, end)] = asyncio.get_running_loop().create_future()
        batch.waiting[(start, end)] += 1
        try:
            results = await asyncio.shield(future)
        except asyncio.CancelledError:
            batch.waiting[(start, end)] -= 1
            future.add_done_callback(lambda f: _release_one(f, dataset))
            raise
        got = results.get(dataset)
        if isinstance(got, Extraction):
            return got
        if got is None:
            raise ExtractionFailed(f"cryo wrote no file for dataset {dataset!r}")
        raise got

    async def _run(self, batch: _Batch) -> None:
        try:
            await asyncio.sleep(self.window)
            self._open.pop(batch.key, None)  # from here on siblings start a new batch
            groups: dict[tuple[int, frozenset[str]], list[Range]] = defaultdict(list)
            for r, wanted in batch.wants.items():
                groups[(r[1] - r[0], frozenset(wanted))].append(r)
            await batch.pool.check_chains(batch.chain_id)
            # Assigned one group after the other (each sees what the ones before got), then
            # run together.
            pieces = []
            for (_size, datasets), ranges in groups.items():
                ranges.sort()
                pieces += await self._assign(batch, sorted(datasets), ranges, [])
            await asyncio.gather(*pieces)
        except BaseException as exc:
            for future in batch.done.values():
                if not future.done():
                    future.set_exception(
                        exc if isinstance(exc, Exception) else RpcUnavailable("stopped")
                    )
            raise

    async def _assign(
        self,
        batch: _Batch,
        datasets: list[str],
        ranges: list[Range],
        tried: list[str],
        reason: str = "no endpoint tried",
    ) -> list[Coroutine[Any, Any, None]]:
        """The pieces that extract `ranges` (one group: same size, same datasets) on the
        endpoints the pool assigns them to, among those `tried` has not had yet (all of
        them again once each has had them); the ranges fail after `2 * endpoints + 1`
        tries."""
        pool, ranges = batch.pool, batch.wanted(ranges)
        if not ranges:
            return []
        endpoints = len(pool.health)
        exclude = frozenset(tried) if len(set(tried)) < endpoints else frozenset()
        try:
            if len(tried) >= 2 * endpoints + 1:
                raise PoolUnavailable(f"every endpoint failed the range: {reason}")
            shares = await pool.assign(ranges, batch.chain_id, batch.deadline, exclude)
        except PoolUnavailable as exc:
            for r in ranges:
                future = batch.done[r]
                if not future.done():
                    future.set_exception(exc)
            return []
        pieces = []
        for h, share in shares:
            per = max(1, MAX_CALL_BLOCKS // max(1, share[0][1] - share[0][0]))
            calls = [share[i : i + per] for i in range(0, len(share), per)]
            h.busy += len(calls)  # pieces bound for h (head calls go elsewhere meanwhile)
            pieces += [self._piece(batch, h, datasets, c, tried) for c in calls]
        return pieces

    async def _piece(
        self, batch: _Batch, h: Health, datasets: list[str], ranges: list[Range], tried: list[str]
    ) -> None:
        """Extract `ranges` on `h`, which they were assigned to; what it leaves is assigned
        again among the endpoints not tried yet."""
        try:
            async with self.slots:
                h.running += 1  # calls running on h share its budget
                try:
                    done, pending, reason = await self._on(batch, h, datasets, ranges)
                finally:
                    h.running -= 1
        except (RpcUnavailable, RpcError) as exc:
            done, pending, reason = {}, ranges, f"{h.label}: {exc}"
        finally:
            h.busy -= 1
            h.queued -= sum(e - s for s, e in ranges)
        for r, results in done.items():
            _resolve(batch, r, results)
        if pending:
            again = await self._assign(batch, datasets, pending, [*tried, h.label], reason)
            await asyncio.gather(*again)

    async def _on(
        self, batch: _Batch, h: Health, datasets: list[str], ranges: list[Range]
    ) -> tuple[dict[Range, dict[str, Extraction | Exception]], list[Range], str]:
        """Extract `ranges` on endpoint `h`: (results by range, ranges left for another
        endpoint, why they were left)."""
        pool = batch.pool
        await pool.verify_chain(h, batch.chain_id)
        if h.state == REFUSED:
            return {}, ranges, str(h.reason)
        rpc = pool.client(h)
        before = await self._headers(pool, h, _edges(ranges))
        ranges = batch.wanted(ranges)  # (the header read may have waited a while)
        numbers = _edges(ranges)
        serve = [r for r in ranges if before.get(r[1] - 1)]
        behind = [r for r in ranges if not before.get(r[1] - 1)]
        why = f"{h.label} has not reached block {behind[0][1] - 1} yet" if behind else ""
        if not serve:
            return {}, behind, why
        directory = _Directory(self.staging / uuid.uuid4().hex)
        directory.path.mkdir(parents=True, mode=0o700)
        started = time.monotonic()
        failed: dict[str, Exception] = {}
        try:
            result = await self._calls(datasets, serve, rpc.url, directory.path, pool, h)
            errored = int(result.get("n_errored", 0))
        except ExtractionFailed as exc:
            errored = 0
            if len(datasets) == 1:
                failed[datasets[0]] = exc
            else:  # one at a time: a bad dataset fails alone
                for d in datasets:
                    try:
                        alone = await self._calls([d], serve, rpc.url, directory.path, pool, h)
                        errored += int(alone.get("n_errored", 0))
                    except ExtractionFailed as one:
                        failed[d] = one
            if failed and all(d not in KNOWN_CRYO_DATASETS for d in failed):
                pass  # a dataset cryo does not know fails alone, on any endpoint
            elif len(failed) == len(datasets):
                directory.release()
                pool.failed(h, "cryo failed on the endpoint", self._rate(serve, datasets, started))
                pool.extracted(h, 0, time.monotonic() - started, clean=False)
                return {}, ranges, f"{h.label}: cryo failed"
        after = await self._headers(pool, h, numbers)
        files = _files(directory.path)
        done: dict[Range, dict[str, Extraction | Exception]] = {}
        incomplete: list[Range] = []
        for r in serve:
            got = {d: files.get((d, r)) for d in datasets if d not in failed}
            if any(p is None for p in got.values()):
                incomplete.append(r)  # an errored chunk: the whole range goes elsewhere
                continue
            mine = {n: before.get(n) for n in (r[0] - 1, r[1] - 1)}
            theirs = {n: after.get(n) for n in (r[0] - 1, r[1] - 1)}
            done[r] = {d: failed[d] for d in failed}
            for d, path in got.items():
                assert path is not None
                directory.users += 1
                done[r][d] = Extraction([path], h.label, mine, theirs, directory)
        directory.users += 1
        directory.release()  # the call's own reference
        seconds = time.monotonic() - started
        log.debug(
            "chain.extract_call",
            endpoint=h.label,
            ranges=len(serve),
            datasets=datasets,
            seconds=round(seconds, 3),
        )
        if incomplete or errored:
            pool.failed(
                h,
                f"cryo reported {errored} errored chunk(s)",
                self._rate(serve, datasets, started),
            )
        else:
            pool.ok(h, None, requests=0)
        blocks = sum(e - s for s, e in done)
        clean = not (incomplete or errored or behind)
        pool.extracted(h, blocks, seconds, self._rate(serve, datasets, started), clean)
        if incomplete:
            why = f"{h.label}: cryo reported errored chunks"
        return done, behind + incomplete, why

    async def _calls(
        self,
        datasets: list[str],
        ranges: list[Range],
        url: str,
        out: Path,
        pool: RpcPool,
        h: Health,
    ) -> dict[str, int]:
        """`ranges` extracted as the endpoint's call plan says: one cryo call, or several at
        once over slices of the ranges (each range is one chunk, so slices write distinct
        files); their errored chunks summed, the first refusal raised."""
        plan = pool.call_plan(h, len(ranges))
        per = -(-len(ranges) // plan.calls)
        loop = asyncio.get_running_loop()
        results = await asyncio.gather(
            *(
                loop.run_in_executor(
                    self.threads, _freeze, datasets, ranges[i : i + per], url, out, plan
                )
                for i in range(0, len(ranges), per)
            ),
            return_exceptions=True,
        )
        errored = 0
        for r in results:
            if isinstance(r, BaseException):
                raise r
            errored += int(r.get("n_errored", 0))
        return {"n_errored": errored}

    @staticmethod
    def _rate(ranges: list[Range], datasets: list[str], started: float) -> float:
        """Requests per second the call sent, roughly: one per block per kind of request
        (a block with its transactions, its logs)."""
        kinds = int(bool({"blocks", "transactions"} & set(datasets))) + int(
            bool(set(datasets) - {"blocks", "transactions"})
        )
        blocks = sum(e - s for s, e in ranges)
        return blocks * max(kinds, 1) / max(time.monotonic() - started, 0.001)

    @staticmethod
    async def _headers(pool: RpcPool, h: Health, numbers: list[int]) -> Headers:
        """The headers around a call. A 429 without a hint, or with one of a second or less,
        is retried here a few times at a short backoff (one request: a random 429 should
        not cost the piece a second of waiting and a try); a longer hint is the pool's to
        honour."""
        for attempt in range(HEADER_RETRIES + 1):
            try:
                return await pool.timed(h, pool.client(h).block_headers(numbers), time.monotonic())
            except RpcThrottled as exc:
                hint = exc.retry_after
                if attempt == HEADER_RETRIES or (hint is not None and hint > 1.0):
                    raise
                await asyncio.sleep(hint if hint is not None else 0.05 * 2**attempt)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)


def _edges(ranges: list[Range]) -> list[int]:
    """The blocks whose hashes are read around a call: each range's first parent and last."""
    return sorted({e - 1 for _, e in ranges} | {s - 1 for s, _ in ranges if s > 0})


def _resolve(batch: _Batch, r: Range, results: dict[str, Extraction | Exception]) -> None:
    future = batch.done[r]
    if future.done():
        for got in results.values():
            if isinstance(got, Extraction):
                got.release()
        return
    # Datasets nobody asked for on this range (a sibling's set) are released now.
    wanted = batch.wants[r]
    for d, got in list(results.items()):
        if d not in wanted and isinstance(got, Extraction):
            got.release()
            del results[d]
    future.set_result(results)


def _release_one(future: asyncio.Future[dict[str, Extraction | Exception]], dataset: str) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    got = future.result().get(dataset)
    if isinstance(got, Extraction):
        got.release()
