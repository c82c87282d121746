"""The console's lineage graph layout (domain.dag_graph): sources left, each job one column
right of its deepest input, one edge per input, nothing overlapping."""

from __future__ import annotations

import pytest

from trace_platform.domain.dag import GraphError
from trace_platform.domain.dag_graph import layout

DEMO = [
    ("swaps", [("chain", "demo"), ("dataset", "labels")]),
    ("pool_volume", [("job", "swaps")]),
    ("top_pools", [("job", "pool_volume")]),
    ("per_block", [("job", "swaps"), ("chain", "demo")]),
]


def test_sources_come_first_and_each_job_is_right_of_its_deepest_input() -> None:
    g = layout(DEMO)
    level = {n.key: n.level for n in g.nodes}
    assert level == {
        "chain:demo": 0,
        "dataset:labels": 0,
        "job:swaps": 1,
        "job:pool_volume": 2,
        "job:per_block": 2,
        "job:top_pools": 3,
    }
    x = {n.key: n.x for n in g.nodes}
    assert x["chain:demo"] < x["job:swaps"] < x["job:pool_volume"] < x["job:top_pools"]
    assert x["job:pool_volume"] == x["job:per_block"]


def test_one_edge_per_input_from_the_sources_right_side_to_the_jobs_left_side() -> None:
    g = layout(DEMO)
    assert sorted((e.src, e.dst) for e in g.edges) == sorted(
        [
            ("chain:demo", "job:swaps"),
            ("dataset:labels", "job:swaps"),
            ("job:swaps", "job:pool_volume"),
            ("job:pool_volume", "job:top_pools"),
            ("job:swaps", "job:per_block"),
            ("chain:demo", "job:per_block"),
        ]
    )
    nodes = {n.key: n for n in g.nodes}
    for e in g.edges:
        src, dst = nodes[e.src], nodes[e.dst]
        assert e.path.startswith(f"M{src.x + src.w},{src.y + src.h // 2} ")
        assert e.path.endswith(f" {dst.x - 6},{dst.y + dst.h // 2}")


def test_boxes_do_not_overlap_and_fit_the_drawing() -> None:
    g = layout(DEMO)
    for a in g.nodes:
        assert 0 <= a.x and a.x + a.w <= g.width and 0 <= a.y and a.y + a.h <= g.height
        for b in g.nodes:
            if a is not b:
                apart = a.x + a.w <= b.x or b.x + b.w <= a.x or a.y + a.h <= b.y or b.y + b.h <= a.y
                assert apart, (a, b)


def test_a_cycle_is_refused_naming_it() -> None:
    with pytest.raises(GraphError, match="cycle"):
        layout([("a", [("job", "b")]), ("b", [("job", "a")])])


def test_an_empty_dag_draws_nothing() -> None:
    g = layout([])
    assert (g.nodes, g.edges) == ([], [])
