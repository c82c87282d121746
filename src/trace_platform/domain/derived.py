"""Pure decisions shared by the planners of range outputs — a chain stream (extracted or
decoded) and a DAG job: how many of an output's scheduled ranges are in flight, and which
range's task gave up for good (canceled, or failed with no retry left), which stops the
output with that range and reason visible instead of silently holding a slot."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

MAX_REASON = 500


@dataclass(frozen=True)
class GivenUpRange:
    """A scheduled range whose task will not run again."""

    task_id: Any
    start: int
    end: int
    reason: str  # the task's last error (or its status), at most MAX_REASON characters

    @property
    def error(self) -> str:
        """The output's stop reason."""
        return f"range [{self.start}, {self.end}) failed: {self.reason}"


def settle_open_ranges(rows: Iterable[Mapping[str, Any]]) -> tuple[int, GivenUpRange | None]:
    """(ranges in flight, the first range given up or None) of an output's scheduled ranges,
    each with its task's `task_status`, `next_retry_at` and `last_error`."""
    in_flight = 0
    for r in rows:
        status = r["task_status"]
        if status == "canceled" or (status == "failed" and r["next_retry_at"] is None):
            reason = (r["last_error"] or status)[:MAX_REASON]
            return in_flight, GivenUpRange(r["task_id"], r["range_start"], r["range_end"], reason)
        in_flight += 1
    return in_flight, None
