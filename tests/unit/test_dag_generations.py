"""The pure decisions of DAG generations (SPEC §19, invariant 21): which jobs an apply
builds beside the current ones, when a building job may cut over, which generation a
rollback restores and which rows a purge deletes."""

from __future__ import annotations

from trace_platform.domain.dag import (
    covers,
    hidden_name,
    needs_build,
    purgeable_rows,
    rollback_target,
)

EDGES = {"swaps": [], "volume": ["swaps"], "top": ["volume"], "side": ["swaps"], "new": ["top"]}


def test_a_changed_job_builds_with_its_descendants_only() -> None:
    assert needs_build(["volume"], EDGES, has_current=True) == {"volume", "top", "new"}
    assert needs_build(["swaps"], EDGES, has_current=True) == set(EDGES)
    assert needs_build([], EDGES, has_current=True) == set()


def test_a_first_apply_builds_nothing_beside_it() -> None:
    assert needs_build(["swaps", "volume"], EDGES, has_current=False) == set()


def test_a_building_job_cuts_over_once_it_reaches_the_current_one() -> None:
    assert not covers(59, 60)
    assert covers(60, 60) and covers(70, 60)


def test_a_rollback_restores_the_newest_kept_generation_before_the_current() -> None:
    states = {1: "retired", 2: "purged", 3: "abandoned", 4: "retired", 5: "current"}
    assert rollback_target(states, 5) == 4
    assert rollback_target({**states, 4: "purged"}, 5) == 1
    assert rollback_target({1: "current", 2: "building"}, 1) is None
    assert rollback_target({1: "retired", 2: "current", 3: "retired"}, 2) == 1


def test_a_purge_deletes_only_the_rows_no_kept_generation_holds() -> None:
    members = {
        1: {"swaps": "s1", "volume": "v1"},
        2: {"swaps": "s1", "volume": "v2"},
        3: {"swaps": "s1", "volume": "v1"},  # applied back: generation 1's rows again
    }
    states = {1: "retired", 2: "retired", 3: "current"}
    assert purgeable_rows(members, states, 2) == {"v2"}
    assert purgeable_rows(members, states, 1) == set()  # generation 3 holds them
    assert purgeable_rows(members, {**states, 3: "purged"}, 1) == {"v1"}
    assert purgeable_rows(members, states, 9) == set()


def test_a_hidden_output_is_outside_the_dags_namespace() -> None:
    name = hidden_name("dex", "pool_volume", "0123456789abcdef")
    assert name == "gen-0123456789abcdef.dex.pool_volume"
    assert not name.startswith("dex.")
