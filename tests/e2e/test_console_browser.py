"""The console in a real browser (Debian's chromium driven by Playwright) against a real
`trace up` stack with a followed anvil chain: log in, the overview's numbers equal the
database's, a chain's progress advances live, a query shows its rows, a DLQ message is
redriven, a task is canceled, an alert's delivery attempts are shown — and a reader's
session has no admin button and its calls are refused.

Set TRACE_SCREENSHOTS=docs/screenshots to refresh the README's screenshots."""

from __future__ import annotations

import os
import re
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
from playwright.async_api import Browser, ConsoleMessage, Page, async_playwright

from tests.conftest import REPO, free_port, proc_env, wait_until
from tests.delivery_helpers import Receiver, define_alert, insert_events
from tests.helpers import env_of
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.chain.devnet import Anvil
from trace_platform.config import Settings
from trace_platform.datasets import register_dataset
from trace_platform.db.pool import create_pool
from trace_platform.delivery.signing import new_secret
from trace_platform.ops.dags import DagStatus, dag_status
from trace_platform.ops.env import open_env
from trace_platform.ops.users import create_user
from trace_platform.ports import LITE_ORG_ID

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = os.environ.get("TRACE_SCREENSHOTS")
STILL_HEAD = 19  # the still node's head: blocks 0..19


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    anvil = Anvil(block_time=1, log=tmp_path_factory.mktemp("anvil") / "anvil.log").start()
    yield anvil
    anvil.stop()


@pytest.fixture(scope="module")
def still(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Anvil]:
    """A node that mines only when asked: a token deployed and used in its first blocks,
    then mined to head STILL_HEAD, where it stays."""
    anvil = Anvil(log=tmp_path_factory.mktemp("still") / "anvil.log").start()
    token = anvil.deploy_token()
    for i in range(3):
        anvil.receipt(anvil.transfer_token(token, anvil.accounts()[i + 1], 10**18 * (i + 1)))
    anvil.mine(STILL_HEAD - anvil.head())
    anvil.extra = {"token": token.lower()}  # type: ignore[attr-defined]
    yield anvil
    anvil.stop()


