"""The runner is the untrusted side: its process imports the domain, the ports, the sandbox
and the task client, never the platform's settings or another capability's code."""

import subprocess
import sys

from trace_platform.config import Settings
from trace_platform.runner.config import RunnerConfig

FORBIDDEN = (
    "trace_platform.alerts",
    "trace_platform.chain",
    "trace_platform.query",
    "trace_platform.config",
    "trace_platform.db",
    "trace_platform.dispatcher",
    "trace_platform.adapters",
    "trace_platform.ops",
)


def test_runner_entry_points_import_no_trusted_code() -> None:
    code = (
        "import sys\n"
        "import trace_platform.runner.__main__, trace_platform.runner.lambda_entry\n"
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('trace_platform'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    loaded = out.stdout.split()
    assert "trace_platform.runner.service" in loaded  # the check ran against the real entry
    bad = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert bad == []


def test_runner_config_has_the_platform_defaults() -> None:
    runner, settings = RunnerConfig(), Settings.load(env={})
    for name in (
        "runner_timeout_seconds",
        "runner_memory_mb",
        "runner_uid",
        "runner_concurrency",
        "runner_allow_weak_sandbox",
        "log_level",
        "port",
    ):
        assert getattr(runner, name) == getattr(settings, name), name
    assert RunnerConfig.from_env({}).dispatcher_url == settings.resolved_dispatcher_url


def test_runner_config_reads_its_variables_and_names_a_bad_one() -> None:
    env = {
        "TRACE_DISPATCHER_URL": "http://10.0.0.5:9000/",
        "TRACE_QUERY_URL": "http://10.0.0.5:9001",
        "TRACE_RUNNER_MEMORY_MB": "256",
        "TRACE_RUNNER_ALLOW_WEAK_SANDBOX": "1",
    }
    cfg = RunnerConfig.from_env(env)
    assert cfg.dispatcher_url == "http://10.0.0.5:9000"
    assert cfg.query_url == "http://10.0.0.5:9001"
    assert cfg.runner_memory_mb == 256 and cfg.runner_allow_weak_sandbox
    assert RunnerConfig.from_env({"TRACE_PORT": "9123"}).dispatcher_url.endswith(":9123")
    import pytest

    from trace_platform.runner.config import RunnerConfigError

    with pytest.raises(RunnerConfigError, match="TRACE_RUNNER_UID"):
        RunnerConfig.from_env({"TRACE_RUNNER_UID": "nobody"})
