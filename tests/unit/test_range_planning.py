"""The planner's range arithmetic (pure): backfill spans far behind, chunks near a followed
head, alignment, taken starts, and the spec's `backfill_blocks` check."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from trace_platform.chain.planner import BACKFILL_BLOCKS, backfill_span, next_ranges
from trace_platform.chain.spec import StreamSpec

FIXED = {"kind": "fixed_target", "from_block": 0, "to_block": 10_000}
FOLLOW = {"kind": "follow_head", "from_block": 0, "tail_lag": 2}


def test_the_default_span_is_the_largest_multiple_of_the_chunk_up_to_cryos_chunk() -> None:
    assert backfill_span(100, None) == 1000 == BACKFILL_BLOCKS
    assert backfill_span(300, None) == 900
    assert backfill_span(1, None) == 1000
    assert backfill_span(2000, None) == 2000  # never below one chunk
    assert backfill_span(100, 500) == 500  # the spec's own


def test_the_default_span_divides_the_compaction_window() -> None:
    window = {"enabled": True, "target_blocks": 10_000}
    assert backfill_span(100, None, window) == 1000
    assert backfill_span(50, None, window | {"target_blocks": 500}) == 500
    assert backfill_span(300, None, window) == 300  # no multiple of 300 divides 10,000
    assert backfill_span(300, None, window | {"target_blocks": 1800}) == 900
    assert backfill_span(300, None, window | {"enabled": False}) == 900
    assert backfill_span(100, 2000, window | {"target_blocks": 500}) == 2000  # as asked


def test_a_fixed_target_far_behind_is_planned_in_spans_then_chunks_to_its_end() -> None:
    ranges, cursor = next_ranges(0, 100, FIXED | {"to_block": 2550}, 2550, 64, set(), 1000)
    assert ranges[:2] == [(0, 1000), (1000, 2000)]
    assert ranges[2:] == [(s, min(s + 100, 2550)) for s in range(2000, 2550, 100)]
    assert cursor == 2550


def test_a_followed_head_keeps_the_last_span_below_it_in_chunks() -> None:
    ranges, cursor = next_ranges(0, 100, FOLLOW, 3050, 64, set(), 1000)
    assert ranges[:2] == [(0, 1000), (1000, 2000)]  # [2000, 3000) would end within a span
    assert ranges[2:] == [(s, s + 100) for s in range(2000, 3000, 100)]
    assert cursor == 3000  # full chunks only: [3000, 3100) waits for the head


def test_spans_start_aligned_to_the_span_from_the_mode_start() -> None:
    mode = FIXED | {"from_block": 50}
    ranges, _ = next_ranges(350, 100, mode, 5050, 64, set(), 1000)
    # chunks up to the next span boundary (50 + 1000), then spans
    assert ranges[:7] == [(s, s + 100) for s in range(350, 1050, 100)]
    assert ranges[7] == (1050, 2050)


def test_a_span_never_swallows_a_start_already_taken() -> None:
    ranges, _ = next_ranges(0, 100, FIXED, 10_000, 3, {500}, 1000)
    assert ranges == [(0, 100), (100, 200), (200, 300)]
    ranges, cursor = next_ranges(0, 100, FIXED, 10_000, 64, {0}, 1000)
    assert ranges[0] == (1000, 2000) and cursor == 10_000  # the taken span is stepped over


def test_room_counts_ranges_and_a_span_of_one_chunk_plans_chunks() -> None:
    ranges, cursor = next_ranges(0, 100, FIXED, 10_000, 4, set(), 1000)
    assert ranges == [(0, 1000), (1000, 2000), (2000, 3000), (3000, 4000)] and cursor == 4000
    ranges, _ = next_ranges(0, 100, FIXED, 10_000, 4, set(), 100)
    assert ranges == [(0, 100), (100, 200), (200, 300), (300, 400)]


@given(
    chunk=st.integers(1, 300),
    k=st.integers(1, 12),
    start=st.integers(0, 50),
    length=st.integers(1, 20_000),
    follow=st.booleans(),
)
def test_ranges_tile_the_blocks_without_gap_or_overlap(
    chunk: int, k: int, start: int, length: int, follow: bool
) -> None:
    mode = FOLLOW | {"from_block": start} if follow else FIXED | {"from_block": start}
    end = start + length
    cursor, seen = start, []
    while cursor < end:
        ranges, new = next_ranges(cursor, chunk, mode, end, 7, set(), chunk * k)
        if new == cursor:
            break
        seen += ranges
        cursor = new
    for (_, e), (s, _) in itertools.pairwise(seen):
        assert e == s
    assert all((s - start) % chunk == 0 and e > s for s, e in seen)
    assert all(e - s <= chunk * k for s, e in seen)
    if follow:
        assert all((e - s) % chunk == 0 for s, e in seen) and end - cursor < chunk
    else:
        assert seen[0][0] == start and seen[-1][1] == end


def test_backfill_blocks_must_be_a_multiple_of_the_chunk() -> None:
    assert StreamSpec(cryo_dataset="logs", chunk_size=100, backfill_blocks=500).backfill_blocks
    for bad in (150, 50):
        with pytest.raises(ValidationError, match="multiple of chunk_size"):
            StreamSpec(cryo_dataset="logs", chunk_size=100, backfill_blocks=bad)
