"""`trace dataset register` streams files into the store: a file is never held whole."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import Dbs
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.config import Settings
from trace_platform.datasets import register_dataset
from trace_platform.db.pool import create_pool
from trace_platform.ports import LITE_ORG_ID


async def test_registering_a_large_file_streams_it(
    settings: Settings, dbs: Dbs, tmp_path: Path
) -> None:
    import os

    path = tmp_path / "big.parquet"
    # Incompressible values: the file is about as large as the data (~32 MB).
    pq.write_table(
        pa.table({"blob": [os.urandom(4096) for _ in range(8000)]}), path, compression="none"
    )
    size = path.stat().st_size
    assert size > 30_000_000
    pool = await create_pool(dbs.state, max_size=1)
    store = object_store_from_settings(settings)
    tracemalloc.start()
    try:
        result = await register_dataset(pool, store, "big-one", [path], LITE_ORG_ID)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        await pool.close()
    assert result.created and result.files == 1
    assert peak < size / 4, f"peak {peak} bytes for a {size}-byte file"
    stored = settings.resolved_object_store_url.removeprefix("file://")
    copies = list(Path(stored).rglob("big.parquet"))
    assert len(copies) == 1 and copies[0].stat().st_size == size
