"""The task state machine: which calls a task row accepts, and what they change.

The database is the truth; these functions decide from a row that was read, and the
service applies the decision as a compare-and-swap on that row.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from enum import StrEnum

from trace_platform.domain.errors import ConflictError, StaleFenceError


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELED = "canceled"


class Outcome(StrEnum):
    SUCCESS = "success"
    RETRYABLE_ERROR = "retryable_error"
    FATAL_ERROR = "fatal_error"


class TaskAttemptError(Exception):
    """An attempt's own verdict on itself, raised by operators, evaluators and ingest: the
    attempt ends with `outcome` and the message as its `last_error`."""

    outcome: Outcome = Outcome.RETRYABLE_ERROR


class FatalTaskError(TaskAttemptError):
    """Retrying cannot help (bad input, a rule that cannot produce events): fails for good."""

    outcome = Outcome.FATAL_ERROR


class RetryableTaskError(TaskAttemptError):
    """Try again with the kernel's backoff (a node or service unavailable)."""

    outcome = Outcome.RETRYABLE_ERROR


# last_outcome written by the lease reaper; a late reply of that attempt may still land.
TIMEOUT = "timeout"


@dataclass(frozen=True)
class TaskFence:
    """The columns of a task row that decide whether a report is accepted."""

    task_id: uuid.UUID
    status: str
    attempt: int
    lease_token: uuid.UUID | None
    last_outcome: str | None
    max_attempts: int


@dataclass(frozen=True)
class CompletionDecision:
    """`repeat` means: the same completion was already applied; answer as before, change nothing."""

    repeat: bool
    new_status: TaskStatus
    retry: bool


def claim_refusal(status: str) -> str:
    """Reason code for a task that could not be claimed."""
    if status == TaskStatus.RUNNING:
        return "already_running"
    return status


def _same_attempt(row: TaskFence, attempt: int, lease_token: uuid.UUID) -> bool:
    return row.attempt == attempt and row.lease_token is not None and row.lease_token == lease_token


def accepts_reports(row: TaskFence) -> bool:
    """Running, or timed out by the reaper with no newer attempt started yet (late reply)."""
    return row.status == TaskStatus.RUNNING or (
        row.status == TaskStatus.FAILED and row.last_outcome == TIMEOUT
    )


def check_report_fence(row: TaskFence, attempt: int, lease_token: uuid.UUID) -> None:
    """Raise unless (attempt, lease_token) is the row's current one and the row accepts reports."""
    if not _same_attempt(row, attempt, lease_token):
        raise StaleFenceError("attempt or lease token is not the current one")
    if not accepts_reports(row):
        raise ConflictError(f"task is {row.status} and accepts no further reports")


def decide_completion(
    row: TaskFence, attempt: int, lease_token: uuid.UUID, outcome: Outcome
) -> CompletionDecision:
    """Decide what a completion does to the row (or raise 409)."""
    if not _same_attempt(row, attempt, lease_token):
        raise StaleFenceError("attempt or lease token is not the current one")
    if accepts_reports(row):
        if outcome == Outcome.SUCCESS:
            return CompletionDecision(False, TaskStatus.COMPLETED, False)
        retry = outcome == Outcome.RETRYABLE_ERROR and row.attempt < row.max_attempts
        return CompletionDecision(False, TaskStatus.FAILED, retry)
    if row.last_outcome == outcome and row.status in (TaskStatus.COMPLETED, TaskStatus.FAILED):
        return CompletionDecision(True, TaskStatus(row.status), False)
    raise ConflictError(f"task is {row.status}; a different completion was already recorded")


def retry_delay(
    attempt: int, base_seconds: float, max_seconds: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with equal jitter: half fixed, half random, capped at max_seconds."""
    exp = min(max_seconds, base_seconds * 2.0 ** max(0, attempt - 1))
    r = (rng or random).random()
    return float(exp / 2 + exp / 2 * r)


def reaped_retry_delay(
    attempt: int, max_attempts: int, base_seconds: float, max_seconds: float
) -> float | None:
    """Delay before retrying an attempt whose lease expired; None when it was the last one."""
    if attempt >= max_attempts:
        return None
    return retry_delay(attempt, base_seconds, max_seconds)
