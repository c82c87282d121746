"""A long query from a notebook: run it in the background, watch it, take the result away.

    TRACE_API_URL=https://trace.internal TRACE_API_KEY=trk_... python query_run.py "SQL"

`Client.query_run` submits the SQL to `POST /v1/query-runs`; the query service runs it with
its own time limit (TRACE_QUERY_RUN_TIMEOUT, 300 s by default) through the same gate and
sandbox as `/v1/query`, and writes the result to the object store for a week
(TRACE_QUERY_RESULT_TTL). The client polls the run (the callback sees each status) and
downloads the result through a short-lived signed URL. The API may restart meanwhile: the
run goes on. Ctrl+C cancels it.
"""

from __future__ import annotations

import os
import sys
import time

from trace_platform.sdk import Client, QueryResult, QueryRunFailed


def default_sql(trace: Client) -> str:
    """Without SQL given: the blocks of the org's first chain job, by the relation's full
    name (a short name such as `blocks` is ambiguous once the org syncs two chains)."""
    names = sorted(r["name"] for r in trace.relations() if r["name"].endswith(".blocks"))
    if not names:
        sys.exit("no chain is synced yet: give SQL as the first argument")
    return f'SELECT * FROM "{names[0]}" ORDER BY block_number'


started = time.monotonic()


def progress(run: dict[str, object]) -> None:
    print(f"\r{run['status']:<10} {time.monotonic() - started:6.1f} s", end="", file=sys.stderr)


with Client(os.environ["TRACE_API_URL"], api_key=os.environ["TRACE_API_KEY"]) as trace:
    SQL = sys.argv[1] if len(sys.argv) > 1 else default_sql(trace)
    try:
        # Arrow: a QueryResult with exact types (to_arrow, to_pandas, to_polars)
        result = trace.query_run(SQL, format="arrow", on_progress=progress)
    except QueryRunFailed as failed:
        sys.exit(f"\nthe run {failed.run['status']}: {failed.code}: {failed.detail}")
    assert isinstance(result, QueryResult)
    print(f"\n{len(result.rows)} rows", file=sys.stderr)
    print(result.to_arrow().schema)
    # Parquet to a file, streamed (never whole in memory)
    path = trace.query_run(SQL, format="parquet", output="result.parquet", on_progress=progress)
    print(f"\nwrote {path}", file=sys.stderr)
    # your recent runs: status, rows, time (no SQL is kept)
    for run in trace.query_runs(limit=5):
        print(run["created_at"], run["status"], run["format"], run["rows"], run["duration_ms"])
