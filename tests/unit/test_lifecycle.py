import random
import uuid

import pytest

from trace_platform.domain.errors import ConflictError, StaleFenceError
from trace_platform.domain.lifecycle import (
    TIMEOUT,
    Outcome,
    TaskFence,
    TaskStatus,
    check_report_fence,
    claim_refusal,
    decide_completion,
    reaped_retry_delay,
    retry_delay,
)

LEASE = uuid.uuid4()


def row(
    status: str = "running",
    attempt: int = 1,
    last_outcome: str | None = None,
    max_attempts: int = 3,
    lease: uuid.UUID | None = LEASE,
) -> TaskFence:
    return TaskFence(uuid.uuid4(), status, attempt, lease, last_outcome, max_attempts)


def test_success_completes_a_running_attempt() -> None:
    d = decide_completion(row(), 1, LEASE, Outcome.SUCCESS)
    assert (d.repeat, d.new_status, d.retry) == (False, TaskStatus.COMPLETED, False)


def test_retryable_error_retries_until_max_attempts() -> None:
    assert decide_completion(row(attempt=1), 1, LEASE, Outcome.RETRYABLE_ERROR).retry
    last = decide_completion(row(attempt=3), 3, LEASE, Outcome.RETRYABLE_ERROR)
    assert last.new_status == TaskStatus.FAILED and not last.retry


def test_fatal_error_is_terminal_at_once() -> None:
    d = decide_completion(row(), 1, LEASE, Outcome.FATAL_ERROR)
    assert d.new_status == TaskStatus.FAILED and not d.retry


def test_stale_attempt_or_lease_is_rejected() -> None:
    with pytest.raises(StaleFenceError):
        decide_completion(row(attempt=2), 1, LEASE, Outcome.SUCCESS)
    with pytest.raises(StaleFenceError):
        decide_completion(row(), 1, uuid.uuid4(), Outcome.SUCCESS)
    with pytest.raises(StaleFenceError):
        check_report_fence(row(lease=None, status="queued"), 1, LEASE)


def test_same_completion_twice_is_a_repeat_and_a_different_one_conflicts() -> None:
    done = row(status="completed", last_outcome="success")
    assert decide_completion(done, 1, LEASE, Outcome.SUCCESS).repeat
    with pytest.raises(ConflictError):
        decide_completion(done, 1, LEASE, Outcome.FATAL_ERROR)


def test_late_reply_after_reaper_timeout_is_accepted_until_retry_starts() -> None:
    reaped = row(status="failed", last_outcome=TIMEOUT)
    d = decide_completion(reaped, 1, LEASE, Outcome.SUCCESS)
    assert d.new_status == TaskStatus.COMPLETED and not d.repeat
    check_report_fence(reaped, 1, LEASE)


def test_canceled_task_accepts_nothing() -> None:
    canceled = row(status="canceled")
    with pytest.raises(ConflictError):
        decide_completion(canceled, 1, LEASE, Outcome.SUCCESS)
    with pytest.raises(ConflictError):
        check_report_fence(canceled, 1, LEASE)


def test_claim_refusal_reasons() -> None:
    assert claim_refusal("running") == "already_running"
    for s in ("completed", "failed", "canceled"):
        assert claim_refusal(s) == s


def test_backoff_grows_exponentially_with_bounded_jitter() -> None:
    rng = random.Random(7)
    for attempt, expected in ((1, 1.0), (2, 2.0), (3, 4.0), (10, 30.0)):
        for _ in range(50):
            d = retry_delay(attempt, 1.0, 30.0, rng)
            assert expected / 2 <= d <= expected
    values = {round(retry_delay(3, 1.0, 30.0, rng), 6) for _ in range(20)}
    assert len(values) > 1, "jitter must spread retries"


def test_reaped_last_attempt_gets_no_retry() -> None:
    assert reaped_retry_delay(3, 3, 1.0, 10.0) is None
    delay = reaped_retry_delay(1, 3, 1.0, 10.0)
    assert delay is not None and 0.5 <= delay <= 1.0
