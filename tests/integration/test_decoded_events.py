"""Decoded contract events (SPEC §15, invariant 16) against a real anvil, real cryo and a real
Postgres: a factory creating pools at different blocks (one created and used in one block),
swaps and routes with arrays, tuples, bytes and strings, each decoded table compared with
web3's own event decoding; joins with blocks and transactions; a re-decode after an ABI
change that makes no RPC request; a reorg that leaves no decoded row of the abandoned fork;
an ABI that cannot decode its event's logs counted as undecodable (status, CLI, API, log)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chain_helpers import apply, status, streams_of
from tests.conftest import (
    Proc,
    free_port,
    proc_env,
    start_dispatcher,
    start_proc,
    wait_http_ready,
    wait_until,
)
from tests.helpers import run_trace
from tests.rpc_proxy import FaultProxy
from trace_platform.chain.devnet import Anvil, pools_artifact
from trace_platform.config import Settings
from trace_platform.ops.datasets import query_here
from trace_platform.ops.env import open_env
from trace_platform.ops.users import create_user
from trace_platform.ports import LITE_ORG_ID

BLOCKS = 160
CHUNK = 20
SWAP = "swap(uint256,uint256,uint256,uint256,address)"
ROUTE = "route(uint256[],(address,uint256)[],bytes,string)"


def mine_to(anvil: Anvil, block: int) -> None:
    if anvil.head() < block:
        anvil.mine(block - anvil.head())


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    """Pool A created at block ~3 (its range [0, 20)), B at ~45, C created and swapped on in
    one transaction at ~90; swaps on each before and after the next pool is created; routes
    with arrays of tuples on B."""
    anvil = Anvil(log=tmp_path_factory.mktemp("anvil") / "anvil.log").start()
    acct = anvil.accounts()
    factory = anvil.deploy_factory()
    token0, token1 = acct[8], acct[9]

    def created(tx: str) -> str:
        receipt = anvil.receipt(tx)
        (log,) = [lg for lg in receipt["logs"] if lg["address"].lower() == factory.lower()]
        return "0x" + log["data"][2 + 24 : 2 + 64]

    pool_a = created(anvil.transact(factory, "createPair(address,address)", [token0, token1]))
    for i in range(5):
        anvil.transact(pool_a, SWAP, [10**18 * (i + 1), 0, 0, 2**200 + i, acct[1]], acct[2])
    mine_to(anvil, 44)
    pool_b = created(anvil.transact(factory, "createPair(address,address)", [token1, token0]))
    for i in range(4):
        anvil.transact(pool_a, SWAP, [0, 7 * i, 3, 0, acct[3]], acct[4])
        anvil.transact(pool_b, SWAP, [2**255 + i, 1, 0, 0, acct[5]], acct[1])
    legs = [(acct[6], 10**30), (pool_a, 1)]
    anvil.transact(pool_b, ROUTE, [[1, 2, 3], legs, b"\x00\xffmemo", "ünïcode note"], acct[2])
    anvil.transact(pool_b, ROUTE, [[], [], b"", ""], acct[3])
    mine_to(anvil, 89)
    tx = anvil.transact(
        factory, "createAndSwap(address,address,uint256)", [token0, acct[7], 10**21]
    )
    pool_c = created(tx)
    for i in range(3):
        for pool in (pool_a, pool_b, pool_c):
            anvil.transact(pool, SWAP, [i, i + 1, i + 2, i + 3, acct[i + 1]], acct[i + 4])
        anvil.mine(7)
    mine_to(anvil, BLOCKS - 1)
    anvil.extra = {  # type: ignore[attr-defined]
        "factory": factory.lower(),
        "pools": [pool_a, pool_b, pool_c],
    }
    yield anvil
    anvil.stop()


@pytest.fixture(scope="module")
def proxy(node: Anvil) -> Iterator[FaultProxy]:
    p = FaultProxy(node.url)  # no delay: it counts every request
    yield p
    p.close()


@pytest.fixture(scope="module")
def d_settings(settings: Settings, proxy: FaultProxy) -> Settings:
    return settings.replace(chain_interval=0.1, rpc_pools=(("counted", proxy.url),))


def spec_text(node: Anvil, pair_events: str | None = None) -> str:
    art = pools_artifact()
    factory = node.extra["factory"]  # type: ignore[attr-defined]
    pair = (
        f"    events: {json.dumps([pair_events])}\n"
        if pair_events
        else f"    abi: {json.dumps(art['pair']['abi'])}\n"
    )
    return (
        "kind: chain_sync\n"
        "name: pools\n"
        "chain_id: 31337\n"
        "rpc_pool: counted\n"
        f"mode: {{kind: fixed_target, from_block: 0, to_block: {BLOCKS}}}\n"
        "streams:\n"
        f"  blocks: {{cryo_dataset: blocks, chunk_size: {CHUNK}, max_inflight: 4}}\n"
        f"  transactions: {{cryo_dataset: transactions, chunk_size: {CHUNK}, max_inflight: 4}}\n"
        f"  logs: {{cryo_dataset: logs, chunk_size: {CHUNK}, max_inflight: 4}}\n"
        "contracts:\n"
        "  factory:\n"
        f"    address: [{factory}]\n"
        f"    abi: {json.dumps(art['factory']['abi'])}\n"
        "  pair:\n"
        "    factory: {contract: factory, event: PairCreated, parameter: pair}\n" + pair
    )


async def wait_decoded(settings: Settings, tables: list[str], timeout: float = 120) -> Any:
    async def done() -> Any:
        job = await status(settings, "pools")
        s = streams_of(job)
        ok = all(t in s and s[t]["tip"] >= BLOCKS and s[t]["in_flight"] == 0 for t in tables)
        ok = ok and all(v["tip"] >= BLOCKS for v in s.values() if v["status"] == "active")
        return job if ok else None

    return await wait_until(done, timeout, 0.2, f"decoded {tables}")


@pytest.fixture(scope="module")
def proc_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
async def synced(d_settings: Settings, node: Anvil, proc_logs: Path) -> AsyncIterator[Any]:
    logs = proc_logs
    procs: list[Proc] = [
        await start_dispatcher(d_settings, logs),
        start_proc(d_settings, logs, "worker"),
    ]
    try:
        await apply(d_settings, spec_text(node))
        yield await wait_decoded(d_settings, ["factory_PairCreated", "pair_Swap", "pair_Route"])
    finally:
        for p in procs:
            p.stop()


async def ask(settings: Settings, sql: str) -> list[list[Any]]:
    async with open_env(settings) as env:
        answer = await query_here(env, LITE_ORG_ID, None, sql, 10_000, None, "pools")
    return [list(r) for r in answer.rows]


def web3_events(node: Anvil, event: str) -> list[Any]:
    """web3's decoding of every `event` of every pool, in block and log order."""
    from web3 import Web3

    w3 = Web3(Web3.HTTPProvider(node.url))
    contract = w3.eth.contract(abi=pools_artifact()["pair"]["abi"])
    handler = getattr(contract.events, event)()
    pools = [Web3.to_checksum_address(p) for p in node.extra["pools"]]  # type: ignore[attr-defined]
    topic = _topic(w3, contract, event)
    out = []
    for log in w3.eth.get_logs({"fromBlock": 0, "toBlock": BLOCKS - 1, "address": pools}):
        if "0x" + bytes(log["topics"][0]).hex() == topic:
            out.append(handler.process_log(log))
    return sorted(out, key=lambda e: (e["blockNumber"], e["logIndex"]))


