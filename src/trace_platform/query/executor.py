"""DuckDB execution in separate executor processes (the second fail-closed layer).

Each executor runs with an empty environment and OS limits (address space, CPU, open files,
file size, no core dumps). DuckDB is in memory with external access disabled, extensions
never installed or auto-loaded, configuration locked, memory and threads bounded and a
per-query interrupt. The granted Parquet files are opened by trusted code (pyarrow, strictly
the manifest's files) and handed to DuckDB as the Arrow relation `dataset`, so projection and
predicate pushdown still work while DuckDB itself touches no file and no network.
"""

from __future__ import annotations

import os
import resource
import threading
from collections import OrderedDict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from multiprocessing import get_context
from typing import Any

import orjson

MAX_RESULT_BYTES = 10 * 1024 * 1024


@dataclass(frozen=True)
class ExecutorLimits:
    memory_mb: int = 512  # DuckDB buffer manager; the process limit is a multiple of it
    threads: int = 2
    timeout_seconds: float = 10.0
    cpu_seconds: int = 300  # per executor process, cumulative


class QueryFailed(Exception):
    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason

    def __reduce__(self) -> tuple[type[QueryFailed], tuple[str, str]]:
        # It crosses the executor-process boundary: pickle both arguments.
        return (QueryFailed, (self.code, self.reason))


def _init_executor(limits: ExecutorLimits) -> None:
    os.environ.clear()  # nothing of the platform's environment in the executor
    os.chdir("/")  # and no working directory of the platform's either
    mb = 1024 * 1024
    address_space = (limits.memory_mb * 4 + 1024) * mb
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
    # The executor writes no file itself; its stderr may be a log file, so not 0.
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 * mb, 16 * mb))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


_DATABASES: dict[ExecutorLimits, Any] = {}
_DATASETS: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_DATASET_CACHE = 32


def _arrow_dataset(files: tuple[str, ...], s3: dict[str, str] | None) -> Any:
    """Arrow datasets with their Parquet footers read, cached per file list: dataset versions
    are immutable (content-addressed) and the service checks them before every query."""
    import pyarrow.dataset as ds

    key = (files, tuple(sorted(s3.items())) if s3 else None)
    cached = _DATASETS.get(key)
    if cached is not None:
        _DATASETS.move_to_end(key)
        return cached
    filesystem = None
    if s3 is not None:
        from pyarrow import fs

        filesystem = fs.S3FileSystem(**s3)
    dataset = ds.dataset(list(files), format="parquet", filesystem=filesystem)
    for fragment in dataset.get_fragments():
        fragment.ensure_complete_metadata()
    _DATASETS[key] = dataset
    while len(_DATASETS) > _DATASET_CACHE:
        _DATASETS.popitem(last=False)
    return dataset


def _database(limits: ExecutorLimits) -> Any:
    """One in-memory database per executor process, configured and locked once (opening one
    costs ~14 ms); every query gets its own cursor, so registrations never leak across."""
    db = _DATABASES.get(limits)
    if db is None:
        db = locked_connection(limits)
        db.execute("SET lock_configuration = true")
        _DATABASES[limits] = db
    return db


def locked_connection(limits: ExecutorLimits) -> Any:
    import duckdb

    con = duckdb.connect(
        ":memory:",
        config={
            "enable_external_access": False,
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
            "allow_persistent_secrets": False,
            "home_directory": "/nonexistent",
            # No spill files: a query lives within memory_limit or fails (nothing on disk).
            "temp_directory": "",
            "memory_limit": f"{limits.memory_mb}MB",
            "threads": limits.threads,
        },
    )
    return con


def execute(
    files: list[str],
    sql: str,
    limit: int,
    limits: ExecutorLimits,
    s3: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run one gated query over exactly `files` — local Parquet paths, or `bucket/key` paths
    read through an S3 filesystem built from `s3` (endpoint and credentials handed over by the
    trusted service; the executor's own environment is empty). Runs in an executor."""
    import duckdb

    # Independent of the gate: DuckDB's own parser must see exactly one SELECT.
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error:
        raise QueryFailed("query_denied", "statement rejected by the engine") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise QueryFailed("query_denied", "only one SELECT statement may run")
    con = _database(limits).cursor()  # a fresh connection to the locked in-memory database
    try:
        con.register("dataset", _arrow_dataset(tuple(files), s3))
        timer = threading.Timer(limits.timeout_seconds, con.interrupt)
        timer.start()
        try:
            reader = con.sql(sql).to_arrow_reader(min(limit + 1, 2048))
            columns: list[dict[str, str]] = [
                {"name": f.name, "type": str(f.type)} for f in reader.schema
            ]
            rows: list[list[Any]] = []
            size, truncated = 0, False
            for batch in reader:
                for row in zip(*(c.to_pylist() for c in batch.columns), strict=True):
                    if len(rows) >= limit:
                        truncated = True
                        break
                    size += len(orjson.dumps(row, default=_json_value))
                    if size > MAX_RESULT_BYTES:
                        truncated = True
                        break
                    rows.append(list(row))
                if truncated:
                    break
        finally:
            timer.cancel()
    except duckdb.InterruptException:
        raise QueryFailed("query_timeout", "query exceeded its time limit") from None
    except duckdb.OutOfMemoryException:
        raise QueryFailed("query_out_of_memory", "query exceeded its memory limit") from None
    except (duckdb.PermissionException, duckdb.InvalidInputException):
        raise QueryFailed("query_denied", "query touched something it may not") from None
    except duckdb.Error as exc:
        raise QueryFailed("query_error", type(exc).__name__) from None
    finally:
        con.close()
    return {
        "columns": columns,
        "rows": orjson.loads(orjson.dumps(rows, default=_json_value)),
        "truncated": truncated,
    }


def _json_value(value: Any) -> Any:
    """JSON for what orjson lacks: integral decimals (SUM of BIGINT is HUGEINT) as numbers
    while they fit in 64 bits, everything else (big or fractional decimals, bytes) as text."""
    if isinstance(value, Decimal) and value == value.to_integral_value():
        as_int = int(value)
        if -(2**63) <= as_int < 2**63:
            return as_int
    return str(value)


def executor_pool(workers: int, limits: ExecutorLimits) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("forkserver"),
        initializer=_init_executor,
        initargs=(limits,),
        max_tasks_per_child=200,
    )
