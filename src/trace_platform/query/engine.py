"""The DuckDB engine of one query executor process (the second fail-closed layer).

Standalone on purpose: it imports only the standard library, `duckdb` and `orjson` (and
`pyarrow` for the Arrow route), so the query service can run it as a script inside the
executor sandbox, where nothing of the platform is mounted.

An engine is bound to one set of relations at a time (each granted dataset version or
snapshot under the names the query reads it by); the service may rebind an idle executor to
other versions of the same datasets (a followed chain's next range): every relation of the
old binding is dropped from the (locked) database before the new ones are created, so nothing
of one binding is left for the next. Rebound to other datasets (of the same org: the service
never rebinds across orgs) it closes its database and opens a new one (`fresh`), so no
relation, temporary object, setting, attached database or cache survives. DuckDB is in
memory with
extensions never installed or auto-loaded, no persistent secrets, no spill files, memory and
threads bounded, configuration locked, and a per-query interrupt. Two routes to the data:

- `reader` (local files, sandboxed executor): DuckDB's own Parquet reader with external
  access disabled except `allowed_directories` = the directories of the granted files; a
  small relation (`MATERIALIZE_MAX_BYTES`) is loaded into memory once, when its binding is
  queried a second time or by a batch (a binding queried once, a DAG range, reads its
  files once instead of copying them first). The
  OS layer holds on its own: the executor sees only those files, read-only, under an
  unprivileged uid, so even statements DuckDB would allow there (`COPY ... TO`, `glob`)
  can neither write nor find anything else.
- `arrow` (S3, or no sandbox available): trusted code opens strictly the manifest's files with
  `pyarrow.dataset` and hands DuckDB an Arrow relation; DuckDB touches no file or network.

Wire protocol on stdin/stdout: frames of a 4-byte big-endian length and an orjson document.
First frame in: the binding. Then one frame in per query (`{sql, limit, timeout?}`) or per
batch of queries (`{batch: [...]}`); out, per query in order: a header frame and, on success,
a second frame holding the response body. A `{rebind: [relations], fresh?}` frame binds the
executor anew (same route, limits and S3 options; `fresh`: in a new database) and is
answered like the first binding.
"""

from __future__ import annotations

import os
import resource
import signal
import struct
import sys
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, BinaryIO

MAX_RESULT_BYTES = 10 * 1024 * 1024
# Relations whose files total at most this (and an eighth of the memory limit) are loaded
# into memory when their binding is queried again; larger ones are read from Parquet per query.
MATERIALIZE_MAX_BYTES = 64 * 1024 * 1024
MAX_TIMEOUT = 600.0  # seconds: no query runs longer, whatever it asks
ROUTE_READER = "reader"
ROUTE_ARROW = "arrow"
_FRAME = struct.Struct(">I")
MAX_FRAME = 64 * 1024 * 1024
FORMAT_JSON, FORMAT_ARROW, FORMAT_CSV, FORMAT_PARQUET = "json", "arrow", "csv", "parquet"
EXPORT_FORMATS = (FORMAT_ARROW, FORMAT_CSV, FORMAT_PARQUET)  # answered as bytes, not JSON
ARROW_BATCH_ROWS = 64 * 1024
MAX_ARROW_BYTES = MAX_FRAME - 1024 * 1024  # one reply frame, with room for its header
SMALL_BYTES = 4 * 1024 * 1024  # in-memory relations this small are queried on one thread
FLUSH_BYTES = 1024 * 1024  # a batch's replies are held back up to this much
STREAM_CHUNK_BYTES = 256 * 1024  # a streamed export goes out in frames of this much
PARQUET_DICTIONARY_BYTES = 32 * 1024  # a Parquet answer's dictionary page, per column
PIPE_BYTES = 1024 * 1024  # the executor's stdout pipe (the service reads up to this at once)


@dataclass(frozen=True)
class ExecutorLimits:
    memory_mb: int = 512  # DuckDB buffer manager; the process limit is a multiple of it
    threads: int = 2
    timeout_seconds: float = 10.0
    cpu_seconds: int = 300  # per executor process, cumulative


class QueryFailed(Exception):
    """A refused or failed query. For `query_error` the reason is DuckDB's own message,
    which may quote the query: the trusted service makes it safe to show (see
    `domain.query_errors`), given `names`, the relations' names and columns."""

    def __init__(self, code: str, reason: str, names: tuple[str, ...] = ()) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.names = names

    def __reduce__(self) -> tuple[type[QueryFailed], tuple[str, str, tuple[str, ...]]]:
        # It may cross a process boundary: pickle every argument.
        return (QueryFailed, (self.code, self.reason, self.names))


