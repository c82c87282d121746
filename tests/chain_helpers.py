"""Chain-sync test helpers: apply specs, wait on `trace chain status`, read datasets back
through the real query path, and cross-check against the node with web3."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from tests.conftest import wait_until
from trace_platform.config import Settings
from trace_platform.ops.chains import chain_status
from trace_platform.ops.datasets import query_here
from trace_platform.ops.env import open_env
from trace_platform.ops.specs import apply_specs
from trace_platform.ports import LITE_ORG_ID


def spec_yaml(
    name: str,
    mode: str,
    streams: dict[str, dict[str, Any]],
    rpc_pool: str = "local",
    chain_id: int = 31337,
    compaction: dict[str, Any] | None = None,
) -> str:
    import json

    lines = [
        "kind: chain_sync",
        f"name: {name}",
        f"chain_id: {chain_id}",
        f"rpc_pool: {rpc_pool}",
        f"mode: {mode}",
        "streams:",
    ]
    lines += [f"  {k}: {json.dumps(v)}" for k, v in streams.items()]
    if compaction is not None:
        lines.append(f"compaction: {json.dumps(compaction)}")
    return "\n".join(lines) + "\n"


async def apply(
    settings: Settings, text: str, org_id: uuid.UUID = LITE_ORG_ID
) -> list[dict[str, Any]]:
    async with open_env(settings) as env:
        return await apply_specs(env, org_id, text)


async def status(settings: Settings, name: str) -> dict[str, Any]:
    async with open_env(settings) as env:
        (job,) = await chain_status(env, LITE_ORG_ID, name)
        return job


def streams_of(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["stream"]: s for s in job["streams"]}


async def wait_synced(
    settings: Settings, name: str, tip: int, timeout: float = 120.0
) -> dict[str, Any]:
    """Until every stream's committed tip reaches `tip` (and nothing is in flight)."""

    async def done() -> dict[str, Any] | None:
        job = await status(settings, name)
        ok = all(s["tip"] >= tip and s["in_flight"] == 0 for s in job["streams"])
        return job if ok else None

    job: dict[str, Any] = await wait_until(done, timeout, 0.2, f"{name} synced to {tip}")
    return job


async def rows(
    settings: Settings, dataset: str, sql: str, block_range: tuple[int, int] | None = None
) -> list[list[Any]]:
    async with open_env(settings) as env:
        result = await query_here(env, LITE_ORG_ID, dataset, sql, 10_000, block_range)
    return [list(r) for r in result.rows]


def node_blocks(url: str, start: int, end: int) -> dict[int, dict[str, Any]]:
    """web3's view of blocks [start, end): hash, transaction count."""
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(url))
    out = {}
    for n in range(start, end):
        b = w3.eth.get_block(n)
        out[n] = {"hash": "0x" + bytes(b["hash"]).hex(), "txs": len(b["transactions"])}
    return out


def node_log_counts(url: str, start: int, end: int) -> dict[int, int]:
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(url))
    counts: dict[int, int] = {}
    for log in w3.eth.get_logs({"fromBlock": start, "toBlock": end - 1}):
        counts[log["blockNumber"]] = counts.get(log["blockNumber"], 0) + 1
    return counts


async def committed_files(
    conn: asyncpg.Connection, name: str
) -> list[tuple[str, uuid.UUID | None]]:
    """(uri, producer task) of every file of every live partition of a job's datasets."""
    rows = await conn.fetch(
        "SELECT f->>'uri' AS uri, p.producer_task_id FROM state.dataset_partitions p"
        " JOIN state.datasets d USING (dataset_uuid), jsonb_array_elements(p.files) f"
        " WHERE d.name LIKE $1 AND p.removed_seq IS NULL",
        name + ".%",
    )
    return [(r["uri"], r["producer_task_id"]) for r in rows]


ALERT_SQL = (
    "SELECT block_number, transaction_hash, log_index, value_f64 FROM dataset"
    " WHERE value_f64 >= 1e24 AND from_address <> '0x0000000000000000000000000000000000000000'"
)


def whale_transfers(url: str, token: str, lo: int, hi: int) -> set[tuple[str, int]]:
    """web3's view: (tx hash, log index) of every holder-to-holder transfer >= 1e24 in blocks
    lo..hi (inclusive)."""
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(url))
    topic = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
    out = set()
    for log in w3.eth.get_logs(
        {
            "fromBlock": lo,
            "toBlock": hi,
            "address": Web3.to_checksum_address(token),
            "topics": [topic],
        }
    ):
        sender = int(bytes(log["topics"][1]).hex(), 16)
        if sender != 0 and int(bytes(log["data"]).hex(), 16) >= 10**24:
            out.add(("0x" + bytes(log["transactionHash"]).hex(), log["logIndex"]))
    return out
