"""How a per-range job behind its inputs cuts its backfill (SPEC §19): ranges holding at most
`backfill_rows` input rows and `backfill_blocks` blocks (`domain.dag.next_ranges`), the
defaults and the form every job applied before rows counted has stored (`backfill_limits`)."""

from __future__ import annotations

import itertools

from trace_platform.dag.spec import (
    DEFAULT_BACKFILL_ROWS,
    MAX_SPAN_BLOCKS,
    backfill_limits,
)
from trace_platform.domain.dag import Partition, next_ranges


def chain(parts: int, blocks: int, rows: int, start: int = 0) -> list[Partition]:
    """`parts` contiguous partitions of `blocks` blocks and `rows` rows each."""
    return [Partition(start + i * blocks, start + (i + 1) * blocks, rows) for i in range(parts)]


def test_sparse_history_goes_in_few_large_ranges_and_dense_in_bounded_ones() -> None:
    sparse = chain(200, 1000, 6_000)  # 1.2M rows over 200,000 blocks: two even ranges
    ranges = next_ranges(0, 200_000, MAX_SPAN_BLOCKS, 8, (), [sparse], 1_000_000)
    assert ranges == [(0, 100_000), (100_000, 200_000)]
    # Not 1M rows then 0.2M: the level's last range would hold it up.
    ranges = next_ranges(0, 200_000, MAX_SPAN_BLOCKS, 8, (), [sparse], 500_000)
    assert ranges == [(0, 67_000), (67_000, 134_000), (134_000, 200_000)]
    dense = chain(200, 1000, 400_000)  # 80M rows: two partitions' worth a range
    ranges = next_ranges(0, 200_000, MAX_SPAN_BLOCKS, 8, (), [dense], 1_000_000)
    assert ranges == [(i * 2000, (i + 1) * 2000) for i in range(8)]


def test_ready_work_is_shared_by_the_jobs_concurrency_while_each_range_holds_enough() -> None:
    sparse = chain(200, 1000, 6_000)  # 1.2M rows: four ranges of 0.3M for 8 in flight
    ranges = next_ranges(0, 200_000, MAX_SPAN_BLOCKS, 8, (), [sparse], 1_000_000, 8)
    assert ranges == [(0, 50_000), (50_000, 100_000), (100_000, 150_000), (150_000, 200_000)]
    # never below a quarter of the limit a range, nor more ranges than the spread
    assert len(next_ranges(0, 200_000, MAX_SPAN_BLOCKS, 8, (), [sparse], 1_000_000, 2)) == 2
    small = chain(10, 1000, 6_000)  # 60,000 rows: one range whatever the spread
    assert next_ranges(0, 10_000, MAX_SPAN_BLOCKS, 8, (), [small], 1_000_000, 8) == [(0, 10_000)]


def test_rows_of_every_input_count_and_the_block_limit_still_holds() -> None:
    blocks, swaps = chain(100, 1000, 1_000), chain(100, 1000, 5_000)
    ranges = next_ranges(0, 100_000, MAX_SPAN_BLOCKS, 8, (), [blocks, swaps], 60_000)
    assert ranges[:2] == [(0, 10_000), (10_000, 20_000)]
    capped = next_ranges(0, 100_000, 4_000, 3, (), [blocks, swaps], 60_000)
    assert capped == [(0, 4_000), (4_000, 8_000), (8_000, 12_000)]


def test_a_partition_holding_more_than_the_limit_is_taken_alone() -> None:
    parts = [Partition(0, 10, 5), Partition(10, 20, 5_000_000), Partition(20, 30, 5)]
    ranges = next_ranges(0, 30, MAX_SPAN_BLOCKS, 8, (), [parts], 1_000)
    assert ranges == [(0, 10), (10, 20), (20, 30)]


def test_a_range_starting_inside_a_partition_counts_only_its_share() -> None:
    parts = chain(4, 100, 1_000)
    ranges = next_ranges(50, 400, MAX_SPAN_BLOCKS, 8, (), [parts], 1_500)
    assert ranges == [(50, 200), (200, 300), (300, 400)]


def test_ranges_tile_the_history_without_gap_or_overlap() -> None:
    parts = [Partition(i * 7, (i + 1) * 7, (i * 7919) % 1000) for i in range(300)]
    cursor, tip, out = 0, 2100, []
    while cursor < tip:
        got = next_ranges(cursor, tip, MAX_SPAN_BLOCKS, 3, (), [parts], 2_500)
        assert got, "a range always moves on"
        out += got
        cursor = got[-1][1]
    assert out[0][0] == 0 and out[-1][1] == tip
    assert all(a[1] == b[0] for a, b in itertools.pairwise(out))


def test_boundaries_of_inputs_read_whole_still_bound_each_range() -> None:
    parts = chain(10, 100, 1_000)
    whole_ends = [300, 700, 1000]
    ranges = next_ranges(0, 1000, MAX_SPAN_BLOCKS, 8, [whole_ends], [parts], 5_000)
    assert ranges == [(0, 300), (300, 700), (700, 1000)]


def test_defaults_and_the_stored_form_of_earlier_jobs() -> None:
    assert backfill_limits({}) == (MAX_SPAN_BLOCKS, DEFAULT_BACKFILL_ROWS)
    # A job applied before rows counted stored backfill_blocks 10,000: a fixed span.
    assert backfill_limits({"backfill_blocks": 10_000}) == (10_000, None)
    assert backfill_limits({"backfill_rows": 5_000}) == (MAX_SPAN_BLOCKS, 5_000)
    both = {"backfill_blocks": 500, "backfill_rows": 5_000}
    assert backfill_limits(both) == (500, 5_000)
