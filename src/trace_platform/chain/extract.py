"""Range extraction with cryo, coalesced: ranges of several datasets with the same bounds
from the same node that arrive together (the planner schedules a job's streams in step, the
worker claims their wake-ups in one batch) run as one `cryo.freeze` of several datatypes,
which fetches each block once for all of them. Each call gets a fresh staging directory
(cryo skips files that exist) and its own thread (cryo blocks one while its runtime does the
I/O); a call that fails for several datasets is retried one dataset at a time, so one bad
dataset never fails its neighbours.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

COALESCE_WINDOW = 0.02  # seconds a first request waits for siblings of the same range


class ExtractionFailed(Exception):
    """cryo refused the call (its binding reports every failure the same way)."""


@dataclass
class Extraction:
    """Files cryo wrote for one dataset; `release()` when they have been uploaded."""

    files: list[Path]
    errored: int
    _batch: _Batch

    def release(self) -> None:
        self._batch.release()


@dataclass
class _Batch:
    key: tuple[str, int, int]
    directory: Path
    datasets: set[str] = field(default_factory=set)
    users: int = 0
    done: asyncio.Future[dict[str, tuple[list[Path], int]]] | None = None

    def release(self) -> None:
        self.users -= 1
        if self.users <= 0:
            shutil.rmtree(self.directory, ignore_errors=True)


def _freeze(datasets: list[str], start: int, end: int, rpc: str, out: Path) -> dict[str, int]:
    import cryo  # the Rust extractor; imported only where ranges are extracted

    try:
        result: dict[str, int] = cryo.freeze(
            datasets,
            blocks=[f"{start}:{end}"],
            rpc=rpc,
            output_dir=str(out),
            hex=True,
            verbose=False,
            overwrite=True,
            chunk_size=end - start,
            max_concurrent_requests=16,
            # Every row names its block by hash too (logs do not by default): decoded
            # events carry it, and joins need no blocks stream for it.
            include_columns=["block_hash"],
        )
    except TypeError as exc:
        raise ExtractionFailed(str(exc)) from None
    return result


class RangeExtractor:
    def __init__(self, staging: Path, concurrency: int, window: float = COALESCE_WINDOW) -> None:
        self.staging = staging
        self.window = window
        self.slots = asyncio.Semaphore(concurrency)
        self.threads = concurrent.futures.ThreadPoolExecutor(concurrency, thread_name_prefix="cryo")
        self._open: dict[tuple[str, int, int], _Batch] = {}
        self._running: set[asyncio.Task[None]] = set()

    async def extract(self, url: str, dataset: str, start: int, end: int) -> Extraction:
        """The Parquet files of `dataset` for blocks [start, end) (ExtractionFailed when
        cryo refuses this dataset)."""
        key = (url, start, end)
        batch = self._open.get(key)
        if batch is None:
            batch = _Batch(key, self.staging / uuid.uuid4().hex)
            batch.done = asyncio.get_running_loop().create_future()
            self._open[key] = batch
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)
        batch.datasets.add(dataset)
        batch.users += 1
        assert batch.done is not None
        try:
            results = await asyncio.shield(batch.done)
        except BaseException:
            batch.release()
            raise
        if dataset not in results:
            batch.release()
            raise ExtractionFailed(f"cryo refused dataset {dataset!r}")
        files, errored = results[dataset]
        return Extraction(files, errored, batch)

    async def _run(self, batch: _Batch) -> None:
        assert batch.done is not None
        try:
            await asyncio.sleep(self.window)
            self._open.pop(batch.key, None)  # from here on siblings start a new batch
            results = await self._freeze_all(batch)
        except BaseException as exc:
            if not batch.done.done():
                batch.done.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        batch.done.set_result(results)

    async def _freeze_all(self, batch: _Batch) -> dict[str, tuple[list[Path], int]]:
        url, start, end = batch.key
        datasets = sorted(batch.datasets)
        loop = asyncio.get_running_loop()
        out: dict[str, tuple[list[Path], int]] = {}
        async with self.slots:
            groups = [datasets]
            try:
                batch.directory.mkdir(parents=True, mode=0o700)
                result = await loop.run_in_executor(
                    self.threads, _freeze, datasets, start, end, url, batch.directory
                )
                errored = {d: int(result.get("n_errored", 0)) for d in datasets}
            except ExtractionFailed:
                if len(datasets) == 1:
                    return out
                groups, errored = [[d] for d in datasets], {}
            if len(groups) > 1:  # one at a time: a bad dataset fails alone
                for (d,) in groups:
                    with contextlib.suppress(ExtractionFailed):
                        r = await loop.run_in_executor(
                            self.threads, _freeze, [d], start, end, url, batch.directory
                        )
                        errored[d] = int(r.get("n_errored", 0))
        for d in datasets:
            if d in errored:
                out[d] = (sorted(batch.directory.glob(f"*__{d}__*.parquet")), errored[d])
        return out

    def close(self) -> None:
        self.threads.shutdown(wait=False, cancel_futures=True)
