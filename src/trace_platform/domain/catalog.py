"""The catalog's naming scheme (SPEC §15): which names a query may use for which relation.

Pure functions: the query binding applies them to a task's grants or to a person's org.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

DATASET_ALIAS = "dataset"
RELATION_INCOMPLETE = "relation_incomplete"  # the error code of a range not yet committed
_NOT_BARE = re.compile(r"[^a-z0-9_]")


def bare_alias(name: str) -> str:
    """`local-anvil.blocks` → `local_anvil_blocks`: a name that needs no quotes."""
    return _NOT_BARE.sub("_", name.lower())


def job_of(name: str) -> str | None:
    head, dot, _ = name.partition(".")
    return head if dot else None


def relation_aliases(names: Iterable[str], default_job: str | None = None) -> dict[str, str]:
    """The catalog's naming scheme: every name a query may use (lower case) → the relation's
    full name. In order of precedence:

    1. the full name (`"local-anvil.blocks"` quoted, `"local-anvil".blocks`, or bare when it
       is a plain word, e.g. `prices`);
    2. with a default job, the job's relations by their short name (`blocks`, `logs`,
       `pair_Swap`);
    3. the bare alias of every relation (`local_anvil_blocks`).

    A name two relations of the same rank would share is nobody's (refused as not granted),
    and a name never shadows one of a higher rank."""
    full = {n.lower(): n for n in names}
    out: dict[str, str] = dict(full)
    tiers: list[dict[str, set[str]]] = [{}, {}]
    for low, name in full.items():
        if default_job is not None and job_of(low) == default_job.lower():
            tiers[0].setdefault(low.partition(".")[2], set()).add(name)
        tiers[1].setdefault(bare_alias(low), set()).add(name)
    for tier in tiers:
        taken = set(out)
        for alias, targets in tier.items():
            if alias not in taken and len(targets) == 1:
                out[alias] = next(iter(targets))
    return out


def _listed(items: list[str]) -> str:
    quoted = [f"'{i}'" for i in items]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def unresolved_reason(name: str, names: Iterable[str], shown: str) -> str:
    """Why the name `name` (lower case, as the gate read it) reads nothing among the relations
    `names` (full names) the caller holds, as the refusal says it: `shown` is the name as an
    error may show it. A short name that several chain jobs hold, or a bare alias two
    relations share, is ambiguous (the jobs or relations are named, with the full name to
    write); a job's short name without a default job points at its full name."""
    full = sorted(set(names), key=str.lower)
    holders = [n for n in full if job_of(n) is not None and n.partition(".")[2].lower() == name]
    jobs = sorted({job_of(n) or "" for n in holders}, key=str.lower)
    if len(jobs) > 1:
        return (
            f"relation '{shown}' is ambiguous: held by chain jobs {_listed(jobs)};"
            f' write "{holders[0]}" (or name a default job)'
        )
    if holders:
        return f"relation '{shown}' is not granted by that name; write \"{holders[0]}\""
    sharing = [n for n in full if bare_alias(n) == name]
    if len(sharing) > 1:
        return (
            f"relation '{shown}' is ambiguous: it is the bare alias of {_listed(sharing)};"
            " write the full name, quoted"
        )
    return f"relation '{shown}' is not granted"


def default_job(names: Iterable[str], chain_names: Iterable[str]) -> str | None:
    """The job whose relations answer to short names: the only chain job among them."""
    jobs = {job_of(n.lower()) for n in chain_names} - {None}
    return next(iter(jobs)) if len(jobs) == 1 else None


def is_ambiguous(name: str, names: Iterable[str]) -> bool:
    """Whether `unresolved_reason` refuses `name` as ambiguous: a short name several chain
    jobs hold, or a bare alias two relations share (`names`: full names)."""
    full = set(names)
    holders = [n for n in full if job_of(n) is not None and n.partition(".")[2].lower() == name]
    if holders:
        return len({(job_of(n) or "").lower() for n in holders}) > 1
    return sum(1 for n in full if bare_alias(n) == name) > 1


def person_aliases(
    relations: Iterable[Any], job: str | None
) -> tuple[dict[str, str], dict[str, bool]]:
    """A person's catalog (`/v1/query`, saved queries): every name of the org's relations
    (rows of `name`, `kind`, `derived`) → full name, and each relation → whether it is
    partitioned. Short names answer for `job`, or the org's only chain job; a DAG's outputs
    (`dag.job`) never take that role from it."""
    rows = list(relations)
    chain = [r["name"] for r in rows if r["kind"] == "partitions" and not r["derived"]]
    kinds = {r["name"]: r["kind"] == "partitions" for r in rows}
    return relation_aliases(kinds, job or default_job(kinds, chain)), kinds


@dataclass(frozen=True)
class RelationInfo:
    """A relation a query may read: its full name, kind (chain / versions), every name the
    catalog gives it and its columns ({name, type})."""

    name: str
    kind: str
    names: tuple[str, ...]
    columns: tuple[dict[str, str], ...]
