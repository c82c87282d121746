"""The console in a real browser (Debian's chromium driven by Playwright) against a real
`trace up` stack with a followed anvil chain: log in, the overview's numbers equal the
database's, a chain's progress advances live, a query shows its rows, a DLQ message is
redriven, a task is canceled, an alert's delivery attempts are shown — and a reader's
session has no admin button and its calls are refused.

Set TRACE_SCREENSHOTS=docs/screenshots to refresh the README's screenshots."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.conftest import REPO, free_port, proc_env, wait_until
from tests.delivery_helpers import Receiver, define_alert, insert_events
from tests.helpers import env_of
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.chain.devnet import Anvil
from trace_platform.config import Settings
from trace_platform.datasets import register_dataset
from trace_platform.db.pool import create_pool
from trace_platform.delivery.signing import new_secret
from trace_platform.ops.users import create_user
from trace_platform.ports import LITE_ORG_ID

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = os.environ.get("TRACE_SCREENSHOTS")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    anvil = Anvil(block_time=1, log=tmp_path_factory.mktemp("anvil") / "anvil.log").start()
    yield anvil
    anvil.stop()


@pytest.fixture(scope="module")
def b_settings(settings: Settings, node: Anvil) -> Settings:
    return settings.replace(
        port=free_port(),
        query_port=free_port(),
        api_port=free_port(),
        rpc_pools=(("local", node.url),),
        delivery_allow_private=True,
        delivery_retry_base_seconds=0.2,
    )


@pytest.fixture(scope="module")
async def stack(
    b_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[str]:
    logs = tmp_path_factory.mktemp("uplogs")
    env = proc_env(b_settings, TRACE_HOOK_SECRET_T=new_secret())
    up = subprocess.Popen(
        [sys.executable, "-m", "trace_platform", "up"],
        env=env,
        stdout=(logs / "up.log").open("w"),
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    url = f"http://127.0.0.1:{b_settings.api_port}"
    import httpx

    async def ready() -> bool:
        assert up.poll() is None, (logs / "up.log").read_text()[-3000:]
        try:
            return httpx.get(url + "/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    await wait_until(ready, 60, 0.2, "trace up's api ready")
    yield url
    up.terminate()
    up.wait(60)


@pytest.fixture(scope="module")
async def pool(b_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(b_settings.state_database_url or "", max_size=2)
    yield p
    await p.close()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        await b.close()


async def logged_in(browser: Browser, api: str, key: str) -> Page:
    page = await browser.new_page(viewport={"width": 1280, "height": 860})
    await page.goto(f"{api}/ui")
    assert "/ui/login" in page.url
    await page.fill("input[name=api_key]", key)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"{api}/ui")
    return page


async def shot(page: Page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


async def test_an_operator_works_the_console_and_a_reader_cannot_act(
    stack: str,
    browser: Browser,
    pool: asyncpg.Pool,
    b_settings: Settings,
    node: Anvil,
    tmp_path: Path,
) -> None:
    from tests.chain_helpers import apply

    admin = (await create_user(env_of(pool), LITE_ORG_ID, "ops", "admin")).api_key
    reader = (await create_user(env_of(pool), LITE_ORG_ID, "viewer", "reader")).api_key
    # a dataset, tasks in three states (no wake-ups: they stay as they are), a DLQ message,
    # an alert; the chain comes after the overview, whose numbers must then hold still
    path = tmp_path / "n.parquet"
    words = [f"w{i}" for i in range(50)]
    words[3] = "<img src=x onerror=\"document.title='pwned'\">"  # a hostile value in the data
    pq.write_table(pa.table({"n": list(range(50)), "word": words}), path)
    await register_dataset(
        pool, object_store_from_settings(b_settings), "words", [path], LITE_ORG_ID
    )
    slow = uuid.uuid4()
    await pool.execute(
        "INSERT INTO state.tasks (task_id, org_id, status, payload, max_attempts)"
        " VALUES ($1, $2, 'queued', $3, 1)",
        slow,
        LITE_ORG_ID,
        {"operator": "noop", "note": "<script>document.title='pwned'</script>"},
    )
    for status, n in (("completed", 3), ("failed", 2)):
        await pool.execute(
            "INSERT INTO state.tasks (task_id, org_id, status, payload, max_attempts, attempt)"
            ' SELECT gen_random_uuid(), $1, $2, \'{"operator": "noop"}\', 1, 1'
            " FROM generate_series(1, $3)",
            LITE_ORG_ID,
            status,
            n,
        )
    dead = uuid.uuid4()
    await pool.execute(
        "INSERT INTO state.queue_messages (message_id, queue_name, payload)"
        " VALUES ($1, 'buffer_queue_dlq', $2)",
        dead,
        {
            "original": {"org_id": str(LITE_ORG_ID), "record_count": 3, "kind": "bogus"},
            "error": "malformed buffer pointer message",
            "source_queue": "buffer_queue",
        },
    )
    receiver = await Receiver().start()
    receiver.script["/hook"] = [500, 200]
    data = await create_pool(b_settings.data_database_url or "", max_size=1)
    alert = await define_alert(
        pool,
        LITE_ORG_ID,
        "flaky-hook",
        [{"type": "webhook", "url": receiver.url("/hook"), "secret_env": "TRACE_HOOK_SECRET_T"}],
    )
    await insert_events(data, LITE_ORG_ID, alert, ["flaky-hook:0"], [0])
    await data.close()
    try:
        page = await logged_in(browser, stack, admin)
        # overview numbers equal the database's
        await page.wait_for_selector("[data-count=queued]")
        counts = {
            r["status"]: r["n"]
            for r in await pool.fetch(
                "SELECT status, count(*) AS n FROM state.tasks WHERE org_id = $1 GROUP BY status",
                LITE_ORG_ID,
            )
        }

        async def overview_matches() -> bool:
            shown = {
                s: int(await page.text_content(f"[data-count={s}]") or 0)
                for s in ("queued", "completed", "failed")
            }
            now = {
                r["status"]: r["n"]
                for r in await pool.fetch(
                    "SELECT status, count(*) AS n FROM state.tasks WHERE org_id = $1 GROUP BY status",
                    LITE_ORG_ID,
                )
            }
            return all(shown[s] == now.get(s, 0) for s in shown)

        await wait_until(overview_matches, 20, 0.3, "overview equals the database")
        assert counts == {"queued": 1, "completed": 3, "failed": 2}
        await shot(page, "overview")

        # a chain followed at its head
        mode = "{kind: follow_head, from_block: 0, tail_lag: 0, head_poll_seconds: 0.2, max_head_age_seconds: 60}"
        await apply(
            b_settings,
            "kind: chain_sync\nname: live\nchain_id: 31337\nrpc_pool: local\n"
            f"mode: {mode}\nstreams:\n  blocks: {{cryo_dataset: blocks, chunk_size: 1, max_inflight: 4}}\n",
        )

        # a chain's progress advances without a reload
        await page.goto(f"{stack}/ui/chains")
        tip = page.locator("[data-stream='live.blocks'] .tip")
        await tip.wait_for()
        first = int((await tip.get_attribute("data-tip")) or 0)
        await wait_until(lambda: _more(tip, first + 2), 30, 0.3, "the progress bar moved")
        await shot(page, "chains")

        # a query and its rows
        await page.goto(f"{stack}/ui/datasets/words")
        await page.fill("#sql-text", "SELECT n, word FROM dataset WHERE n < 5 ORDER BY n")
        await page.click("form#sql button[type=submit]")
        await page.wait_for_selector("table.results")
        cells = await page.locator("table.results tr").all_inner_texts()
        assert len(cells) == 6 and "w4" in cells[-1]
        assert await page.locator("table.results img").count() == 0  # shown as text
        assert "<img src=x" in (await page.locator("table.results").inner_text())
        assert await page.title() != "pwned"
        await shot(page, "query")

        # the hostile payload is shown as text
        await page.goto(f"{stack}/ui/tasks/{slow}")
        assert await page.title() != "pwned"
        assert "<script>document.title" in (await page.text_content("pre") or "")

        # a reader: no admin buttons, and the endpoints refuse
        rpage = await logged_in(browser, stack, reader)
        await rpage.goto(f"{stack}/ui/tasks/{slow}")
        assert await rpage.locator("button", has_text="Cancel task").count() == 0
        await rpage.goto(f"{stack}/ui/dlq")
        await rpage.wait_for_selector(f"[data-message='{dead}']")
        assert await rpage.locator("button", has_text="Redrive").count() == 0
        status = await rpage.evaluate(
            """async (id) => (await fetch(`/v1/tasks/${id}/cancel`, {method: "POST",
                 headers: {"X-CSRF-Token": document.querySelector('meta[name=csrf-token]').content}})).status""",
            str(slow),
        )
        assert status == 403
        assert (
            await pool.fetchval("SELECT status FROM state.tasks WHERE task_id = $1", slow)
            == "queued"
        )

        # cancel a task (admin); it was queued with no wake-up, so nothing else touches it
        await page.goto(f"{stack}/ui/tasks/{slow}")
        page.once("dialog", lambda d: d.accept())
        await page.click("button:has-text('Cancel task')")
        await wait_until(lambda: _status(pool, slow, "canceled"), 20, 0.2, "the task canceled")

        # redrive the DLQ message (admin)
        await page.goto(f"{stack}/ui/dlq")
        await page.wait_for_selector(f"[data-message='{dead}']")
        await shot(page, "dlq")
        page.once("dialog", lambda d: d.accept())
        await page.click(f"[data-message='{dead}'] button")
        await wait_until(lambda: _gone(pool, dead), 20, 0.2, "the message left the DLQ")

        # an alert's deliveries with their attempts
        await page.goto(f"{stack}/ui/alerts/flaky-hook")
        await page.wait_for_selector("tr.attempt >> nth=1", timeout=30_000)
        text = await page.text_content("table.deliveries") or ""
        assert "delivered" in text and "attempt 1" in text and "attempt 2" in text
        await shot(page, "alert")
    finally:
        await receiver.stop()


async def _more(tip: Any, at_least: int) -> bool:
    return int((await tip.get_attribute("data-tip")) or 0) >= at_least


async def _status(pool: asyncpg.Pool, tid: uuid.UUID, status: str) -> bool:
    return bool(
        await pool.fetchval("SELECT status FROM state.tasks WHERE task_id = $1", tid) == status
    )


async def _gone(pool: asyncpg.Pool, mid: uuid.UUID) -> bool:
    return not await pool.fetchval(
        "SELECT count(*) FROM state.queue_messages WHERE message_id = $1 AND queue_name = 'buffer_queue_dlq'",
        mid,
    )
