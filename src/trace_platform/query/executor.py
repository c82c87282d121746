"""Query executor processes, seen from the trusted service: launch, bind, talk, recycle.

Each executor is a separate process running `engine.py` bound to one query's relations. With
bubblewrap available it runs in its own sandbox: no network (local datasets), its own PID
space, a filesystem view holding only the system runtime, the engine's libraries and the
granted files — all read-only — an unprivileged uid with no capabilities, an empty
environment and rlimits. There DuckDB keeps its own Parquet reader (`reader` route). Without
bubblewrap, or for S3 datasets (which need the network), the engine takes the `arrow` route,
where DuckDB itself touches no file and no network.

The pool holds at most `size` executors. A query goes to an idle executor bound to its
dataset version; else to an idle one bound to another version of the same datasets, which is
rebound (a followed chain's next range: its emptied database in the same process, ~ms,
instead of a new sandbox, ~0.1-0.4 s); else to an idle one bound to other datasets of the
same org, rebound in a new database (a DAG's levels, which read different datasets, ~12 ms);
never to one of another org; else a new one is started (recycling the least recently used
idle one when the pool is full); when every executor is busy the query waits up to
`QUEUE_SECONDS` for one to be released, then the caller gets OverloadedError (HTTP 429).

A sandboxed executor sees its files in a directory of its own (its *slot*), bound read-only
at `/data`: the service hard-links the granted files into it, and on a rebind replaces them
with the new binding's (under new names) before the engine is told. Where a file cannot be
linked (another filesystem), each file is bound alone and the executor is never rebound.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import os
import shutil
import struct
import sys
import tempfile
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import orjson

from trace_platform.aio import signal_child
from trace_platform.config import Settings
from trace_platform.domain.capability import Where
from trace_platform.domain.errors import OverloadedError, TraceError
from trace_platform.logs import get_logger
from trace_platform.metrics import QUERY_EXECUTOR_STARTS, QUERY_EXECUTORS
from trace_platform.query import engine
from trace_platform.query.engine import (
    FORMAT_ARROW,
    FORMAT_JSON,
    ROUTE_ARROW,
    ROUTE_READER,
    ExecutorLimits,
    QueryFailed,
)
from trace_platform.sandbox import (
    Isolation,
    drop_privileges,
    namespaces,
    python_runtime,
    ro_bind_same_path,
    system_binds,
)

__all__ = [
    "Binding",
    "ExecutorLimits",
    "ExecutorPool",
    "ExecutorUnavailable",
    "ExportStream",
    "QueryFailed",
    "Relation",
]

log = get_logger(__name__)
T = TypeVar("T")
_FRAME = struct.Struct(">I")
ENGINE_SCRIPT = Path(engine.__file__).resolve()
SANDBOX_DATA = "/data"
QUEUE_SECONDS = 0.5  # how long a query waits for a busy pool before it is answered 429
# How many times a waiting query leaves a freed executor of other datasets to a waiting
# query of that executor's own datasets (`ExecutorPool._take`) before it takes one anyway,
# and how soon it looks again after leaving one (the other query may have taken another).
MAX_PASSES = 2
RECHECK_SECONDS = 0.01
SANDBOX_LIB = "/opt/trace"
START_TIMEOUT = 30.0
_REAPING: set[asyncio.Future[None]] = set()  # closes of executors abandoned mid-start


class ExecutorUnavailable(TraceError):
    status = 503
    code = "executor_unavailable"


class ExecutorLost(ExecutorUnavailable):
    """The executor's process went away (not a time-out)."""


class _StaleExecutor(Exception):
    """A reused executor was found dead when asked: retry on a fresh one."""


def executor_limits(settings: Settings) -> ExecutorLimits:
    return ExecutorLimits(
        memory_mb=settings.query_memory_mb, timeout_seconds=settings.query_timeout_seconds
    )


@dataclass(frozen=True)
class Relation:
    """One granted dataset version or snapshot, under the names a query reads it by.
    `files` are local paths, or `bucket/key` paths when the binding has S3 options."""

    names: tuple[str, ...]
    key: str  # dataset_uuid@version
    files: tuple[str, ...]
    block_range: tuple[int, int] | None = None  # a range grant of a chain dataset
    where: Where | None = None  # only rows whose columns hold these values (typed, not SQL)


