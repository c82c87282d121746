"""Webhook delivery (SPEC §12, invariant 13): real receivers on loopback, a real Postgres,
the delivery service in this process (its sockets observable) or as `trace deliver`."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import standardwebhooks

from tests.conftest import REPO, Proc, proc_env, wait_until
from tests.delivery_helpers import (
    Receiver,
    all_settled,
    define_alert,
    insert_events,
    wait_statuses,
)
from tests.helpers import run_trace
from trace_platform.config import Settings
from trace_platform.db.pool import create_pool
from trace_platform.db.sql import q
from trace_platform.delivery.guard import GuardedResolver, UrlRefused, check_url
from trace_platform.delivery.service import Deliverer, backoff_seconds, retry_after_seconds
from trace_platform.delivery.signing import new_secret, parse_secrets, signature_header

ORG = uuid.UUID("0b0b0b0b-0000-4000-8000-000000000001")
SECRET = new_secret()
ENV = {"TRACE_HOOK_SECRET_T": SECRET}


@pytest.fixture(scope="module")
async def pools(settings: Settings) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Pool]]:
    state = await create_pool(settings.state_database_url or "", max_size=4)
    data = await create_pool(settings.data_database_url or "", max_size=4)
    yield state, data
    await state.close()
    await data.close()


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


def lite(settings: Settings, **over: Any) -> Settings:
    base: dict[str, Any] = {
        "delivery_allow_private": True,
        "delivery_retry_base_seconds": 0.05,
        "delivery_timeout_seconds": 1.0,
        "delivery_interval": 0.02,
    }
    return settings.replace(**(base | over))


class Running:
    """A Deliverer running in this event loop until the test ends."""

    def __init__(self, deliverer: Deliverer) -> None:
        self.deliverer = deliverer
        self.stop = asyncio.Event()
        self.task = asyncio.create_task(deliverer.run(self.stop))

    async def close(self) -> None:
        self.stop.set()
        await asyncio.wait_for(self.task, 15)


@pytest.fixture
async def deliver(
    settings: Settings, pools: tuple[asyncpg.Pool, asyncpg.Pool]
) -> AsyncIterator[Any]:
    started: list[Running] = []

    def start(env: dict[str, str] | None = None, **over: Any) -> Running:
        state, data = pools
        r = Running(Deliverer(data, state, lite(settings, **over), env if env is not None else ENV))
        started.append(r)
        return r

    yield start
    for r in started:
        await r.close()


def hook(url: str, secret_env: str = "TRACE_HOOK_SECRET_T") -> dict[str, Any]:
    return {"type": "webhook", "url": url, "secret_env": secret_env}


async def one_delivery(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], name: str, url: str, **kw: Any
) -> uuid.UUID:
    state, data = pools
    alert = await define_alert(state, ORG, name, [hook(url)])
    assert await insert_events(data, ORG, alert, [f"{name}:0"], [0], **kw) == 1
    return alert


async def test_500_then_200_is_delivered_on_attempt_2_with_the_same_key(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], receiver: Receiver, deliver: Any
) -> None:
    receiver.script["/flaky"] = [500, 200]
    alert = await one_delivery(pools, "flaky", receiver.url("/flaky"))
    deliver()
    (row,) = await wait_statuses(pools[1], ORG, alert, all_settled)
    assert row["status"] == "delivered" and row["attempts"] == 2
    first, second = receiver.at("/flaky")
    key = str(row["delivery_id"])
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"] == key
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == key
    assert first.body == second.body  # the same event, byte for byte
    attempts = await pools[1].fetch(q("delivery", "attempts_of_delivery"), row["delivery_id"])
    assert [(a["status_code"], a["outcome"]) for a in attempts] == [
        (500, "retry"),
        (200, "delivered"),
    ]


async def test_a_new_delivery_is_posted_at_once_not_at_the_next_poll(
    settings: Settings, pools: tuple[asyncpg.Pool, asyncpg.Pool], receiver: Receiver
) -> None:
    state, data = pools
    # Polling alone would find the row after 30 s: the sink's notification brings it now.
    d = Deliverer(
        data, state, lite(settings, delivery_interval=30.0), ENV, settings.data_database_url
    )
    running = Running(d)
    try:
        assert d.listener is not None
        await wait_until(
            lambda: d.listener is not None and d.listener.listening, 10, 0.02, "listener"
        )
        alert = await one_delivery(pools, "at-once", receiver.url("/at-once"))
        (row,) = await wait_statuses(data, ORG, alert, all_settled, timeout=5.0)
        assert row["status"] == "delivered" and len(receiver.at("/at-once")) == 1
    finally:
        await running.close()
    assert not d.listener.listening  # its connection closed with the process's loop


async def test_retries_are_sent_when_due_and_a_hand_retry_at_once_not_at_the_next_poll(
    settings: Settings, pools: tuple[asyncpg.Pool, asyncpg.Pool], receiver: Receiver
) -> None:
    state, data = pools
    receiver.script["/due"] = [500, 200]
    receiver.script["/by-hand"] = [400, 200]
    d = Deliverer(
        data, state, lite(settings, delivery_interval=30.0), ENV, settings.data_database_url
    )
    running = Running(d)
    try:
        await wait_until(lambda: d.listener is not None and d.listener.listening, 10)
        # A 500 is retried 0.05 s later (the retry base): then, not at a 30 s poll.
        due = await one_delivery(pools, "due", receiver.url("/due"))
        (row,) = await wait_statuses(data, ORG, due, all_settled, timeout=5.0)
        assert row["status"] == "delivered" and row["attempts"] == 2
        # A 400 fails for good; `trace delivery retry` makes it due now and says so.
        by_hand = await one_delivery(pools, "by-hand", receiver.url("/by-hand"))
        (row,) = await wait_statuses(data, ORG, by_hand, all_settled, timeout=5.0)
        assert row["status"] == "failed"
        assert await data.fetchrow(q("delivery", "retry_delivery"), row["delivery_id"], ORG, 3)
        (row,) = await wait_statuses(
            data, ORG, by_hand, lambda rows: rows[0]["status"] == "delivered", timeout=5.0
        )
        assert row["attempts"] == 2 and len(receiver.at("/by-hand")) == 2
    finally:
        await running.close()


@pytest.mark.parametrize(("status", "why"), [(400, "HTTP 400"), (410, "410 Gone")])
async def test_a_4xx_fails_at_once(
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
    receiver: Receiver,
    deliver: Any,
    status: int,
    why: str,
) -> None:
    receiver.script[f"/r{status}"] = [status, 200]
    alert = await one_delivery(pools, f"client-{status}", receiver.url(f"/r{status}"))
    deliver()
    (row,) = await wait_statuses(pools[1], ORG, alert, all_settled)
    assert row["status"] == "failed" and row["attempts"] == 1
    assert why in row["last_error"] and row["last_status_code"] == status
    assert len(receiver.at(f"/r{status}")) == 1


async def test_a_hanging_receiver_times_out_and_is_retried(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], receiver: Receiver, deliver: Any
) -> None:
    receiver.script["/hang"] = ["hang", 204]
    alert = await one_delivery(pools, "hang", receiver.url("/hang"))
    deliver(delivery_timeout_seconds=0.5)
    (row,) = await wait_statuses(pools[1], ORG, alert, all_settled)
    assert row["status"] == "delivered" and row["attempts"] == 2
    attempts = await pools[1].fetch(q("delivery", "attempts_of_delivery"), row["delivery_id"])
    assert attempts[0]["outcome"] == "retry" and attempts[0]["error"] == "timed out"
    assert attempts[0]["duration_ms"] >= 450


async def test_a_redirect_is_not_followed(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], receiver: Receiver, deliver: Any
) -> None:
    receiver.script["/moved"] = [(302, {"Location": receiver.url("/elsewhere")})]
    alert = await one_delivery(pools, "moved", receiver.url("/moved"))
    deliver()
    (row,) = await wait_statuses(pools[1], ORG, alert, all_settled)
    assert row["status"] == "failed" and "redirects are not followed" in row["last_error"]
    assert receiver.at("/elsewhere") == [] and len(receiver.at("/moved")) == 1


async def test_retry_after_is_honoured_and_the_attempt_limit_fails_the_delivery(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], receiver: Receiver, deliver: Any
) -> None:
    receiver.script["/busy"] = [(429, {"Retry-After": "1"}), 503]
    alert = await one_delivery(pools, "busy", receiver.url("/busy"), max_attempts=3)
    deliver()
    (row,) = await wait_statuses(pools[1], ORG, alert, all_settled)
    first, second, third = receiver.at("/busy")
    assert second.at - first.at >= 0.9  # Retry-After: 1, though the backoff base is 0.05 s
    assert third.at - second.at < 0.9
    assert row["status"] == "failed" and row["attempts"] == 3
    assert "gave up after 3 attempts" in row["last_error"]


async def test_every_delivery_verifies_with_the_standardwebhooks_library(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], receiver: Receiver, deliver: Any, tmp_path: Path
) -> None:
    state, data = pools
    alert = await define_alert(state, ORG, "signed", [hook(receiver.url("/signed"))])
    keys = [f"signed:{i}" for i in range(5)]
    await insert_events(data, ORG, alert, keys, [0])
    deliver()
    await wait_statuses(data, ORG, alert, lambda rows: len(rows) == 5 and all_settled(rows))
    seen = receiver.at("/signed")
    assert len(seen) == 5
    wh = standardwebhooks.Webhook(SECRET)
    bodies = set()
    for s in seen:
        event = wh.verify(s.body, s.headers)
        assert event["type"] == "alert.fired" and event["data"]["alert"] == "signed"
        bodies.add(event["data"]["dedupe_key"])
    assert bodies == set(keys)
    s = seen[0]
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        wh.verify(s.body.replace(b"signed", b"signeD", 1), s.headers)  # tampered body
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new_secret()).verify(s.body, s.headers)  # wrong secret
    stale = int(s.headers["webhook-timestamp"]) - 3600
    keys_ = parse_secrets(SECRET, "T")
    old = dict(s.headers) | {
        "webhook-timestamp": str(stale),
        "webhook-signature": signature_header(s.headers["webhook-id"], stale, s.body, keys_),
    }
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        wh.verify(s.body, old)  # correctly signed, but an hour old: a replay
    # The TypeScript library (npm `standardwebhooks`) verifies the same deliveries.
    captured = tmp_path / "captured.json"
    captured.write_text(
        json.dumps(
            {
                "secret": SECRET,
                "deliveries": [
                    {
                        "headers": {k.lower(): v for k, v in x.headers.items()},
                        "body": x.body.decode(),
                    }
                    for x in seen
                ],
                "tampered": {
                    "headers": {k.lower(): v for k, v in s.headers.items()},
                    "body": s.body.decode().replace("signed", "signeD", 1),
                },
            }
        )
    )
    out = subprocess.run(
        ["node", str(REPO / "tests" / "js" / "verify-webhooks.mjs"), str(captured)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO / "tools",
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"verified": 5, "tampered_rejected": True}


async def test_during_a_secret_rotation_both_secrets_verify(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], receiver: Receiver, deliver: Any
) -> None:
    old, new = new_secret(), new_secret()
    alert = await one_delivery(pools, "rotation", receiver.url("/rot"))
    deliver(env={"TRACE_HOOK_SECRET_T": f"{new} {old}"})
    await wait_statuses(pools[1], ORG, alert, all_settled)
    (s,) = receiver.at("/rot")
    assert len(s.headers["webhook-signature"].split()) == 2
    for secret in (old, new):
        standardwebhooks.Webhook(secret).verify(s.body, s.headers)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new_secret()).verify(s.body, s.headers)


async def test_a_missing_secret_is_retried_and_never_sent_unsigned(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], receiver: Receiver, deliver: Any
) -> None:
    alert = await one_delivery(pools, "nosecret", receiver.url("/nosecret"), max_attempts=2)
    deliver(env={})
    (row,) = await wait_statuses(pools[1], ORG, alert, all_settled)
    assert row["status"] == "failed" and "TRACE_HOOK_SECRET_T is not set" in row["last_error"]
    assert receiver.at("/nosecret") == []


SSRF_URLS = [
    "https://127.0.0.1:{port}/x",
    "https://localhost:{port}/x",
    "https://[::1]:{port}/x",
    "https://10.0.0.1/x",
    "https://169.254.169.254/latest/meta-data/",
    "https://0x7f000001:{port}/x",
    "https://loopback.test:{port}/x",  # a name that resolves to loopback (see the resolver)
    "https://[fd00:ec2::254]/x",
    "https://[::ffff:127.0.0.1]:{port}/x",
    "http://example.com/x",
]


class LoopbackDns(GuardedResolver):
    """The guard with a DNS answer we control: loopback.test resolves to 127.0.0.1."""

    def __init__(self) -> None:
        super().__init__(allow_private=False)

    async def resolve(self, host: str, port: int = 0, family: Any = socket.AF_INET) -> Any:
        if host == "loopback.test":
            answers = [
                {
                    "hostname": host,
                    "host": "127.0.0.1",
                    "port": port,
                    "family": socket.AF_INET,
                    "proto": 0,
                    "flags": 0,
                }
            ]
            self.inner = _Fixed(answers)  # type: ignore[assignment]
        return await super().resolve(host, port, family)


class _Fixed:
    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers = answers

    async def resolve(self, *_a: Any, **_k: Any) -> list[dict[str, Any]]:
        return self.answers

    async def close(self) -> None:
        return None


async def test_the_ssrf_guard_refuses_private_targets_without_connecting(
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    state, data = pools
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    urls = [u.format(port=port) for u in SSRF_URLS]
    alert = await define_alert(state, ORG, "ssrf", [hook(u) for u in urls])
    await insert_events(data, ORG, alert, ["ssrf:0"], list(range(8)))
    alert2 = await define_alert(state, ORG, "ssrf2", [hook(u) for u in urls[8:]])
    await insert_events(data, ORG, alert2, ["ssrf2:0"], [0, 1])

    connects: list[Any] = []
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def spy(self: socket.socket, address: Any) -> Any:
        if self.type == socket.SOCK_STREAM and self.family in (socket.AF_INET, socket.AF_INET6):
            connects.append(address)
        return real_connect(self, address)

    def spy_ex(self: socket.socket, address: Any) -> Any:
        if self.type == socket.SOCK_STREAM and self.family in (socket.AF_INET, socket.AF_INET6):
            connects.append(address)
        return real_connect_ex(self, address)

    d = Deliverer(data, state, lite(settings, delivery_allow_private=False), ENV)
    monkeypatch.setattr("trace_platform.delivery.service.GuardedResolver", lambda _p: LoopbackDns())
    monkeypatch.setattr(socket.socket, "connect", spy)
    monkeypatch.setattr(socket.socket, "connect_ex", spy_ex)
    r = Running(d)
    try:
        rows = await wait_statuses(
            data, ORG, alert, lambda rs: len(rs) == 8 and all_settled(rs), timeout=30
        )
        rows2 = await wait_statuses(
            data, ORG, alert2, lambda rs: len(rs) == 2 and all_settled(rs), timeout=30
        )
    finally:
        await r.close()
        monkeypatch.undo()
    for row in rows + rows2:
        assert row["status"] == "failed" and row["attempts"] == 1, dict(row)
        assert "SSRF guard" in row["last_error"] or "https" in row["last_error"], dict(row)
    assert connects == []  # no socket ever tried to connect anywhere
    with pytest.raises(BlockingIOError):
        listener.accept()  # and the loopback listener was never reached
    listener.close()


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        ("https://hooks.example.com/x", False),
        ("https://8.8.8.8/x", False),
        ("https://[2001:4860:4860::8888]/x", False),
        ("https://100.64.0.1/x", True),  # carrier-grade NAT: not public
        ("https://192.168.1.1/x", True),
        ("https://224.0.0.1/x", True),
        ("https://0.0.0.0/x", True),
        ("https://[fe80::1]/x", True),
        ("https://[::]/x", True),
        ("https://app.localhost/x", True),
        ("ftp://example.com/x", True),
        ("https:///nohost", True),
        ("https://2130706433/x", True),  # decimal 127.0.0.1
        ("https://0x7f000001/x", True),
        ("https://127.1/x", True),
        ("https://017700000001/x", True),  # octal
        ("https://user:pw@127.0.0.1/x", True),
        ("https://[fe80::1%25eth0]/x", True),
    ],
)
def test_static_url_checks(url: str, refused: bool) -> None:
    if refused:
        with pytest.raises(UrlRefused):
            check_url(url, allow_private=False)
    else:
        check_url(url, allow_private=False)


def test_backoff_spans_about_a_day_and_retry_after_is_bounded() -> None:
    import random

    rng = random.Random(7)
    total = sum(backoff_seconds(a, 8.0, rng) for a in range(1, 12))
    assert 18 * 3600 < total < 32 * 3600  # 12 attempts over ~24 h
    assert retry_after_seconds("120") == 120.0
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past
    assert retry_after_seconds(str(10**9)) == 24 * 3600.0
    assert retry_after_seconds("soon") is None


async def test_killing_trace_deliver_loses_nothing(
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
    settings: Settings,
    receiver: Receiver,
    tmp_path: Path,
) -> None:
    """kill -9 of the delivery process mid-run: every delivery arrives at least once, and a
    duplicate at the receiver always carries the same idempotency key."""
    state, data = pools
    receiver.script["/slow"] = ["slow"]
    alert = await define_alert(state, ORG, "killed", [hook(receiver.url("/slow"))])
    keys = [f"killed:{i}" for i in range(300)]
    await insert_events(data, ORG, alert, keys, [0])
    s = lite(settings, delivery_concurrency=4)

    def deliver_proc() -> Proc:
        return Proc(
            ["deliver"], proc_env(s, **ENV), tmp_path / f"deliver-{uuid.uuid4().hex[:6]}.log"
        )

    proc = deliver_proc().start()
    await wait_until(lambda: len(receiver.at("/slow")) >= 20, 30, what="first deliveries")
    proc.kill()
    before = len(receiver.at("/slow"))
    assert before < 300, "the process finished before it could be killed"
    proc2 = deliver_proc().start()
    try:
        rows = await wait_statuses(
            data, ORG, alert, lambda rs: len(rs) == 300 and all_settled(rs), timeout=60
        )
    finally:
        proc2.stop()
    assert all(r["status"] == "delivered" for r in rows)
    got: dict[str, set[str]] = {}
    for seen in receiver.at("/slow"):
        event = standardwebhooks.Webhook(SECRET).verify(seen.body, seen.headers)
        got.setdefault(event["data"]["dedupe_key"], set()).add(seen.headers["Idempotency-Key"])
    assert set(got) == set(keys)
    assert all(len(ids) == 1 for ids in got.values())


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    result: subprocess.CompletedProcess[str] = run_trace(settings, *args, "--org-id", str(ORG))
    return result


async def test_cli_shows_deliveries_and_retries_a_failed_one(
    pools: tuple[asyncpg.Pool, asyncpg.Pool],
    settings: Settings,
    receiver: Receiver,
    deliver: Any,
) -> None:
    receiver.script["/later"] = [400, 200]
    alert = await one_delivery(pools, "later", receiver.url("/later"))
    deliver()
    (row,) = await wait_statuses(pools[1], ORG, alert, all_settled)
    assert row["status"] == "failed"
    out = cli(settings, "alert", "deliveries", "later", "--json")
    assert out.returncode == 0, out.stderr
    (listed,) = json.loads(out.stdout)
    assert listed["status"] == "failed" and listed["attempt_log"][0]["status_code"] == 400
    shown = cli(settings, "alert", "show", "later")
    assert "deliveries failed 1" in shown.stdout and "$TRACE_HOOK_SECRET_T" in shown.stdout
    assert SECRET not in shown.stdout + shown.stderr  # the secret's name, never its value

    retried = cli(settings, "delivery", "retry", str(row["delivery_id"]))
    assert retried.returncode == 0 and "pending again" in retried.stdout, retried.stderr
    (row,) = await wait_statuses(pools[1], ORG, alert, all_settled)
    assert row["status"] == "delivered" and row["attempts"] == 2
    again = cli(settings, "delivery", "retry", str(row["delivery_id"]))
    assert again.returncode == 1 and "is delivered; nothing to retry" in again.stderr
    missing = cli(settings, "delivery", "retry", str(uuid.uuid4()))
    assert missing.returncode == 1 and "no delivery" in missing.stderr
    other_org = run_trace(settings, "delivery", "retry", str(row["delivery_id"]))
    assert other_org.returncode == 1 and "no delivery" in other_org.stderr  # not its org's


async def test_a_slack_channel_gets_a_readable_message(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], receiver: Receiver, deliver: Any
) -> None:
    state, data = pools
    alert = await define_alert(
        state, ORG, "to-slack", [{"type": "slack", "url": receiver.url("/slack")}]
    )
    await insert_events(data, ORG, alert, ["to-slack:0"], [0])
    deliver()
    (row,) = await wait_statuses(data, ORG, alert, all_settled)
    assert row["status"] == "delivered"
    (s,) = receiver.at("/slack")
    message = json.loads(s.body)
    assert set(message) == {"text"}
    assert message["text"].startswith("*[critical] to-slack* at block 100, tx `0xtx0`")
    assert "webhook-signature" not in s.headers  # Slack URLs carry their own secret


async def test_a_dead_result_writer_stops_the_process_instead_of_running_on(
    pools: tuple[asyncpg.Pool, asyncpg.Pool], settings: Settings
) -> None:
    state, data = pools
    d = Deliverer(data, state, lite(settings), ENV)

    async def broken(_stop: asyncio.Event) -> None:
        raise RuntimeError("disk on fire")

    d.results.run = broken  # type: ignore[method-assign]
    stop = asyncio.Event()
    await asyncio.wait_for(d.run(stop), 10)  # returns on its own: `trace up` restarts it
    assert stop.is_set()
