"""The console's lineage graph layout (domain.dag_graph): sources left, each job one column
right of its deepest input, one edge per input, nothing overlapping."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from trace_platform.domain.dag import GraphError
from trace_platform.domain.dag_graph import layout
from trace_platform.ops.dags import (
    DagGeneration,
    DagGenerationJob,
    DagInput,
    DagJobStatus,
    DagStatus,
)

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
        assert a.x >= 0 and a.x + a.w <= g.width and a.y >= 0 and a.y + a.h <= g.height
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


def _job(name: str, inputs: list[tuple[str, str]], **kw: object) -> DagJobStatus:
    base: dict[str, object] = {
        "job": name,
        "relation": f"dex.{name}",
        "window": "range",
        "status": "active",
        "generation": f"{name}-hash",
        "inputs": [DagInput(k, n) for k, n in inputs],
        "from_block": 0,
        "committed": 6,
        "in_flight": 0,
        "failed": 0,
        "rows": 60,
        "committed_to": 600,
        "input_tip": 600,
        "lag_blocks": 0,
        "last_error": None,
    }
    base.update(kw)
    return DagJobStatus(**base)  # type: ignore[arg-type]


def test_the_drawn_graph_shows_each_jobs_generation_the_building_ones_progress_and_errors() -> None:
    from trace_platform.api.console import _env

    now = datetime.now(UTC)
    status = DagStatus(
        "dex",
        "running",
        False,
        [
            _job("swaps", [("chain", "demo")]),
            _job("pool_volume", [("job", "swaps")], committed_to=300, lag_blocks=300),
            _job(
                "top_pools",
                [("job", "pool_volume")],
                status="stopped",
                failed=1,
                last_error="boom <b>",
            ),
        ],
        generation=1,
        building_generation=2,
        generations=[
            DagGeneration(1, "current", now, now),
            DagGeneration(
                2,
                "building",
                now,
                None,
                0.5,
                [DagGenerationJob("pool_volume", 300, 600, False)],
            ),
        ],
    )
    svg = _env.get_template("dag_graph.html").render(d=status)
    assert svg.count('class="node job"') == 3 and svg.count('class="node source"') == 1
    assert svg.count('class="edge"') == 3
    assert "gen 1 · building 2: 300/600</text>" in svg  # pool_volume is being rebuilt
    assert svg.count("building 2") == 1  # swaps and top_pools are not in generation 2
    assert 'data-fraction="0.5"' in svg  # pool_volume: 300 of 600 blocks
    assert "lag 300</text>" in svg
    assert "stopped · 0 ranges" not in svg and "stopped · 6 ranges" in svg
    assert "boom &lt;b&gt;" in svg and "<b>" not in svg  # an error is inert text
    assert "style=" not in svg and "<script" not in svg  # nothing the CSP would block


def test_status_text_names_a_building_generations_stopped_job_and_its_error() -> None:
    """A building generation whose job failed for good never cuts over: status says which
    job and why, not only its progress."""
    from trace_platform.cli.render import dag_generations

    now = datetime.now(UTC)
    status = DagStatus(
        "dex",
        "running",
        False,
        [_job("swaps", [("chain", "demo")])],
        generation=1,
        building_generation=2,
        generations=[
            DagGeneration(1, "current", now, now),
            DagGeneration(
                2,
                "building",
                now,
                None,
                0.0,
                [
                    DagGenerationJob("swaps", 0, 600, False, "stopped", "input has no column x"),
                    DagGenerationJob("pool_volume", 0, 600, False),
                ],
            ),
        ],
    )
    lines = dag_generations(status)
    assert lines[1].startswith("generation 2 building  0%")
    stopped = [line for line in lines if "stopped" in line]
    assert stopped == [
        "  swaps stopped: input has no column x (fix the spec and apply again, or roll back)"
    ]