@pytest.fixture(scope="module")
def b_settings(settings: Settings, node: Anvil, still: Anvil) -> Settings:
    return settings.replace(
        port=free_port(),
        query_port=free_port(),
        api_port=free_port(),
        rpc_pools=(("local", node.url), ("still", still.url)),
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


# Reports every Content-Security-Policy violation of a page (blocked inline styles, scripts,
# connections...) to the test; added to every document before the page's own script runs.
_CSP_WATCH = """
document.addEventListener("securitypolicyviolation", (e) => {
  window.__traceProblem(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline"}`
    + ` (${e.sourceFile || location.pathname}:${e.lineNumber}) ${(e.sample || "").slice(0, 80)}`);
}, true);
"""


class WatchedBrowser:
    """The only way the tests get a page: each one reports console errors, uncaught page
    errors and CSP violations into `problems`, and every test fails if any was seen."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.problems: list[str] = []
        self.pages: list[Page] = []

    async def new_page(self) -> Page:
        context = await self.browser.new_context(viewport={"width": 1280, "height": 860})
        await context.expose_binding("__traceProblem", self._reported)
        await context.add_init_script(_CSP_WATCH)
        page = await context.new_page()
        page.on("console", lambda m: self._console(page, m))
        page.on("pageerror", lambda e: self.problems.append(f"{page.url}: page error: {e}"))
        self.pages.append(page)
        return page

    def _reported(self, source: dict[str, Any], text: str) -> None:
        self.problems.append(f"{source['page'].url}: {text}")

    def _console(self, page: Page, msg: ConsoleMessage) -> None:
        if msg.type == "error":
            self.problems.append(f"{page.url}: console error: {msg.text} ({msg.location})")

    async def settle(self) -> list[str]:
        """Every problem reported so far (a round trip to each open page first, so a report
        still in flight arrives), then forget them."""
        for page in self.pages:
            if not page.is_closed():
                await page.evaluate("0")
        seen, self.problems = self.problems, []
        return seen

    async def close_pages(self) -> None:
        for page in self.pages:
            await page.context.close()
        self.pages.clear()


@pytest.fixture(scope="module")
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        await b.close()


@pytest.fixture
async def browser(chromium: Browser) -> AsyncIterator[WatchedBrowser]:
    """A watched browser per test: the test fails on any CSP violation or console error
    seen on any of its pages, on every page it visited."""
    watched = WatchedBrowser(chromium)
    yield watched
    problems = await watched.settle()
    await watched.close_pages()
    assert not problems, "the browser reported problems:\n" + "\n".join(problems)


async def logged_in(browser: WatchedBrowser, api: str, key: str) -> Page:
    page = await browser.new_page()
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
    browser: WatchedBrowser,
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
        # (with the session's cookie and CSRF token, from outside the page: a refused call
        # the page itself made would be a console error)
        token = await rpage.get_attribute("meta[name=csrf-token]", "content") or ""
        refused = await rpage.request.post(
            f"{stack}/v1/tasks/{slow}/cancel", headers={"X-CSRF-Token": token}
        )
        assert refused.status == 403
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

        # every page of the console, each through one live refresh where it has one (the
        # browser fixture fails the test on any CSP violation or console error seen)
        pages = {
            "/ui": "/ui",
            "/ui/login": "/ui/login",
            "/ui/chains": "/ui/chains",
            "/ui/dags": "/ui/dags",  # (with DAGs in it: the next test)
            # (a job's partitions and lineage: the next test; here the not-found page)
            "/ui/dags/{dag}/jobs/{job}": "/ui/dags/no-such-dag/jobs/nothing",
            "/ui/tasks": "/ui/tasks?status=failed",
            "/ui/tasks/{task_id}": f"/ui/tasks/{slow}",
            "/ui/datasets": "/ui/datasets",
            "/ui/datasets/{name}": "/ui/datasets/words",
            "/ui/sql": "/ui/sql",
            "/ui/alerts": "/ui/alerts",
            "/ui/alerts/{name}": "/ui/alerts/flaky-hook",
            "/ui/dlq": "/ui/dlq",
        }
        assert set(pages) == console_pages()
        for url in pages.values():
            await visit(page, stack + url)
        await visit(page, f"{stack}/ui/sql")  # and the SQL page's own query
        await page.click("form#sql button[type=submit]")
        await page.wait_for_selector("table.results")
        await visit(page, f"{stack}/ui/datasets/no-such-dataset")  # the error page
        assert "no-such-dataset" in (await page.text_content("p.error") or "")
        await visit(rpage, f"{stack}/ui")
    finally:
        await receiver.stop()


def console_pages() -> set[str]:
    """The console's pages: every GET route under /ui but its static assets."""
    from fastapi.routing import APIRoute

    from trace_platform.api.console import router

    return {
        r.path
        for r in router.routes
        if isinstance(r, APIRoute) and "GET" in r.methods and not r.path.startswith("/ui/static")
    }


async def visit(page: Page, url: str) -> None:
    """Open a page and, if its live part refreshes, wait until it has been redrawn once
    (the server's fragment swapped in by console.js)."""
    await page.goto(url)
    if await page.locator("#live[data-refresh]").count():
        await redrawn(page)


async def redrawn(page: Page) -> None:
    await page.evaluate(
        "() => document.querySelectorAll('#live > *').forEach((e) => e.dataset.seen = '1')"
    )
    await page.wait_for_function(
        "() => document.querySelector('#live > *') && !document.querySelector('#live > [data-seen]')",
        timeout=15_000,
    )


async def bar(page: Page, stream: str, row: str = "data-stream") -> dict[str, Any]:
    """The drawn progress bar of a stream (or of the row whose `row` attribute is `stream`):
    its fill's rendered width over the bar's, and the values it announces."""
    found: dict[str, Any] = await page.evaluate(
        """([stream, row]) => {
            const svg = document.querySelector(`[${row}='${stream}'] svg.bar`);
            const fill = svg.querySelector("rect.fill").getBoundingClientRect().width;
            return {fill, width: svg.getBoundingClientRect().width,
                    now: Number(svg.getAttribute("aria-valuenow")),
                    max: Number(svg.getAttribute("aria-valuemax"))};
        }""",
        [stream, row],
    )
    return found


async def test_progress_bars_are_drawn_to_scale_and_a_jobs_error_is_shown(
    stack: str, browser: WatchedBrowser, pool: asyncpg.Pool, b_settings: Settings, still: Anvil
) -> None:
    from tests.chain_helpers import apply, status, streams_of

    admin = (await create_user(env_of(pool), LITE_ORG_ID, "bars", "admin")).api_key
    # `half` follows the still node 10 blocks behind its head: blocks 0..9 of 0..19, and
    # decodes its token's Transfer logs with the wrong layout (nothing indexed): none decodes.
    half = STILL_HEAD + 1
    token = still.extra["token"]  # type: ignore[attr-defined]
    window = {"fromBlock": "0x0", "toBlock": hex(half // 2 - 1), "address": token}
    transfers = len(still.rpc("eth_getLogs", [window]))
    assert transfers == 4  # the mint and three transfers
    mode = (
        "{kind: follow_head, from_block: 0, tail_lag: 10, head_poll_seconds: 0.2,"
        " max_head_age_seconds: 86400}"
    )
    await apply(
        b_settings,
        f"kind: chain_sync\nname: half\nchain_id: 31337\nrpc_pool: still\nmode: {mode}\n"
        "streams:\n  blocks: {cryo_dataset: blocks, chunk_size: 5, max_inflight: 2}\n"
        "  logs: {cryo_dataset: logs, chunk_size: 5, max_inflight: 2}\n"
        f"contracts:\n  token:\n    address: [{token}]\n"
        "    events: ['event Transfer(address from, address to, uint256 value)']\n",
    )
    # `stuck` names a pool no process has: it stays at 0 of 1000, in error.
    await apply(
        b_settings,
        "kind: chain_sync\nname: stuck\nchain_id: 31337\nrpc_pool: nowhere\n"
        "mode: {kind: fixed_target, from_block: 0, to_block: 1000}\n"
        "streams:\n  blocks: {cryo_dataset: blocks, chunk_size: 500, max_inflight: 1}\n",
    )

    # A DAG over `half`: `stamped` follows it (10 of 10 blocks), `dup` stops on its first
    # range (its unique_key repeats) and shows why.
    await apply(
        b_settings,
        "kind: dag\nname: halfway\njobs:\n"
        "  stamped: {inputs: [{chain: half}], sql: 'SELECT block_number, timestamp FROM blocks'}\n"
        "  dup: {inputs: [{chain: half}], sql: 'SELECT 1 AS k FROM blocks', unique_key: [k]}\n",
    )
    # A DAG shaped like the demo's: per-range jobs two levels deep over the chain, and a
    # whole-snapshot job over the last (its lineage graph and a job's partitions below).
    await apply(
        b_settings,
        "kind: dag\nname: flow\njobs:\n"
        "  stamp: {inputs: [{chain: half}], sql: 'SELECT block_number, timestamp FROM blocks'}\n"
        "  tally: {inputs: [{job: stamp}], sql: 'SELECT count(*) AS n, min(block_number)"
        " AS first FROM stamp'}\n"
        "  total: {inputs: [{job: tally}], window: all, sql: 'SELECT sum(n) AS n FROM tally'}\n",
    )

    async def settled() -> bool:
        h, s = await status(b_settings, "half"), await status(b_settings, "stuck")
        streams = streams_of(h)
        dag = {j.job: j for j in (await dag_status_of(b_settings, "halfway")).jobs}
        return (
            h["head"] == STILL_HEAD
            and all(x["tip"] == half // 2 for x in streams.values())
            and streams.get("token_Transfer", {}).get("undecodable_logs") == transfers
            and bool(s["error"])
            and dag["stamped"].committed_to == half // 2
            and dag["dup"].status == "stopped"
            and all(
                j.committed_to == half // 2
                for j in (await dag_status_of(b_settings, "flow")).jobs
                if j.window == "range"
            )
        )

    await wait_until(settled, 60, 0.2, "half at 10 of 20, stuck in error, halfway built")

    page = await logged_in(browser, stack, admin)
    await page.goto(f"{stack}/ui/chains")
    for drawn in ("served", "redrawn live"):
        empty, halfway = await bar(page, "stuck.blocks"), await bar(page, "half.blocks")
        assert (empty["now"], empty["max"]) == (0, 1000), drawn
        assert empty["width"] > 100 and empty["fill"] == 0, (drawn, empty)
        assert (halfway["now"], halfway["max"]) == (half // 2, half), drawn
        assert abs(halfway["fill"] / halfway["width"] - 0.5) < 0.01, (drawn, halfway)
        stuck = page.locator(".chain[data-job='stuck']")
        assert await stuck.locator(".state").inner_text() == "error"
        error = await stuck.locator(".job-error").inner_text()
        assert error.startswith("rpc_pool_missing") and "'nowhere'" in error, error
        undecodable = page.locator("[data-stream='half.token_Transfer'] .undecodable")
        assert await undecodable.inner_text() == f"· {transfers} undecodable"
        await redrawn(page)
    await shot(page, "chains-bars")

    await page.click("nav a[href='/ui/dags']")
    await page.wait_for_selector("[data-job='halfway.stamped']")
    for drawn in ("served", "redrawn live"):
        built, stopped = (
            await bar(page, "halfway.stamped", "data-job"),
            await bar(page, "halfway.dup", "data-job"),
        )
        assert (built["now"], built["max"]) == (half // 2, half // 2), drawn
        assert built["width"] > 100 and built["fill"] == built["width"], (drawn, built)
        assert (stopped["now"], stopped["max"], stopped["fill"]) == (0, half // 2, 0), drawn
        dag = page.locator(".dag[data-dag='halfway']")
        assert await dag.locator("h3 .state").inner_text() == "error"
        assert "chain half" in await dag.locator("[data-job='halfway.dup'] .inputs").inner_text()
        error = await dag.locator("[data-job-error='halfway.dup']").inner_text()
        assert "unique_key ['k'] is not unique" in error, error
        assert await dag.locator("[data-job='halfway.stamped'] .lag").inner_text() == "0 blocks"
        assert await dag.locator("[data-job-error='halfway.stamped']").count() == 0
        await redrawn(page)
    await shot(page, "dags")

    # The lineage graph: a node per job and per source, an edge per input, drawn served and
    # live; a job's node opens its partitions, each naming the input partitions it read.
    for drawn in ("served", "redrawn live"):
        graph = page.locator("svg.dag-graph[data-graph='flow']")
        nodes = await graph.locator("[data-node]").evaluate_all(
            "(es) => es.map((e) => e.dataset.node)"
        )
        assert sorted(nodes) == ["chain:half", "job:stamp", "job:tally", "job:total"], drawn
        edges = await graph.locator("path.edge").evaluate_all(
            "(es) => es.map((e) => e.dataset.edge)"
        )
        assert sorted(edges) == [
            "chain:half->job:stamp",
            "job:stamp->job:tally",
            "job:tally->job:total",
        ], drawn
        box = {
            k: await graph.locator(f"[data-node='{k}'] rect >> nth=0").bounding_box()
            for k in ("chain:half", "job:stamp", "job:tally", "job:total")
        }
        xs = []
        for k in ("chain:half", "job:stamp", "job:tally", "job:total"):
            b = box[k]
            assert b is not None and b["width"] > 100, (k, b)
            xs.append(b["x"])
        assert xs == sorted(xs) and len(set(xs)) == 4, (drawn, xs)  # one column per level
        gen = await graph.locator("[data-node='job:tally'] text.gen").text_content() or ""
        assert gen.startswith("gen 1"), gen
        fill = graph.locator("[data-node='job:stamp'] rect.progress")
        assert await fill.get_attribute("data-fraction") == "1.0", drawn
        error = await graph.locator("[data-node='job:tally'] text.lag").text_content() or ""
        tallied = len(await dag_partitions(pool, "flow", "tally"))
        assert f"{tallied} ranges" in error and "lag 0" in error, error
        dup = (
            await page.locator(
                "svg.dag-graph[data-graph='halfway'] [data-node='job:dup'] text.lag"
            ).text_content()
            or ""
        )
        assert dup.startswith("stopped"), dup
        await redrawn(page)
    await page.click("svg.dag-graph[data-graph='flow'] [data-node='job:tally']")
    await page.wait_for_url(f"{stack}/ui/dags/flow/jobs/tally")
    parts = page.locator("table.partitions tr.partition")
    stamp = await dag_partitions(pool, "flow", "stamp")
    tally = await dag_partitions(pool, "flow", "tally")
    assert await parts.count() == len(tally) >= 1
    assert [await parts.nth(i).get_attribute("data-range") for i in range(len(tally))] == [
        f"{s}-{e}" for _, s, e in tally
    ]
    first = parts.nth(0)
    assert await first.get_attribute("data-partition") == str(tally[0][0])
    # tally's first range read the stamp partitions overlapping it, named with their range
    read = [p for p in stamp if p[1] < tally[0][2] and p[2] > tally[0][1]]
    inputs = first.locator(".lineage .input")
    assert await inputs.evaluate_all("(es) => es.map((e) => e.dataset.inputPartition)") == [
        str(p[0]) for p in read
    ]
    inputs = inputs.nth(0)
    text = await inputs.inner_text()
    assert "flow.stamp" in text and f"blocks {read[0][1]}\u2013{read[0][2] - 1}" in text, text
    await shot(page, "dag-job")
    # the input's link opens the input job's page at that partition
    await inputs.locator("a").click()
    await page.wait_for_url(re.compile(r".*/ui/dags/flow/jobs/stamp\?after=-?\d+$"))
    row = page.locator("table.partitions tr.partition >> nth=0")
    assert await row.get_attribute("data-partition") == str(read[0][0])
    lineage = await row.locator(".lineage").inner_text()
    assert "half.blocks" in lineage and "blocks 0\u20134" in lineage, lineage


async def dag_partitions(pool: asyncpg.Pool, dag: str, job: str) -> list[tuple[Any, int, int]]:
    """The live partitions of a DAG's current job: (partition id, range start, range end)."""
    rows = await pool.fetch(
        "SELECT p.partition_id, p.range_start, p.range_end FROM state.dataset_partitions p"
        " JOIN state.dag_jobs j ON j.dataset_uuid = p.dataset_uuid AND j.role = 'current'"
        " JOIN state.dags d ON d.dag_id = j.dag_id"
        " WHERE d.name = $1 AND j.name = $2 AND p.removed_seq IS NULL ORDER BY p.range_start",
        dag,
        job,
    )
    return [(r["partition_id"], int(r["range_start"]), int(r["range_end"])) for r in rows]


async def dag_status_of(settings: Settings, name: str) -> DagStatus:
    async with open_env(settings) as env:
        return await dag_status(env, LITE_ORG_ID, name)


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
