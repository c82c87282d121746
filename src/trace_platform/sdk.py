"""A typed Python client of Trace's user API (`/v1`), for scripts and the remote CLI.

    from trace_platform.sdk import Client, ApiError

    with Client("https://trace.internal", api_key=os.environ["TRACE_API_KEY"]) as trace:
        ids = trace.create_tasks({"operator": "noop"}, count=10)
        for task in trace.iter_tasks(status="completed"):   # every page, lazily
            print(task["task_id"])
        rows = trace.query("SELECT count(*) AS n FROM blocks", job="mainnet").rows
        df = trace.query("SELECT * FROM transfers", format="arrow").to_pandas()  # [pandas]
        big = trace.query_run("SELECT * FROM transfers", format="parquet", output="t.parquet")

Every method returns the JSON document of its route (the same documents `trace ... --json`
prints). A non-2xx answer raises `ApiError` with the API's `status`, `code` (e.g.
`not_found`, `forbidden`, `invalid_request`) and one-line `detail`; a network failure raises
`ApiUnreachable`. The key goes in the `Authorization` header only: it is never part of an
error, a repr or a log line.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import orjson

from trace_platform.domain.errors import TraceError, UnavailableError

Json = dict[str, Any]


class ApiError(TraceError):
    """The API answered an error: `status` (HTTP), `code` and `detail` are the API's own."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code


class AnswerIncomplete(TraceError):
    """An answer of bytes that ended before its end: it reached the deployment's
    TRACE_QUERY_MAX_EXPORT_ROWS with rows left, or failed part-way (ask fewer rows with
    `limit`, or a query run). Never taken for a complete answer."""

    code = "answer_cut"


class ApiUnreachable(UnavailableError):
    """No answer from the API (connection refused, DNS, timeout)."""


class QueryRunFailed(ApiError):
    """A query run ended without a result: `run` is its document (`status` failed or
    canceled, `error_code`, `error_detail`)."""

    def __init__(self, run: Json) -> None:
        detail = str(run.get("error_detail") or f"the query run {run.get('status')}")
        super().__init__(409, str(run.get("error_code") or run.get("status")), detail)
        self.run = run


def _api_error(reply: httpx.Response) -> ApiError:
    code, detail = "error", f"HTTP {reply.status_code}"
    try:
        body = reply.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str(body.get("error") or code)
        detail = str(body.get("detail") or detail)
    return ApiError(reply.status_code, code, detail)


def _optional(module: str, extra: str) -> Any:
    """An optional dependency, imported when first used; missing, an error naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"{module} is not installed: pip install 'trace-platform[{extra}]'"
        ) from None


def _json_column(pa: Any, values: list[Any]) -> Any:
    """An Arrow array of a JSON column's values; a column mixing numbers and text (integers
    beyond 64 bits come as text) as text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array([None if v is None else str(v) for v in values], pa.string())


class QueryResult:
    """A query's answer: `.columns` (`[{name, type}]`), `.rows` (lists of values),
    `.truncated`. It reads like the JSON document it replaces (`result["rows"]`,
    `result.get("truncated")`).

    A JSON answer holds JSON values (an integer wider than 64 bits as its decimal text, a
    timestamp as text); an Arrow answer (`Client.query(..., format="arrow")`) holds the
    exact Arrow table, and its `.rows` are Python values (Decimal, datetime with zone)."""

    def __init__(self, document: Json, table: Any = None) -> None:
        self._document = document
        self._table = table

    @classmethod
    def of_arrow(cls, stream: bytes, truncated: bool) -> QueryResult:
        import pyarrow as pa

        table = pa.ipc.open_stream(stream).read_all()
        columns = [{"name": f.name, "type": str(f.type)} for f in table.schema]
        rows = [list(r.values()) for r in table.to_pylist()]
        return cls({"columns": columns, "rows": rows, "truncated": truncated}, table)

    @property
    def columns(self) -> list[Json]:
        return list(self._document["columns"])

    @property
    def rows(self) -> list[list[Any]]:
        return list(self._document["rows"])

    @property
    def truncated(self) -> bool:
        return bool(self._document.get("truncated"))

    def __getitem__(self, key: str) -> Any:
        return self._document[key]

    def __contains__(self, key: object) -> bool:
        return key in self._document

    def get(self, key: str, default: Any = None) -> Any:
        return self._document.get(key, default)

    def keys(self) -> Any:
        return self._document.keys()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, QueryResult):
            return self._document == other._document
        return isinstance(other, dict) and self._document == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"QueryResult(columns={len(self.columns)}, rows={len(self.rows)})"

    def to_arrow(self) -> Any:
        """A `pyarrow.Table`: the exact one of an Arrow answer; of a JSON answer, one built
        from its values (types inferred)."""
        if self._table is not None:
            return self._table
        import pyarrow as pa

        names = [c["name"] for c in self.columns]
        by_column = list(zip(*self.rows, strict=True)) if self.rows else [()] * len(names)
        return pa.Table.from_arrays([_json_column(pa, list(v)) for v in by_column], names=names)

    def to_pandas(self) -> Any:
        """A `pandas.DataFrame` (the `pandas` extra)."""
        _optional("pandas", "pandas")
        return self.to_arrow().to_pandas()

    def to_polars(self) -> Any:
        """A `polars.DataFrame` (the `polars` extra)."""
        polars = _optional("polars", "polars")
        import pyarrow as pa

        table = self.to_arrow()
        for i, field in enumerate(table.schema):
            if pa.types.is_decimal256(field.type):  # polars holds decimals to 38 digits
                narrow = pa.decimal128(38, field.type.scale)
                try:
                    column = table.column(i).cast(narrow)
                except pa.ArrowInvalid:  # a value of 39 digits: exact as text
                    column = table.column(i).cast(pa.string())
                table = table.set_column(i, field.name, column)
        return polars.from_arrow(table)