def _topic(w3: Any, contract: Any, event: str) -> str:
    entry = next(e for e in contract.abi if e.get("type") == "event" and e["name"] == event)
    types = ",".join(_abi_type(i) for i in entry["inputs"])
    return "0x" + w3.keccak(text=f"{event}({types})").hex()


def _abi_type(i: dict[str, Any]) -> str:
    if i["type"].startswith("tuple"):
        return "(" + ",".join(_abi_type(c) for c in i["components"]) + ")" + i["type"][5:]
    return str(i["type"])


async def test_every_swap_of_every_pool_equals_web3s_none_missing_or_doubled(
    d_settings: Settings, synced: Any, node: Anvil
) -> None:
    got = await ask(
        d_settings,
        "SELECT block_number, block_hash, log_index, transaction_hash, address, sender, amount0In_raw,"
        ' amount1In_raw, amount0Out_raw, amount1Out_raw, "to" FROM pair_Swap'
        " ORDER BY block_number, log_index",
    )
    expected = [
        [
            e["blockNumber"],
            "0x" + bytes(e["blockHash"]).hex(),
            e["logIndex"],
            "0x" + bytes(e["transactionHash"]).hex(),
            e["address"].lower(),
            e["args"]["sender"].lower(),
            str(e["args"]["amount0In"]),
            str(e["args"]["amount1In"]),
            str(e["args"]["amount0Out"]),
            str(e["args"]["amount1Out"]),
            e["args"]["to"].lower(),
        ]
        for e in web3_events(node, "Swap")
    ]
    assert len(expected) == 5 + 8 + 1 + 9
    assert got == expected
    pools = [p.lower() for p in node.extra["pools"]]  # type: ignore[attr-defined]
    per_pool = {p: sum(1 for r in got if r[4] == p) for p in pools}
    assert per_pool == {pools[0]: 5 + 4 + 3, pools[1]: 4 + 3, pools[2]: 1 + 3}
    # The pool created and swapped on in one transaction: its first swap is in its own block.
    created = await ask(
        d_settings, "SELECT pair, block_number FROM factory_PairCreated ORDER BY block_number"
    )
    assert [r[0] for r in created] == pools
    first_c = min(r[0] for r in got if r[4] == pools[2])
    assert first_c == created[2][1]
    # DECIMAL(38) where the value fits, NULL where it does not; the raw text is exact.
    wide = await ask(
        d_settings,
        "SELECT amount1Out, amount1Out_raw FROM pair_Swap WHERE amount1Out_raw = '"
        + str(2**200)
        + "'",
    )
    assert wide == [[None, str(2**200)]]
    small = await ask(
        d_settings, "SELECT sum(amount0In) FROM pair_Swap WHERE amount0In_raw::DOUBLE < 1e30"
    )
    assert int(small[0][0]) == sum(
        e["args"]["amount0In"] for e in web3_events(node, "Swap") if e["args"]["amount0In"] < 1e30
    )


