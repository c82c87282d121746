"""Sink throughput: one JSONL batch of N alert rows in the local object store to committed
rows in data.alert_events, next to the raw floor measured in the same run (COPY of already
parsed records into a staging table + INSERT ... ON CONFLICT DO NOTHING). Also reports the
peak memory of the ingesting process, which must stay flat as N grows (streaming).

    .venv/bin/python bench/sink_bench.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import orjson

import smoke
from trace_platform.config import Settings
from trace_platform.db.embedded import resolve_databases, stop_embedded
from trace_platform.db.migrate import migrate
from trace_platform.db.pool import connect, create_pool
from trace_platform.db.sql import q
from trace_platform.domain.batch import STAGING_COLUMNS, BufferPointer, parse_row

TASK = uuid.UUID("11111111-1111-4111-8111-111111111111")


def write_batch(path: Path, rows: int, tag: str) -> None:
    definition = str(uuid.uuid4())
    with path.open("wb") as fh:
        buf = []
        for i in range(rows):
            buf.append(
                orjson.dumps(
                    {
                        "alert_definition_id": definition,
                        "dedupe_key": f"{tag}:{i}",
                        "event_time": "2024-05-01T00:00:00+00:00",
                        "chain_id": 1,
                        "block_number": 19_000_000 + i,
                        "block_hash": "0x" + "ab" * 32,
                        "tx_hash": "0x" + "cd" * 32,
                        "payload": {"value_wei": str(i * 7919)},
                    }
                )
            )
            if len(buf) == 10000:
                fh.write(b"\n".join(buf) + b"\n")
                buf = []
        if buf:
            fh.write(b"\n".join(buf) + b"\n")


async def ingest_child(home: Path, uri: str, rows: int) -> None:
    """Runs in a child process so its peak RSS is the sink's alone."""
    from trace_platform.adapters.pgqueue import PgQueue
    from trace_platform.adapters.stores import object_store_from_settings
    from trace_platform.sink.service import Sink

    settings = Settings.load({"home": home}, env={})
    urls = await resolve_databases(settings, create=True)
    data = await create_pool(urls.data, max_size=2)
    state = await create_pool(urls.state, max_size=1)
    sink = Sink(PgQueue(state), object_store_from_settings(settings), data, settings)
    pointer = BufferPointer.model_validate(
        {
            "kind": "buffer_batch",
            "org_id": str(uuid.uuid4()),
            "batch_uri": uri,
            "content_type": "application/jsonl",
            "record_count": rows,
            "producer": {"task_id": str(TASK), "attempt": 1},
        }
    )
    t0 = time.perf_counter()
    result = await sink.ingest(pointer)
    elapsed = time.perf_counter() - t0
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so it would show the parent's.
    hwm = next(
        line
        for line in Path("/proc/self/status").read_text().splitlines()
        if line.startswith("VmHWM:")
    )
    peak_mb = int(hwm.split()[1]) / 1024
    print(json.dumps({"seconds": elapsed, "inserted": result.inserted, "peak_mb": peak_mb}))


async def raw_floor(home: Path, path: Path) -> float:
    """COPY already-parsed records + INSERT ON CONFLICT: what Postgres allows."""
    settings = Settings.load({"home": home}, env={})
    urls = await resolve_databases(settings, create=True)
    records = [parse_row(line, i) for i, line in enumerate(path.read_bytes().splitlines(), 1)]
    conn = await connect(urls.data)
    try:
        t0 = time.perf_counter()
        async with conn.transaction():
            await conn.execute(q("sink", "create_staging"))
            await conn.copy_records_to_table(
                "alert_staging", records=records, columns=STAGING_COLUMNS
            )
            await conn.execute(q("sink", "upsert_from_staging"), uuid.uuid4(), TASK)
        return time.perf_counter() - t0
    finally:
        await conn.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--child", nargs=3, metavar=("HOME", "URI", "ROWS"), help=argparse.SUPPRESS)
    smoke.add_flag(ap)
    args = ap.parse_args()
    smoke.apply(args, {"rows": 100})
    if args.child:
        await ingest_child(Path(args.child[0]), args.child[1], int(args.child[2]))
        return
    home = Path(tempfile.mkdtemp(prefix="trace-sink-bench-"))
    settings = Settings.load({"home": home}, env={})
    urls = await resolve_databases(settings, create=True)
    try:
        for component, url in (("state", urls.state), ("data", urls.data)):
            conn = await connect(url)
            await migrate(conn, component)
            await conn.close()
        objects = home / "objects" / "buffers" / str(TASK) / "1"
        objects.mkdir(parents=True)
        floor_path = objects / "floor.jsonl"
        write_batch(floor_path, args.rows, "floor")
        floor_s = await raw_floor(home, floor_path)
        sink_path = objects / "batch.jsonl"
        write_batch(sink_path, args.rows, "sink")
        size_mb = sink_path.stat().st_size / 1e6
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(home),
                "file://" + str(sink_path),
                str(args.rows),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        child = json.loads(out.stdout.strip().splitlines()[-1])
        assert child["inserted"] == args.rows, child
    finally:
        stop_embedded(home / "postgres")
    sink_rate, floor_rate = args.rows / child["seconds"], args.rows / floor_s
    print(f"batch: {args.rows} rows, {size_mb:.0f} MB JSONL")
    print(f"{'path':<48}{'seconds':>9}{'rows/s':>11}")
    print(
        f"{'raw floor (COPY parsed records + ON CONFLICT)':<48}{floor_s:>9.2f}{floor_rate:>11.0f}"
    )
    print(
        f"{'trace sink (read + parse + validate + insert)':<48}"
        f"{child['seconds']:>9.2f}{sink_rate:>11.0f}"
    )
    print(
        f"sink / floor: {sink_rate / floor_rate:.2f}   peak RSS of the sink process: "
        f"{child['peak_mb']:.0f} MB (target >= 100,000 rows/s, bounded memory)"
    )


if __name__ == "__main__":
    asyncio.run(main())