@dataclass(frozen=True)
class Binding:
    """What one executor holds: the relations of a query, and the org whose grants they are
    (an executor is rebound only to a binding of the same org; None: never to other
    datasets)."""

    relations: tuple[Relation, ...]
    s3: tuple[tuple[str, str], ...] | None = None
    org: str | None = None

    @property
    def key(self) -> str:
        return "+".join(r.key for r in self.relations)

    @property
    def files(self) -> tuple[str, ...]:
        return tuple(f for r in self.relations for f in r.files)


@dataclass(frozen=True)
class QueryResult:
    body: bytes  # the response body as the engine wrote it (JSON, or an Arrow IPC stream)
    rows: int
    truncated: bool


@functools.cache
def library_dir() -> str:
    """The directory holding duckdb/orjson/pyarrow (the service's own site-packages), found
    without importing duckdb into the service."""
    spec = importlib.util.find_spec("duckdb")
    if spec is None or spec.origin is None:
        raise ExecutorUnavailable("duckdb is not installed")
    return str(Path(spec.origin).resolve().parent.parent)


def link_files(slot: Path, binding: Binding, generation: int) -> list[list[str]]:
    """Empty `slot`, then hard-link the binding's files into it (names carry `generation`, so
    no path is ever reused for other content); each relation's files as seen at /data.
    OSError when a file cannot be linked (another filesystem, say)."""
    for old in slot.iterdir():
        old.unlink()
    seen: list[list[str]] = []
    for j, relation in enumerate(binding.relations):
        inside_files: list[str] = []
        for i, path in enumerate(relation.files):
            name = f"part-{generation:06d}-{j:03d}-{i:05d}.parquet"
            os.link(path, slot / name)
            inside_files.append(f"{SANDBOX_DATA}/{name}")
        seen.append(inside_files)
    return seen


def launch_command(
    iso: Isolation,
    binding: Binding,
    uid: int,
    program: list[str] | None = None,
    linked: tuple[Path, list[list[str]]] | None = None,
) -> tuple[list[str], list[list[str]], str]:
    """(argv, each relation's files as the engine will see them, route). `program` replaces
    the engine script's arguments to the interpreter (tests probe the sandbox with it);
    `linked`: the executor's slot and the files `link_files` put there, bound at /data
    instead of each file alone."""
    route = ROUTE_ARROW if binding.s3 is not None or iso.bwrap is None else ROUTE_READER
    if iso.bwrap is None:
        exe = sys.executable
        args = program or ["-I", "-B", str(ENGINE_SCRIPT), library_dir()]
        return [exe, *args], [list(r.files) for r in binding.relations], route
    prefix, exe = python_runtime()
    cmd = [
        iso.bwrap,
        *namespaces(network=binding.s3 is not None),
        *system_binds(),
        *ro_bind_same_path(prefix),
        "--perms",
        "0755",
        "--dir",
        SANDBOX_LIB,
        "--ro-bind",
        library_dir(),
        f"{SANDBOX_LIB}/lib",
        "--ro-bind",
        str(ENGINE_SCRIPT),
        f"{SANDBOX_LIB}/engine.py",
        "--dev",
        "/dev",
        "--chdir",
        "/",
        "--clearenv",
    ]
    if binding.s3 is None and linked is not None:
        slot, seen = linked
        cmd += ["--ro-bind", str(slot), SANDBOX_DATA]
    elif binding.s3 is None:
        cmd += ["--perms", "0755", "--dir", SANDBOX_DATA]
        seen = []
        for j, relation in enumerate(binding.relations):
            inside_files: list[str] = []
            for i, path in enumerate(relation.files):
                inside = f"{SANDBOX_DATA}/part-{j:03d}-{i:05d}.parquet"
                cmd += ["--ro-bind", path, inside]
                inside_files.append(inside)
            seen.append(inside_files)
    else:
        # S3 needs the network, name resolution and CA certificates; still nothing writable.
        for etc in ("/etc/ssl", "/etc/ca-certificates", "/etc/resolv.conf", "/etc/hosts"):
            cmd += ["--ro-bind-try", etc, etc]
        seen = [list(r.files) for r in binding.relations]
    if iso.drop_uid:
        cmd += drop_privileges(uid)
    cmd += [exe, *(program or ["-I", "-B", f"{SANDBOX_LIB}/engine.py", f"{SANDBOX_LIB}/lib"])]
    return cmd, seen, route


