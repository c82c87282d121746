"""Alerts end to end (SPEC §12, invariants 12-13): a real anvil with ERC-20 traffic, chain
sync, SQL, Python and TypeScript rules, and signed webhooks delivered to real receivers on
loopback by `trace deliver` — through reorgs, two tenants and killed processes."""

from __future__ import annotations

import json
import textwrap
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import standardwebhooks

from tests.chain_helpers import ALERT_SQL, apply, spec_yaml, wait_synced, whale_transfers
from tests.conftest import (
    Proc,
    free_port,
    proc_env,
    start_dispatcher,
    start_query_service,
    wait_until,
)
from tests.delivery_helpers import Receiver
from tests.helpers import env_of
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.bundles import build_bundle, deterministic_zip, register_bundle
from trace_platform.chain.devnet import Anvil
from trace_platform.config import Settings
from trace_platform.db.pool import create_pool
from trace_platform.delivery.signing import new_secret
from trace_platform.ports import LITE_ORG_ID

BLOCKS = 200
ORG_B = uuid.UUID("0b0b0b0b-0000-4000-8000-00000000000b")
SECRET = new_secret()
SECRET_ENV = {"TRACE_HOOK_SECRET_A": SECRET}
ERC20 = {
    "erc20_transfers": {"cryo_dataset": "erc20_transfers", "chunk_size": 20, "max_inflight": 8}
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    """200 blocks; every 10th holds a whale transfer (>= 1e24), a small one and a mint-free
    transfer to the zero-sender filter's other side."""
    anvil = Anvil(log=tmp_path_factory.mktemp("anvil") / "anvil.log").start()
    token = anvil.deploy_token()
    while anvil.head() < BLOCKS - 1:
        anvil.traffic_block(token, [10**18 * (anvil.head() + 1), 3 * 10**24 + anvil.head(), 5])
        anvil.mine(min(9, BLOCKS - 1 - anvil.head()))
    anvil.extra = {"token": token}  # type: ignore[attr-defined]
    yield anvil
    anvil.stop()


@pytest.fixture(scope="module")
def reorg_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    anvil = Anvil(log=tmp_path_factory.mktemp("anvil") / "reorg.log").start()
    anvil.extra = {"token": anvil.deploy_token()}  # type: ignore[attr-defined]
    yield anvil
    anvil.stop()


@pytest.fixture(scope="module")
def pool_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    anvil = Anvil(log=tmp_path_factory.mktemp("anvil") / "pools.log").start()
    factory = anvil.deploy_factory()
    acct = anvil.accounts()
    tx = anvil.transact(factory, "createPair(address,address)", [acct[8], acct[9]])
    (log,) = anvil.receipt(tx)["logs"]
    anvil.extra = {"factory": factory.lower(), "pool": "0x" + log["data"][26:66]}  # type: ignore[attr-defined]
    yield anvil
    anvil.stop()


@pytest.fixture(scope="module")
def a_settings(settings: Settings, node: Anvil, reorg_node: Anvil, pool_node: Anvil) -> Settings:
    port = free_port()
    STATE_URL[:] = [settings.state_database_url or ""]
    return settings.replace(
        query_port=port,
        query_url=f"http://127.0.0.1:{port}",
        chain_interval=0.1,
        rpc_pools=(
            ("local", node.url),
            ("reorgnode", reorg_node.url),
            ("poolnode", pool_node.url),
        ),
        delivery_allow_private=True,
        delivery_retry_base_seconds=0.1,
        delivery_timeout_seconds=2.0,
        delivery_interval=0.02,
    )


STATE_URL: list[str] = []


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


def start(settings: Settings, logs: Path, *args: str) -> Proc:
    name = f"{args[0]}-{uuid.uuid4().hex[:6]}.log"
    return Proc(list(args), proc_env(settings, **SECRET_ENV), logs / name).start()


@pytest.fixture(scope="module")
async def stack(
    a_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[dict[str, Any]]:
    logs = tmp_path_factory.mktemp("logs")
    procs: dict[str, Any] = {
        "dispatcher": await start_dispatcher(a_settings, logs),
        "worker": start(a_settings, logs, "worker"),
        "query": await start_query_service(a_settings, logs),
        "sink": start(a_settings, logs, "sink"),
        "deliver": start(a_settings, logs, "deliver"),
        "logs": logs,
    }
    yield procs
    for p in procs.values():
        if isinstance(p, Proc):
            p.stop()


@pytest.fixture(scope="module")
async def synced(a_settings: Settings, stack: dict[str, Any], node: Anvil) -> set[tuple[str, int]]:
    """`al` synced to 200 blocks (10 ranges); returns web3's whale transfers."""
    await apply(a_settings, spec_yaml("al", "{kind: fixed_target, to_block: 200}", ERC20))
    await wait_synced(a_settings, "al", BLOCKS)
    expected = whale_transfers(node.url, node.extra["token"], 0, BLOCKS - 1)  # type: ignore[attr-defined]
    assert len(expected) == 20
    return expected


@pytest.fixture(scope="module")
async def pools(a_settings: Settings) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    state = await create_pool(a_settings.state_database_url or "", max_size=2)
    data = await create_pool(a_settings.data_database_url or "", max_size=2)
    yield state, data
    await state.close()
    await data.close()


def alert_yaml(name: str, rule: str, path: str | None, dataset: str = "al.erc20_transfers") -> str:
    text = (
        f"kind: alert\nname: {name}\nsource: {{dataset: {dataset}}}\nstart: {{from_block: 0}}\n"
        f"rule: {rule}\nidentity: [transaction_hash, log_index]\nseverity: critical\n"
    )
    if path is not None:
        text += (
            f"channels:\n  - {{type: webhook, url: 'http://127.0.0.1:{{port}}{path}',"
            " secret_env: TRACE_HOOK_SECRET_A}\n"
        )
    return text


async def events_of(data: asyncpg.Pool, alert_id: uuid.UUID) -> set[tuple[str, int]]:
    rows = await data.fetch(
        "SELECT payload FROM data.alert_events WHERE alert_definition_id = $1", alert_id
    )
    return {
        (r["payload"]["row"]["transaction_hash"], r["payload"]["row"]["log_index"]) for r in rows
    }


async def wait_events(
    data: asyncpg.Pool, alert_id: uuid.UUID, expected: set[tuple[str, int]], timeout: float = 90
) -> None:
    async def same() -> bool:
        return await events_of(data, alert_id) == expected

    try:
        await wait_until(same, timeout, 0.2, "the alert's events equal web3's")
    except AssertionError:
        state = await asyncpg.connect(STATE_URL[0])
        tasks = await state.fetch(
            "SELECT status, attempt, last_error FROM state.tasks"
            " WHERE payload->'alert'->>'alert_id' = $1",
            str(alert_id),
        )
        await state.close()
        raise AssertionError(f"events differ; evaluations: {[dict(t) for t in tasks]}") from None


async def wait_delivered(
    data: asyncpg.Pool, alert_id: uuid.UUID, n: int, timeout: float = 60
) -> list[Any]:
    async def done() -> list[Any] | None:
        rows = await data.fetch(
            "SELECT * FROM data.alert_deliveries WHERE alert_definition_id = $1", alert_id
        )
        return rows if len(rows) == n and all(r["status"] == "delivered" for r in rows) else None

    rows: list[Any] = await wait_until(done, timeout, 0.1, f"{n} deliveries delivered")
    return rows


def received(receiver: Receiver, path: str) -> dict[str, set[str]]:
    """dedupe key -> idempotency keys seen at `path`; every request's signature verified."""
    wh = standardwebhooks.Webhook(SECRET)
    out: dict[str, set[str]] = {}
    for s in receiver.at(path):
        event = wh.verify(s.body, s.headers)
        out.setdefault(event["data"]["dedupe_key"], set()).add(s.headers["Idempotency-Key"])
    return out


async def test_a_sql_rule_alerts_each_whale_once_and_delivers_each_once_signed(
    a_settings: Settings,
    synced: set[tuple[str, int]],
    receiver: Receiver,
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
    state_conn: asyncpg.Connection,
) -> None:
    text = alert_yaml("sql-whales", f'{{sql: "{ALERT_SQL}"}}', "/sql").replace(
        "{port}", str(receiver.port)
    )
    (result,) = await apply(a_settings, text)
    assert result["evaluations_scheduled"] == 10  # backfill: every committed range, once
    alert_id = uuid.UUID(result["alert_id"])
    await wait_events(pools[1], alert_id, synced)
    await wait_delivered(pools[1], alert_id, len(synced))
    got = received(receiver, "/sql")
    assert len(got) == len(synced) and all(len(keys) == 1 for keys in got.values())
    assert len(receiver.at("/sql")) == len(synced)  # no retries were needed: once each
    (again,) = await apply(a_settings, text)
    assert again["evaluations_scheduled"] == 0
    tasks = "SELECT count(*) FROM state.tasks WHERE payload->'alert'->>'alert_id' = $1"
    assert await state_conn.fetchval(tasks, str(alert_id)) == 10


PY_RULE = """
def handler(event, context):
    rng = event["range"]
    res = context.query(rng["dataset_id"], "SELECT block_number, transaction_hash, log_index,"
                        " from_address, value_f64 FROM dataset", limit=10000)
    names = [c["name"] for c in res["columns"]]
    rows = [dict(zip(names, r)) for r in res["rows"]]
    zero = "0x" + "0" * 40
    assert all(rng["start"] <= r["block_number"] < rng["end"] for r in rows)
    return [r for r in rows if r["value_f64"] >= event["config"]["threshold"]
            and r["from_address"] != zero]
"""

TS_RULE = """
interface Ev { range: { dataset_id: string; start: number; end: number };
               config: { threshold: number } }
export async function handler(event: Ev, context: any) {
  const res = await context.query(event.range.dataset_id,
    "SELECT block_number, transaction_hash, log_index, from_address, value_f64 FROM dataset",
    10000);
  const names: string[] = res.columns.map((c: { name: string }) => c.name);
  const zero = "0x" + "0".repeat(40);
  return res.rows
    .map((r: unknown[]) => Object.fromEntries(names.map((n, i) => [n, r[i]])))
    .filter((r: any) => r.value_f64 >= event.config.threshold && r.from_address !== zero);
}
"""


async def register(settings: Settings, data: bytes, language: str, entry: str) -> str:
    pool = await create_pool(settings.state_database_url or "", max_size=1)
    try:
        bundle = await register_bundle(
            pool, object_store_from_settings(settings), data, language, entry, LITE_ORG_ID
        )
    finally:
        await pool.close()
    return str(bundle.bundle_id)


@pytest.mark.parametrize("language", ["python", "typescript"])
async def test_a_udf_rule_finds_exactly_the_same_events(
    a_settings: Settings,
    synced: set[tuple[str, int]],
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
    tmp_path: Path,
    language: str,
) -> None:
    if language == "python":
        zipped = deterministic_zip([("rule.py", textwrap.dedent(PY_RULE).encode())])
        bundle = await register(a_settings, zipped, "python", "rule.handler")
    else:
        (tmp_path / "src").mkdir()
        (tmp_path / "src" / "index.ts").write_text(TS_RULE)
        zipped = build_bundle(tmp_path, "node", "index.handler")
        bundle = await register(a_settings, zipped, "node", "index.handler")
    rule = f"{{udf: {{bundle_id: '{bundle}', config: {{threshold: 1.0e+24}}}}}}"
    (result,) = await apply(a_settings, alert_yaml(f"udf-{language}", rule, None))
    assert result["evaluations_scheduled"] == 10
    alert_id = uuid.UUID(result["alert_id"])
    await wait_events(pools[1], alert_id, synced)
    rows = await pools[1].fetch(
        "SELECT block_hash, event_time, chain_id FROM data.alert_events"
        " WHERE alert_definition_id = $1",
        alert_id,
    )
    assert all(r["block_hash"] and r["chain_id"] == 31337 for r in rows)  # from the node


async def test_a_udf_rule_missing_an_identity_column_fails_with_its_name(
    a_settings: Settings, synced: set[tuple[str, int]], state_conn: asyncpg.Connection
) -> None:
    code = "def handler(event, context):\n    return [{'block_number': event['range']['start']}]\n"
    bundle = await register(
        a_settings, deterministic_zip([("bad.py", code.encode())]), "python", "bad.handler"
    )
    rule = json.dumps({"udf": {"bundle_id": bundle}})
    (result,) = await apply(a_settings, alert_yaml("udf-bad", rule, None))

    async def failed() -> list[Any] | None:
        rows = await state_conn.fetch(
            "SELECT status, last_error FROM state.tasks WHERE payload->'alert'->>'alert_id' = $1"
            " AND status = 'failed' AND next_retry_at IS NULL",
            result["alert_id"],
        )
        return rows if len(rows) == 10 else None

    rows = await wait_until(failed, 60, 0.2, "every evaluation failed")
    assert all(
        "lacks identity column(s) ['transaction_hash', 'log_index']" in r["last_error"]
        for r in rows
    )


async def test_a_disabled_alert_evaluates_nothing_until_enabled(
    a_settings: Settings, synced: set[tuple[str, int]], pools: tuple[asyncpg.Pool, asyncpg.Pool]
) -> None:
    text = alert_yaml("toggled", f'{{sql: "{ALERT_SQL}"}}', None)
    (off,) = await apply(a_settings, text + "enabled: false\n")
    assert off["evaluations_scheduled"] == 0
    (on,) = await apply(a_settings, text)
    assert on["evaluations_scheduled"] == 10  # enabling backfills from its start block
    await wait_events(pools[1], uuid.UUID(on["alert_id"]), synced)


async def test_an_unknown_bundle_is_refused_at_apply(a_settings: Settings, synced: Any) -> None:
    from trace_platform.domain.errors import ValidationError

    rule = json.dumps({"udf": {"bundle_id": str(uuid.uuid4())}})
    with pytest.raises(ValidationError, match="no bundle"):
        await apply(a_settings, alert_yaml("udf-missing", rule, None))


async def test_two_orgs_with_the_same_rule_each_get_only_their_own_events_and_deliveries(
    a_settings: Settings,
    synced: set[tuple[str, int]],
    receiver: Receiver,
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    await apply(a_settings, spec_yaml("al", "{kind: fixed_target, to_block: 200}", ERC20), ORG_B)
    await wait_synced_org(a_settings, ORG_B)
    ids = {}
    for org, path in ((LITE_ORG_ID, "/tenant-a"), (ORG_B, "/tenant-b")):
        text = alert_yaml("tenant", f'{{sql: "{ALERT_SQL}"}}', path)
        (r,) = await apply(a_settings, text.replace("{port}", str(receiver.port)), org)
        ids[org] = uuid.UUID(r["alert_id"])
    for org, alert_id in ids.items():
        await wait_events(pools[1], alert_id, synced)
        await wait_delivered(pools[1], alert_id, len(synced))
        orgs = await pools[1].fetch(
            "SELECT DISTINCT org_id FROM data.alert_deliveries WHERE alert_definition_id = $1",
            alert_id,
        )
        assert [o["org_id"] for o in orgs] == [org]
    a, b = received(receiver, "/tenant-a"), received(receiver, "/tenant-b")
    assert len(a) == len(b) == len(synced)
    assert not set(a) & set(b)  # each org's keys are its own
    assert not {k for ks in a.values() for k in ks} & {k for ks in b.values() for k in ks}
    for path, org in (("/tenant-a", LITE_ORG_ID), ("/tenant-b", ORG_B)):
        bodies = [json.loads(s.body) for s in receiver.at(path)]
        assert {x["data"]["alert_id"] for x in bodies} == {str(ids[org])}


async def wait_synced_org(settings: Settings, org: uuid.UUID) -> None:
    from trace_platform.ops.chains import chain_status

    pool = await create_pool(settings.state_database_url or "", max_size=1)
    try:

        async def done() -> bool:
            (job,) = await chain_status(env_of(pool), org, "al")
            return all(s["tip"] >= BLOCKS and s["in_flight"] == 0 for s in job["streams"])

        await wait_until(done, 120, 0.2, "org B synced")
    finally:
        await pool.close()


async def test_killing_the_sink_and_trace_deliver_loses_no_alert(
    a_settings: Settings,
    synced: set[tuple[str, int]],
    receiver: Receiver,
    stack: dict[str, Any],
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    receiver.script["/chaos"] = ["slow"]
    text = alert_yaml("chaos", f'{{sql: "{ALERT_SQL}"}}', "/chaos")
    logs = stack["logs"]
    (r,) = await apply(a_settings, text.replace("{port}", str(receiver.port)))
    alert_id = uuid.UUID(r["alert_id"])
    await wait_until(lambda: len(receiver.at("/chaos")) >= 2, 60, 0.01, "first deliveries")
    stack["sink"].kill()
    stack["deliver"].kill()
    stack["sink"] = start(a_settings, logs, "sink")
    stack["deliver"] = start(a_settings, logs, "deliver")
    await wait_events(pools[1], alert_id, synced)
    await wait_delivered(pools[1], alert_id, len(synced))
    got = received(receiver, "/chaos")
    assert len(got) == len(synced)  # every event arrived at least once
    assert all(len(keys) == 1 for keys in got.values())  # a duplicate only with the same key


def _transfer_tx(node: Anvil, amount: int) -> dict[str, Any]:
    from trace_platform.chain.devnet import _TRANSFER_SELECTOR, _address_word, _word

    acct = node.accounts()
    data = "0x" + _TRANSFER_SELECTOR + _address_word(acct[3]) + _word(amount)
    return {"from": acct[0], "to": node.extra["token"], "data": data, "gas": hex(100_000)}  # type: ignore[attr-defined]


async def test_after_a_reorg_only_new_events_alert_and_unchanged_ones_are_not_redelivered(
    a_settings: Settings,
    stack: dict[str, Any],
    reorg_node: Anvil,
    receiver: Receiver,
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    """Whales at block 52 (kept) and 57 (reorged away); the reorg puts a new whale into 55."""
    node, token = reorg_node, reorg_node.extra["token"]  # type: ignore[attr-defined]
    node.mine(51 - node.head())
    node.traffic_block(token, [4 * 10**24])  # block 52
    node.mine(4)
    node.traffic_block(token, [5 * 10**24])  # block 57
    node.mine(6)  # head 63
    assert node.head() == 63
    mode = "{kind: follow_head, from_block: 0, tail_lag: 2, head_poll_seconds: 0.2, max_head_age_seconds: 600}"
    streams = {
        "erc20_transfers": {"cryo_dataset": "erc20_transfers", "chunk_size": 10, "max_inflight": 4}
    }
    await apply(a_settings, spec_yaml("re", mode, streams, rpc_pool="reorgnode"))
    await wait_synced(a_settings, "re", 60)
    text = alert_yaml("reorg", f'{{sql: "{ALERT_SQL}"}}', "/reorg", "re.erc20_transfers")
    (r,) = await apply(a_settings, text.replace("{port}", str(receiver.port)))
    alert_id = uuid.UUID(r["alert_id"])
    before = whale_transfers(node.url, token, 0, 59)
    assert len(before) == 2
    await wait_events(pools[1], alert_id, before)
    await wait_delivered(pools[1], alert_id, 2)

    node.rpc("anvil_reorg", [9, [[_transfer_tx(node, 6 * 10**24), 0]]])  # blocks 55..63 anew
    assert node.head() == 63
    after = whale_transfers(node.url, token, 0, 59)
    (new,) = after - before
    (kept,) = after & before
    await wait_events(pools[1], alert_id, before | {new}, timeout=60)
    await wait_delivered(pools[1], alert_id, 3)
    got = received(receiver, "/reorg")
    by_tx = {}
    for s in receiver.at("/reorg"):
        by_tx.setdefault(json.loads(s.body)["data"]["tx_hash"], []).append(s)
    assert len(by_tx[kept[0]]) == 1  # the unchanged event was re-evaluated, not re-delivered
    assert len(by_tx[new[0]]) == 1  # the new one alerted, once
    assert len(got) == 3


SWAP = "swap(uint256,uint256,uint256,uint256,address)"
BIG_SWAP_SQL = (
    "SELECT s.block_number, s.transaction_hash, s.log_index, s.amount0In, b.timestamp"
    " FROM dataset s JOIN blocks b USING (block_number) WHERE s.amount0In >= 1000"
)


def web3_swaps(node: Anvil, hi: int) -> set[tuple[str, int, int]]:
    """web3's decoding: (tx hash, log index, amount0In) of every Swap of the pool."""
    from web3 import Web3

    from trace_platform.chain.devnet import pools_artifact

    w3 = Web3(Web3.HTTPProvider(node.url))
    swap = w3.eth.contract(abi=pools_artifact()["pair"]["abi"]).events.Swap()
    pool = Web3.to_checksum_address(node.extra["pool"])  # type: ignore[attr-defined]
    out = set()
    for log in w3.eth.get_logs({"fromBlock": 0, "toBlock": hi, "address": pool}):
        e = swap.process_log(log)
        out.add(("0x" + bytes(e["transactionHash"]).hex(), e["logIndex"], e["args"]["amount0In"]))
    return out


async def test_an_alert_on_a_decoded_event_follows_a_reorg_and_delivers_the_canonical_event_once(
    a_settings: Settings,
    stack: dict[str, Any],
    pool_node: Anvil,
    receiver: Receiver,
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
) -> None:
    """Big swaps at block 52 (kept) and 57 (reorged away); the reorg puts a new big swap
    into 55. The rule joins the decoded table with block timestamps."""
    from trace_platform.chain.devnet import call_data, pools_artifact

    node, acct = pool_node, pool_node.accounts()
    pool = node.extra["pool"]  # type: ignore[attr-defined]
    node.mine(51 - node.head())
    node.transact(pool, SWAP, [4000, 0, 0, 1, acct[1]])  # block 52
    node.transact(pool, SWAP, [7, 0, 0, 1, acct[1]])  # block 53: too small to alert
    node.mine(3)
    node.transact(pool, SWAP, [5000, 0, 0, 1, acct[2]])  # block 57
    node.mine(6)  # head 63
    assert node.head() == 63
    art = pools_artifact()
    mode = "{kind: follow_head, from_block: 0, tail_lag: 2, head_poll_seconds: 0.2, max_head_age_seconds: 600}"
    factory = node.extra["factory"]  # type: ignore[attr-defined]
    spec = (
        spec_yaml(
            "dp",
            mode,
            {
                "blocks": {"cryo_dataset": "blocks", "chunk_size": 10, "max_inflight": 4},
                "logs": {"cryo_dataset": "logs", "chunk_size": 10, "max_inflight": 4},
            },
            rpc_pool="poolnode",
        )
        + "contracts:\n"
        + f"  factory: {{address: ['{factory}'], abi: {json.dumps(art['factory']['abi'])}}}\n"
        + "  pair:\n"
        + "    factory: {contract: factory, event: PairCreated, parameter: pair}\n"
        + f"    abi: {json.dumps(art['pair']['abi'])}\n"
    )
    await apply(a_settings, spec)
    await wait_synced(a_settings, "dp", 60)
    text = alert_yaml("bigswap", f'{{sql: "{BIG_SWAP_SQL}"}}', "/bigswap", "dp.pair_Swap")
    (r,) = await apply(a_settings, text.replace("{port}", str(receiver.port)))
    alert_id = uuid.UUID(r["alert_id"])
    before = {(t, i) for t, i, a in web3_swaps(node, 59) if a >= 1000}
    assert len(before) == 2
    await wait_events(pools[1], alert_id, before)
    await wait_delivered(pools[1], alert_id, 2)

    swap = {"from": acct[0], "to": pool, "data": call_data(SWAP, [6000, 0, 0, 1, acct[3]])}
    node.rpc("anvil_reorg", [9, [[{**swap, "gas": hex(200_000)}, 0]]])  # blocks 55..63 anew
    assert node.head() == 63
    canonical = web3_swaps(node, 59)
    after = {(t, i) for t, i, a in canonical if a >= 1000}
    (new,) = after - before
    (kept,) = after & before

    async def decoded_is_canonical() -> bool:
        rows = await chain_rows(
            a_settings,
            "SELECT transaction_hash, log_index, amount0In FROM pair_Swap WHERE block_number < 60",
        )
        return {(t, i, int(a)) for t, i, a in rows} == canonical

    await wait_until(decoded_is_canonical, 60, 0.2, "the decoded table equals the canonical chain")
    await wait_events(pools[1], alert_id, before | {new}, timeout=60)
    await wait_delivered(pools[1], alert_id, 3)
    by_tx: dict[str, list[Any]] = {}
    for s in receiver.at("/bigswap"):
        by_tx.setdefault(json.loads(s.body)["data"]["tx_hash"], []).append(s)
    assert len(by_tx[kept[0]]) == 1  # unchanged: re-evaluated, not re-delivered
    assert len(by_tx[new[0]]) == 1  # the canonical new event: delivered once
    assert len(by_tx) == 3


async def chain_rows(settings: Settings, sql: str) -> list[list[Any]]:
    from trace_platform.ops.datasets import query_here
    from trace_platform.ops.env import open_env

    async with open_env(settings) as env:
        try:
            answer = await query_here(env, LITE_ORG_ID, None, sql, 10_000, None, "dp")
        except Exception:
            return []
    return [list(r) for r in answer.rows]
