"""Which endpoint of an RPC pool extracts which range (SPEC §16: ranges go where capacity is).

A pure decision over what the pool measured; the extractor applies it and runs each
endpoint's share as its own cryo call(s). Work goes where it succeeds:

- an endpoint's **speed** is the blocks per second its cryo calls extracted successfully (a
  call that failed counts its seconds and no blocks); an endpoint not measured yet is assumed
  as fast as the fastest measured one (or all alike when none is), scaled by its weight;
- a range goes to the endpoint that would finish it first given what it already has
  (largest ranges first), so a slow endpoint gets the share it can finish while the fast
  ones finish theirs, and nothing when even one range would make it the straggler;
- an endpoint that throttles gets at most its **allowance** (the blocks it has proven to
  serve there, see `RpcPool`), unless every candidate is capped: a range larger than that
  goes to one that does not throttle, however idle the throttling one is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Range = tuple[int, int]
MIN_SPEED = 1e-6  # blocks/s of an endpoint measured at nothing (it keeps a place in the order)


@dataclass(frozen=True)
class EndpointCapacity:
    """What the choice knows of one available endpoint."""

    label: str
    weight: int = 1
    speed: float | None = None  # blocks/s of its successful extraction (None: not measured)
    queued: int = 0  # blocks it already has in hand
    allowance: int | None = None  # most blocks it may be given now (None: no cap)


def assign_ranges(
    ranges: Sequence[Range], endpoints: Sequence[EndpointCapacity]
) -> dict[str, list[Range]]:
    """Each range to one endpoint (label -> its ranges, in order; endpoints given nothing are
    absent). Largest ranges first, each to the endpoint with the earliest finish
    (`(queued + given + blocks) / speed`; ties: the faster, then the first listed), within
    the allowances when one uncapped endpoint exists."""
    if not endpoints or not ranges:
        return {}
    capped = any(e.allowance is None for e in endpoints)
    measured = [e.speed for e in endpoints if e.speed is not None]
    base = max(measured) if measured else 1.0
    speed = {
        e.label: max(MIN_SPEED, (base if e.speed is None else e.speed) * e.weight)
        for e in endpoints
    }
    load = {e.label: e.queued for e in endpoints}
    given: dict[str, int] = {e.label: 0 for e in endpoints}
    out: dict[str, list[Range]] = {}
    order = {e.label: i for i, e in enumerate(endpoints)}
    for r in sorted(ranges, key=lambda r: (r[0] - r[1], r[0])):
        blocks = r[1] - r[0]
        fits = [
            e
            for e in endpoints
            if not capped or e.allowance is None or given[e.label] + blocks <= e.allowance
        ]
        best = min(
            fits,
            key=lambda e: (
                (load[e.label] + blocks) / speed[e.label],
                -speed[e.label],
                order[e.label],
            ),
        )
        load[best.label] += blocks
        given[best.label] += blocks
        out.setdefault(best.label, []).append(r)
    for assigned in out.values():
        assigned.sort()
    return out