class Client:
    def __init__(
        self,
        url: str,
        api_key: str,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError("the API URL must start with http:// or https://")
        self.url = url.rstrip("/")
        self._transport = transport
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {api_key}", "User-Agent": "trace-sdk"},
            timeout=timeout,
            transport=transport,
        )

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- transport ------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        try:
            reply = self._http.request(
                method, path, params=query, json=json, content=content, headers=headers
            )
        except httpx.HTTPError as exc:
            raise ApiUnreachable(f"{self.url} is unreachable ({type(exc).__name__})") from None
        try:
            body = reply.json()
        except ValueError:
            body = None
        if reply.status_code >= 400:
            raise _api_error(reply)
        return body

    def _pages(self, path: str, params: dict[str, Any], key: str) -> Iterator[Json]:
        cursor = None
        while True:
            page = self.request("GET", path, {**params, "cursor": cursor})
            yield from page[key]
            cursor = page.get("next_cursor")
            if not cursor:
                return

    # -- who, status ----------------------------------------------------------------------

    def me(self) -> Json:
        return dict(self.request("GET", "/v1/me"))

    def status(self) -> Json:
        return dict(self.request("GET", "/v1/status"))

    # -- tasks ----------------------------------------------------------------------------

    def tasks(self, status: str | None = None, limit: int = 50, cursor: str | None = None) -> Json:
        """One page: `{"tasks": [...], "next_cursor": ...}` (newest first)."""
        params = {"status": status, "limit": limit, "cursor": cursor}
        return dict(self.request("GET", "/v1/tasks", params))

    def iter_tasks(self, status: str | None = None, page_size: int = 200) -> Iterator[Json]:
        """Every task, newest first, a page at a time."""
        return self._pages("/v1/tasks", {"status": status, "limit": page_size}, "tasks")

    def task(self, task_id: uuid.UUID | str) -> Json:
        return dict(self.request("GET", f"/v1/tasks/{task_id}"))

    def create_tasks(
        self, payload: Json, count: int = 1, max_attempts: int | None = None
    ) -> list[str]:
        body: Json = {"payload": payload, "count": count}
        if max_attempts is not None:
            body["max_attempts"] = max_attempts
        return list(self.request("POST", "/v1/tasks", json=body)["task_ids"])

    def cancel_task(self, task_id: uuid.UUID | str) -> Json:
        return dict(self.request("POST", f"/v1/tasks/{task_id}/cancel"))

    # -- datasets and SQL -----------------------------------------------------------------

    def datasets(self) -> list[Json]:
        return list(self.request("GET", "/v1/datasets")["datasets"])

    def dataset(self, name: str) -> Json:
        return dict(self.request("GET", f"/v1/datasets/{name}"))

    def query(
        self,
        sql: str,
        dataset: str | None = None,
        limit: int | None = None,
        job: str | None = None,
        format: str = "json",
    ) -> QueryResult:
        """Run SQL over your org's relations: a `QueryResult` (`.rows`, `.columns`,
        `.truncated`, `.to_arrow()`, `.to_pandas()`, `.to_polars()`; `result["rows"]` as
        before). `format="arrow"` fetches an Arrow IPC stream (exact types: wide integers as
        decimals, timestamps with their zone, lists, structs; up to the deployment's export
        cap instead of JSON's 10,000 rows)."""
        if format not in ("json", "arrow"):
            raise ValueError("format must be json or arrow (csv, parquet: query_bytes)")
        if format == "json":
            body = self._query_body(sql, dataset, limit, job, None)
            return QueryResult(dict(self.request("POST", "/v1/query", json=body)))
        raw, truncated = self.query_bytes(sql, "arrow", dataset, limit, job)
        return QueryResult.of_arrow(raw, truncated)

    def query_bytes(
        self,
        sql: str,
        format: str,
        dataset: str | None = None,
        limit: int | None = None,
        job: str | None = None,
    ) -> tuple[bytes, bool]:
        """The query's answer as a body of bytes (`format`: arrow, csv or parquet) and
        whether rows were left out (past `limit`; known for an answer sent whole, False for
        a streamed one, which holds at most `limit` rows). AnswerIncomplete when the answer
        was cut (TRACE_QUERY_MAX_EXPORT_ROWS reached with rows left, or a failure part-way)."""
        chunks: list[bytes] = []
        truncated = self.query_into(sql, format, chunks.append, dataset, limit, job)
        return b"".join(chunks), truncated

    def query_into(
        self,
        sql: str,
        format: str,
        write: Callable[[bytes], object],
        dataset: str | None = None,
        limit: int | None = None,
        job: str | None = None,
    ) -> bool:
        """The same answer as `query_bytes`, handed to `write` chunk by chunk as it arrives
        (never held whole: `write=file.write` for any size up to the export cap); whether
        rows were left out. AnswerIncomplete when it was cut: what `write` got is no whole
        answer."""
        body = self._query_body(sql, dataset, limit, job, format)
        return self._post_into("/v1/query", body, write)

    def _post_into(self, path: str, body: Json, write: Callable[[bytes], object]) -> bool:
        """POST `body`; its answer of bytes to `write` as it streams in; X-Trace-Truncated."""
        try:
            with self._http.stream("POST", path, json=body) as reply:
                if reply.status_code >= 400:
                    reply.read()
                    raise _api_error(reply)
                for chunk in reply.iter_bytes():
                    write(chunk)
                truncated: bool = reply.headers.get("X-Trace-Truncated") == "true"
                return truncated
        except httpx.RemoteProtocolError:  # the body ended without its terminating chunk
            raise AnswerIncomplete(
                "the answer was cut before its end (more rows than the deployment's "
                "TRACE_QUERY_MAX_EXPORT_ROWS, or a failure part-way)"
            ) from None
        except httpx.HTTPError as exc:
            raise ApiUnreachable(f"{self.url} is unreachable ({type(exc).__name__})") from None

    @staticmethod
    def _query_body(
        sql: str, dataset: str | None, limit: int | None, job: str | None, fmt: str | None
    ) -> Json:
        body = {"sql": sql, "dataset": dataset, "limit": limit, "job": job, "format": fmt}
        return {k: v for k, v in body.items() if v is not None}

    # -- query runs (in the background; results through a short-lived URL) ----------------

    def start_query_run(
        self,
        sql: str,
        format: str = "json",
        dataset: str | None = None,
        job: str | None = None,
        limit: int | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Submit a query run; its id. The same `idempotency_key` with the same SQL gives
        back the same run (with other SQL: ApiError 409)."""
        body = self._query_body(sql, dataset, limit, job, format)
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        return str(self.request("POST", "/v1/query-runs", json=body)["run_id"])

    def query_run_status(self, run_id: str) -> Json:
        """A run: `status` (queued, running, succeeded, failed, canceled), rows, bytes,
        duration, error, and when it succeeded a short-lived `url` to its result."""
        return dict(self.request("GET", f"/v1/query-runs/{run_id}"))

    def query_runs(self, limit: int = 50, saved_query: str | None = None) -> list[Json]:
        """Your recent runs, newest first (status, rows, time; no SQL); with `saved_query`,
        only the runs of that saved query."""
        query: dict[str, Any] = {"limit": limit}
        if saved_query is not None:
            query["saved_query"] = saved_query
        return list(self.request("GET", "/v1/query-runs", query)["runs"])

    def cancel_query_run(self, run_id: str) -> Json:
        return dict(self.request("DELETE", f"/v1/query-runs/{run_id}"))

    def query_run(
        self,
        sql: str,
        format: str = "arrow",
        dataset: str | None = None,
        job: str | None = None,
        limit: int | None = None,
        idempotency_key: str | None = None,
        on_progress: Callable[[Json], None] | None = None,
        output: str | Path | None = None,
        poll_seconds: float = 0.5,
        timeout: float | None = None,
    ) -> QueryResult | bytes | Path:
        """Run SQL in the background and wait for its result: a `QueryResult` for `arrow`
        (exact types) or `json`; the bytes of a `csv` or `parquet` result, or the Path it
        was written to when `output` is given (streamed, never whole in memory).
        `on_progress(run)` is called with the run's document at each poll (its `status`,
        and `rows`/`bytes` once done). Failed or canceled: `QueryRunFailed` (with the run's
        `error_code`); interrupted (Ctrl+C) or past `timeout` seconds, the run is canceled."""
        run_id = self.start_query_run(sql, format, dataset, job, limit, idempotency_key)
        return self._run_result(run_id, format, on_progress, output, poll_seconds, timeout)

    def _run_result(
        self,
        run_id: str,
        format: str,
        on_progress: Callable[[Json], None] | None,
        output: str | Path | None,
        poll_seconds: float,
        timeout: float | None,
    ) -> QueryResult | bytes | Path:
        run = self._await_run(run_id, on_progress, poll_seconds, timeout)
        if output is not None and format in ("csv", "parquet"):
            return self._fetch_result(run, Path(output))
        body = self._fetch_result(run, None)
        assert isinstance(body, bytes)
        if format == "arrow":
            return QueryResult.of_arrow(body, bool(run.get("truncated")))
        if format == "json":
            return QueryResult(dict(orjson.loads(body)))
        return body

    def query_run_bytes(
        self,
        sql: str,
        format: str,
        dataset: str | None = None,
        job: str | None = None,
        limit: int | None = None,
        on_progress: Callable[[Json], None] | None = None,
    ) -> tuple[bytes, bool]:
        """A query run's result as it was written (any format) and whether rows were left
        out."""
        run_id = self.start_query_run(sql, format, dataset, job, limit)
        run = self._await_run(run_id, on_progress, 0.5, None)
        body = self._fetch_result(run, None)
        assert isinstance(body, bytes)
        return body, bool(run.get("truncated"))

    def _await_run(
        self,
        run_id: str,
        on_progress: Callable[[Json], None] | None,
        poll_seconds: float,
        timeout: float | None,
    ) -> Json:
        """Poll a run until it ends (backing off to a few times `poll_seconds`); the run's
        document when it succeeded, else QueryRunFailed. Interrupted or past `timeout`, the
        run is canceled."""
        deadline = None if timeout is None else time.monotonic() + timeout
        wait = min(poll_seconds, 0.1)
        try:
            while True:
                run = self.query_run_status(run_id)
                if on_progress is not None:
                    on_progress(run)
                if run["status"] not in ("queued", "running"):
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"query run {run_id} took longer than {timeout} s")
                time.sleep(wait)
                wait = min(wait * 2, max(poll_seconds, 0.1) * 4)
        except (KeyboardInterrupt, TimeoutError):
            with contextlib.suppress(TraceError):
                self.cancel_query_run(run_id)
            raise
        if run["status"] != "succeeded" or not run.get("url"):
            raise QueryRunFailed(run)
        return run

    def _fetch_result(self, run: Json, output: Path | None) -> bytes | Path:
        """A succeeded run's result from its URL, whole or streamed to `output` (no key is
        sent: the URL is the credential, and a pre-signed S3 URL refuses any other)."""
        try:
            with (
                httpx.Client(timeout=self._http.timeout, transport=self._transport) as plain,
                plain.stream("GET", run["url"]) as reply,
            ):
                if reply.status_code >= 400:
                    reply.read()
                    raise _api_error(reply)
                if output is None:
                    return reply.read()
                with output.open("wb") as fh:
                    for chunk in reply.iter_bytes():
                        fh.write(chunk)
                return output
        except httpx.HTTPError as exc:
            raise ApiUnreachable(f"the result URL is unreachable ({type(exc).__name__})") from None

    def relations(self, job: str | None = None) -> list[Json]:
        return list(self.request("GET", "/v1/relations", {"job": job})["relations"])

    # -- saved queries --------------------------------------------------------------------

    def saved_queries(self) -> list[Json]:
        """Your org's saved queries (name, description, job, parameters; no SQL)."""
        return list(self.request("GET", "/v1/saved-queries")["saved_queries"])

    def saved_query(self, name: str) -> Json:
        """A saved query with its SQL and its typed parameters."""
        return dict(self.request("GET", f"/v1/saved-queries/{name}"))

    def save_query(
        self, name: str, sql: str, description: str = "", job: str | None = None
    ) -> Json:
        """Save SQL under NAME (writer): parameters are `{{ name: TYPE }}` placeholders
        (`{{ name: TYPE = default }}` with a default), bound as values when it runs."""
        body = {"name": name, "sql": sql, "description": description, "job": job}
        return dict(self.request("POST", "/v1/saved-queries", json=body))

    def update_query(
        self, name: str, sql: str, description: str = "", job: str | None = None
    ) -> Json:
        body = {"sql": sql, "description": description, "job": job}
        return dict(self.request("PUT", f"/v1/saved-queries/{name}", json=body))

    def delete_query(self, name: str) -> Json:
        return dict(self.request("DELETE", f"/v1/saved-queries/{name}"))

    def run_query(
        self,
        name: str,
        params: dict[str, Any] | None = None,
        limit: int | None = None,
        format: str = "json",
    ) -> QueryResult:
        """Run the saved query NAME with `params` (a value per parameter, text or a JSON
        scalar, checked against its declared type): a `QueryResult` as `query` gives
        (`format="arrow"` for exact types)."""
        if format not in ("json", "arrow"):
            raise ValueError("format must be json or arrow (csv, parquet: run_query_bytes)")
        if format == "json":
            body = self._run_body(params, limit, None)
            return QueryResult(
                dict(self.request("POST", f"/v1/saved-queries/{name}/run", json=body))
            )
        raw, truncated = self.run_query_bytes(name, "arrow", params, limit)
        return QueryResult.of_arrow(raw, truncated)

    def run_query_bytes(
        self,
        name: str,
        format: str,
        params: dict[str, Any] | None = None,
        limit: int | None = None,
    ) -> tuple[bytes, bool]:
        """A saved query's answer as bytes (`format`: arrow, csv or parquet) and whether
        rows were left out (AnswerIncomplete as `query_bytes`)."""
        chunks: list[bytes] = []
        truncated = self.run_query_into(name, format, chunks.append, params, limit)
        return b"".join(chunks), truncated

    def run_query_into(
        self,
        name: str,
        format: str,
        write: Callable[[bytes], object],
        params: dict[str, Any] | None = None,
        limit: int | None = None,
    ) -> bool:
        """The same answer handed to `write` chunk by chunk as it arrives (`query_into`)."""
        body = self._run_body(params, limit, format)
        return self._post_into(f"/v1/saved-queries/{name}/run", body, write)

    def start_saved_query_run(
        self,
        name: str,
        params: dict[str, Any] | None = None,
        format: str = "json",
        limit: int | None = None,
        idempotency_key: str | None = None,
    ) -> str:
        """Start a query run of the saved query NAME with `params`; its id. The same
        `idempotency_key` with the same values and format gives back the same run (other
        values: ApiError 409)."""
        body = self._run_body(params, limit, format)
        if idempotency_key is not None:
            body["idempotency_key"] = idempotency_key
        reply = self.request("POST", f"/v1/saved-queries/{name}/runs", json=body)
        return str(reply["run_id"])

    def saved_query_run(
        self,
        name: str,
        params: dict[str, Any] | None = None,
        format: str = "arrow",
        limit: int | None = None,
        idempotency_key: str | None = None,
        on_progress: Callable[[Json], None] | None = None,
        output: str | Path | None = None,
        poll_seconds: float = 0.5,
        timeout: float | None = None,
    ) -> QueryResult | bytes | Path:
        """Run the saved query NAME with `params` in the background and wait for its
        result, as `query_run` does for SQL (same return values, progress and cancel)."""
        run_id = self.start_saved_query_run(name, params, format, limit, idempotency_key)
        return self._run_result(run_id, format, on_progress, output, poll_seconds, timeout)

    def saved_query_run_bytes(
        self,
        name: str,
        format: str,
        params: dict[str, Any] | None = None,
        limit: int | None = None,
        on_progress: Callable[[Json], None] | None = None,
    ) -> tuple[bytes, bool]:
        """A saved query's query run's result as it was written (any format) and whether
        rows were left out."""
        run_id = self.start_saved_query_run(name, params, format, limit)
        run = self._await_run(run_id, on_progress, 0.5, None)
        body = self._fetch_result(run, None)
        assert isinstance(body, bytes)
        return body, bool(run.get("truncated"))

    @staticmethod
    def _run_body(params: dict[str, Any] | None, limit: int | None, fmt: str | None) -> Json:
        body = {"params": params or {}, "limit": limit, "format": fmt}
        return {k: v for k, v in body.items() if v is not None}

    # -- specs, chains --------------------------------------------------------------------

    def apply(self, yaml_text: str) -> list[Json]:
        reply = self.request(
            "POST",
            "/v1/specs",
            content=yaml_text.encode(),
            headers={"Content-Type": "application/yaml"},
        )
        return list(reply["results"])

    def chains(self) -> list[Json]:
        return list(self.request("GET", "/v1/chains")["chains"])

    def chain(self, name: str) -> Json:
        return dict(self.request("GET", f"/v1/chains/{name}"))

    def pause_chain(self, name: str) -> Json:
        return dict(self.request("POST", f"/v1/chains/{name}/pause"))

    def resume_chain(self, name: str) -> Json:
        return dict(self.request("POST", f"/v1/chains/{name}/resume"))

    # -- DAGs ------------------------------------------------------------------------------

    def dags(self) -> list[Json]:
        """Every DAG of the org: `name`, `state` (running, paused, deleted), jobs and ranges."""
        return list(self.request("GET", "/v1/dags")["dags"])

    def dag(self, name: str) -> Json:
        """A DAG's status: per job, ranges committed / in flight / failed, rows, lag, error."""
        return dict(self.request("GET", f"/v1/dags/{name}"))

    def pause_dag(self, name: str) -> Json:
        return dict(self.request("POST", f"/v1/dags/{name}/pause"))

    def resume_dag(self, name: str) -> Json:
        return dict(self.request("POST", f"/v1/dags/{name}/resume"))

    def delete_dag(self, name: str) -> Json:
        """Stop the DAG and forget its spec; its output datasets stay readable."""
        return dict(self.request("DELETE", f"/v1/dags/{name}"))

    def rollback_dag(self, name: str) -> Json:
        """Readers see the previous generation again (`from_generation`, `to_generation`)."""
        return dict(self.request("POST", f"/v1/dags/{name}/rollback"))

    def purge_dag(self, name: str, generation: int) -> Json:
        """Delete a kept generation (not the current or building one)."""
        return dict(self.request("DELETE", f"/v1/dags/{name}/generations/{int(generation)}"))

    # -- alerts and deliveries ------------------------------------------------------------

    def alerts(self) -> list[Json]:
        return list(self.request("GET", "/v1/alerts")["alerts"])

    def alert(self, name: str) -> Json:
        return dict(self.request("GET", f"/v1/alerts/{name}"))

    def alert_events(self, name: str, limit: int = 100) -> list[Json]:
        return list(self.request("GET", f"/v1/alerts/{name}/events", {"limit": limit})["events"])

    def alert_deliveries(self, name: str, status: str | None = None, limit: int = 50) -> list[Json]:
        params = {"status": status, "limit": limit}
        return list(self.request("GET", f"/v1/alerts/{name}/deliveries", params)["deliveries"])

    def retry_delivery(self, delivery_id: uuid.UUID | str) -> Json:
        return dict(self.request("POST", f"/v1/deliveries/{delivery_id}/retry"))

    # -- dead letters, users --------------------------------------------------------------

    def dlq(self, limit: int = 100) -> list[Json]:
        return list(self.request("GET", "/v1/dlq", {"limit": limit})["messages"])

    def redrive(self, message_ids: list[str] | None = None) -> Json:
        return dict(self.request("POST", "/v1/dlq/redrive", json={"message_ids": message_ids}))

    def users(self) -> list[Json]:
        return list(self.request("GET", "/v1/users")["users"])

    def create_user(self, name: str, role: str) -> Json:
        return dict(self.request("POST", "/v1/users", json={"name": name, "role": role}))

    def revoke_user(self, name: str) -> Json:
        return dict(self.request("POST", f"/v1/users/{name}/revoke"))
