import uuid

import pytest

import trace_platform.worker.operators  # noqa: F401  (registers the built-ins)
from trace_platform.logs import get_logger
from trace_platform.operators import OPERATORS, FatalTaskError, OperatorContext


async def collect(
    name: str, payload: dict[str, object], attempt: int = 1
) -> list[dict[str, object]]:
    ctx = OperatorContext(uuid.uuid4(), attempt, payload, get_logger("t"))
    return [row async for row in OPERATORS[name](ctx)]


async def test_emit_alerts_keys_come_from_seed_and_index_not_attempt() -> None:
    first = await collect("emit_alerts", {"count": 5, "seed": "s"}, attempt=1)
    retry = await collect("emit_alerts", {"count": 5, "seed": "s"}, attempt=2)
    assert first == retry
    assert [r["dedupe_key"] for r in first] == [f"s:{i}" for i in range(5)]
    other = await collect("emit_alerts", {"count": 5, "seed": "t"})
    assert {r["dedupe_key"] for r in other}.isdisjoint(r["dedupe_key"] for r in first)


async def test_noop_emits_nothing() -> None:
    assert await collect("noop", {}) == []


@pytest.mark.parametrize(
    "payload",
    [
        {"count": -1},
        {"count": "5"},
        {"count": 10**9},
        {"seed": ""},
        {"seed": 3},
        {"sleep_seconds": -1},
        {"sleep_seconds": "1"},
    ],
)
async def test_bad_emit_alerts_payload_is_fatal(payload: dict[str, object]) -> None:
    with pytest.raises(FatalTaskError):
        await collect("emit_alerts", payload)