async def test_arrays_tuples_bytes_and_strings_are_decoded_like_web3(
    d_settings: Settings, synced: Any, node: Anvil
) -> None:
    got = await ask(
        d_settings,
        "SELECT sender, amounts, legs, memo, note FROM pair_Route ORDER BY block_number",
    )
    expected = []
    for e in web3_events(node, "Route"):
        a = e["args"]
        # Integers wider than 64 bits inside arrays and tuples are exact decimal text.
        legs = [{"pool": leg["pool"].lower(), "amount": str(leg["amount"])} for leg in a["legs"]]
        expected.append(
            [
                a["sender"].lower(),
                [str(v) for v in a["amounts"]],
                legs,
                "0x" + bytes(a["memo"]).hex(),
                a["note"],
            ]
        )
    assert len(expected) == 2
    assert got == expected


async def test_decoded_swaps_join_blocks_and_transactions_like_the_node(
    d_settings: Settings, synced: Any, node: Anvil
) -> None:
    from web3 import Web3

    got = await ask(
        d_settings,
        "SELECT s.block_number, b.timestamp, lower(t.from_address), t.transaction_hash"
        " FROM pair_Swap s JOIN blocks b USING (block_number)"
        " JOIN transactions t ON t.transaction_hash = s.transaction_hash"
        " ORDER BY s.block_number, s.log_index",
    )
    w3 = Web3(Web3.HTTPProvider(node.url))
    expected = []
    for e in web3_events(node, "Swap"):
        tx = w3.eth.get_transaction(e["transactionHash"])
        ts = w3.eth.get_block(e["blockNumber"])["timestamp"]
        expected.append(
            [e["blockNumber"], ts, tx["from"].lower(), "0x" + bytes(e["transactionHash"]).hex()]
        )
    assert got == expected