def apply_limits(limits: ExecutorLimits) -> None:
    """OS limits the executor puts on itself before it reads any query (soft = hard, and it
    holds no capability to raise them again)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a refused write fails, it does not kill
    mb = 1024 * 1024
    address_space = (limits.memory_mb * 4 + 1024) * mb
    resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))  # writes no file, not even a log
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


def _materialize(con: Any, name: str, source: str) -> bool:
    """Load a small relation into memory once per executor (its files are immutable): a
    snapshot of many small ranges is then scanned like one table, not file by file. False
    (nothing created) when it does not fit the memory limit."""
    import duckdb

    try:
        con.execute(f"CREATE TABLE {name} AS {source}")
    except duckdb.OutOfMemoryException:
        con.execute(f"DROP TABLE IF EXISTS {name}")
        return False
    return True


def _has_block_number(con: Any, source: str) -> bool:
    described = con.execute(f"SELECT * FROM ({source}) LIMIT 0")
    names = [d[0] for d in described.description or []]
    described.fetchall()  # finish the result: the connection takes the next statement
    return "block_number" in names


def _create_bounded_view(
    con: Any, name: str, source: str, block_range: tuple[int, int] | None
) -> str:
    """CREATE VIEW `name` over `source`; for a range grant, only rows of blocks inside it
    (a derived relation without block numbers is granted whole partitions of the range).
    Tried with the bounds first (creating the view reads the files' footers once); without
    them only when the files have no block_number column. The source the view reads."""
    import duckdb

    if block_range is not None:
        lo, hi = block_range
        bounded = f"{source} WHERE block_number >= {lo} AND block_number < {hi}"
        try:
            con.execute(f"CREATE VIEW {name} AS {bounded}")
            return bounded
        except duckdb.BinderException:
            if _has_block_number(con, source):
                raise  # the bounds failed for another reason: never read it unbounded
    con.execute(f"CREATE VIEW {name} AS {source}")
    return source


def _filtered(dataset: Any, rel: BoundRelation) -> Any:
    """A relation's Arrow dataset with its grant's bounds as typed expressions: the blocks
    of a range grant (when its rows carry block numbers) and an input's `where` (each value
    cast to its column's type; a column the relation lacks, or a value its type cannot hold,
    is an error naming the column)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    names = dataset.schema.names
    if rel.block_range is not None and "block_number" in names:
        lo, hi = rel.block_range
        field = ds.field("block_number")
        dataset = dataset.filter((field >= lo) & (field < hi))
    for column, values in rel.where or ():
        if column not in names:
            raise QueryFailed("query_error", f"where: the input has no column {column!r}")
        try:
            typed = pa.array(list(values)).cast(dataset.schema.field(column).type)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            raise QueryFailed(
                "query_error", f"where: a value does not fit column {column!r}'s type"
            ) from None
        dataset = dataset.filter(ds.field(column).isin(typed))
    return dataset


def _sql_list(paths: list[str]) -> str:
    return "[" + ", ".join("'" + p.replace("'", "''") + "'" for p in paths) + "]"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class BoundRelation:
    """One granted relation as the engine sees it: the names a query reads it by (each a
    view), its files, and for a range grant the blocks it is bounded to."""

    names: tuple[str, ...]
    files: tuple[str, ...]
    block_range: tuple[int, int] | None = None
    where: tuple[tuple[str, tuple[Any, ...]], ...] | None = None  # typed row filter

    @classmethod
    def of(cls, raw: Any) -> BoundRelation:
        if not isinstance(raw, dict):
            raise QueryFailed("query_error", "malformed relation")
        names = tuple(str(n) for n in raw.get("names") or ())
        files = tuple(str(f) for f in raw.get("files") or ())
        if not names or not files:
            raise QueryFailed("query_error", "a relation needs names and files")
        block_range = raw.get("block_range")
        bounded = (int(block_range[0]), int(block_range[1])) if block_range is not None else None
        where = raw.get("where")
        filters = tuple((str(c), tuple(v)) for c, v in where) if where else None
        return cls(names, files, bounded, filters)