class Executor:
    def __init__(
        self,
        binding: Binding,
        proc: asyncio.subprocess.Process,
        route: str,
        slot: Path | None = None,
    ) -> None:
        self.binding = binding
        self.proc = proc
        self.route = route
        self.slot = slot  # its /data directory (sandboxed, files linked); removed at close
        self.generation = 0  # bindings it has held, numbering its linked files
        self.queries = 0
        self.in_flight = False
        self.retiring = False

    @classmethod
    async def start(
        cls,
        iso: Isolation,
        binding: Binding,
        limits: ExecutorLimits,
        uid: int,
        slots: Path | None = None,
    ) -> Executor:
        """A new executor bound to `binding`; sandboxed with a slot of its own under `slots`
        when its files can be linked there (it can then be rebound)."""
        slot = linked = None
        if slots is not None and iso.bwrap is not None and binding.s3 is None:
            slot = Path(tempfile.mkdtemp(prefix="executor-", dir=slots))
            slot.chmod(0o755)  # the sandbox's unprivileged uid lists it (read-only bound)
            try:
                linked = (slot, link_files(slot, binding, 0))
            except OSError:
                shutil.rmtree(slot, ignore_errors=True)
                slot = None
        cmd, files, route = launch_command(iso, binding, uid, linked=linked)
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={},
                cwd="/",
                start_new_session=True,
                limit=engine.PIPE_BYTES,  # read on while a whole frame is buffered
            )
        except OSError as exc:
            QUERY_EXECUTOR_STARTS.labels(route, "failed").inc()
            log.error("query.executor_start_failed", code="spawn", detail=type(exc).__name__)
            if slot is not None:
                shutil.rmtree(slot, ignore_errors=True)
            raise ExecutorUnavailable("query executor could not start") from None
        ex = cls(binding, proc, route, slot)
        try:
            return await ex._bind(files, limits)
        except ExecutorUnavailable:
            await ex.close()
            raise
        except BaseException:  # cancelled while starting: never leave it behind
            ex.kill()
            reap = asyncio.ensure_future(ex.close())
            _REAPING.add(reap)
            reap.add_done_callback(_REAPING.discard)
            raise

    def can_rebind(self, binding: Binding) -> bool:
        """Whether this executor may take `binding` in place of its own, through the same
        route (a sandbox needs its slot) and S3 options: other versions of the same
        datasets, or other datasets of the same org (`Binding.org`; the engine then opens
        a new database, `same_datasets`). Never another org's."""
        return (
            (self.slot is not None or self.route == ROUTE_ARROW)
            and binding.s3 == self.binding.s3
            and (
                same_datasets(binding, self.binding)
                or (binding.org is not None and binding.org == self.binding.org)
            )
        )

    async def rebind(self, binding: Binding) -> None:
        """Bind this idle executor to `binding` (see `can_rebind`): its slot's files are
        replaced first, then the engine empties its database (other versions of the same
        datasets) or opens a new one (other datasets). ExecutorUnavailable when it cannot
        (the caller closes it and starts another)."""
        if not self.can_rebind(binding):
            raise ExecutorUnavailable("this executor cannot take that binding")
        fresh = not same_datasets(binding, self.binding)
        if self.route == ROUTE_READER:
            if self.slot is None:
                raise ExecutorUnavailable("this executor cannot be rebound")
            self.generation += 1
            try:
                files = link_files(self.slot, binding, self.generation)
            except OSError:
                raise ExecutorUnavailable("the binding's files cannot be linked") from None
        else:
            files = [list(r.files) for r in binding.relations]
        self.binding = binding
        self.in_flight = True  # until the engine says it is ready
        try:
            self._send(orjson.dumps({"rebind": self._relations(files), "fresh": fresh}))
            reply = await asyncio.wait_for(self._read(), START_TIMEOUT)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            reply = None
        if not isinstance(reply, dict) or not reply.get("ready"):
            self.kill()
            code = reply.get("code") if isinstance(reply, dict) else "no_reply"
            log.error("query.executor_rebind_failed", code=code)
            raise ExecutorUnavailable("query executor could not be rebound")
        self.in_flight = False
        QUERY_EXECUTOR_STARTS.labels(self.route, "rebound").inc()

    def _relations(self, files: list[list[str]]) -> list[dict[str, Any]]:
        return [
            {"names": list(r.names), "files": seen, "block_range": r.block_range, "where": r.where}
            for r, seen in zip(self.binding.relations, files, strict=True)
        ]

    async def _bind(self, files: list[list[str]], limits: ExecutorLimits) -> Executor:
        """Send the binding; wait for the engine to say it is ready (or why not)."""
        init = {
            "route": self.route,
            "relations": self._relations(files),
            "limits": asdict(limits),
            "s3": dict(self.binding.s3) if self.binding.s3 is not None else None,
        }
        try:
            self._send(orjson.dumps(init))
            reply = await asyncio.wait_for(self._read(), START_TIMEOUT)
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            reply = None
        if not isinstance(reply, dict) or not reply.get("ready"):
            detail = ""
            if reply is None and self.proc.stderr is not None:
                with contextlib.suppress(TimeoutError):
                    raw = await asyncio.wait_for(self.proc.stderr.read(400), 1)
                    detail = raw.decode("utf-8", "replace")
            self.kill()
            QUERY_EXECUTOR_STARTS.labels(self.route, "failed").inc()
            code = reply.get("code") if isinstance(reply, dict) else "no_reply"
            log.error("query.executor_start_failed", code=code, detail=detail.strip()[:400])
            raise ExecutorUnavailable("query executor could not start")
        QUERY_EXECUTOR_STARTS.labels(self.route, "ok").inc()
        return self  # it silenced its own stderr once bound: nothing more arrives there

    def _send(self, payload: bytes) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(_FRAME.pack(len(payload)) + payload)

    async def _read_bytes(self) -> bytes:
        assert self.proc.stdout is not None
        head = await self.proc.stdout.readexactly(_FRAME.size)
        (size,) = _FRAME.unpack(head)
        return await self.proc.stdout.readexactly(size)

    async def _read(self) -> Any:
        return orjson.loads(await self._read_bytes())

    async def query(
        self,
        sql: str,
        limit: int,
        timeout: float,
        engine_timeout: float | None = None,
        fmt: str = FORMAT_JSON,
        params: tuple[str, ...] = (),
    ) -> QueryResult:
        """QueryFailed for a refused or failed query (the executor stays usable unless it
        says otherwise); ExecutorUnavailable when the process is lost or stuck (killed)."""
        self.queries += 1
        self.in_flight = True  # until the whole reply is read; if not, never reuse it
        try:
            async with asyncio.timeout(timeout):
                request: dict[str, Any] = {"sql": sql, "limit": limit}
                if engine_timeout is not None:
                    request["timeout"] = engine_timeout
                if fmt != FORMAT_JSON:
                    request["format"] = fmt
                if params:
                    request["params"] = list(params)
                self._send(orjson.dumps(request))
                header = await self._read()
                if header.get("ok"):
                    body = await self._read_bytes()
                    self.in_flight = False
                    self.retiring = bool(header.get("retire"))  # it exits after this reply
                    return QueryResult(body, int(header["rows"]), bool(header["truncated"]))
        except TimeoutError:
            self.kill()
            raise ExecutorUnavailable("query executor did not answer in time") from None
        except (ConnectionError, asyncio.IncompleteReadError):
            self.kill()
            raise ExecutorLost("query executor failed; retry") from None
        self.in_flight = False
        if header.get("retire"):
            self.retiring = True
            self.kill()
        raise _failure(header)

    async def query_many(
        self, queries: list[tuple[str, int]], timeout: float
    ) -> list[QueryResult | QueryFailed]:
        """Queries on this binding in one frame each way: the answers in order, fewer than
        asked when the executor retired part-way (the rest were not run). Raises as
        `query` when the process is lost or stuck (`timeout`: per query)."""
        self.queries += len(queries)
        self.in_flight = True
        out: list[QueryResult | QueryFailed] = []
        try:
            async with asyncio.timeout(timeout * len(queries) + 5):
                batch = [{"sql": sql, "limit": limit} for sql, limit in queries]
                self._send(orjson.dumps({"batch": batch}))
                for _ in queries:
                    header = await self._read()
                    if header.get("ok"):
                        body = await self._read_bytes()
                        out.append(
                            QueryResult(body, int(header["rows"]), bool(header["truncated"]))
                        )
                    else:
                        out.append(_failure(header))
                    if header.get("retire"):
                        self.retiring = True
                        if not header.get("ok"):
                            self.kill()
                        break
        except TimeoutError:
            self.kill()
            raise ExecutorUnavailable("query executor did not answer in time") from None
        except (ConnectionError, asyncio.IncompleteReadError):
            self.kill()
            raise ExecutorLost("query executor failed; retry") from None
        self.in_flight = False
        return out

    async def open_stream(
        self,
        sql: str,
        limit: int,
        deadline: float,
        engine_timeout: float | None,
        fmt: str,
        params: tuple[str, ...] = (),
    ) -> None:
        """Ask for an export streamed (`engine.FrameSink`) and wait for its first bytes:
        QueryFailed when the engine refused or failed it before any went out (the executor
        stays usable unless it says otherwise); then read it with `next_chunk`.
        `deadline` (event-loop time) bounds the whole stream."""
        self.queries += 1
        self.in_flight = True  # until the stream's trailer is read; if not, never reuse it
        request: dict[str, Any] = {"sql": sql, "limit": limit, "format": fmt, "stream": True}
        if engine_timeout is not None:
            request["timeout"] = engine_timeout
        if params:
            request["params"] = list(params)
        try:
            async with asyncio.timeout_at(deadline):
                self._send(orjson.dumps(request))
                header = await self._read()
        except TimeoutError:
            self.kill()
            raise ExecutorUnavailable("query executor did not answer in time") from None
        except (ConnectionError, asyncio.IncompleteReadError):
            self.kill()
            raise ExecutorLost("query executor failed; retry") from None
        if header.get("ok"):
            return
        self.in_flight = False
        if header.get("retire"):
            self.retiring = True
            self.kill()
        raise _failure(header)

    async def next_chunk(self, deadline: float) -> bytes | dict[str, Any]:
        """The stream's next bytes (at most engine.STREAM_CHUNK_BYTES), or at its end the
        engine's trailer `{ok, rows, truncated}`; QueryFailed when the query failed part-way,
        ExecutorUnavailable when the process is lost or past `deadline` (killed)."""
        try:
            async with asyncio.timeout_at(deadline):
                chunk = await self._read_bytes()
                if chunk:
                    return chunk
                trailer = await self._read()
        except TimeoutError:
            self.kill()
            raise ExecutorUnavailable("query executor did not answer in time") from None
        except (ConnectionError, asyncio.IncompleteReadError):
            self.kill()
            raise ExecutorLost("query executor failed part-way") from None
        self.in_flight = False
        self.retiring = bool(trailer.get("retire"))
        if trailer.get("ok"):
            return dict(trailer)
        if self.retiring:
            self.kill()
        raise _failure(trailer)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, 9)
            signal_child(self.proc, 9)  # not proc.kill(): it can reap before asyncio does

    async def close(self) -> None:
        self.kill()
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        with contextlib.suppress(Exception):
            # Reap it and drain its pipes to EOF, so the transport closes here and now.
            await asyncio.wait_for(self.proc.communicate(), 5)
        if self.slot is not None:
            shutil.rmtree(self.slot, ignore_errors=True)


