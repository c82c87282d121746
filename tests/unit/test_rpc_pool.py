"""RPC pool configuration and the endpoint state machine (pure logic, no network)."""

from __future__ import annotations

import time

import pytest

from trace_platform.chain.pool import (
    ETHERS_QUEUE,
    OUT,
    REFUSED,
    THROTTLED,
    PoolRefused,
    PoolUnavailable,
    RpcPool,
    aggregate_views,
)
from trace_platform.chain.rpc import RpcThrottled, _answer_error, retry_after_seconds
from trace_platform.config import Settings
from trace_platform.domain.endpoints import endpoint_label, parse_endpoints
from trace_platform.domain.errors import ConfigError
from trace_platform.domain.range_assignment import EndpointCapacity, assign_ranges

SECRET = "https://eth.example/v2/SECRETKEY"


def test_pool_variables_parse_weights_roles_and_labels() -> None:
    eps = parse_endpoints(
        "main", f"{SECRET};weight=3;name=alchemy, https://b.example;role=head;rps=25"
    )
    assert [(e.label, e.weight, e.role, e.rps) for e in eps] == [
        ("alchemy", 3, "any", None),
        (endpoint_label("https://b.example"), 1, "head", 25.0),
    ]
    assert endpoint_label(SECRET).startswith("ep-") and "SECRET" not in endpoint_label(SECRET)
    assert "SECRETKEY" not in repr(eps[0])  # the URL is kept out of reprs (and so of tracebacks)


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "ftp://x.example",
        f"{SECRET};weight=0",
        f"{SECRET};weight=abc",
        f"{SECRET};role=writer",
        f"{SECRET};colour=blue",
        f"{SECRET};name=Has Space",
        f"{SECRET},{SECRET}",  # the same URL twice: one label
        f"{SECRET};role=head",  # nothing takes ranges
    ],
)
def test_malformed_pools_are_refused_without_echoing_the_url(raw: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_endpoints("main", raw)
    assert "SECRETKEY" not in str(err.value) and "eth.example" not in str(err.value)


def test_settings_take_one_form_per_pool_and_fail_at_load() -> None:
    env = {"TRACE_RPC_POOL_MAIN_URL": "http://a.example", "TRACE_RPC_POOL_MAIN_URLS": SECRET}
    with pytest.raises(ConfigError) as both:  # which one is meant? (never the URLs)
        Settings.load({}, env=env)
    assert "TRACE_RPC_POOL_MAIN_URLS" in both.value.detail and SECRET not in both.value.detail
    with pytest.raises(ConfigError):
        Settings.load({}, env={"TRACE_RPC_POOL_MAIN_URLS": "not a url"})
    assert Settings.rpc_pool_env("my-pool") == "TRACE_RPC_POOL_MY_POOL_URLS"


def test_retry_after_and_rate_limit_answers() -> None:
    assert retry_after_seconds("3") == 3.0 and retry_after_seconds("9999") == 600.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    error = _answer_error({"code": -32005, "message": "limit", "data": {"backoff_seconds": 2}})
    assert isinstance(error, RpcThrottled) and error.retry_after == 2.0
    assert not isinstance(_answer_error({"code": -32000, "message": "reverted"}), RpcThrottled)


def pool(raw: str) -> RpcPool:
    return RpcPool("main", parse_endpoints("main", raw), 1.0)


def test_a_429_sets_an_endpoint_aside_for_its_retry_after_and_halves_its_budget() -> None:
    p = pool("http://a.example;name=a,http://b.example;name=b")
    a, b = p.health
    p.throttled_by(a, 5.0, sent_rate=400.0)
    assert a.state == THROTTLED and a.rps == 200.0 and a.ceiling == 400.0
    assert a.concurrency < 100
    assert p.choose() is b  # a is aside until its Retry-After
    p.throttled_by(b, None, sent_rate=None)
    with pytest.raises(PoolUnavailable) as err:
        p.choose()
    assert err.value.wait is not None and 0 < err.value.wait <= 5.0
    # Successes raise the budget by a tenth of the ceiling, never past it.
    a.until = b.until = 0.0
    for _ in range(20):
        p.ok(a, 0.01)
    assert a.rps == 400.0 and a.state == "healthy"


def test_repeated_failures_take_an_endpoint_out_with_a_growing_probe_backoff() -> None:
    p = pool("http://a.example;name=a,http://b.example;name=b")
    a, _ = p.health
    for _ in range(3):
        a.last_decrease = 0.0
        p.failed(a, "connection refused")
    assert a.state == OUT and a.until > time.monotonic()
    first = a.until - time.monotonic()
    p.failed(a, "connection refused")
    assert a.until - time.monotonic() > first  # doubled
    assert p.choose().label == "b"
    a.until = 0.0
    assert p.choose(exclude=frozenset({"b"})) is a  # probed back in once its time is up
    p.ok(a, 0.01)
    assert a.state == "healthy" and a.failures == 0


def test_choice_follows_weight_load_and_speed_and_refusal_is_final() -> None:
    p = pool("http://a.example;name=a;weight=3,http://b.example;name=b")
    a, b = p.health
    a.busy = 2
    assert p.choose() is a  # (2 + 1) / 3 < (0 + 1) / 1
    a.busy = 3
    assert p.choose() is b
    a.busy = b.busy = 0
    p.extracted(a, 100, 10.0)  # 10x slower per block than b
    p.extracted(b, 100, 1.0)
    assert p.choose() is b
    p.refuse(a, "chain_id_mismatch: serves chain 1")
    p.refuse(b, "chain_id_mismatch: serves chain 1")
    assert a.state == REFUSED
    with pytest.raises(PoolRefused, match="chain_id_mismatch"):
        p.choose()


def test_status_sums_counters_over_processes_and_a_refusal_anywhere_wins() -> None:
    def row(process: str, age: float, **view: object) -> dict[str, object]:
        base = {"endpoint": "a", "state": "healthy", "rps": None, "requests": 1, "throttled": 0}
        return {
            "pool": "main",
            "endpoint": "a",
            "process": process,
            "age": age,
            "view": base | {"errors": 0, "ranges": 0, "blocks": 0, "latency_p50_ms": 2.0} | view,
        }

    rows = [
        row("w1", 1.0, requests=10, throttled=3, rps=50.0, state="throttled"),
        row("w2", 2.0, requests=5, rps=20.0),
        row("dispatcher", 500.0, requests=7, state="refused", reason="old"),
    ]
    (view,) = aggregate_views(rows)["main"]
    assert (view["requests"], view["throttled"], view["rps"]) == (22, 3, 70.0)
    assert view["state"] == "throttled"  # the stale refusal is history, not state
    rows[2]["age"] = 1.0
    assert aggregate_views(rows)["main"][0]["state"] == REFUSED


def test_a_throttling_endpoint_spreads_its_calls_under_cryos_retry_penalty() -> None:
    p = pool("http://a.example;name=a")
    (a,) = p.health
    healthy = p.call_plan(a, ranges=10)
    assert (healthy.calls, healthy.rps, healthy.concurrency, healthy.backoff_ms) == (
        1,
        None,
        100,
        None,
    )
    p.extracted(a, 1000, 1.0, rate=3000.0)
    p.throttled_by(a, None, None, count=16)  # a burst's 429s: counted, one decrease
    assert (a.throttled, a.requests) == (16, 16)
    assert a.concurrency == 50 and a.rps == 1500.0 and a.ceiling == 3000.0
    plan = p.call_plan(a, ranges=10)
    assert plan.calls == 3 and plan.concurrency <= ETHERS_QUEUE and plan.backoff_ms == 50
    assert plan.rps == 500  # the rate is shared by the calls
    assert p.call_plan(a, ranges=1).calls == 1  # never more calls than ranges
    a.throttled_at = time.monotonic() - 1000  # long ago: one call again
    assert p.call_plan(a, ranges=10).calls == 1


def test_a_throttle_with_no_measured_rate_shrinks_the_window_only() -> None:
    p = pool("http://a.example;name=a")
    (a,) = p.health
    p.throttled_by(a, None, None)
    assert a.rps is None and a.concurrency == 50


def test_ranges_go_to_the_endpoint_that_would_finish_them_first() -> None:
    big = [(0, 1000), (1000, 2000)]
    # Nothing measured yet: alike endpoints share the ranges alike.
    alike = assign_ranges(big * 2, [EndpointCapacity("a"), EndpointCapacity("b")])
    assert sorted(len(v) for v in alike.values()) == [2, 2]
    # Measured: a range goes where it finishes first, so a slow endpoint gets the share it
    # can finish while the fast one finishes the rest...
    hundreds = [(i, i + 100) for i in range(0, 1100, 100)]
    fast, slow = EndpointCapacity("fast", speed=1000.0), EndpointCapacity("slow", speed=100.0)
    shares = assign_ranges(hundreds, [fast, slow])
    assert len(shares["slow"]) == 1 and len(shares["fast"]) == 10
    # ... and nothing when one range would make it the straggler.
    assert assign_ranges(big, [fast, EndpointCapacity("slow", speed=10.0)]) == {"fast": big}
    # What an endpoint already has counts; so does its weight while nothing is measured.
    busy = EndpointCapacity("a", queued=3000)
    assert assign_ranges(big, [busy, EndpointCapacity("b")]) == {"b": big}
    heavy = EndpointCapacity("a", weight=3)
    assert len(assign_ranges(hundreds[:4], [heavy, EndpointCapacity("b")])["a"]) == 3


def test_a_throttling_endpoint_gets_only_what_it_has_proven_while_another_can_serve() -> None:
    big, tail = [(0, 1000), (1000, 2000)], [(2000, 2001)]
    healthy = EndpointCapacity("healthy", speed=2000.0)
    # Idle and (never measured) assumed fast, it takes no range past its allowance: having
    # proven nothing, not even a block.
    throttling = EndpointCapacity("throttling", allowance=0)
    assert assign_ranges(big + tail, [throttling, healthy]) == {"healthy": big + tail}
    # A range within its allowance may go there (here: it finishes first).
    small = EndpointCapacity("throttling", allowance=100)
    assert assign_ranges(big + tail, [small, healthy]) == {"healthy": big, "throttling": tail}
    # Proven more, it is sent more (within the allowance, by speed).
    proven = EndpointCapacity("throttling", speed=2000.0, allowance=2000)
    assert assign_ranges(big, [proven, healthy]) == {"throttling": [big[0]], "healthy": [big[1]]}
    # When every endpoint throttles, the caps cannot hold and speed alone decides.
    capped = [EndpointCapacity("a", allowance=10), EndpointCapacity("b", allowance=10)]
    assert sorted(len(v) for v in assign_ranges(big, capped).values()) == [1, 1]


async def test_a_pool_assigns_around_aside_unasked_and_throttling_endpoints() -> None:
    p = pool(
        "http://dead.example;name=dead,http://thr.example;name=throttled,"
        "http://ok.example;name=healthy"
    )
    _dead, throttled, healthy = p.health
    healthy.chain_id = throttled.chain_id = 31337  # dead never answered its chain
    p.throttled_by(throttled, None, None, count=8)
    throttled.until = 0.0  # back from its backoff, still throttling
    big = [(0, 1000), (1000, 2000)]
    shares = await p.assign(big, 31337, time.monotonic() + 1, frozenset())
    assert [(h.label, rs) for h, rs in shares] == [("healthy", big)]
    assert healthy.queued == 2000 and throttled.queued == 0
    # A clean call while throttling proves what it served: twice that is allowed next.
    p.extracted(throttled, 600, 0.5)
    assert throttled.proven == 600 and throttled.allowance(time.monotonic()) == 1200
    # A range the healthy endpoint failed goes to the best of the others.
    shares = await p.assign(big[:1], 31337, time.monotonic() + 1, frozenset({"healthy"}))
    assert [(h.label, rs) for h, rs in shares] == [("throttled", big[:1])]
    p.throttled_by(throttled, None, None)  # the same episode: what it proved still holds
    assert throttled.proven == 600
