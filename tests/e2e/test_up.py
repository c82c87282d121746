"""`trace up` as a user starts it: the RPC pool forms of the README, and what it refuses."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil

from tests.chain_helpers import apply, rows, spec_yaml, wait_synced
from tests.conftest import REPO, free_port, proc_env, wait_until
from trace_platform.chain.devnet import Anvil
from trace_platform.config import Settings


def marked(mark: str) -> list[psutil.Process]:
    """Live processes whose environment carries TRACE_TEST_MARK=mark: a stack's supervisor
    hands its TRACE_ variables to every child it starts."""
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if (
                proc.status() != psutil.STATUS_ZOMBIE
                and proc.environ().get("TRACE_TEST_MARK") == mark
            ):
                found.append(proc)
    return found


def up_env(settings: Settings, mark: str, **extra: str) -> dict[str, str]:
    """A stack on ports of its own, its processes marked."""
    ports = {
        "TRACE_PORT": str(free_port()),
        "TRACE_QUERY_PORT": str(free_port()),
        "TRACE_API_PORT": str(free_port()),
    }
    return proc_env(settings, **{**ports, "TRACE_TEST_MARK": mark, **extra})


def refused_up(env: dict[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "trace_platform", "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    return out, time.monotonic() - started


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


def test_up_refuses_a_taken_port_at_once_naming_it_and_its_setting(settings: Settings) -> None:
    """Each port a child of the stack listens on, taken by another program: `trace up` exits
    non-zero at once with one sentence naming the port and its setting, and starts nothing."""
    for name, env_var, flag in (
        ("api", "TRACE_API_PORT", "--api-port"),
        ("dispatcher", "TRACE_PORT", "--port"),
        ("query", "TRACE_QUERY_PORT", "--query-port"),
    ):
        mark = uuid.uuid4().hex
        with socket.socket() as holder:
            holder.bind(("127.0.0.1", 0))
            holder.listen()
            port = holder.getsockname()[1]
            env = up_env(settings, mark, **{env_var: str(port)})
            out, took = refused_up(env)
        assert out.returncode != 0 and took < 20, (name, took, out.stdout, out.stderr)
        (line,) = out.stderr.strip().splitlines()
        assert line.startswith(f"error: port {port} on 127.0.0.1 is already in use"), line
        assert f"({env_var} / {flag})" in line, line
        assert "trace is up" not in out.stdout + out.stderr
        assert marked(mark) == [], name


async def test_a_second_up_in_one_home_refuses_and_a_killed_stack_blocks_nothing(
    settings: Settings, tmp_path: Path
) -> None:
    first_mark, second_mark, third_mark = (uuid.uuid4().hex for _ in range(3))
    first = Up(up_env(settings, first_mark), tmp_path / "first.log")
    third: Up | None = None
    try:
        await first.ready()
        running = {p.pid for p in marked(first_mark)}
        children = psutil.Process(first.popen.pid).children()
        assert len(children) == 6  # dispatcher, worker, sink, query, deliver, api
        assert {first.popen.pid, *(c.pid for c in children)} <= running
        # the same home, other ports: the lock refuses, not a port
        out, took = refused_up(up_env(settings, second_mark))
        assert out.returncode != 0 and took < 20, (took, out.stdout, out.stderr)
        home = settings.home.resolve()
        assert out.stderr.strip().splitlines() == [
            f"error: a Trace stack is already running in TRACE_HOME={home}"
            f" (pid {first.popen.pid}): use it, stop it first, or start this one with"
            " another TRACE_HOME"
        ]
        assert marked(second_mark) == []
        assert {p.pid for p in marked(first_mark)} == running  # the first stack untouched
        # A stack killed outright leaves its lock file behind: it blocks nothing.
        for proc in marked(first_mark):
            with contextlib.suppress(psutil.Error):
                proc.kill()
        first.popen.wait(10)
        await wait_until(lambda: not marked(first_mark), what="the first stack gone")
        assert (home / "stack.lock").exists()
        third = Up(up_env(settings, third_mark), tmp_path / "third.log")
        await third.ready()
        third.stop()
        assert third.popen.returncode == 0
        assert marked(third_mark) == []
    finally:
        first.stop()
        if third is not None:
            third.stop()
        for proc in marked(first_mark) + marked(second_mark) + marked(third_mark):
            with contextlib.suppress(psutil.Error):
                proc.kill()
