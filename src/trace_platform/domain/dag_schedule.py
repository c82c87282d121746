"""When a whole-snapshot DAG job runs (SPEC §19 "Whole-snapshot jobs", "Cron"; invariant 22),
pure: the slots of a cron schedule, which slot runs after a gap (only the latest; the others
are counted as missed), and whether a job refreshed on change is due (at most one run per
`min_interval_seconds`).

The scheduler (`dag/snapshots.py`) applies these under the job's row lock; each run's task id
is derived from (job, generation, slot), so two schedulers deciding the same slot schedule
one task.

Schedules are UTC cron expressions: five fields (minute hour day month weekday) or six, the
first being seconds (`*/10 * * * * *`: every ten seconds), as `croniter` reads them with
`second_at_beginning`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from croniter import CroniterError, croniter

MAX_COUNTED_MISSED = 10_000  # slots counted one by one after a gap; beyond, the count stops
DEFAULT_MIN_INTERVAL_SECONDS = 10.0


class ScheduleError(ValueError):
    """Not a cron expression this platform reads; the message says why."""


def _cron(expression: str, at: datetime) -> croniter:
    fields = expression.split()
    if len(fields) not in (5, 6):
        raise ScheduleError(
            "a schedule has 5 fields (minute hour day month weekday) or 6 (seconds first)"
        )
    try:
        return croniter(expression, at, second_at_beginning=len(fields) == 6)
    except (ValueError, KeyError, CroniterError) as exc:
        raise ScheduleError(f"not a cron expression: {exc}") from None


def check_schedule(expression: str) -> str:
    """The expression, or ScheduleError (it must also have a slot within ten years)."""
    next_slot(expression, datetime(2026, 1, 1, tzinfo=UTC))
    return expression


def _utc(at: datetime) -> datetime:
    if at.tzinfo is None:
        raise ValueError("times are timezone-aware (UTC)")
    return at.astimezone(UTC)


def next_slot(expression: str, after: datetime) -> datetime:
    """The first slot strictly after `after`."""
    after = _utc(after)
    try:
        slot = _cron(expression, after).get_next(datetime)
    except CroniterError:
        slot = None
    if slot is None or slot - after > timedelta(days=3660):
        raise ScheduleError("the schedule has no slot in the next ten years")
    return _utc(slot)


def latest_slot(expression: str, at: datetime) -> datetime:
    """The last slot at or before `at`."""
    at = _utc(at)
    # croniter's get_prev is strictly before its start: start a microsecond later.
    return _utc(_cron(expression, at + timedelta(microseconds=1)).get_prev(datetime))


@dataclass(frozen=True)
class SlotDecision:
    """The slot to run now and how many slots before it (after the last one run) are
    skipped: they passed while no scheduler was up, and only the latest runs."""

    slot: datetime
    missed: int


def due_slot(expression: str, last: datetime, now: datetime) -> SlotDecision | None:
    """The slot to run at `now` when `last` is the last slot run (or the time the schedule
    began): the latest slot in (last, now], with the slots between skipped; None when no
    slot has come since `last`."""
    slot = latest_slot(expression, now)
    if slot <= _utc(last):
        return None
    missed = 0
    cron = _cron(expression, _utc(last))
    while missed < MAX_COUNTED_MISSED:
        between = _utc(cron.get_next(datetime))
        if between >= slot:
            break
        missed += 1
    return SlotDecision(slot, missed)


def refresh_due(
    inputs_changed: bool,
    last_planned: datetime | None,
    min_interval_seconds: float,
    now: datetime,
) -> bool:
    """A job refreshed on change runs when its inputs changed since its last run was
    planned, at most once per `min_interval_seconds` (a chain at its head changes every
    block: the job runs at that pace at most, and the last change is always picked up)."""
    if not inputs_changed:
        return False
    if last_planned is None:
        return True
    return (_utc(now) - _utc(last_planned)).total_seconds() >= min_interval_seconds
