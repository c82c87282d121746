"""Cron slots and refresh-on-change decisions of whole-snapshot DAG jobs (SPEC §19,
invariant 22), pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from trace_platform.domain.dag_schedule import (
    ScheduleError,
    SlotDecision,
    check_schedule,
    due_slot,
    latest_slot,
    next_slot,
    refresh_due,
)

T0 = datetime(2026, 12, 7, 4, 50, 13, 500_000, tzinfo=UTC)


def test_five_fields_are_minutes_and_six_put_seconds_first() -> None:
    assert next_slot("*/5 * * * *", T0) == datetime(2026, 12, 7, 4, 55, tzinfo=UTC)
    assert latest_slot("*/5 * * * *", T0) == datetime(2026, 12, 7, 4, 50, tzinfo=UTC)
    assert next_slot("*/5 * * * * *", T0) == datetime(2026, 12, 7, 4, 50, 15, tzinfo=UTC)
    assert latest_slot("*/5 * * * * *", T0) == datetime(2026, 12, 7, 4, 50, 10, tzinfo=UTC)


def test_a_slot_is_its_own_latest_slot_and_not_its_next() -> None:
    slot = datetime(2026, 12, 7, 5, 0, tzinfo=UTC)
    assert latest_slot("0 * * * *", slot) == slot
    assert next_slot("0 * * * *", slot) == slot + timedelta(hours=1)


def test_no_slot_since_the_last_run_means_nothing_is_due() -> None:
    last = datetime(2026, 12, 7, 4, 50, tzinfo=UTC)
    assert due_slot("*/5 * * * *", last, T0) is None
    # The schedule began between slots (the apply): the first slot after it runs.
    began = datetime(2026, 12, 7, 4, 52, tzinfo=UTC)
    assert due_slot("*/5 * * * *", began, T0 + timedelta(minutes=3)) is None
    assert due_slot("*/5 * * * *", began, T0 + timedelta(minutes=5)) == SlotDecision(
        datetime(2026, 12, 7, 4, 55, tzinfo=UTC), 0
    )


def test_after_downtime_only_the_latest_slot_runs_and_the_rest_are_counted() -> None:
    last = datetime(2026, 12, 7, 4, 50, tzinfo=UTC)
    now = datetime(2026, 12, 7, 5, 7, 30, tzinfo=UTC)  # 4:55, 5:00 passed; 5:05 is latest
    assert due_slot("*/5 * * * *", last, now) == SlotDecision(
        datetime(2026, 12, 7, 5, 5, tzinfo=UTC), 2
    )
    # The next slot after it, on time: none missed.
    assert due_slot("*/5 * * * *", datetime(2026, 12, 7, 5, 5, tzinfo=UTC), now) is None
    assert due_slot(
        "*/5 * * * *", datetime(2026, 12, 7, 5, 5, tzinfo=UTC), now + timedelta(minutes=3)
    ) == SlotDecision(datetime(2026, 12, 7, 5, 10, tzinfo=UTC), 0)


@pytest.mark.parametrize(
    "bad", ["", "* * *", "61 * * * *", "* * * * * * *", "nonsense x y z w", "0 0 31 2 *"]
)
def test_bad_schedules_are_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(ScheduleError) as err:
        check_schedule(bad)
    assert str(err.value)


def test_times_must_carry_a_zone() -> None:
    with pytest.raises(ValueError):
        next_slot("* * * * *", datetime(2026, 1, 1))


def test_refresh_on_change_runs_at_most_once_per_min_interval() -> None:
    assert refresh_due(True, None, 30, T0)  # never ran
    assert not refresh_due(False, None, 30, T0)  # nothing changed
    assert not refresh_due(True, T0 - timedelta(seconds=10), 30, T0)  # too soon
    assert refresh_due(True, T0 - timedelta(seconds=30), 30, T0)
    assert refresh_due(True, T0, 0, T0)  # no interval: every change
