"""Without bubblewrap the runner refuses to run user code unless told to accept less."""

from __future__ import annotations

import subprocess
import sys


def run_runner(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trace_platform.runner"],
        input="{}",
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_runner_refuses_a_weak_sandbox_by_default() -> None:
    out = run_runner({"PATH": "/nonexistent", "TRACE_HOME": "/nonexistent"})
    assert out.returncode == 3
    assert (
        "sandbox lacks network_namespace" in out.stderr
        and "TRACE_RUNNER_ALLOW_WEAK_SANDBOX" in out.stderr
    )


def test_weak_mode_must_be_asked_for_explicitly() -> None:
    out = run_runner(
        {
            "PATH": "/nonexistent",
            "TRACE_HOME": "/nonexistent",
            "TRACE_RUNNER_ALLOW_WEAK_SANDBOX": "1",
        }
    )
    assert out.returncode == 2 and "invalid invocation payload" in out.stderr  # got past the check
