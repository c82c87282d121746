"""The head path (SPEC §11-§12) moves on notifications, not polls: a block of a followed
chain goes through planning, extraction, commit, its rule's evaluation, the sink and a
webhook delivery with the outbox and delivery polls set to 30 s, and every range's rule runs
on the same query executor, rebound in place. Idle, following costs little: at an unchanged
head the node is asked for its head at each poll, but for the committed ranges' hashes (the
reorg check) only about once a second."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import standardwebhooks

from tests.chain_helpers import apply, spec_yaml
from tests.conftest import (
    Proc,
    free_port,
    proc_env,
    start_dispatcher,
    start_query_service,
    wait_until,
)
from tests.delivery_helpers import Receiver
from tests.rpc_proxy import FaultProxy
from trace_platform.chain.devnet import Anvil
from trace_platform.config import Settings
from trace_platform.delivery.signing import new_secret

SECRET = new_secret()
SECRET_ENV = {"TRACE_HOOK_SECRET_HEAD": SECRET}
POLL = 30.0  # outbox and delivery polls: nothing in this test may wait for one


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    anvil = Anvil(log=tmp_path_factory.mktemp("anvil") / "anvil.log").start()  # automine
    anvil.extra = {"token": anvil.deploy_token()}  # type: ignore[attr-defined]
    yield anvil
    anvil.stop()


@pytest.fixture(scope="module")
def proxy(node: Anvil) -> Iterator[FaultProxy]:
    """The pool's endpoint: the node, its requests counted."""
    p = FaultProxy(node.url)
    yield p
    p.close()


@pytest.fixture(scope="module")
def h_settings(settings: Settings, proxy: FaultProxy) -> Settings:
    port = free_port()
    return settings.replace(
        query_port=port,
        query_url=f"http://127.0.0.1:{port}",
        rpc_pools=(("local", proxy.url),),
        outbox_interval=POLL,
        delivery_interval=POLL,
        delivery_allow_private=True,
    )


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


@pytest.fixture(scope="module")
async def stack(
    h_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Proc]]:
    logs = tmp_path_factory.mktemp("logs")

    def start(*args: str) -> Proc:
        name = f"{args[0]}-{uuid.uuid4().hex[:6]}.log"
        return Proc(list(args), proc_env(h_settings, **SECRET_ENV), logs / name).start()

    procs = {
        "dispatcher": await start_dispatcher(h_settings, logs),
        "worker": start("worker"),
        "query": await start_query_service(h_settings, logs),
        "sink": start("sink"),
        "deliver": start("deliver"),
    }
    yield procs
    for p in procs.values():
        p.stop()


def whales(receiver: Receiver) -> dict[int, float]:
    """Block number -> arrival of each verified delivery at /head."""
    wh = standardwebhooks.Webhook(SECRET)
    out: dict[int, float] = {}
    for s in receiver.at("/head"):
        out.setdefault(wh.verify(s.body, s.headers)["data"]["block_number"], s.at)
    return out


async def test_a_followed_block_alerts_without_waiting_for_any_poll(
    h_settings: Settings, stack: dict[str, Proc], node: Anvil, receiver: Receiver
) -> None:
    mode = (
        f"{{kind: follow_head, from_block: {node.head() + 1}, tail_lag: 0,"
        " head_poll_seconds: 0.1, max_head_age_seconds: 3600}"
    )
    streams = {"erc20_transfers": {"cryo_dataset": "erc20_transfers", "chunk_size": 1}}
    alert = (
        "kind: alert\nname: head-whales\nsource: {dataset: head.erc20_transfers}\n"
        "start: latest\nrule: {sql: 'SELECT block_number, transaction_hash, log_index"
        " FROM dataset WHERE value_f64 >= 1e24'}\nidentity: [transaction_hash, log_index]\n"
        f"channels:\n  - {{type: webhook, url: '{receiver.url('/head')}',"
        " secret_env: TRACE_HOOK_SECRET_HEAD}\n"
    )
    await apply(h_settings, spec_yaml("head", mode, streams) + "---\n" + alert)
    token: Any = node.extra["token"]  # type: ignore[attr-defined]
    acct = node.accounts()
    took: list[float] = []
    for i in range(3):
        sent = time.time()
        tx = node.transfer_token(token, acct[2], 2 * 10**24 + i)  # mined in its own block
        block = int(node.receipt(tx)["blockNumber"], 16)
        # No later block comes to push this one along: only notifications can.
        arrived = await wait_until(
            lambda b=block: whales(receiver).get(b), 10, 0.02, f"the alert of block {block}"
        )
        took.append(arrived - sent)
    assert max(took) < 10 < POLL, took
    # Every range's rule ran on one executor, rebound in place for each new range.
    started = stack["query"].log_text().count('"query.executor_started"')
    assert started == 1, f"{started} executors started for {len(took)} ranges"


async def test_at_an_unchanged_head_ranges_are_rechecked_about_once_a_second(
    stack: dict[str, Proc], proxy: FaultProxy
) -> None:
    # After the test above: the job follows the head with ranges committed, and no block
    # comes. Its head is polled every 0.1 s; the reorg check reads hashes about once a second.
    since = time.time()
    await asyncio.sleep(3.0)  # a window to count requests in: nothing to wait for here
    calls = proxy.calls_since(since)
    heads = sum(1 for c in calls if "eth_blockNumber" in c.methods)
    hashes = sum(1 for c in calls if "eth_getBlockByNumber" in c.methods)
    assert heads >= 15, calls
    assert 1 <= hashes <= 5, f"{hashes} hash reads in 3 s at an unchanged head"