async def test_an_abi_change_re_decodes_from_stored_logs_with_no_rpc_request(
    d_settings: Settings, synced: Any, node: Anvil, proxy: FaultProxy
) -> None:
    before = await ask(d_settings, "SELECT count(*) FROM pair_Swap")
    requests = proxy.requests
    renamed = (
        "event Swap(address indexed trader, uint256 in0, uint256 in1, uint256 out0,"
        " uint256 out1, address indexed recipient)"
    )
    await apply(d_settings, spec_text(node, renamed))

    async def redecoded() -> Any:
        try:
            rows = await ask(d_settings, "SELECT count(*), count(DISTINCT trader) FROM pair_Swap")
        except Exception:
            return None
        return rows if rows[0][0] == before[0][0] else None

    await wait_until(redecoded, 60, 0.2, "re-decoded")
    await wait_decoded(d_settings, ["pair_Swap"])
    got = await ask(
        d_settings,
        "SELECT trader, in0_raw, recipient FROM pair_Swap ORDER BY block_number, log_index",
    )
    expected = [
        [e["args"]["sender"].lower(), str(e["args"]["amount0In"]), e["args"]["to"].lower()]
        for e in web3_events(node, "Swap")
    ]
    assert got == expected
    assert proxy.requests == requests  # decoded from stored logs: the node was never asked
    job = await status(d_settings, "pools")
    assert streams_of(job)["pair_Route"]["status"] == "stopped"  # no longer in the spec


async def test_logs_an_abi_cannot_decode_are_counted_and_shown_by_the_cli_and_the_api(
    d_settings: Settings, synced: Any, node: Anvil, proc_logs: Path, tmp_path: Path
) -> None:
    job = await status(d_settings, "pools")
    decoded = [s for s in job["streams"] if s["decoded"]]
    assert decoded and all(s["undecodable_logs"] == 0 for s in decoded)  # the ABIs fit
    assert all(s["undecodable_logs"] is None for s in job["streams"] if not s["decoded"])
    # Swap's signature, so its topic0, but with no parameter indexed: every swap log carries
    # a topic this event does not have, so none decodes.
    wrong = "event Swap(address sender, uint256 a, uint256 b, uint256 c, uint256 d, address to)"
    await apply(d_settings, spec_text(node, wrong))
    swaps = len(web3_events(node, "Swap"))

    async def counted() -> Any:
        job = await status(d_settings, "pools")
        s = streams_of(job)["pair_Swap"]
        done = s["tip"] >= BLOCKS and s["in_flight"] == 0 and s["undecodable_logs"] == swaps
        return job if done else None

    job = await wait_until(counted, 60, 0.2, "every swap counted undecodable")
    assert await ask(d_settings, "SELECT count(*) FROM pair_Swap") == [[0]]
    assert streams_of(job)["factory_PairCreated"]["undecodable_logs"] == 0

    # one structured event per range that had any, with ids only
    events = [
        json.loads(line)
        for f in proc_logs.glob("dispatcher-*.log")
        for line in f.read_text().splitlines()
        if '"chain.logs_undecodable"' in line
    ]
    assert sum(e["undecodable"] for e in events) == swaps
    assert len({(e["range_start"], e["task_id"]) for e in events}) == len(events)
    assert all(e["stream"] == "pair_Swap" and "data" not in e for e in events)
    first = min(events, key=lambda e: e["range_start"])
    assert first["first_transaction_hash"].startswith("0x") and first["first_log_index"] >= 0

    # `trace chain status` and `GET /v1/chains` say so
    shown = run_trace(d_settings, "chain", "status", "pools")
    assert shown.returncode == 0, shown.stderr
    assert f"({swaps} undecodable log(s): does the ABI match?)" in shown.stdout
    api_settings = d_settings.replace(api_port=free_port())
    api = Proc(["api"], proc_env(api_settings), tmp_path / "api.log").start()
    try:
        url = f"http://127.0.0.1:{api_settings.api_port}"
        await wait_http_ready(url, api)
        async with open_env(d_settings) as env:
            key = (await create_user(env, LITE_ORG_ID, "decode-reader", "reader")).api_key
        import httpx

        async with httpx.AsyncClient(timeout=10) as client:
            r = await client.get(url + "/v1/chains", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200, r.text
        (pools,) = [j for j in r.json()["chains"] if j["name"] == "pools"]
        assert streams_of(pools)["pair_Swap"]["undecodable_logs"] == swaps
    finally:
        api.stop()
