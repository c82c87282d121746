"""The alerts part of `trace demo`: a chain followed at its head, a SQL rule and a TypeScript
rule on its token transfers, and a local webhook receiver that verifies every delivery with
the `standardwebhooks` library — then whale transfers are sent and each alert's latency from
its block to the receiver is printed."""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime

import standardwebhooks
from aiohttp import web

from trace_platform.chain.devnet import Anvil
from trace_platform.demo.chain import BIG_SWAP, SWAP, Traffic, contracts_text, dag_text
from trace_platform.domain.errors import TraceError
from trace_platform.ops.chains import chain_status
from trace_platform.ops.env import OpsEnv
from trace_platform.ops.specs import apply_specs
from trace_platform.ports import LITE_ORG_ID

SECRET_ENV = "TRACE_HOOK_SECRET_DEMO"
LIVE_WHALES = 3
TOKENS = 10**18


@dataclass
class Received:
    alert: str
    block: int
    tx: str
    latency: float
    webhook_id: str


@dataclass
class AlertDemoResult:
    status: str  # completed | failed | skipped
    detail: str = ""
    sent: int = 0
    rules: list[str] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    forged_rejected: int = 0

    def per_rule(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.received:
            out[r.alert] = out.get(r.alert, 0) + 1
        return out


class DemoReceiver:
    """A webhook endpoint on loopback that verifies each request like any receiver would."""

    def __init__(self, secret: str) -> None:
        self.webhook = standardwebhooks.Webhook(secret)
        self.received: list[Received] = []
        self.seen: set[str] = set()
        self.rejected = 0
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hooks/trace", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        arrived = time.time()
        try:
            event = self.webhook.verify(body, dict(request.headers))
        except standardwebhooks.WebhookVerificationError:
            self.rejected += 1
            return web.Response(status=400, text="bad signature")
        webhook_id = request.headers["webhook-id"]
        if webhook_id not in self.seen:  # at-least-once delivery: dedupe on webhook-id
            self.seen.add(webhook_id)
            data = event["data"]
            block_time = datetime.fromisoformat(data["event_time"]).timestamp()
            self.received.append(
                Received(
                    data["alert"],
                    data["block_number"],
                    data["tx_hash"],
                    arrived - block_time,
                    webhook_id,
                )
            )
        return web.Response(status=204)

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()


def live_specs(
    name: str, head: int, url: str, bundle_id: str | None, traffic: Traffic | None = None
) -> str:
    sync = (
        f"kind: chain_sync\nname: {name}\nchain_id: 31337\nrpc_pool: demo\n"
        f"mode: {{kind: follow_head, from_block: {head + 1}, tail_lag: 0,"
        " head_poll_seconds: 0.2, max_head_age_seconds: 3600}\n"
        "streams:\n  erc20_transfers: {cryo_dataset: erc20_transfers, chunk_size: 1,"
        " max_inflight: 8}\n"
    )
    if traffic is not None:  # decoded swaps too: the pools exist already, name them
        sync += (
            "  blocks: {cryo_dataset: blocks, chunk_size: 1, max_inflight: 8}\n"
            "  logs: {cryo_dataset: logs, chunk_size: 1, max_inflight: 8}\n"
            + contracts_text(traffic.factory, traffic.pools)
        )
    channel = f"channels:\n  - {{type: webhook, url: '{url}', secret_env: {SECRET_ENV}}}\n"
    common = (
        f"source: {{dataset: {name}.erc20_transfers}}\nstart: latest\n"
        "identity: [transaction_hash, log_index]\nseverity: critical\n" + channel
    )
    sql = (
        "SELECT block_number, transaction_hash, log_index, to_address, value_f64 / 1e18 AS tokens"
        " FROM dataset WHERE value_f64 >= 1e24"
        " AND from_address <> '0x0000000000000000000000000000000000000000'"
    )
    docs = [sync, f'kind: alert\nname: {name}-whales-sql\nrule: {{sql: "{sql}"}}\n' + common]
    if traffic is not None:
        swap_sql = (
            "SELECT s.block_number, s.transaction_hash, s.log_index, s.address AS pool,"
            " s.amount0In / 1e18 AS tokens_in, b.timestamp FROM dataset s"
            f" JOIN blocks b USING (block_number) WHERE s.amount0In >= {BIG_SWAP}"
        )
        docs.append(
            f'kind: alert\nname: {name}-big-swaps\nrule: {{sql: "{swap_sql}"}}\n'
            + common.replace(f"{name}.erc20_transfers", f"{name}.pair_Swap")
        )
        # A DAG follows the head too: swaps enriched with block times, and an alert on them.
        docs.append(dag_text(f"{name}-dex", name))
        enriched_sql = (
            "SELECT block_number, transaction_hash, log_index, pool, tokens_in, block_time"
            f" FROM dataset WHERE tokens_in >= {BIG_SWAP // 10**18}"
        )
        docs.append(
            f'kind: alert\nname: {name}-dex-swaps\nrule: {{sql: "{enriched_sql}"}}\n'
            + common.replace(f"{name}.erc20_transfers", f"{name}-dex.swaps")
        )
    if bundle_id is not None:
        docs.append(
            f"kind: alert\nname: {name}-whales-ts\nrule: {{udf: {{bundle_id: '{bundle_id}',"
            " config: {min_tokens: 1000000}}}\n" + common
        )
    return "---\n".join(docs)


async def _ts_rule(env: OpsEnv) -> str | None:
    from trace_platform.bundles import build_bundle
    from trace_platform.demo import EXAMPLES
    from trace_platform.ops.bundles import upload_bundle

    settings = env.settings
    try:
        data = build_bundle(
            EXAMPLES / "alert-rule-typescript", "node", "index.handler", settings.esbuild
        )
    except TraceError:
        return None
    reg = await upload_bundle(env, LITE_ORG_ID, data, "node", "index.handler")
    return str(reg.bundle_id)


async def live_alerts(
    env: OpsEnv,
    node: Anvil,
    traffic: Traffic,
    secret: str,
    timeout: float,
) -> AlertDemoResult:
    """Follow the node's head, alert on whale transfers with two rules, deliver, measure.
    `secret` is the one the stack's `trace deliver` signs with (SECRET_ENV)."""
    receiver = DemoReceiver(secret)
    await receiver.start()
    result = AlertDemoResult("failed")
    try:
        name = f"live-{secrets.token_hex(2)}"
        bundle = await _ts_rule(env)
        url = f"http://127.0.0.1:{receiver.port}/hooks/trace"
        text = live_specs(name, node.head(), url, bundle, traffic)
        applied = await apply_specs(env, LITE_ORG_ID, text)
        result.rules = [r["name"] for r in applied if r["kind"] == "alert"]
        print(
            f"following the node's head as {name}; alert rules {', '.join(result.rules)}"
            f" deliver to a local receiver that verifies signatures ({url})",
            flush=True,
        )
        await _wait_following(env, name, node.head() + 1, timeout)
        acct = node.accounts()
        for i in range(LIVE_WHALES):
            node.transfer_token(traffic.token, acct[2 + i], (2 + i) * 10**6 * TOKENS)
            node.transfer_token(traffic.token, acct[5], 17 * TOKENS)  # a small one
            pool = traffic.pools[i % len(traffic.pools)]
            node.transact(pool, SWAP, [BIG_SWAP * (i + 1), 0, 0, 1, acct[6]])  # a big swap
            result.sent += 1
            await asyncio.sleep(1.0)  # a whale every second or so, like a live chain
        expected = result.sent * len(result.rules)
        deadline = time.monotonic() + timeout
        while len(receiver.received) < expected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        result.received = sorted(receiver.received, key=lambda r: (r.block, r.alert))
        result.forged_rejected = receiver.rejected
        ok = len(result.received) == expected and not receiver.rejected
        result.status = "completed" if ok else "failed"
        if bundle is None:
            result.detail = "TypeScript rule skipped: esbuild not found (`trace tools install`)"
        if not ok:
            result.detail = f"{len(result.received)}/{expected} alerts received"
        return result
    finally:
        await receiver.stop()


async def _wait_following(env: OpsEnv, name: str, tip: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (job,) = await chain_status(env, LITE_ORG_ID, name)
        if all(s["tip"] >= tip for s in job["streams"]):
            return
        await asyncio.sleep(0.1)


def format_alerts(r: AlertDemoResult) -> list[str]:
    if r.status == "skipped":
        return [f"  alerts               skipped ({r.detail})"]
    counts = ", ".join(f"{k} {v}" for k, v in sorted(r.per_rule().items()))
    lines = [
        f"  alerts               {r.status}: {r.sent} live whale transfers -> {counts or 'none'}"
        " (each once, signature verified)" + (f"  ({r.detail})" if r.detail else "")
    ]
    for x in r.received:
        lines.append(
            f"    block {x.block:>4}  {x.alert:<22} {x.tx[:18]}...  {x.latency:5.2f}s to webhook"
        )
    if r.received:
        lat = sorted(x.latency for x in r.received)
        lines.append(f"    latency p50 {lat[len(lat) // 2]:.2f}s, max {lat[-1]:.2f}s")
    return lines
