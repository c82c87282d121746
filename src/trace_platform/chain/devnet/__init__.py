"""A local development chain: a real `anvil` node and ERC-20 traffic with known amounts.

Used by `trace demo`, the chain benchmarks and the tests. `anvil` comes from the npm package
`@foundry-rs/anvil` (`npm ci --prefix tools`, which `make install` runs); the binary is run
directly (the npm wrapper leaves it orphaned when killed). The token (`Token.sol`) ships
compiled in `token.json` (rebuild with `build-token.sh`, solc-js from tools/), so nothing here
needs a compiler or web3 at run time: transactions go through the node's unlocked accounts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from trace_platform.domain.errors import ConfigError

TRANSFER_TOPIC = "0xddf252ad1be2c89b69c2b068fc378daa952ba7f163c4a11628f55a4df523b3ef"
_TRANSFER_SELECTOR = "a9059cbb"
KEPT_STATES = 1024  # deeper than any reorg the tests and the demo make


def find_anvil(configured: str | None = None) -> str:
    """The anvil binary: `configured`, then the tools directories (`trace tools install`,
    ./tools, a source checkout's tools/), then PATH."""
    from trace_platform.toolchain import ANVIL, find_tool

    for c in (configured, find_tool(ANVIL), shutil.which("anvil")):
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    raise ConfigError(
        "anvil not found: run `trace tools install` (a source checkout: `make install`)"
    )


def token_artifact() -> dict[str, Any]:
    """ABI and bytecode of Token.sol."""
    text = resources.files("trace_platform.chain.devnet").joinpath("token.json").read_text()
    artifact: dict[str, Any] = json.loads(text)
    return artifact


def pools_artifact() -> dict[str, Any]:
    """ABIs of Pools.sol's Factory and Pair, and the Factory's bytecode."""
    text = resources.files("trace_platform.chain.devnet").joinpath("pools.json").read_text()
    artifact: dict[str, Any] = json.loads(text)
    return artifact


def call_data(signature: str, args: list[Any]) -> str:
    """ABI-encoded calldata of `name(type,...)` with `args`."""
    from eth_abi.abi import encode
    from eth_utils.crypto import keccak

    from trace_platform.chain.abi import split_top

    inner = signature[signature.index("(") + 1 : signature.rindex(")")]
    types = split_top(inner) if inner else []
    selector = keccak(text=signature)[:4]
    return "0x" + (selector + encode(types, args)).hex()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _word(value: int) -> str:
    return f"{value:064x}"


def _address_word(address: str) -> str:
    return address.lower().removeprefix("0x").rjust(64, "0")


@dataclass
class Anvil:
    """One anvil process on a loopback port; `state` persists the chain across restarts."""

    port: int = field(default_factory=free_port)
    block_time: float | None = None
    state: Path | None = None
    binary: str | None = None
    log: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    _cache: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Anvil:
        args = [find_anvil(self.binary), "--host", "127.0.0.1", "--port", str(self.port)]
        args += ["--silent", "--chain-id", "31337", "--accounts", "10"]
        # Keep recent states in memory only: by default anvil persists older states under
        # ~/.foundry/anvil/tmp, which a long-running devnet grows to tens of gigabytes.
        self._cache = Path(tempfile.mkdtemp(prefix="trace-anvil-"))
        args += ["--prune-history", str(KEPT_STATES), "--cache-path", str(self._cache)]
        if self.block_time is not None:
            args += ["--block-time", f"{self.block_time:g}"]
        if self.state is not None:
            args += ["--state", str(self.state)]
        out = self.log.open("ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"anvil exited with {self.proc.returncode}")
            try:
                self.rpc("eth_chainId")
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (anvil writes its --state file on the way out), then wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self._cache is not None:
            shutil.rmtree(self._cache, ignore_errors=True)
            self._cache = None

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        import urllib.request

        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []})
        req = urllib.request.Request(  # noqa: S310 - http://127.0.0.1 only
            self.url, data=body.encode(), headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:  # noqa: S310 - loopback only
            answer = json.loads(resp.read())
        if answer.get("error"):
            raise RuntimeError(f"{method}: {answer['error'].get('message')}")
        return answer.get("result")

    # -- chain helpers ----------------------------------------------------------------------

    def accounts(self) -> list[str]:
        return list(self.rpc("eth_accounts"))

    def head(self) -> int:
        return int(self.rpc("eth_blockNumber"), 16)

    def mine(self, blocks: int) -> None:
        self.rpc("anvil_mine", [hex(blocks)])

    def set_automine(self, on: bool) -> None:
        self.rpc("evm_setAutomine", [on])

    def send(self, tx: dict[str, Any]) -> str:
        return str(self.rpc("eth_sendTransaction", [tx]))

    def receipt(self, tx_hash: str) -> dict[str, Any]:
        for _ in range(200):
            r = self.rpc("eth_getTransactionReceipt", [tx_hash])
            if r:
                return dict(r)
            time.sleep(0.02)
        raise RuntimeError("transaction was not mined")

    def deploy_token(self, supply: int = 10**30) -> str:
        """Deploy Token.sol from account 0 holding `supply`; returns its address."""
        code = token_artifact()["bytecode"] + _word(supply)
        tx = self.send({"from": self.accounts()[0], "data": code, "gas": hex(3_000_000)})
        return str(self.receipt(tx)["contractAddress"])

    def deploy_factory(self) -> str:
        """Deploy Pools.sol's Factory from account 0; returns its address."""
        code = pools_artifact()["factory"]["bytecode"]
        tx = self.send({"from": self.accounts()[0], "data": code, "gas": hex(5_000_000)})
        return str(self.receipt(tx)["contractAddress"])

    def transact(self, to: str, signature: str, args: list[Any], sender: str | None = None) -> str:
        """Send a contract call; returns the transaction hash (mined when automine is on)."""
        tx = {"from": sender or self.accounts()[0], "to": to, "data": call_data(signature, args)}
        return self.send({**tx, "gas": hex(3_000_000)})

    def transfer_token(self, token: str, to: str, amount: int, sender: str | None = None) -> str:
        data = "0x" + _TRANSFER_SELECTOR + _address_word(to) + _word(amount)
        sender = sender or self.accounts()[0]
        return self.send({"from": sender, "to": token, "data": data, "gas": hex(100_000)})

    def transfer_eth(self, to: str, wei: int, sender: str | None = None) -> str:
        return self.send({"from": sender or self.accounts()[0], "to": to, "value": hex(wei)})

    def traffic_block(self, token: str, amounts: list[int]) -> list[str]:
        """One block holding a token transfer per amount (and an ETH transfer), mined at once."""
        acct = self.accounts()
        self.set_automine(False)
        try:
            hashes = [self.transfer_eth(acct[1], 10**15)]
            for i, amount in enumerate(amounts):
                hashes.append(self.transfer_token(token, acct[2 + i % 7], amount))
            self.mine(1)
        finally:
            self.set_automine(True)
        return hashes
