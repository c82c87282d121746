"""The block headers of firing SQL rules (SPEC §12: dedupe keys carry the block hash): the
rules of one committed range that fire on the same blocks share one read from the node, a
replaced range (a new partition) is read afresh, and a failed read is not kept. A real anvil
behind a counting proxy, through the worker's own RPC pool."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.rpc_proxy import FaultProxy
from trace_platform.alerts.evaluate import NodeHeaders
from trace_platform.chain.devnet import Anvil
from trace_platform.chain.pool import PoolUnavailable, RpcPool, rpc_pool
from trace_platform.config import Settings


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultProxy]:
    node = Anvil(log=tmp_path_factory.mktemp("anvil") / "anvil.log").start()
    node.mine(12)
    counting = FaultProxy(node.url)
    yield counting
    counting.close()
    node.stop()


def pool_of(url: str, home: Path) -> RpcPool:
    settings = Settings.load({"home": home, "rpc_pools": {"headers": url}}, env={})
    pool = rpc_pool(settings, "headers")
    assert pool is not None
    return pool


def header_reads(proxy: FaultProxy, since: float) -> list[tuple[tuple[int, int], ...]]:
    return [c.spans for c in proxy.calls_since(since) if "eth_getBlockByNumber" in c.methods]


async def test_rules_firing_on_one_range_share_one_read_of_its_headers(
    proxy: FaultProxy, tmp_path: Path
) -> None:
    pool = pool_of(proxy.url, tmp_path)
    direct, _ = await pool.call(lambda rpc: rpc.block_headers([3, 4]), None)
    assert all(direct[n] is not None for n in (3, 4))
    headers = NodeHeaders()
    since = time.time()
    # Twenty rules of one range fire together on blocks 3 and 4; then one more, later.
    answers = await asyncio.gather(*(headers.read(pool, "part-1", [3, 4]) for _ in range(20)))
    answers.append(await headers.read(pool, "part-1", [4]))
    assert answers[:20] == [direct] * 20 and answers[20] == {4: direct[4]}
    assert len(header_reads(proxy, since)) == 1  # one JSON-RPC batch for all 21 rules
    # Another partition of the same blocks (a range a reorg replaced) is read again.
    assert await headers.read(pool, "part-2", [3]) == {3: direct[3]}
    assert len(header_reads(proxy, since)) == 2


async def test_a_block_the_node_lacks_or_a_failed_read_is_asked_for_again(
    proxy: FaultProxy, tmp_path: Path
) -> None:
    headers = NodeHeaders()
    pool = pool_of(proxy.url, tmp_path)
    five = (await pool.call(lambda rpc: rpc.block_headers([5]), None))[0][5]
    since = time.time()
    assert await headers.read(pool, "part-3", [5, 10_000]) == {5: five, 10_000: None}
    reads = len(header_reads(proxy, since))
    await headers.read(pool, "part-3", [5, 10_000])  # only the missing block again
    later = header_reads(proxy, since)[reads:]
    assert later == [((10_000, 10_000),)]

    dead = pool_of(f"http://127.0.0.1:{free_port()}", tmp_path / "dead")
    with pytest.raises(PoolUnavailable):
        await headers.read(dead, "part-4", [5])
    since = time.time()  # the same pool name and range through a live endpoint: read again
    assert await headers.read(pool, "part-4", [5]) == {5: five}
    assert header_reads(proxy, since) == [((5, 5),)]
