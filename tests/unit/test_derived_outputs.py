"""The give-up decision shared by every planner of range outputs (chain streams, decoded
tables, DAG jobs), pure: what is in flight, and which range stops the output and why."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from trace_platform.domain.derived import MAX_REASON, settle_open_ranges


def rng(start: int, status: str, retry: bool = False, error: str | None = None) -> dict[str, Any]:
    return {
        "task_id": f"t{start}",
        "range_start": start,
        "range_end": start + 10,
        "task_status": status,
        "next_retry_at": datetime.now(UTC) if retry else None,
        "last_error": error,
    }


def test_queued_running_and_retrying_ranges_are_in_flight() -> None:
    rows = [rng(0, "queued"), rng(10, "running"), rng(20, "failed", retry=True, error="429")]
    assert settle_open_ranges(rows) == (3, None)


def test_a_failure_with_no_retry_left_stops_the_output_with_its_range_and_reason() -> None:
    in_flight, failed = settle_open_ranges(
        [rng(0, "running"), rng(10, "failed", error="boom"), rng(20, "canceled")]
    )
    assert failed is not None
    assert (failed.task_id, failed.start, failed.end, failed.reason) == ("t10", 10, 20, "boom")
    assert failed.error == "range [10, 20) failed: boom"
    assert in_flight == 1


def test_a_canceled_range_without_an_error_gives_its_status_and_long_reasons_are_cut() -> None:
    (_, canceled) = settle_open_ranges([rng(0, "canceled")])
    assert canceled is not None and canceled.reason == "canceled"
    (_, long) = settle_open_ranges([rng(0, "failed", error="x" * 2000)])
    assert long is not None and long.reason == "x" * MAX_REASON
