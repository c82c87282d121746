"""Trace as a newcomer installs it: a wheel in a fresh venv outside the repository, the
documented `trace tools install`, then `trace demo` in an empty directory — every part of
the demo (UDFs in both languages, the chain sync) must work from the package alone."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
from pathlib import Path

from tests.conftest import REPO


def _run(args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, **kw)  # type: ignore[call-overload, no-any-return]


def test_the_wheel_carries_everything_the_demo_needs(tmp_path: Path) -> None:
    built = _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-w",
            str(tmp_path / "dist"),
            str(REPO),
        ],
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    assert "deprecat" not in (built.stdout + built.stderr).lower()  # SPDX license expression
    (wheel,) = (tmp_path / "dist").glob("trace_platform-*.whl")

    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", str(venv)], timeout=120).returncode == 0
    bin_dir = venv / "bin"
    installed = _run(
        [str(bin_dir / "pip"), "install", "--no-deps", "--no-index", str(wheel)], timeout=300
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    # Dependencies come from this test run's environment (already installed), appended after
    # the fresh venv's own site-packages so the package itself is the wheel's copy.
    inner = next((venv / "lib").glob("python3*/site-packages"))
    (inner / "zz_trace_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")

    home = tmp_path / "user-home"
    empty = tmp_path / "empty"
    home.mkdir()
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACE_")}
    env.update(HOME=str(home), PATH=f"{bin_dir}:{env.get('PATH', '')}")
    where = _run(
        [str(bin_dir / "python"), "-c", "import trace_platform; print(trace_platform.__file__)"],
        env=env,
        cwd=empty,
    )
    assert str(venv) in where.stdout, where.stdout + where.stderr  # not the source checkout
    console = _run(
        [
            str(bin_dir / "python"),
            "-c",
            "from trace_platform.api.app import create_app; from trace_platform.config import"
            " Settings; from trace_platform.api.console import _env; _env.get_template("
            "'overview.html'); from importlib import resources; print(len(resources.files("
            "'trace_platform.api').joinpath('static', 'console.js').read_bytes()))",
        ],
        env=env,
        cwd=empty,
    )
    assert console.returncode == 0 and int(console.stdout) > 1000, console.stderr[-2000:]

    missing = _run([str(bin_dir / "trace"), "tools", "status"], env=env, cwd=empty, timeout=60)
    assert "missing: run `trace tools install`" in missing.stdout
    tools = _run([str(bin_dir / "trace"), "tools", "install"], env=env, cwd=empty, timeout=600)
    assert tools.returncode == 0, tools.stdout + tools.stderr
    demo = _run(
        [str(bin_dir / "trace"), "demo", "--tasks", "10", "--rows-per-task", "5"],
        env=env,
        cwd=empty,
        timeout=600,
    )
    text = demo.stdout + demo.stderr
    try:
        assert demo.returncode == 0, text[-4000:]
        assert "UDF python           completed: 1000/1000 alerts inserted" in text
        assert "UDF typescript       completed: 1000/1000 alerts inserted" in text
        assert "chain sync           completed" in text
        assert "alerts               completed: 3 live whale transfers" in text  # + the TS rule
        # 4 rules: whales (SQL, TS), decoded big swaps, and the DAG's enriched big swaps
        assert text.count("s to webhook") == 12
        assert re.search(r"dag demo-\w+-dex +swaps -> pool_volume built", text), text
        assert re.search(
            r"dag generations +.* cut over, rolled back to 1 \(0 tasks created\)", text
        )
        assert "skipped" not in text
    finally:
        _run([str(bin_dir / "trace"), "db", "stop"], env=env, cwd=empty, timeout=60)
