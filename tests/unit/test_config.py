import json
import re
from pathlib import Path

import pytest

from trace_platform.config import SETTINGS, Settings
from trace_platform.domain.errors import ConfigError


def test_defaults_work_on_one_machine() -> None:
    s = Settings.load({}, env={})
    assert s.home == Path(".trace") and s.lease_seconds == 30 and s.max_attempts == 3
    assert s.resolved_dispatcher_url == "http://127.0.0.1:8080"
    assert s.resolved_object_store_url.startswith("file:///")


def test_env_then_flags_override_defaults() -> None:
    s = Settings.load({"lease_seconds": 5}, env={"TRACE_LEASE_SECONDS": "7", "TRACE_PORT": "9000"})
    assert s.lease_seconds == 5 and s.port == 9000


@pytest.mark.parametrize(
    "env",
    [
        {"TRACE_LEASE_SECONDS": "0"},
        {"TRACE_LEASE_SECONDS": "abc"},
        {"TRACE_PORT": "70000"},
        {"TRACE_MAX_ATTEMPTS": "0"},
        {"TRACE_RETRY_BASE_SECONDS": "10", "TRACE_RETRY_MAX_SECONDS": "1"},
        {"TRACE_LOG_LEVEL": "loud"},
        {"TRACE_QUEUE_BACKEND": "kafka"},
        {"TRACE_RUNTIME_INVOKER": "docker"},
    ],
)
def test_bad_values_are_clear_errors(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.load({}, env=env)
    assert "TRACE_" in err.value.detail


def test_every_setting_has_env_and_flag_and_help() -> None:
    for s in SETTINGS:
        assert s.env.startswith("TRACE_") and s.flag.startswith("--") and s.help
        assert hasattr(Settings(), s.name)


def test_declared_defaults_match_the_settings_class() -> None:
    """SETTINGS (env/flags/help) and the Settings dataclass declare each default once each;
    this keeps the two from drifting apart."""
    defaults = Settings()
    for s in SETTINGS:
        assert getattr(defaults, s.name) == s.default, s.name


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    first_cells = " ".join(
        line.split("|")[1] for line in readme.splitlines() if line.startswith("| `TRACE_")
    )
    documented = set(re.findall(r"TRACE_[A-Z0-9_]+", first_cells))
    missing = [s.env for s in SETTINGS if s.env not in documented]
    assert not missing, f"README configuration table lacks {missing}"


def test_the_single_url_form_names_a_pool_and_reaches_children_once() -> None:
    s = Settings.load({}, env={"TRACE_RPC_POOL_MAIN_URL": "http://127.0.0.1:8545"})
    (endpoint,) = s.rpc_endpoints("main")
    assert endpoint.url == "http://127.0.0.1:8545"
    env = s.child_env()
    assert [k for k in env if k.startswith("TRACE_RPC_POOL_")] == ["TRACE_RPC_POOL_MAIN_URLS"]
    assert Settings.load({}, env=env).rpc_endpoints("main") == (endpoint,)


def test_both_url_forms_of_one_pool_are_one_error_naming_both() -> None:
    env = {
        "TRACE_RPC_POOL_MAIN_URL": "http://127.0.0.1:1/secret-key",
        "TRACE_RPC_POOL_MAIN_URLS": "http://127.0.0.1:2",
        "TRACE_RPC_POOL_OTHER_URL": "http://127.0.0.1:3",
    }
    with pytest.raises(ConfigError) as err:
        Settings.load({}, env=env)
    detail = err.value.detail
    assert "TRACE_RPC_POOL_MAIN_URL " in detail and "TRACE_RPC_POOL_MAIN_URLS" in detail
    assert "secret-key" not in detail and "127.0.0.1" not in detail


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1", True), ("0", False), ("true", True), ("FALSE", False), ("yes", True), ("off", False)],
)
def test_boolean_settings_read_on_and_off_words_from_the_environment(
    raw: str, expected: bool
) -> None:
    s = Settings.load({}, env={"TRACE_DELIVERY_ALLOW_PRIVATE": raw})
    assert s.delivery_allow_private is expected
    assert Settings.load({}, env=s.child_env()).delivery_allow_private is expected


def test_a_boolean_setting_refuses_a_word_it_does_not_know() -> None:
    with pytest.raises(ConfigError) as err:
        Settings.load({}, env={"TRACE_RUNNER_ALLOW_WEAK_SANDBOX": "maybe"})
    assert err.value.detail == "TRACE_RUNNER_ALLOW_WEAK_SANDBOX must be 1, 0, true or false"


def _config_rows(args: list[str], env: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    from click.testing import CliRunner

    from trace_platform.cli import cli

    result = CliRunner().invoke(cli, [*args, "config", "--json"], env=env)
    assert result.exit_code == 0, result.output
    return {row["env"]: row for row in json.loads(result.output)}


def test_boolean_flags_are_on_off_pairs_that_take_no_value() -> None:
    """`trace --delivery-allow-private up`: the flag takes no value, so `up` stays the command."""
    from click.testing import CliRunner

    from trace_platform.cli import cli

    result = CliRunner().invoke(
        cli, ["--delivery-allow-private", "up", "--help"], prog_name="trace"
    )
    assert result.exit_code == 0 and result.output.startswith("Usage: trace up"), result.output
    on = _config_rows(["--delivery-allow-private"], {"TRACE_DELIVERY_ALLOW_PRIVATE": "0"})
    assert on["TRACE_DELIVERY_ALLOW_PRIVATE"]["value"] == "True"
    assert on["TRACE_DELIVERY_ALLOW_PRIVATE"]["source"] == "flag"
    off = _config_rows(["--no-runner-allow-weak-sandbox"], {"TRACE_RUNNER_ALLOW_WEAK_SANDBOX": "1"})
    assert off["TRACE_RUNNER_ALLOW_WEAK_SANDBOX"]["value"] == "False"
    from_env = _config_rows([], {"TRACE_RUNNER_ALLOW_WEAK_SANDBOX": "true"})
    assert from_env["TRACE_RUNNER_ALLOW_WEAK_SANDBOX"]["value"] == "True"
    assert from_env["TRACE_RUNNER_ALLOW_WEAK_SANDBOX"]["source"] == "env"


def test_every_boolean_setting_is_documented_as_an_on_off_pair() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rows = {
        line.split("|")[1].strip(" `"): line
        for line in readme.splitlines()
        if line.startswith("| `TRACE_")
    }
    for s in SETTINGS:
        if s.kind is bool:
            assert f"`{s.flag}` / `{s.flags[1]}`" in rows[s.env], s.env
