"""A notebook's first cell against a Trace deployment: SQL in, a DataFrame out.

    pip install 'trace-platform[pandas]'      # or [polars]
    TRACE_API_URL=https://trace.internal TRACE_API_KEY=trk_... python query_to_dataframe.py

`format="arrow"` answers an Arrow IPC stream: integers wider than 64 bits stay exact
(decimal), timestamps keep their zone, lists and structs stay nested, and the answer may
hold up to TRACE_QUERY_MAX_EXPORT_ROWS rows instead of JSON's 10,000. For a file to take
away, `query_bytes(sql, "parquet")` (or `trace dataset query --format parquet -o out.parquet`).
"""

from __future__ import annotations

import os
import sys

from trace_platform.sdk import Client


def default_sql(trace: Client) -> str:
    """Without SQL given: the blocks of the org's first chain job, by the relation's full
    name (a short name such as `blocks` is ambiguous once the org syncs two chains)."""
    names = sorted(r["name"] for r in trace.relations() if r["name"].endswith(".blocks"))
    if not names:
        sys.exit("no chain is synced yet: give SQL as the first argument")
    return f'SELECT * FROM "{names[0]}" ORDER BY block_number'


with Client(os.environ["TRACE_API_URL"], api_key=os.environ["TRACE_API_KEY"]) as trace:
    SQL = sys.argv[1] if len(sys.argv) > 1 else default_sql(trace)
    result = trace.query(SQL, format="arrow", limit=100_000)
    if result.truncated:
        print("more rows than the answer holds: narrow the query", file=sys.stderr)
    table = result.to_arrow()  # a pyarrow.Table, exact types
    print(table.schema)
    frame = result.to_pandas()  # needs the [pandas] extra
    print(frame.describe(include="all"))
    body, _ = trace.query_bytes(SQL, "parquet")
    with open("result.parquet", "wb") as out:
        out.write(body)
