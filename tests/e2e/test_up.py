"""`trace up` as a user starts it: the RPC pool forms of the README, and what it refuses."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

import psutil

from tests.chain_helpers import apply, rows, spec_yaml, wait_synced
from tests.conftest import REPO, free_port, proc_env, wait_until
from trace_platform.chain.devnet import Anvil
from trace_platform.config import Settings


class Up:
    """`trace up` as a child process with its combined output in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "trace_platform", "up"],
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    async def ready(self) -> None:
        def up() -> bool:
            if self.popen.poll() is not None:
                raise AssertionError(f"trace up exited:\n{self.text()[-3000:]}")
            return "trace is up" in self.text()

        await wait_until(up, timeout=90, interval=0.1, what="trace up ready")

    def stop(self) -> None:
        """Ctrl-C, as a user stops it; kill what is left if that fails."""
        if self.popen.poll() is None:
            self.popen.send_signal(2)
            try:
                self.popen.wait(60)
            except subprocess.TimeoutExpired:
                for child in psutil.Process(self.popen.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        child.kill()
                self.popen.kill()
                self.popen.wait(10)


async def test_up_with_a_single_url_pool_syncs_a_chain(settings: Settings, tmp_path: Path) -> None:
    """SPEC §11's example form, `TRACE_RPC_POOL_<NAME>_URL`, exported before `trace up`: every
    child sees the pool once, none restarts, and a chain spec on that pool syncs."""
    node = Anvil(log=tmp_path / "anvil.log").start()
    up: Up | None = None
    try:
        node.mine(40)
        env = proc_env(
            settings,
            TRACE_API_PORT=str(free_port()),
            TRACE_CHAIN_INTERVAL="0.1",
            TRACE_RPC_POOL_SOLO_URL=node.url,
        )
        up = Up(env, tmp_path / "up.log")
        await up.ready()
        spec = spec_yaml(
            "solo",
            "{kind: fixed_target, from_block: 0, to_block: 40}",
            {"blocks": {"cryo_dataset": "blocks", "chunk_size": 10}},
            rpc_pool="solo",
        )
        await apply(settings, spec)
        job = await wait_synced(settings, "solo", 40)
        assert job["error"] is None and job["state"] == "complete", job
        got = await rows(settings, "solo.blocks", "SELECT count(*), max(block_number) FROM dataset")
        assert got == [[40, 39]]
        text = up.text()
        assert "stack.child_exited" not in text and "share a label" not in text, text[-3000:]
    finally:
        if up is not None:
            up.stop()
        node.stop()


def test_both_url_forms_of_one_pool_stop_every_process_with_one_error(
    settings: Settings,
) -> None:
    """`_URL` and `_URLS` of one pool: which is meant? `trace up`, or any process on its own,
    stops at once with one line naming both variables (never their URLs)."""
    env = proc_env(
        settings,
        TRACE_API_PORT=str(free_port()),
        TRACE_RPC_POOL_MAIN_URL="http://127.0.0.1:1/key-one",
        TRACE_RPC_POOL_MAIN_URLS="http://127.0.0.1:2/key-two",
    )
    for command in (["up"], ["worker"], ["dispatcher"]):
        out = subprocess.run(
            [sys.executable, "-m", "trace_platform", *command],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        assert out.returncode == 2, (command, out.stdout, out.stderr)
        assert out.stderr.strip().splitlines() == [
            "error: RPC pool 'main' is set by both TRACE_RPC_POOL_MAIN_URL and"
            " TRACE_RPC_POOL_MAIN_URLS: keep one (TRACE_RPC_POOL_MAIN_URL takes one URL,"
            " TRACE_RPC_POOL_MAIN_URLS a comma-separated list)"
        ], (command, out.stderr)
        assert "key-" not in out.stdout + out.stderr
