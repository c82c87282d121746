"""The lineage graph of a DAG as the console draws it (SPEC §19), pure: jobs as nodes, each
input as an edge, chain and dataset inputs as source nodes; a layered layout by dependency
order (sources in column 0, a job one column right of its deepest input), geometry only.

The console renders this as SVG elements and attributes (no script, no inline style, which
its Content-Security-Policy blocks), so the drawing is the same served and live-refreshed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from trace_platform.domain.dag import job_order

NODE_W = 230  # a job's box: its name, generation, progress bar and lag
JOB_H = 64
SOURCE_H = 34
COL_GAP = 70
ROW_GAP = 18
PAD = 8


@dataclass(frozen=True)
class GraphNode:
    """A box: `kind` job, chain or dataset; `name` the job's or the input's name."""

    key: str
    kind: str
    name: str
    level: int
    x: int
    y: int
    w: int
    h: int


@dataclass(frozen=True)
class GraphEdge:
    """An input read by a job: from `src` to `dst` (node keys), as a cubic curve `path`."""

    src: str
    dst: str
    path: str


@dataclass(frozen=True)
class GraphLayout:
    nodes: list[GraphNode]
    edges: list[GraphEdge]
    width: int
    height: int


def node_key(kind: str, name: str) -> str:
    return f"{kind}:{name}"


def layout(jobs: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> GraphLayout:
    """`jobs`: (job name, its inputs as (kind, name)), kind `job`, `chain` or `dataset`.
    An input naming a job this DAG does not hold is drawn as a source."""
    names = {name for name, _ in jobs}
    inputs = {name: list(ins) for name, ins in jobs}
    order = job_order(
        {name: [n for k, n in ins if k == "job" and n in names] for name, ins in inputs.items()}
    )
    level: dict[str, int] = {}
    sources: list[tuple[str, str]] = []
    for name in order:
        ups = [level[node_key("job", n)] for k, n in inputs[name] if k == "job" and n in names]
        level[node_key("job", name)] = 1 + max(ups, default=0)
        for k, n in inputs[name]:
            if not (k == "job" and n in names) and node_key(k, n) not in level:
                level[node_key(k, n)] = 0
                sources.append((k, n))
    columns: dict[int, list[tuple[str, str]]] = {}
    for k, n in sorted(sources):
        columns.setdefault(0, []).append((k, n))
    for name in order:
        columns.setdefault(level[node_key("job", name)], []).append(("job", name))
    nodes: dict[str, GraphNode] = {}
    height = 0
    for col, members in sorted(columns.items()):
        y = PAD
        for k, n in members:
            h = JOB_H if k == "job" else SOURCE_H
            key = node_key(k, n)
            nodes[key] = GraphNode(key, k, n, col, PAD + col * (NODE_W + COL_GAP), y, NODE_W, h)
            y += h + ROW_GAP
        height = max(height, y - ROW_GAP + PAD)
    edges = []
    for name in order:
        dst = nodes[node_key("job", name)]
        for k, n in inputs[name]:
            src = nodes[node_key("job" if k == "job" and n in names else k, n)]
            x1, y1 = src.x + src.w, src.y + src.h // 2
            x2, y2 = dst.x, dst.y + dst.h // 2
            mid = (x1 + x2) // 2
            path = f"M{x1},{y1} C{mid},{y1} {mid},{y2} {x2 - 6},{y2}"
            edges.append(GraphEdge(src.key, dst.key, path))
    width = PAD * 2 + (max(columns, default=0) + 1) * NODE_W + max(columns, default=0) * COL_GAP
    return GraphLayout(list(nodes.values()), edges, width, max(height, PAD * 2))