def same_datasets(a: Binding, b: Binding) -> bool:
    """The same datasets in the same order (versions may differ)."""
    return [r.key.partition("@")[0] for r in a.relations] == [
        r.key.partition("@")[0] for r in b.relations
    ]


def _failure(header: dict[str, Any]) -> QueryFailed:
    """The QueryFailed of an engine's refusal header (with the names its error may show)."""
    names = header.get("names")
    shown = tuple(str(n) for n in names) if isinstance(names, list) else ()
    return QueryFailed(str(header.get("code")), str(header.get("reason")), shown)


class ExportStream:
    """An export's bytes as its executor writes them (`ExecutorPool.stream`): iterate it
    for chunks of at most engine.STREAM_CHUNK_BYTES; at its end `rows` and `truncated` hold
    the engine's count. Always `close` it: an executor whose stream was not read to its end
    is killed, never reused."""

    def __init__(self, pool: ExecutorPool, ex: Executor, deadline: float) -> None:
        self._pool: ExecutorPool | None = pool
        self._ex = ex
        self._deadline = deadline
        self.rows = 0
        self.truncated = False
        self.finished = False

    def __aiter__(self) -> ExportStream:
        return self

    async def __anext__(self) -> bytes:
        if self.finished:
            raise StopAsyncIteration
        try:
            got = await self._ex.next_chunk(self._deadline)
        except BaseException:
            self.close()
            raise
        if isinstance(got, bytes):
            return got
        self.rows, self.truncated = int(got["rows"]), bool(got["truncated"])
        self.finished = True
        self.close()
        raise StopAsyncIteration

    def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool._release(self._ex)


