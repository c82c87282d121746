"""DAG decisions (SPEC §19-20), pure: the job graph, a job's definition hash, which input
ranges a per-range job computes next, and what a replaced input range invalidates.

The scheduler (`dag/planner.py`) applies these as compare-and-swaps under the job's row lock;
nothing here does I/O.

Vocabulary (borrowed from Dagster, sized for Trace): a job's *range mapping* is the
identity on block ranges — output partition [a, b) reads every range input bounded to
[a, b); its *span* (the backfill policy) is how many blocks one task may cover while the job
is behind; its *generation* is named by the definition hash, so a changed job is a new
generation and its partitions get new task ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import orjson

# Reserved by the original design for backpressure; refused, never ignored.
RESERVED_JOB_FIELDS = ("max_queue_depth", "max_queue_age", "backpressure_mode")


class GraphError(ValueError):
    """The job graph is not a DAG (or names a job it does not hold); the message names it."""


def job_order(edges: Mapping[str, Iterable[str]]) -> list[str]:
    """The jobs in dependency order (inputs first; ties by name), or GraphError naming a
    cycle. `edges`: job → the jobs of the same DAG it reads."""
    deps = {job: sorted(set(ups)) for job, ups in edges.items()}
    for job, ups in deps.items():
        for up in ups:
            if up not in deps:
                raise GraphError(f"jobs.{job}.inputs: no job {up!r} in this DAG")
    order: list[str] = []
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(job: str, path: list[str]) -> None:
        mark = state.get(job)
        if mark == 2:
            return
        if mark == 1:
            cycle = [*path[path.index(job) :], job]
            raise GraphError(f"jobs.{cycle[0]}.inputs: cycle {' -> '.join(cycle)}")
        state[job] = 1
        for up in deps[job]:
            visit(up, [*path, job])
        state[job] = 2
        order.append(job)

    for job in sorted(deps):
        visit(job, [])
    return order


def descendants(edges: Mapping[str, Iterable[str]], roots: Iterable[str]) -> set[str]:
    """`roots` and every job that reads one of them, at any depth."""
    readers: dict[str, set[str]] = {}
    for job, ups in edges.items():
        for up in ups:
            readers.setdefault(up, set()).add(job)
    out: set[str] = set()
    todo = list(roots)
    while todo:
        job = todo.pop()
        if job in out:
            continue
        out.add(job)
        todo.extend(readers.get(job, ()))
    return out


def definition_hash(definition: Mapping[str, object], upstream: Mapping[str, str]) -> str:
    """A job's generation name: its own definition (SQL or bundle sha256, schema, inputs,
    `where`, config, window) and the hashes of the DAG jobs it reads, so a change upstream
    makes a new generation of every descendant."""
    body = orjson.dumps(
        {"job": definition, "upstream": dict(sorted(upstream.items()))},
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(body).hexdigest()[:16]


@dataclass(frozen=True)
class Partition:
    """A live partition of an input: [start, end), holding `rows` rows."""

    start: int
    end: int
    rows: int = 0


def contiguous_tip(parts: Sequence[Partition], start: int) -> int:
    """End of the committed prefix from `start`: every block of [start, tip) lies in one of
    `parts` (sorted by start; partitions wholly below `start` are ignored)."""
    at = start
    for p in parts:
        if p.end <= at:
            continue
        if p.start > at:
            break
        at = p.end
    return at


def ready_tip(tips: Iterable[int]) -> int | None:
    """How far every range input has committed: the least of their tips (None: no input)."""
    values = list(tips)
    return min(values) if values else None


def next_ranges(
    cursor: int,
    tip: int,
    span: int,
    room: int,
    boundaries: Sequence[Sequence[int]] = (),
    sizes: Sequence[Sequence[Partition]] = (),
    max_rows: int | None = None,
    spread: int = 1,
) -> list[tuple[int, int]]:
    """The next ranges of a per-range job: from `cursor` up to `tip`, each at most `span`
    blocks, at most `room` of them. Each end is a boundary of every input in `boundaries`
    (the partition ends of inputs whose rows carry no block number, which are read whole:
    a range must hold their partitions whole). With `max_rows`, a range also holds at most
    that many of its inputs' rows (`sizes`: each range input's partitions from the cursor,
    sorted, their rows spread evenly over their blocks), ending at one of their partition
    ends, or at one partition when that alone holds more: sparse history goes in few large
    tasks, dense history in tasks of bounded work. Empty when nothing new is ready."""
    if span < 1:
        raise ValueError("span must be positive")
    ends: list[int] | None = None
    for ends_of_input in boundaries:
        mine = {e for e in ends_of_input if cursor < e <= tip}
        ends = sorted(mine if ends is None else set(ends) & mine)
    out: list[tuple[int, int]] = []
    at = cursor
    if max_rows is not None and sizes:
        target = _even_target(cursor, tip, sizes, max_rows, spread)
    while len(out) < room and at < tip:
        limit = min(tip, at + span)
        if max_rows is not None and sizes:
            limit = _rows_limit(at, limit, sizes, max_rows, ends, target)
        if ends is None:
            end = limit
        else:
            fitting = [e for e in ends if at < e <= limit]
            if fitting:
                end = fitting[-1]
            else:
                # A whole partition longer than the span: take it alone.
                later = [e for e in ends if e > at]
                if not later:
                    break
                end = later[0]
        out.append((at, end))
        at = end
    return out


def _even_target(
    cursor: int, tip: int, sizes: Sequence[Sequence[Partition]], max_rows: int, spread: int
) -> float:
    """The rows a range aims at: what is ready from `cursor`, cut evenly into as few ranges
    as `max_rows` allows — 1.2M rows under a limit of 1M go in two ranges of 0.6M, not 1M
    and 0.2M (the level's last range would hold it up) — and into at least `spread` (the
    job's max_concurrency) while each still holds a quarter of `max_rows`: work enough for
    a task, shared by the executors."""
    ready = sum(_share(p, cursor, tip) for parts in sizes for p in parts)
    pieces = max(-(-ready // max_rows), min(spread, ready // (max_rows / 4)), 1)
    return ready / pieces


def _rows_limit(
    at: int,
    limit: int,
    sizes: Sequence[Sequence[Partition]],
    max_rows: int,
    ends: Sequence[int] | None,
    target: float,
) -> int:
    """The end in (at, limit] — a partition end of an input (and one of `ends` when
    given), or `limit` itself — nearest to holding `target` rows of the inputs, never more
    than `max_rows`; the nearest end when even that holds more (a range always moves on)."""
    allowed = set(ends) if ends is not None else None
    candidates = sorted({p.end for parts in sizes for p in parts if at < p.end < limit} | {limit})
    if allowed is not None:
        candidates = [e for e in candidates if e in allowed] or [limit]
    index = [0] * len(sizes)  # per input: its first partition not yet wholly counted
    whole = 0.0  # rows of partitions wholly before the candidate (clipped at `at`)
    best: int | None = None
    best_rows = 0.0
    for end in candidates:
        rows = 0.0
        for k, parts in enumerate(sizes):
            i = index[k]
            while i < len(parts) and parts[i].end <= end:
                whole += _share(parts[i], at, end)
                i += 1
            index[k] = i
            if i < len(parts) and parts[i].start < end:  # one straddles the end
                rows += _share(parts[i], at, end)
        held = whole + rows
        if held > target:
            # The end nearer the even cut, never past `max_rows` (unless nothing is less).
            if best is None or (held <= max_rows and held - target < target - best_rows):
                return end
            return best
        best, best_rows = end, held
    return limit


def _share(p: Partition, at: int, end: int) -> float:
    """The rows of `p` within [at, end), its rows spread evenly over its blocks."""
    inside = min(p.end, end) - max(p.start, at)
    return p.rows * inside / (p.end - p.start) if inside > 0 else 0.0


def invalidated_from(ranges: Iterable[tuple[int, int]], from_block: int) -> int | None:
    """The block a job must recompute from when its inputs lost every block from
    `from_block` on (a reorg repair, an upstream recompute): the start of its first
    committed or scheduled range that reaches `from_block`, or None when none does."""
    starts = [start for start, end in ranges if end > from_block]
    return min(starts) if starts else None


def qualify_relations(sql: str, names: Mapping[str, str], ctes: Iterable[str] = ()) -> str:
    """`sql` (already through the gate) with every relation it reads written as its full
    name (`names`: the name as read, lower case → the relation's full name), each keeping
    the name it was visible under as its alias. A job's SQL so reads the same relations
    whatever else its task is granted. A name not in `names` is left as it is (the gate
    refuses it when the job runs)."""
    import sqlglot
    from sqlglot import exp

    tree = sqlglot.parse_one(sql, read="duckdb")
    local = {c.lower() for c in ctes}
    for node in list(tree.find_all(exp.Table)):
        ident = node.this
        if not isinstance(ident, exp.Identifier) or node.args.get("db"):
            continue
        read = str(ident.name).lower()
        if read in local or read not in names:
            continue
        if node.args.get("alias") is None:
            shown = read.rpartition(".")[2]
            node.set("alias", exp.TableAlias(this=exp.to_identifier(shown, quoted=True)))
        node.set("this", exp.to_identifier(names[read].lower(), quoted=True))
    return str(tree.sql(dialect="duckdb", comments=False))


# Generations (SPEC §19, invariant 21) ------------------------------------------------------


def hidden_name(dag: str, job: str, generation: str) -> str:
    """The catalog name of a job's output while its generation is not current: outside the
    DAG's `{dag}.` namespace (so no `{chain: dag}` expansion or short name reaches it) and
    hidden from the catalog, unique per (dag, job, generation)."""
    return f"gen-{generation}.{dag}.{job}"


def needs_build(
    changed: Iterable[str], building_upstream: Mapping[str, Iterable[str]], has_current: bool
) -> set[str]:
    """The jobs an apply builds as a new generation beside the current one: every changed
    job (new definition or new upstream generation) once the DAG has a current generation,
    and every new job reading one of those. `building_upstream`: job → its DAG inputs.
    Empty when the DAG has no current generation (a first apply is current at once)."""
    if not has_current:
        return set()
    out = set(changed)
    grew = True
    while grew:
        grew = False
        for job, ups in building_upstream.items():
            if job not in out and any(u in out for u in ups):
                out.add(job)
                grew = True
    return out


def covers(building_tip: int, target: int) -> bool:
    """A building job may cut over once its committed prefix reaches what the current one
    covered (or, for a job new in this generation, what its inputs hold)."""
    return building_tip >= target


def rollback_target(states: Mapping[int, str], current: int) -> int | None:
    """The generation a rollback restores: the newest retired one before `current` (a
    purged or abandoned generation is never restored); None when there is none."""
    older = [g for g, s in states.items() if g < current and s == "retired"]
    return max(older) if older else None


def purgeable_rows(
    members: Mapping[int, Mapping[str, str]], states: Mapping[int, str], generation: int
) -> set[str]:
    """The job rows purging `generation` deletes: its rows that no other kept generation
    (current, building or retired) holds — an unchanged job's row serves several."""
    kept = {
        row
        for g, rows in members.items()
        if g != generation and states.get(g) in ("current", "building", "retired")
        for row in rows.values()
    }
    return {row for row in members.get(generation, {}).values() if row not in kept}
