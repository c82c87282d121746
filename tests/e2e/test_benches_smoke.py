"""Every mode of every bench runs once at smoke size and prints its figures (bench/smoke.py:
`--smoke` is each bench's smallest run), two at a time. The benches are the project's
evidence; run this way in CI, none rots unseen. Not a timed test: at this size the figures
mean nothing, so only the run is checked — it ends with exit 0 and prints its figures next
to their targets."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from tests.conftest import REPO

BENCH = REPO / "bench"
# Every bench and its modes (None: a bench without modes). A test below checks this table
# against the benches' own argparse, so a new bench or mode cannot be left out.
MODES: dict[str, list[str | None]] = {
    "alert_bench.py": ["latency", "throughput", "fanout"],
    "chain_bench.py": ["throughput", "throttled", "mixed-pool", "lag", "query", "join"],
    "console_bench.py": [None],
    "dag_bench.py": ["backfill", "head", "status", "rederive", "cutover"],
    "decode_bench.py": [None],
    "default_path_bench.py": [None],
    "kernel_bench.py": [None],
    "query_bench.py": ["latency", "export"],
    "runner_bench.py": [None],
    "sink_bench.py": [None],
}
RUNS = [(bench, mode) for bench, modes in MODES.items() for mode in modes]
# Runs at once, each still its own process, stack and home. Run one by one, the smoke runs
# kept about one core busy (111 CPU-s in 129 s: stacks starting, block times, waits); two at
# a time took 83 s on the 2 cores (three: 75 s, with the cores saturated).
AT_ONCE = 2
# A figures line: a number and the target it is measured against.
FIGURES = re.compile(r"\d.*\btargets?\b|\btargets?\b.*\d", re.IGNORECASE)


def argparse_modes(source: str) -> list[str | None]:
    """The sub-commands a bench's argparse declares (`add_parser("name")`), in order."""
    modes: list[str | None] = [
        node.args[0].value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "add_parser"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    ]
    return modes or [None]


def test_the_table_holds_every_bench_and_every_mode_of_its_argparse() -> None:
    benches = sorted(p.name for p in BENCH.glob("*_bench.py"))
    assert benches == sorted(MODES)
    for bench in benches:
        source = (BENCH / bench).read_text()
        assert sorted(argparse_modes(source), key=str) == sorted(MODES[bench], key=str), bench
        assert "smoke.add_flag(" in source, f"{bench} takes no --smoke"


def smoke_run(bench: str, mode: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACE_")}
    return subprocess.run(
        [sys.executable, str(BENCH / bench), "--smoke", *([mode] if mode else [])],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=110,
    )


@pytest.fixture(scope="module")
def smoke_runs(
    request: pytest.FixtureRequest,
) -> Iterator[dict[tuple[str, str | None], Future[subprocess.CompletedProcess[str]]]]:
    """The selected runs, started in test order, AT_ONCE at a time; each test awaits its own."""
    selected = [
        (item.callspec.params["bench"], item.callspec.params["mode"])
        for item in request.session.items
        if getattr(item, "originalname", None)
        == "test_a_bench_mode_runs_at_smoke_size_and_prints_its_figures"
    ]
    pool = ThreadPoolExecutor(max_workers=AT_ONCE)
    try:
        yield {run: pool.submit(smoke_run, *run) for run in selected}
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # no run outlives the module


@pytest.mark.parametrize(
    ("bench", "mode"), RUNS, ids=[f"{b[: -len('.py')]}-{m or 'run'}" for b, m in RUNS]
)
def test_a_bench_mode_runs_at_smoke_size_and_prints_its_figures(
    bench: str,
    mode: str | None,
    smoke_runs: dict[tuple[str, str | None], Future[subprocess.CompletedProcess[str]]],
) -> None:
    run = smoke_runs[(bench, mode)].result()
    tail = f"stdout:\n{run.stdout[-3000:]}\nstderr:\n{run.stderr[-3000:]}"
    assert run.returncode == 0, tail
    assert [line for line in run.stdout.splitlines() if FIGURES.search(line)], tail
    assert "Traceback" not in run.stderr, tail
