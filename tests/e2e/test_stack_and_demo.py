"""The README's commands as a newcomer runs them: `trace demo` on the embedded default, and
`trace up` supervising its children."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import psutil

from tests.conftest import REPO, free_port, proc_env, wait_until
from tests.helpers import create_tasks
from trace_platform.config import Settings


def test_demo_runs_end_to_end_on_the_embedded_default(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACE_")}
    env.update(
        TRACE_HOME=str(home),
        TRACE_PORT=str(free_port()),
        TRACE_QUERY_PORT=str(free_port()),
        TRACE_API_PORT=str(free_port()),
    )
    # As after `make install` in a fresh clone: the venv is not activated, `trace` is not on
    # PATH, and the demo's next steps must name the script that is there.
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    try:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "trace_platform",
                "demo",
                "--tasks",
                "40",
                "--rows-per-task",
                "10",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
        assert out.returncode == 0, out.stdout + out.stderr
        text = out.stdout
        # Nothing but the demo's own lines: no warning, no JSON log line (its stack's and its
        # own log events go to the log file it names).
        assert out.stderr == "", out.stderr
        assert not [line for line in text.splitlines() if line.lstrip().startswith("{")], text
        assert "Unknown child process" not in text and "arning" not in text, text
        # Next steps name the script a fresh clone has; the Postgres left running, and how to
        # stop it.
        assert ".venv/bin/trace status " in text and "`trace status`" not in text, text
        assert re.search(r"\.venv/bin/trace db stop +the embedded Postgres is still running", text)
        assert re.search(r"paused +demo-\w+, live-\w+ \(their node stopped with the demo\)", text)
        assert "tasks completed      40/40" in text
        assert "rows published       400" in text
        assert "rows inserted        360" in text  # every tenth task repeats a seed
        assert "duplicates absorbed  40" in text
        assert "DLQ messages         0" in text
        # the sandboxed example UDFs, Python and TypeScript, query the registered 1M-transfer
        # dataset through the query service and each find every large transfer
        assert "registered 1,000,000 transfers as dataset demo-transfers" in text
        assert "UDF python           completed: 1000/1000 alerts inserted" in text
        assert "UDF typescript       completed: 1000/1000 alerts inserted" in text
        # The chain part: a real anvil node, synced into four datasets, queried back.
        assert "chain sync           completed: demo-" in text
        assert "synced rows          blocks 600," in text
        assert re.search(r"whale transfers      (\d+) found / \1 sent", text), text
        # Decoded swaps of a factory's pools, joined with block timestamps.
        swaps = re.search(r"decoded swaps        (\d+) found / \1 sent", text)
        assert swaps is not None and int(swaps.group(1)) >= 50, text
        # A DAG over the synced chain: enriched swaps -> per-range pool volume, every swap.
        dag = re.search(
            r"dag demo-\w+-dex +swaps -> pool_volume built in [\d.]+s: (\d+) swaps", text
        )
        assert dag is not None and dag.group(1) == swaps.group(1), text
        # pool_volume's SQL changed: its new generation built in the background, cut over,
        # then rolled back to the kept one with no task created.
        assert re.search(r"changed pool_volume's SQL .*: generation 2 builds", text), text
        assert re.search(r"building generation 2: pool_volume \d+/\d+", text), text
        assert re.search(
            r"cut over in one transaction: generation 1 -> 2 .* biggest_in: True", text
        )
        assert re.search(r"rolled back: generation 2 -> 1 \(\d+ jobs\), 0 tasks created", text)
        assert re.search(
            r"dag generations +pool_volume's SQL changed: generation 2 built beside 1 in"
            r" [\d.]+s, cut over, rolled back to 1 \(0 tasks created\)\n",
            text,
        ), text
        status = subprocess.run(
            [sys.executable, "-m", "trace_platform", "status"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        # The alerts part: a followed head, two rules on transfers and one on decoded swaps
        # (joined with block timestamps), each live event delivered once per rule to the
        # demo's receiver, which verified every signature.
        assert "alerts               completed: 3 live whale transfers ->" in text
        assert "big-swaps 3" in text
        assert "dex-swaps 3" in text  # an alert on the live DAG's enriched output
        assert text.count("s to webhook") == 12
        # 40 emit_alerts tasks + 2 UDF tasks + 4 streams x 12 ranges, then the live ranges
        # and evaluations (as many as the head moved); 360 + 2 x 1000 rows + 4 x 3 alerts
        completed = re.search(r"completed\s+(\d+)", status.stdout)
        assert completed is not None and int(completed.group(1)) >= 90 + 12, status.stdout
        assert "alert_events rows: 2372" in status.stdout
        # No chain job is left in an error state: the demo paused those on its node.
        chains = subprocess.run(
            [sys.executable, "-m", "trace_platform", "chain", "status", "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )
        jobs = json.loads(chains.stdout)
        assert len(jobs) == 2 and {j["state"] for j in jobs} == {"paused"}, chains.stdout
        assert not [j for j in jobs if j["error"]], chains.stdout
        assert not [s for j in jobs for s in j["streams"] if s["last_error"]], chains.stdout
    finally:
        subprocess.run(
            [sys.executable, "-m", "trace_platform", "db", "stop"],
            env=env,
            capture_output=True,
            timeout=60,
            cwd=REPO,
        )


async def test_up_supervises_children_restarts_a_crash_and_stops_cleanly(
    settings: Settings, tmp_path: Path, state_conn: asyncpg.Connection
) -> None:
    log = (tmp_path / "up.log").open("w")
    up = subprocess.Popen(
        [sys.executable, "-m", "trace_platform", "up", "--workers", "2"],
        env=proc_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    try:
        log_text = lambda: (tmp_path / "up.log").read_text()  # noqa: E731
        await wait_until(lambda: "trace is up" in log_text(), timeout=60, what="stack ready")
        await wait_until(
            lambda: "dispatcher |" in log_text() and "worker-2   |" in log_text(),
            what="prefixed logs of every child",
        )

        async def done(ids: list[uuid.UUID]) -> bool:
            n = await state_conn.fetchval(
                "SELECT count(*) FROM state.tasks WHERE task_id = ANY($1) AND status='completed'",
                ids,
            )
            return bool(n == len(ids))

        ids = await create_tasks(settings.state_database_url or "", 10)
        await wait_until(lambda: done(ids), what="tasks via trace up")

        children = psutil.Process(up.pid).children()
        workers = [c for c in children if "worker" in c.cmdline()]
        # dispatcher, 2 workers, sink, query, deliver, api
        assert len(workers) == 2 and len(children) == 7
        workers[0].kill()
        await wait_until(lambda: "stack.child_exited" in log_text(), what="crash noticed")
        await wait_until(
            lambda: (
                len([c for c in psutil.Process(up.pid).children() if "worker" in c.cmdline()]) == 2
            ),
            what="worker restarted",
        )
        more = await create_tasks(settings.state_database_url or "", 10)
        await wait_until(lambda: done(more), what="tasks after restart")

        pids = [c.pid for c in psutil.Process(up.pid).children()]
        up.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(up.wait, 60) == 0
        assert not [
            p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
        ]
    finally:
        if up.poll() is None:
            # a failed assertion must not leave the stack's children running (they sit in
            # sessions of their own and would outlive `up`)
            for child in psutil.Process(up.pid).children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    child.kill()
            up.kill()
