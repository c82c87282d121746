"""The pure rules of query runs (`domain.query_runs`): where a result lives, when an
idempotency key gives back its run, what can be canceled, and the Lite result URL's
signature, which names one org, one run and one expiry."""

from __future__ import annotations

import uuid

import pytest

from trace_platform.domain.errors import ForbiddenError
from trace_platform.domain.query_runs import (
    IdempotencyConflict,
    PriorRun,
    RunFinished,
    check_cancel,
    check_result_signature,
    derive_result_secret,
    params_hash,
    result_key,
    result_signature,
    reuse_run,
)

ORG, OTHER, RUN = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
SECRET = derive_result_secret("worker-token")
NOW = 1_800_000_000.0


def test_a_result_lives_under_its_org_and_run() -> None:
    assert result_key(ORG, RUN, "parquet") == f"results/{ORG}/{RUN}/result.parquet"
    assert result_key(ORG, RUN, "arrow").endswith("/result.arrows")


def test_the_same_key_with_the_same_sql_and_format_is_the_same_run_else_409() -> None:
    prior = PriorRun(RUN, "a" * 64, "csv")
    assert reuse_run(prior, "a" * 64, "csv") == RUN
    with pytest.raises(IdempotencyConflict):
        reuse_run(prior, "b" * 64, "csv")
    with pytest.raises(IdempotencyConflict):
        reuse_run(prior, "a" * 64, "parquet")


@pytest.mark.parametrize("status", ["succeeded", "failed", "canceled"])
def test_only_a_live_run_can_be_canceled(status: str) -> None:
    check_cancel("queued")
    check_cancel("running")
    with pytest.raises(RunFinished) as refused:
        check_cancel(status)
    assert refused.value.status == 409 and refused.value.extra["status"] == status


def test_a_signed_url_opens_its_own_run_until_it_expires_and_nothing_else() -> None:
    exp = int(NOW) + 60
    sig = result_signature(SECRET, ORG, RUN, exp)
    assert check_result_signature(SECRET, RUN, str(ORG), str(exp), sig, NOW) == ORG
    refused = [
        (RUN, str(ORG), str(exp), sig, NOW + 61),  # expired
        (uuid.uuid4(), str(ORG), str(exp), sig, NOW),  # another run
        (RUN, str(OTHER), str(exp), sig, NOW),  # another org
        (RUN, str(ORG), str(exp + 3600), sig, NOW),  # a longer life
        (RUN, str(ORG), str(exp), sig[:-1] + ("A" if sig[-1] != "A" else "B"), NOW),
        (RUN, str(ORG), str(exp), None, NOW),
        (RUN, None, str(exp), sig, NOW),
        (RUN, "not-a-uuid", str(exp), sig, NOW),
        (RUN, str(ORG), "-5", sig, NOW),
        (RUN, str(ORG), str(exp), "x" * 500, NOW),
    ]
    for run, org, expires, signature, now in refused:
        with pytest.raises(ForbiddenError):
            check_result_signature(SECRET, run, org, expires, signature, now)
    other_secret = derive_result_secret("another-token")
    with pytest.raises(ForbiddenError):
        check_result_signature(other_secret, RUN, str(ORG), str(exp), sig, NOW)


def test_a_runs_time_limit_and_result_life_are_settings_with_bounds() -> None:
    from trace_platform.config import Settings
    from trace_platform.domain.errors import ConfigError

    default = Settings.load(env={})
    assert (default.query_run_timeout, default.query_result_ttl) == (300.0, 604_800.0)
    set_ = Settings.load(env={"TRACE_QUERY_RUN_TIMEOUT": "30", "TRACE_QUERY_RESULT_TTL": "60"})
    assert (set_.query_run_timeout, set_.query_result_ttl) == (30.0, 60.0)
    flagged = Settings.load({"query_run_timeout": "45"}, env={"TRACE_QUERY_RUN_TIMEOUT": "30"})
    assert flagged.query_run_timeout == 45.0  # the flag wins over the environment
    for env in ({"TRACE_QUERY_RUN_TIMEOUT": "601"}, {"TRACE_QUERY_RESULT_TTL": "0"}):
        with pytest.raises(ConfigError):
            Settings.load(env=env)


def test_a_saved_query_run_is_the_same_run_only_with_the_same_values() -> None:
    digest = params_hash(["5", "3", ""])
    assert digest is not None and len(digest) == 64
    assert params_hash(None) is None
    assert params_hash(["5", "3", ""]) == digest
    assert params_hash(["5", "3", "x"]) != digest
    assert params_hash(["5,3"]) != params_hash(["5", "3"])  # no two value lists collide
    prior = PriorRun(RUN, "a" * 64, "json", "runq", digest)
    assert reuse_run(prior, "a" * 64, "json", "runq", digest) == RUN
    for changed in (
        ("a" * 64, "json", "runq", params_hash(["6", "3", ""])),
        ("a" * 64, "json", "other", digest),
        ("a" * 64, "json", None, None),
        ("a" * 64, "csv", "runq", digest),
    ):
        with pytest.raises(IdempotencyConflict):
            reuse_run(prior, *changed)