class ExecutorPool:
    """At most `size` executors; idle ones are kept bound to their dataset version."""

    def __init__(
        self,
        size: int,
        limits: ExecutorLimits,
        isolation: Isolation,
        uid: int = 65533,
        max_queries: int = 10_000,
        slots: Path | None = None,
    ) -> None:
        """`slots`: where sandboxed executors get their slot directories (on the datasets'
        filesystem, so files link; a directory of this process's own is made there). None:
        sandboxed executors bind each file alone and are never rebound."""
        self.size = size
        self.limits = limits
        self.isolation = isolation
        self.uid = uid
        self.max_queries = max_queries  # recycled after this many queries
        self.slots = _own_slots(slots) if slots is not None else None
        self._live = 0
        self.idle: OrderedDict[int, Executor] = OrderedDict()  # id → executor, LRU first
        self._freed = asyncio.Event()
        # The queries waiting for an executor (`_wait_for_executor`): key → [binding, how
        # many times it left an executor to another].
        self._waiting: dict[int, list[Any]] = {}
        self._waiters = 0  # the last key given
        self.tasks: set[asyncio.Task[None]] = set()

    @property
    def live(self) -> int:
        """Executors started or starting (at most `size`)."""
        return self._live

    @live.setter
    def live(self, value: int) -> None:
        self._live = value
        QUERY_EXECUTORS.set(value)

    def _take(
        self, binding: Binding, reuse: bool = True, defer: int | None = None
    ) -> Executor | bool | None:
        """An idle executor for `binding` (when `reuse`), or True when a new one may start,
        else None. `defer` (a waiting query's key, until it has done so MAX_PASSES times):
        leave an executor of other datasets to a waiting query of its own datasets, which
        keeps its database, rather than closing that database to open another (levels of a DAG
        alternating on two executors each paid a new database per range)."""
        for ident, ex in list(self.idle.items()):
            if not ex.alive:  # died while idle: reap it, free its slot
                del self.idle[ident]
                self.live -= 1
                self._close_later(ex)
        for ident, ex in reversed(self.idle.items()):
            if reuse and ex.binding == binding and ex.alive:
                del self.idle[ident]
                return ex
        # Another version of the same datasets first (its database is kept), then other
        # datasets of the same org (a new database); least recently used first.
        passed = False
        for same in (True, False):
            for ident, ex in self.idle.items():
                if not (reuse and ex.alive and ex.can_rebind(binding)):
                    continue
                if same_datasets(ex.binding, binding) != same:
                    continue
                if not same and defer is not None and self._wanted_by_another(ex, defer):
                    passed = True
                    continue
                del self.idle[ident]
                return ex  # the caller rebinds it (`_ready`)
        if self.live < self.size:
            self.live += 1
            return True
        if passed and defer is not None:
            self._waiting[defer][1] += 1
            return None
        if self.idle:
            _, victim = self.idle.popitem(last=False)  # recycle the least recently used
            self._close_later(victim)
            return True
        return None

    def _wanted_by_another(self, ex: Executor, me: int) -> bool:
        """Whether another waiting query (than the one of key `me`) could keep `ex`'s
        database."""
        return any(
            key != me and same_datasets(ex.binding, w[0]) and ex.can_rebind(w[0])
            for key, w in self._waiting.items()
        )

    async def _ready(self, taken: Executor | bool, binding: Binding) -> Executor:
        """The executor to run `binding` on: `taken` as it is, or rebound; a new one when
        `taken` is True or cannot be rebound (it is closed; the new one takes its place)."""
        if isinstance(taken, Executor):
            if taken.binding == binding:
                return taken
            try:
                await taken.rebind(binding)
                return taken
            except BaseException as exc:  # cancelled mid-rebind too: never left behind
                self._close_later(taken)
                if not isinstance(exc, ExecutorUnavailable):
                    raise
        started = time.perf_counter()
        ex = await Executor.start(self.isolation, binding, self.limits, self.uid, self.slots)
        log.info(
            "query.executor_started",
            route=ex.route,
            dataset=binding.key,
            ms=round((time.perf_counter() - started) * 1000, 1),
        )
        return ex

    def _close_later(self, ex: Executor) -> None:
        task = asyncio.get_running_loop().create_task(ex.close())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(
        self,
        binding: Binding,
        sql: str,
        limit: int,
        timeout: float | None = None,
        queue_seconds: float = QUEUE_SECONDS,
        fmt: str = FORMAT_JSON,
        params: tuple[str, ...] = (),
    ) -> QueryResult:
        """`timeout`: this query's limit in seconds (default: the executors' own);
        `queue_seconds`: how long it may wait for a busy pool before OverloadedError;
        `fmt`: the answer's format (JSON, or an Arrow IPC stream)."""
        limit_s = timeout or self.limits.timeout_seconds

        async def attempt(fresh: bool) -> QueryResult:
            ex, result = await self._on_executor(
                binding,
                fresh,
                queue_seconds,
                lambda ex: ex.query(sql, limit, limit_s + 5, timeout, fmt, params),
            )
            self._release(ex)
            return result

        return await _once_more_if_stale(attempt)

    async def run_many(
        self, binding: Binding, queries: list[tuple[str, int]], queue_seconds: float
    ) -> list[QueryResult | TraceError | QueryFailed]:
        """Queries on one binding, sent to one executor together (bound once, one frame
        each way), answered in order. Each answer is what `run` would have given for that
        query alone: a result, QueryFailed, or the executor error. A batch that crashes a
        fresh executor is run again one query at a time, so only the culprit fails."""
        out: list[QueryResult | TraceError | QueryFailed] = []
        fresh = False
        while len(out) < len(queries):
            rest = queries[len(out) :]
            taken = self._take(binding, reuse=not fresh)
            if taken is None:
                try:
                    taken = await self._wait_for_executor(binding, fresh, queue_seconds)
                except OverloadedError as exc:
                    return out + [exc] * len(rest)
            ex: Executor | None = None
            try:
                ex = await self._ready(taken, binding)
                out += await ex.query_many(rest, self.limits.timeout_seconds + 5)
            except ExecutorLost:
                if isinstance(taken, Executor) and not fresh:  # died while idle
                    fresh = True
                    continue
                return out + await self._one_by_one(binding, rest)
            except ExecutorUnavailable as exc:
                return out + [exc] * len(rest)
            finally:
                self._release(ex)
        return out

    async def stream(
        self,
        binding: Binding,
        sql: str,
        limit: int,
        timeout: float | None = None,
        queue_seconds: float = QUEUE_SECONDS,
        fmt: str = FORMAT_ARROW,
        params: tuple[str, ...] = (),
    ) -> ExportStream:
        """An export (`fmt`: Arrow IPC stream, CSV or Parquet) streamed from its executor,
        once its first bytes are there (a query refused or failed before is raised here, as
        `run` raises it). `timeout`: as `run`'s, for the whole stream."""
        limit_s = timeout or self.limits.timeout_seconds

        async def open_stream(ex: Executor) -> float:
            deadline = asyncio.get_running_loop().time() + limit_s + 5
            await ex.open_stream(sql, limit, deadline, timeout, fmt, params)
            return deadline

        async def attempt(fresh: bool) -> ExportStream:
            # The executor stays taken by the stream until it is closed.
            ex, deadline = await self._on_executor(binding, fresh, queue_seconds, open_stream)
            return ExportStream(self, ex, deadline)

        return await _once_more_if_stale(attempt)

    async def _on_executor(
        self,
        binding: Binding,
        fresh: bool,
        queue_seconds: float,
        use: Callable[[Executor], Awaitable[T]],
    ) -> tuple[Executor, T]:
        """`use` run on an executor for `binding` (an idle one unless `fresh`, waiting up to
        `queue_seconds` for one); the executor is the caller's to release, unless this
        raises (then it is released here). _StaleExecutor: an idle executor had died."""
        taken = self._take(binding, reuse=not fresh)
        if taken is None:
            taken = await self._wait_for_executor(binding, fresh, queue_seconds)
        ex: Executor | None = None
        try:
            ex = await self._ready(taken, binding)
            try:
                return ex, await use(ex)
            except ExecutorLost:
                if isinstance(taken, Executor):  # it had served before: died while idle
                    raise _StaleExecutor from None
                raise
        except BaseException:
            self._release(ex)
            raise

    def _release(self, ex: Executor | None) -> None:
        """Back to the idle set if it can serve again, else its slot is freed (`None`: it
        never started)."""
        reusable = ex is not None and ex.alive and not (ex.in_flight or ex.retiring)
        if ex is not None and reusable and ex.queries < self.max_queries:
            self.idle[id(ex)] = ex
        else:
            self.live -= 1
            if ex is not None:
                self._close_later(ex)
        self._freed.set()  # a waiting query may take it (or its slot)

    async def _one_by_one(
        self, binding: Binding, queries: list[tuple[str, int]]
    ) -> list[QueryResult | TraceError | QueryFailed]:
        out: list[QueryResult | TraceError | QueryFailed] = []
        for sql, limit in queries:
            try:
                out.append(await self.run(binding, sql, limit))
            except (QueryFailed, TraceError) as exc:
                out.append(exc)
        return out

    async def _wait_for_executor(
        self, binding: Binding, fresh: bool, queue_seconds: float
    ) -> Executor | bool:
        """Every executor is busy: wait up to `queue_seconds` for one to be released (a
        burst of short queries queues briefly instead of bouncing back as retries), then
        OverloadedError (HTTP 429)."""
        deadline = time.monotonic() + queue_seconds
        self._waiters += 1
        key = self._waiters
        self._waiting[key] = [binding, 0]
        try:
            recheck = False
            while (left := deadline - time.monotonic()) > 0:
                self._freed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._freed.wait(), min(left, RECHECK_SECONDS) if recheck else left
                    )
                passes = self._waiting[key][1]
                defer = key if passes < MAX_PASSES else None
                taken = self._take(binding, reuse=not fresh, defer=defer)
                if taken is not None:
                    return taken
                recheck = self._waiting[key][1] > passes
        finally:
            del self._waiting[key]
        raise OverloadedError("all query executors are busy; retry shortly")

    async def close(self) -> None:
        executors = list(self.idle.values())
        self.idle.clear()
        await asyncio.gather(*(ex.close() for ex in executors), *self.tasks)
        if self.slots is not None:
            shutil.rmtree(self.slots, ignore_errors=True)


async def _once_more_if_stale(attempt: Callable[[bool], Awaitable[T]]) -> T:
    """`attempt(fresh=False)`, and once more on a fresh executor when an idle executor had
    died unseen (OOM killer, operator): queries only read, so the retry is safe; a query
    that kills the fresh one fails."""
    try:
        return await attempt(False)
    except _StaleExecutor:
        return await attempt(True)


def _own_slots(base: Path) -> Path:
    """`base/slots-<pid>` for this process, after removing what processes that are gone
    left there (their links would keep deleted files' space)."""
    base.mkdir(parents=True, exist_ok=True)
    for old in base.glob("slots-*"):
        pid = old.name.removeprefix("slots-")
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)
    own = base / f"slots-{os.getpid()}"
    own.mkdir(exist_ok=True)
    return own


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