class Engine:
    """One locked in-memory database bound to a set of relations (dataset versions or
    snapshots), each visible under the names the query uses for it."""

    con: Any  # the DuckDB connection of its database

    def __init__(
        self,
        route: str,
        relations: list[BoundRelation],
        limits: ExecutorLimits,
        s3: dict[str, str] | None = None,
        previous: Engine | None = None,
        fresh: bool = False,
    ) -> None:
        """`previous`: the engine of the executor's last binding, whose database this one
        takes over once it is emptied (a new DuckDB database costs ~12 ms of CPU): its
        locked configuration stays, allowed directory and thread count included. `fresh`
        (a binding of other datasets): `previous`'s database is closed instead and a new
        one opened, so nothing of it — relations, temporary objects, settings, attached
        databases, caches — can reach this binding."""
        import duckdb

        if not all(r.files for r in relations):
            raise QueryFailed("query_error", "no files to bind")
        self.limits = limits
        self.arrow: dict[str, Any] = {}  # name -> Arrow dataset (the arrow route)
        config: dict[str, Any] = {
            "autoinstall_known_extensions": False,
            "autoload_known_extensions": False,
            "allow_community_extensions": False,
            "allow_persistent_secrets": False,
            "home_directory": "/nonexistent",
            # No spill files: a query lives within memory_limit or fails (nothing on disk).
            "temp_directory": "",
            "memory_limit": f"{limits.memory_mb}MB",
            "threads": limits.threads,
            # Parquet statistics are not trusted to drop work: cryo's (Polars) files claim
            # null_count 0 for a column holding NULLs (a contract creation's to_address), and
            # read_parquet(..., union_by_name) then took count(col) for count(*) and
            # coalesce(col, x) for col: wrong answers until the relation was materialized.
            "disabled_optimizers": "statistics_propagation",
        }
        files = [f for r in relations for f in r.files]
        if previous is not None and fresh:
            previous.con.close()
        reuse = previous if not fresh else None
        # Relations loaded into memory at their second query (name, source, names): one
        # query (a DAG range) reads the Parquet files once instead of copying them first.
        self.deferred: list[tuple[str, str, tuple[str, ...]]] = []
        if route == ROUTE_READER:
            if s3 is not None:
                raise QueryFailed("query_error", "the reader route is for local files only")
            if not all(os.access(f, os.R_OK) for f in files):
                raise QueryFailed("dataset_unreadable", "a dataset file is not readable here")
            dirs = sorted({os.path.dirname(f) + "/" for f in files})
            if reuse is not None:
                con = reuse.emptied(route, dirs)
            else:
                con = duckdb.connect(":memory:", config=config)
                con.execute(f"SET allowed_directories = {_sql_list(dirs)}")
                con.execute("SET enable_external_access = false")
            budget = min(MATERIALIZE_MAX_BYTES, limits.memory_mb * 1024 * 1024 // 8)
            in_memory = True
            for rel in relations:
                if rel.where:  # a filtered input: a typed predicate, never SQL text
                    for name in rel.names:
                        self.arrow[name] = _filtered(_arrow_dataset(list(rel.files), None), rel)
                    continue
                # union_by_name: a column added in a later version of a stream (e.g.
                # block_hash) reads as NULL in older partitions instead of failing the scan.
                listed = _sql_list(list(rel.files))
                source = f"SELECT * FROM read_parquet({listed}, union_by_name = true)"
                first, *others = [_quote(n) for n in rel.names]
                size = sum(os.path.getsize(f) for f in rel.files)
                source = _create_bounded_view(con, first, source, rel.block_range)
                for name in others:
                    con.execute(f"CREATE VIEW {name} AS SELECT * FROM {first}")
                if size <= budget:
                    budget -= size
                    self.deferred.append((first, source, tuple(others)))
                else:
                    in_memory = False
            small = sum(os.path.getsize(f) for f in files) <= SMALL_BYTES
            if reuse is None and in_memory and small:
                # A few blocks' rows (an alert's range): a second thread only costs a
                # hand-over per query.
                con.execute("SET threads = 1")
        elif route == ROUTE_ARROW:
            dirs = []
            if reuse is not None:
                con = reuse.emptied(route, dirs)
            else:
                con = duckdb.connect(":memory:", config={"enable_external_access": False, **config})
            for rel in relations:
                dataset = _filtered(_arrow_dataset(list(rel.files), s3), rel)
                for name in rel.names:
                    self.arrow[name] = dataset
        else:
            raise QueryFailed("query_error", "unknown route")
        if reuse is None:
            con.execute("SET lock_configuration = true")
        self.con = con
        self.route, self.dirs = route, dirs
        self.relations = relations
        self.watchdog: Watchdog = previous.watchdog if previous is not None else Watchdog()
        self._checked: set[str] = set()
        self._names: tuple[str, ...] | None = None
        # a streamed export's bytes go there as they are written (`FrameSink`)
        self.sink: FrameSink | None = None
        self.queries = 0

    def reused(self) -> None:
        """This binding is queried again (or by a batch of queries): load its small
        relations into memory now, once (their files are immutable), so a snapshot of many
        small ranges is then scanned like one table, not file by file. One that does not
        fit the memory limit stays a view over its files."""
        deferred, self.deferred = self.deferred, []
        for first, source, others in deferred:
            for name in (*others, first):
                self.con.execute(f"DROP VIEW IF EXISTS {name}")
            if not _materialize(self.con, first, source):
                self.con.execute(f"CREATE VIEW {first} AS {source}")
            for name in others:
                self.con.execute(f"CREATE VIEW {name} AS SELECT * FROM {first}")

    def emptied(self, route: str, dirs: list[str]) -> Any:
        """This engine's database with every relation dropped, for the next binding of the
        executor (same route and allowed directories, else QueryFailed: start anew). A
        query can create nothing (one SELECT), so what is dropped is all there was."""
        if route != self.route or dirs != self.dirs:
            raise QueryFailed("query_error", "the new binding needs another database")
        con = self.con
        for kind, catalog in (("VIEW", "duckdb_views()"), ("TABLE", "duckdb_tables()")):
            column = "view_name" if kind == "VIEW" else "table_name"
            where = " WHERE NOT internal" if kind == "VIEW" else ""
            for (name,) in con.execute(f"SELECT {column} FROM {catalog}{where}").fetchall():
                con.execute(f"DROP {kind} IF EXISTS {_quote(name)} CASCADE")
        return con

    def names(self) -> tuple[str, ...]:
        """Every name of the bound relations and every column they have (asked once, when
        a query first fails: an error may name them)."""
        if self._names is None:
            found = [n for r in self.relations for n in r.names]
            for rel in self.relations:
                if rel.names[0] in self.arrow:
                    found += self.arrow[rel.names[0]].schema.names
                    continue
                import duckdb

                con = self.con.cursor()
                try:
                    described = con.execute(f"SELECT * FROM {_quote(rel.names[0])} LIMIT 0")
                    found += [d[0] for d in described.description or []]
                except duckdb.Error:
                    pass  # its columns go unnamed: an error naming one shows it elided
                finally:
                    con.close()
            self._names = tuple(dict.fromkeys(found))
        return self._names

    def query(
        self,
        sql: str,
        limit: int,
        timeout: float | None = None,
        fmt: str = FORMAT_JSON,
        params: list[str] | None = None,
    ) -> tuple[bytes, int, bool]:
        """Run one query; (response body, row count, truncated) or QueryFailed. `timeout`:
        this query's time limit (a user's query has its own), else the executor's. `fmt`:
        the body as JSON `{columns, rows, truncated}`, or as an Arrow IPC stream, CSV or
        Parquet (`export`: types kept exactly: wide integers, decimals, timestamps with
        zone, lists, structs)."""
        import duckdb

        self.queries += 1
        if self.queries > 1 and self.deferred:
            self.reused()
        # Independent of the gate: DuckDB's own parser must see exactly one SELECT. (A pure
        # function of the text, ~0.2 ms: texts that passed are remembered.)
        if sql not in self._checked:
            try:
                statements = duckdb.extract_statements(sql)
            except duckdb.Error:
                raise QueryFailed("query_denied", "statement rejected by the engine") from None
            if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
                raise QueryFailed("query_denied", "only one SELECT statement may run")
            if len(self._checked) >= 1024:
                self._checked.clear()
            self._checked.add(sql)
        import orjson

        failed: QueryFailed | None = None
        con = self.con.cursor()  # a fresh connection: nothing of one query leaks into the next
        try:
            for name, dataset in self.arrow.items():
                con.register(name, dataset)
            self.watchdog.arm(con, min(MAX_TIMEOUT, timeout or self.limits.timeout_seconds))
            try:
                if fmt in EXPORT_FORMATS:  # its batches are written as they come
                    return export(_relation(con, sql, params), limit, fmt, self.sink)
                # `params`: a saved query's values, bound to its `$k` as prepared-statement
                # parameters (never part of the SQL text)
                result = con.execute(sql, params)
                columns = [{"name": d[0], "type": str(d[1])} for d in result.description or []]
                rows = result.fetchmany(limit + 1)
            finally:
                self.watchdog.disarm()
        except duckdb.InterruptException:
            raise QueryFailed("query_timeout", "query exceeded its time limit") from None
        except duckdb.OutOfMemoryException:
            raise QueryFailed("query_out_of_memory", "query exceeded its memory limit") from None
        except (duckdb.PermissionException, duckdb.InvalidInputException):
            raise QueryFailed("query_denied", "query touched something it may not") from None
        except duckdb.IOException:
            raise QueryFailed("query_denied", "query touched a file it may not") from None
        except duckdb.Error as exc:
            # DuckDB's message says what is wrong (and may quote the query): the service
            # shows what of it is safe.
            failed = QueryFailed("query_error", str(exc) or type(exc).__name__)
        finally:
            con.close()
        if failed is not None:
            failed.names = self.names()
            raise failed
        truncated = len(rows) > limit
        del rows[limit:]
        try:
            encoded = orjson.dumps(rows, default=json_value)
        except TypeError:  # an integer wider than 64 bits (HUGEINT, UHUGEINT): as text
            rows = [tuple(wide_int(v) for v in row) for row in rows]
            encoded = orjson.dumps(rows, default=json_value)
        if len(encoded) > MAX_RESULT_BYTES:  # keep the rows that fit, in order
            size, keep = 2, 0
            for row in rows:
                size += len(orjson.dumps(row, default=json_value)) + 1
                if size > MAX_RESULT_BYTES:
                    break
                keep += 1
            del rows[keep:]
            truncated = True
            encoded = orjson.dumps(rows, default=json_value)
        head = orjson.dumps({"columns": columns, "truncated": truncated})
        body = head[:-1] + b',"rows":' + encoded + b"}"
        return body, len(rows), truncated


def _exact_schema(types: list[str], schema: Any, parquet: bool = False) -> Any:
    """The schema an answer is written with, every column exact: HUGEINT's Arrow type is
    decimal128(38, 0), one digit short of its 39, so decimal256(39, 0) — except in Parquet,
    which DuckDB reads back (a DAG's partitions, a downloaded file): it takes a 39-digit
    decimal for a DOUBLE, so there HUGEINT stays DECIMAL(38, 0), exact to 38 digits; UHUGEINT
    arrives as a decimal128 that wraps above 2**127, so its decimal text (None: nothing to
    change)."""
    import pyarrow as pa

    wanted = {"HUGEINT": pa.decimal256(39, 0), "UHUGEINT": pa.string()}
    if parquet:
        del wanted["HUGEINT"]
    if not any(t in wanted for t in types):
        return None
    fields = [
        f.with_type(wanted[t]) if t in wanted else f for f, t in zip(schema, types, strict=True)
    ]
    return pa.schema(fields, metadata=schema.metadata)


def _exact_batch(batch: Any, types: list[str], schema: Any) -> Any:
    import pyarrow as pa

    columns = []
    for column, t, field in zip(batch.columns, types, schema, strict=True):
        if t == "UHUGEINT":  # undo the wrap: the 128 bits are unsigned
            values = [None if v is None else int(v) % (1 << 128) for v in column.to_pylist()]
            columns.append(pa.array([None if v is None else str(v) for v in values], pa.string()))
        else:
            columns.append(column.cast(field.type) if column.type != field.type else column)
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _csv_batch(batch: Any) -> Any:
    """A batch CSV can write: list, struct and map columns as their JSON text (integers
    beyond 64 bits and decimals as strings), binary as hex."""
    import orjson
    import pyarrow as pa

    nested = (
        pa.types.is_list,
        pa.types.is_large_list,
        pa.types.is_fixed_size_list,
        pa.types.is_struct,
        pa.types.is_map,
    )
    columns = []
    changed = False
    for column in batch.columns:
        if any(is_(column.type) for is_ in nested):
            texts = [
                None if v is None else orjson.dumps(wide_int(v), default=json_value).decode()
                for v in column.to_pylist()
            ]
            columns.append(pa.array(texts, pa.string()))
            changed = True
        elif pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
            columns.append(pa.array([None if v is None else v.hex() for v in column.to_pylist()]))
            changed = True
        else:
            columns.append(column)
    if not changed:
        return batch
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


def _relation(con: Any, sql: str, params: list[str] | None = None) -> Any:
    """The query as a relation whose Arrow batches stream (a DB-API result would be copied
    whole first). A statement that fails to bind fails as `execute` fails it, so its
    error reads the same as in a JSON answer (with its line and column)."""
    import duckdb

    try:
        return con.sql(sql, params=params)
    except duckdb.Error:
        con.execute(sql, params)
        raise


def _engine_failure(exc: Exception) -> QueryFailed:
    """A DuckDB error that reached us through the Arrow reader mid-stream (pyarrow raises it
    as OSError with DuckDB's message) as the QueryFailed the same error raised directly
    would be."""
    text = str(exc)
    for prefix, code, reason in (
        ("INTERRUPT", "query_timeout", "query exceeded its time limit"),
        ("Out of Memory", "query_out_of_memory", "query exceeded its memory limit"),
        ("Permission Error", "query_denied", "query touched something it may not"),
        ("Invalid Input Error", "query_denied", "query touched something it may not"),
        ("IO Error", "query_denied", "query touched a file it may not"),
    ):
        if text.startswith(prefix):
            return QueryFailed(code, reason)
    return QueryFailed("query_error", text or type(exc).__name__)


class FrameSink:
    """Where a streamed export's bytes go (a file object for pyarrow's writers): out to the
    service as frames of at most STREAM_CHUNK_BYTES, held back until STREAM_CHUNK_BYTES are
    pending, the first of them after a header frame `{ok: true, stream: true}`.

    The streamed reply to a `{sql, limit, format, stream: true}` request is therefore: either
    one failure header, as for any query (nothing was sent yet), or that header, data frames
    (never empty), an empty frame, and a trailer frame: `{ok: true, rows, truncated}`, or a
    failure `{ok: false, code, reason}` for a query that failed after bytes went out."""

    closed = False

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.pending = bytearray()
        self.position = 0
        self.started = False

    def write(self, data: Any) -> int:
        size = len(memoryview(data).cast("B"))
        self.pending += data
        self.position += size
        if len(self.pending) >= STREAM_CHUNK_BYTES:
            self.send()
        return size

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def send(self) -> None:
        """Out with what is pending (after the header, the first time)."""
        import orjson

        if not self.started:
            header = orjson.dumps({"ok": True, "stream": True})
            self.out.write(_FRAME.pack(len(header)) + header)
            self.started = True
        with memoryview(self.pending) as view:  # out as they are, no copy made
            for i in range(0, len(view), STREAM_CHUNK_BYTES):
                with view[i : i + STREAM_CHUNK_BYTES] as piece:
                    self.out.write(_FRAME.pack(len(piece)))
                    self.out.write(piece)
        self.out.flush()
        self.pending.clear()


def export(result: Any, limit: int, fmt: str, sink: Any = None) -> tuple[bytes, int, bool]:
    """At most `limit` rows of an executed query (a DuckDB relation or connection holding
    its result) as an Arrow IPC stream, CSV with a header row, or Parquet, written batch by
    batch: (body, rows, truncated). Without `sink`: one body of at most MAX_ARROW_BYTES.
    With `sink` (a `FrameSink`): every byte goes there as written, however many (the
    body returned is empty); `truncated`: rows were left out past `limit`."""
    import pyarrow as pa

    types = [str(d[1]) for d in result.description or []]
    reader = result.to_arrow_reader(ARROW_BATCH_ROWS)
    wide = _exact_schema(types, reader.schema, parquet=fmt == FORMAT_PARQUET)
    schema = wide or reader.schema
    buffer = pa.BufferOutputStream() if sink is None else None
    target: Any = buffer if buffer is not None else pa.PythonFile(sink, mode="w")
    most = MAX_ARROW_BYTES if sink is None else None
    rows, truncated = 0, False
    writer: Any
    if fmt == FORMAT_PARQUET:
        import pyarrow.parquet as pq

        # A column's dictionary stops at PARQUET_DICTIONARY_BYTES: a few hundred distinct
        # addresses stay dictionary-encoded, a column of unique hashes falls back to plain
        # early instead of building a dictionary it then drops (a third less CPU on a DAG
        # range's rows, and smaller files).
        writer = pq.ParquetWriter(
            target,
            schema,
            compression="zstd",
            dictionary_pagesize_limit=PARQUET_DICTIONARY_BYTES,
        )
    elif fmt == FORMAT_CSV:
        writer = None  # each batch is encoded apart, to be measured before it is kept
    else:
        writer = pa.ipc.new_stream(target, schema)
    batches = iter(reader)
    try:
        while True:
            try:
                batch = next(batches, None)
            except OSError as exc:  # DuckDB failed mid-stream (pyarrow's wrapping)
                raise _engine_failure(exc) from None
            if batch is None:
                break
            if rows + batch.num_rows > limit:
                batch = batch.slice(0, limit - rows)
                truncated = True
            if wide is not None:
                batch = _exact_batch(batch, types, wide)
            if fmt == FORMAT_CSV:
                import pyarrow.csv as csv

                out = pa.BufferOutputStream()
                options = csv.WriteOptions(include_header=rows == 0 and target.tell() == 0)
                csv.write_csv(_csv_batch(batch), out, options)
                text = out.getvalue()
                if most is not None and target.tell() + text.size > most:
                    truncated = True
                    break
                target.write(text)
            else:
                if most is not None and target.tell() + batch.nbytes > most:
                    truncated = True
                    break
                writer.write_batch(batch)
            rows += batch.num_rows
            if truncated:
                break
    finally:
        if writer is not None:
            writer.close()
    if fmt == FORMAT_CSV and target.tell() == 0:  # no rows: the header alone
        import pyarrow.csv as csv

        empty = [pa.array([], pa.string()) for _ in schema.names]
        csv.write_csv(pa.Table.from_arrays(empty, names=schema.names), target)
    if buffer is None:
        target.flush()
        return b"", rows, truncated
    return buffer.getvalue().to_pybytes(), rows, truncated


class Watchdog:
    """One thread that interrupts the running query once past its deadline. It checks every
    `tick` seconds instead of being woken per query (no thread start or wake-up per query)."""

    def __init__(self, tick: float = 0.05) -> None:
        self._lock = threading.Lock()
        self._target: Any = None
        self._deadline = 0.0
        self._tick = tick
        threading.Thread(target=self._run, name="query-watchdog", daemon=True).start()

    def arm(self, con: Any, seconds: float) -> None:
        with self._lock:
            self._target, self._deadline = con, time.monotonic() + seconds

    def disarm(self) -> None:
        with self._lock:
            self._target = None

    def _run(self) -> None:
        while True:
            time.sleep(self._tick)
            with self._lock:
                if self._target is not None and time.monotonic() >= self._deadline:
                    self._target.interrupt()
                    self._target = None


def _arrow_dataset(files: list[str], s3: dict[str, str] | None) -> Any:
    """Strictly the manifest's files (local paths, or `bucket/key` through an S3 filesystem
    built from options the trusted service handed over), Parquet footers read once."""
    import pyarrow.dataset as ds

    filesystem = None
    if s3 is not None:
        from pyarrow import fs

        filesystem = fs.S3FileSystem(**s3)
    dataset = ds.dataset(list(files), format="parquet", filesystem=filesystem)
    for fragment in dataset.get_fragments():
        fragment.ensure_complete_metadata()
    return dataset


def json_value(value: Any) -> Any:
    """JSON for what orjson lacks: integral decimals (SUM of BIGINT is HUGEINT) as numbers
    while they fit in 64 bits, everything else (big or fractional decimals, bytes) as text."""
    if isinstance(value, Decimal) and value == value.to_integral_value():
        as_int = int(value)
        if -(2**63) <= as_int < 2**63:
            return as_int
    return str(value)


def wide_int(value: Any) -> Any:
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return str(value)
    if isinstance(value, (list, tuple)):
        return [wide_int(v) for v in value]
    if isinstance(value, dict):
        return {k: wide_int(v) for k, v in value.items()}
    return value


def read_frame(stream: BinaryIO) -> Any:
    import orjson

    head = stream.read(_FRAME.size)
    if len(head) < _FRAME.size:
        return None
    (size,) = _FRAME.unpack(head)
    if size > MAX_FRAME:
        raise ValueError("frame too large")
    data = stream.read(size)
    if len(data) < size:
        return None
    return orjson.loads(data)


def write_frames(stream: BinaryIO, *payloads: bytes) -> None:
    stream.write(b"".join(_FRAME.pack(len(p)) + p for p in payloads))
    stream.flush()


READY = {"ok": True, "ready": True}


def _bind(
    init: dict[str, Any],
    raw: Any,
    limits: ExecutorLimits,
    previous: Engine | None,
    fresh: bool = False,
) -> Engine | dict[str, Any]:
    """An engine bound to the relations `raw` (the first binding also applies the process's
    limits; a rebinding takes over `previous`'s database, or with `fresh` closes it and
    opens a new one), or the refusal to answer with."""
    try:
        if previous is None:
            apply_limits(limits)
        relations = [BoundRelation.of(r) for r in raw]
        return Engine(init["route"], relations, limits, init.get("s3"), previous, fresh)
    except QueryFailed as exc:
        return {"ok": False, "code": exc.code, "reason": exc.reason}
    except Exception as exc:
        return {"ok": False, "code": "bind", "reason": type(exc).__name__}


def _widen_pipe(out: BinaryIO) -> None:
    """A streamed export's frames go out through a pipe of 1 MiB rather than 64 KiB: a
    quarter of the writes block on the service's reads (best effort: not a pipe, or the
    system's limit is lower, leaves it as it is)."""
    import contextlib
    import fcntl

    with contextlib.suppress(OSError, ValueError, AttributeError):
        fcntl.fcntl(out.fileno(), 1031, PIPE_BYTES)  # F_SETPIPE_SZ (Linux)


def serve(inp: BinaryIO, out: BinaryIO) -> int:
    """The executor's loop: bind, say ready, answer queries until stdin closes."""
    import orjson

    init = read_frame(inp)
    if not isinstance(init, dict):
        return 2
    _widen_pipe(out)
    limits = ExecutorLimits(**init["limits"])
    engine = _bind(init, init["relations"], limits, None)
    write_frames(out, orjson.dumps(engine if isinstance(engine, dict) else READY))
    if isinstance(engine, dict):
        return 1
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # from here on nothing (no SQL) can reach the service's log
    while (request := read_frame(inp)) is not None:
        if isinstance(request, dict) and "rebind" in request:
            fresh = request.get("fresh") is True
            rebound = _bind(init, request["rebind"], limits, engine, fresh)
            write_frames(out, orjson.dumps(rebound if isinstance(rebound, dict) else READY))
            if isinstance(rebound, dict):
                return 1
            engine = rebound
            continue
        if isinstance(request, dict) and request.get("stream"):
            if (code := _stream(engine, request, out, limits)) is not None:
                return code
            continue
        # One query, or a batch of queries on this binding (their replies go out together,
        # in order; one whose result is large flushes what is pending first).
        batch = request.get("batch") if isinstance(request, dict) else None
        items = batch if isinstance(batch, list) else [request]
        if len(items) > 1 and engine.deferred:
            engine.reused()  # many queries of one binding: in memory before the first
        pending: list[bytes] = []
        for item in items:
            try:
                wanted = item.get("timeout")
                body, count, truncated = engine.query(
                    str(item["sql"]),
                    int(item["limit"]),
                    float(wanted) if isinstance(wanted, (int, float)) else None,
                    fmt if (fmt := item.get("format")) in EXPORT_FORMATS else FORMAT_JSON,
                    [str(v) for v in p] if isinstance(p := item.get("params"), list) else None,
                )
                reply: dict[str, Any] = {"ok": True, "rows": count, "truncated": truncated}
            except QueryFailed as exc:
                reply = {"ok": False, "code": exc.code, "reason": exc.reason}
                if exc.names:
                    reply["names"] = list(exc.names)
                body = b""
            except MemoryError:
                reply = {"ok": False, "code": "query_out_of_memory", "reason": "out of memory"}
                write_frames(out, *pending, orjson.dumps({**reply, "retire": True}))
                return 1
            except Exception as exc:
                reply = {"ok": False, "code": "query_error", "reason": type(exc).__name__}
                write_frames(out, *pending, orjson.dumps({**reply, "retire": True}))
                return 1
            # RLIMIT_CPU is cumulative: retire (answer, then exit) well before it could
            # strike in the middle of a later query; the rest of a batch is not run.
            usage = resource.getrusage(resource.RUSAGE_SELF)
            retire = usage.ru_utime + usage.ru_stime > limits.cpu_seconds / 2
            if retire:
                reply["retire"] = True
            pending.append(orjson.dumps(reply))
            if reply["ok"]:
                pending.append(body)
            if retire:
                write_frames(out, *pending)
                return 0
            if sum(len(p) for p in pending) > FLUSH_BYTES:
                write_frames(out, *pending)
                pending = []
        if pending:
            write_frames(out, *pending)
    return 0


def _stream(
    engine: Engine, item: dict[str, Any], out: BinaryIO, limits: ExecutorLimits
) -> int | None:
    """Answer one export as a stream (`FrameSink`); the process's exit code when it must
    end (out of memory, an unexpected error, its CPU budget half spent), else None."""
    import orjson

    sink = FrameSink(out)
    fmt = item.get("format")
    wanted = item.get("timeout")
    exit_code: int | None = None
    try:
        engine.sink = sink
        try:
            _, count, truncated = engine.query(
                str(item["sql"]),
                int(item["limit"]),
                float(wanted) if isinstance(wanted, (int, float)) else None,
                fmt if fmt in EXPORT_FORMATS else FORMAT_ARROW,
                # a saved query's values, when it has any (bound as parameters)
                **({"params": list(item["params"])} if item.get("params") else {}),
            )
        finally:
            engine.sink = None
        sink.send()  # the rest, and the header if nothing went out yet
        reply: dict[str, Any] = {"ok": True, "rows": count, "truncated": truncated}
    except QueryFailed as exc:
        reply = {"ok": False, "code": exc.code, "reason": exc.reason}
        if exc.names:
            reply["names"] = list(exc.names)
    except MemoryError:
        reply = {"ok": False, "code": "query_out_of_memory", "reason": "out of memory"}
        exit_code = 1
    except Exception as exc:
        reply = {"ok": False, "code": "query_error", "reason": type(exc).__name__}
        exit_code = 1
    usage = resource.getrusage(resource.RUSAGE_SELF)
    if exit_code is None and usage.ru_utime + usage.ru_stime > limits.cpu_seconds / 2:
        exit_code = 0
    if exit_code is not None:
        reply["retire"] = True
    if sink.started:
        write_frames(out, b"", orjson.dumps(reply))
    else:
        write_frames(out, orjson.dumps(reply))
    return exit_code


if __name__ == "__main__":
    # Run as a script inside the sandbox: `engine.py SITE_DIR` puts the (read-only) directory
    # holding duckdb/orjson/pyarrow on the path; nothing else of the platform is importable.
    if len(sys.argv) > 1:
        sys.path.insert(0, sys.argv[1])
    raise SystemExit(serve(sys.stdin.buffer, sys.stdout.buffer))
