"""Which committed logs partitions a decoded table's next ranges cover (pure): one range per
partition from the cursor, none across a gap, a factory child's none past its parent's
committed tip."""

from __future__ import annotations

from trace_platform.chain.decode import decoded_ranges


def parts(*bounds: tuple[int, int]) -> list[dict[str, int]]:
    return [{"range_start": s, "range_end": e} for s, e in bounds]


def spans(chosen: list[tuple[int, int, object]]) -> list[tuple[int, int]]:
    return [(s, e) for s, e, _ in chosen]


def test_one_range_per_committed_partition_in_order_each_with_its_partition() -> None:
    logs = parts((0, 10), (10, 30), (30, 40))
    chosen = decoded_ranges(0, logs, None)
    assert spans(chosen) == [(0, 10), (10, 30), (30, 40)]
    assert [p for _, _, p in chosen] == logs


def test_a_gap_in_the_committed_logs_waits() -> None:
    assert spans(decoded_ranges(0, parts((0, 10), (20, 30)), None)) == [(0, 10)]
    assert decoded_ranges(0, parts((10, 20)), None) == []


def test_a_rewound_cursor_inside_a_partition_takes_the_rest_of_it() -> None:
    assert spans(decoded_ranges(15, parts((10, 20), (20, 30)), None)) == [(15, 20), (20, 30)]


def test_a_factory_child_waits_for_its_parents_table() -> None:
    logs = parts((0, 10), (10, 20), (20, 30))
    assert spans(decoded_ranges(0, logs, 20)) == [(0, 10), (10, 20)]
    assert spans(decoded_ranges(0, logs, 19)) == [(0, 10)]
    assert decoded_ranges(0, logs, 0) == []
