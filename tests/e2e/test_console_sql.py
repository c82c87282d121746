"""The console's SQL page in a real browser (Debian's chromium driven by Playwright) against a
real `trace api`, a real query service and a real Postgres (SPEC §21 item 5): a query's answer
streams in as Arrow (timer, history), its rows are paged, a chart of them is drawn (its canvas
holds the series' colour) and redrawn while a large answer is still arriving, Cancel stops a
stream part-way saying how many rows arrived; a query is saved with a typed parameter,
reopened and run again by name with a value (a background query run), and its CSV is
downloaded. Any console error or CSP violation fails the test (`WatchedBrowser`). Screenshots
go to TRACE_SCREENSHOTS, else the test's tmp_path."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from playwright.async_api import Page

from tests.conftest import api_settings, api_stack
from tests.e2e.test_console_browser import WatchedBrowser, browser, chromium, logged_in
from tests.helpers import env_of
from trace_platform.adapters.stores import object_store_from_settings
from trace_platform.config import Settings
from trace_platform.datasets import register_dataset
from trace_platform.db.pool import create_pool
from trace_platform.ops.users import create_user
from trace_platform.ports import LITE_ORG_ID

__all__ = ["browser", "chromium"]  # the watched-browser fixtures, shared with the console test

ROWS = 5000  # more than a page, more than the chart draws: paged and down-sampled
SQL = "SELECT n, n * 2 AS doubled, CASE WHEN n % 2 = 0 THEN 'even' ELSE 'odd' END AS parity FROM waves ORDER BY n"
# a million rows (about 56 MB of Arrow in record batches of 64Ki rows): an answer that takes
# a while to arrive, so the page redraws while it does
LIVE_ROWS = 1_000_000
LIVE_SQL = (
    "SELECT a.n * 5000 + b.n AS n, (a.n * 5000 + b.n) % 1000 AS wave,"
    " md5(CAST(a.n * 5000 + b.n AS VARCHAR)) AS digest FROM waves a, waves b WHERE a.n < 200"
)
SAVED_SQL = "SELECT n, n * 2 AS doubled FROM waves WHERE n < {{ below: BIGINT = 10 }} ORDER BY n"


@pytest.fixture(scope="module")
def c_settings(settings: Settings) -> Settings:
    return api_settings(settings)


@pytest.fixture(scope="module")
async def pool(c_settings: Settings) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(c_settings.state_database_url or "", max_size=2)
    yield p
    await p.close()


@pytest.fixture(scope="module")
async def api(c_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    logs = tmp_path_factory.mktemp("sqlpagelogs")
    async with api_stack(c_settings, logs) as stack:
        yield stack.url


@pytest.fixture(scope="module")
async def writer(c_settings: Settings, pool: asyncpg.Pool, api: str, tmp_path_factory: Any) -> str:
    path = tmp_path_factory.mktemp("waves") / "waves.parquet"
    pq.write_table(pa.table({"n": pa.array(range(ROWS), pa.int64())}), path)
    await register_dataset(
        pool, object_store_from_settings(c_settings), "waves", [path], LITE_ORG_ID
    )
    return (await create_user(env_of(pool), LITE_ORG_ID, "sql-page-writer", "writer")).api_key


async def screenshot(page: Page, tmp_path: Path, name: str) -> Path:
    folder = Path(os.environ.get("TRACE_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


async def drawn_pixels(page: Page, rgb: tuple[int, int, int]) -> int:
    """Pixels of the chart's canvas in (about) colour `rgb`: the drawn series."""
    count: int = await page.evaluate(
        """([r, g, b]) => {
            const canvas = document.querySelector("#sql-chart canvas");
            const ctx = canvas.getContext("2d");
            const px = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
            let n = 0;
            for (let i = 0; i < px.length; i += 4) {
                if (px[i + 3] > 120 && Math.abs(px[i] - r) < 40 && Math.abs(px[i + 1] - g) < 40
                    && Math.abs(px[i + 2] - b) < 40) n++;
            }
            return n;
        }""",
        list(rgb),
    )
    return count


BLUE, RED = (37, 99, 235), (220, 38, 38)  # the first two series' colours (sql.js COLORS)


async def test_run_chart_save_rerun_by_name_and_download_csv(
    api: str, writer: str, browser: WatchedBrowser, tmp_path: Path
) -> None:
    page = await logged_in(browser, api, writer)
    await page.goto(f"{api}/ui/sql")
    await page.wait_for_selector("#saved-list li")

    # run (Ctrl+Enter) as a query run: the timer ticks, the rows are paged, the run is listed
    await page.fill("#sql-text", SQL)
    await page.select_option("#sql-limit", "10000")
    await page.press("#sql-text", "Control+Enter")
    await page.wait_for_selector("table.results")
    status = await page.text_content("#sql-status") or ""
    assert "5,000 row(s)" in status, status
    assert (await page.text_content("#sql-timer") or "").endswith(" s")
    assert await page.locator("table.results tr").count() == 101  # a page of 100 and a header
    assert "rows 1\u2013100 of 5,000" in (await page.text_content("#page-info") or "")
    await page.click("#page-next")
    assert (await page.locator("table.results tr").nth(1).inner_text()).startswith("100\t")
    await page.wait_for_selector("#run-history tr.run td.succeeded")
    history = await page.locator("#run-history tr.run").first.inner_text()
    assert "succeeded" in history and "5,000" in history and SQL not in history

    # a chart: x n, y doubled; down-sampled for drawing, and drawn
    await page.select_option("#chart-x", label="n")
    await page.select_option("#chart-y", label="doubled")
    chart = page.locator("#sql-chart")
    assert await chart.get_attribute("data-series") == "1"
    assert int(await chart.get_attribute("data-points") or 0) <= 2000
    assert "down-sampled" in (await page.text_content("#chart-note") or "")
    assert await drawn_pixels(page, BLUE) > 200
    # by series (parity): two series, two colours; then bars
    await page.select_option("#chart-series", label="parity")
    assert await chart.get_attribute("data-series") == "2"
    assert await drawn_pixels(page, RED) > 200
    await page.select_option("#chart-kind", "bar")
    assert await drawn_pixels(page, BLUE) > 200
    await screenshot(page, tmp_path, "sql-chart")

    # save it with a typed parameter, open it by name, run it with a value
    await page.fill("#sql-text", SAVED_SQL)
    await page.fill("#save-name", "small-waves")
    await page.fill("#save-description", "the first waves")
    await page.click("#sql-save button[type=submit]")
    await page.wait_for_selector("#saved-list button[data-saved='small-waves']")
    assert "saved small-waves" in (await page.text_content("#save-status") or "")
    await page.goto(f"{api}/ui/sql")  # a new visit: nothing left in the page
    await page.click("#saved-list button[data-saved='small-waves']")
    await page.wait_for_selector("input[data-param='below']")
    assert await page.input_value("#sql-text") == SAVED_SQL
    await page.fill("input[data-param='below']", "3")
    await page.click("#sql-run")
    await page.wait_for_function("() => document.querySelectorAll('table.results tr').length === 4")
    rows = await page.locator("table.results tr").all_inner_texts()
    assert [r.split("\t") for r in rows[1:]] == [["0", "0"], ["1", "2"], ["2", "4"]]
    await page.wait_for_selector("#run-history td.succeeded:has-text('small-waves')")
    # it ran as a query run of the saved query: the server lists it after a new visit
    await page.goto(f"{api}/ui/sql")
    await page.wait_for_selector("#run-history td.succeeded:has-text('small-waves')")
    await page.click("#saved-list button[data-saved='small-waves']")
    await page.wait_for_selector("input[data-param='below']")
    # a wrong value: refused naming the parameter
    await page.fill("input[data-param='below']", "3; DROP TABLE waves")
    await page.click("#sql-run")
    await page.wait_for_selector("#sql-status.error")
    assert "parameter 'below'" in (await page.text_content("#sql-status") or "")
    # (chromium logs the refused call's 400 as a console error: that one, and nothing else)
    seen = await browser.settle()
    assert len(seen) == 1 and "400" in seen[0] and "/v1/saved-queries/small-waves/run" in seen[0]
    await page.fill("input[data-param='below']", "4")
    await page.click("#sql-run")
    await page.wait_for_function("() => document.querySelectorAll('table.results tr').length === 5")
    await screenshot(page, tmp_path, "sql-saved")

    # download the saved query's CSV (the same parameter value)
    async with page.expect_download() as info:
        await page.click("button[data-download='csv']")
    download = await info.value
    assert download.suggested_filename == "small-waves.csv"
    saved_to = tmp_path / "small-waves.csv"
    await download.save_as(saved_to)
    assert list(csv.reader(io.StringIO(saved_to.read_text()))) == [
        ["n", "doubled"],
        ["0", "0"],
        ["1", "2"],
        ["2", "4"],
        ["3", "6"],
    ]


async def live_draws(page: Page) -> list[int]:
    """Rows the page held at each redraw it made while the answer was still arriving."""
    text = await page.locator("#sql-chart").get_attribute("data-live-draws") or ""
    return [int(n) for n in text.split(",") if n]


async def test_a_large_answer_is_drawn_while_it_streams_in(
    api: str, writer: str, browser: WatchedBrowser, tmp_path: Path
) -> None:
    page = await logged_in(browser, api, writer)
    await page.goto(f"{api}/ui/sql")
    await page.fill("#sql-text", LIVE_SQL)
    await page.select_option("#sql-limit", str(LIVE_ROWS))
    await page.click("#sql-run")
    await page.wait_for_function(
        "() => !document.getElementById('sql-run').disabled"
        " && document.getElementById('sql-status').textContent.includes(' row(s) in ')",
        timeout=120_000,
    )
    status = await page.text_content("#sql-status") or ""
    assert status.startswith(f"{LIVE_ROWS:,} row(s) in ") and "more rows" not in status, status

    # redrawn at least twice while rows were still arriving, with more rows each time
    live = await live_draws(page)
    assert all(a < b for a, b in itertools.pairwise(live)), live
    # (the last one may already hold every row: drawn before the stream's end was read)
    partial = [n for n in live if n < LIVE_ROWS]
    assert len(partial) >= 2 and partial[0] > 0, (live, status)

    # the final chart is the final result: every row, n from 0 to the last, down-sampled
    chart = page.locator("#sql-chart")
    assert await chart.get_attribute("data-drawn-rows") == str(LIVE_ROWS)
    assert await chart.get_attribute("data-x-min") == "0"
    assert await chart.get_attribute("data-x-max") == str(LIVE_ROWS - 1)
    assert await chart.get_attribute("data-series") == "1"
    assert 1000 <= int(await chart.get_attribute("data-points") or 0) <= 2000
    assert f"of {LIVE_ROWS:,} points drawn" in (await page.text_content("#chart-note") or "")
    assert await page.input_value("#chart-y") == "1"  # wave: numbers, the first after x
    assert await drawn_pixels(page, BLUE) > 200
    assert f"of {LIVE_ROWS:,}" in (await page.text_content("#page-info") or "")
    n, wave, digest = (await page.locator("table.results tr").nth(1).inner_text()).split("\t")
    assert int(wave) == int(n) % 1000 and digest == hashlib.md5(n.encode()).hexdigest()
    history = await page.locator("#run-history tr.run").first.inner_text()
    assert "succeeded · streamed" in history and f"{LIVE_ROWS:,}" in history
    assert LIVE_SQL not in history
    await screenshot(page, tmp_path, "sql-live")


async def test_cancel_stops_a_streaming_answer_and_says_how_many_rows_arrived(
    api: str, writer: str, browser: WatchedBrowser, tmp_path: Path
) -> None:
    page = await logged_in(browser, api, writer)
    await page.goto(f"{api}/ui/sql")
    await page.fill("#sql-text", LIVE_SQL)
    await page.select_option("#sql-limit", str(LIVE_ROWS))
    # Cancel is clicked the moment the first rows are drawn, the answer not yet complete
    # (the page reads on only after that frame is painted: no race with the stream's end)
    await page.evaluate(
        """() => new MutationObserver((_, seen) => {
            seen.disconnect();
            document.getElementById("sql-cancel").click();
        }).observe(document.getElementById("sql-chart"), {attributeFilter: ["data-live-draws"]})"""
    )
    await page.click("#sql-run")
    await page.wait_for_selector("#sql-status.error")
    status = await page.text_content("#sql-status") or ""
    assert status.startswith("canceled: ") and "arrived before it stopped" in status, status
    arrived = int(status.removeprefix("canceled: ").split(" ")[0].replace(",", ""))
    assert 0 < arrived < LIVE_ROWS
    # what it says arrived is what the page holds and drew
    assert f"of {arrived:,}" in (await page.text_content("#page-info") or "")
    assert await page.locator("#sql-chart").get_attribute("data-drawn-rows") == str(arrived)
    assert not await page.locator("#sql-run").is_disabled()
    assert await page.locator("#sql-cancel").is_disabled()
    await page.wait_for_selector("#run-history td.canceled")
    assert f"{arrived:,}" in await page.locator("#run-history tr.run").first.inner_text()
    await screenshot(page, tmp_path, "sql-canceled")


async def test_a_column_of_hex_hashes_charts_as_categories_not_merged_numbers(
    api: str, writer: str, browser: WatchedBrowser
) -> None:
    """`0x…` text is a hash or an address, not a number (JavaScript's Number() reads hex:
    the hashes charted as x values around 1e77); as categories, the x axis is their order."""
    page = await logged_in(browser, api, writer)
    await page.goto(f"{api}/ui/sql")
    await page.fill(
        "#sql-text",
        "SELECT '0x' || md5(CAST(n AS VARCHAR)) || md5(CAST(n + 1 AS VARCHAR)) AS tx_hash,"
        " n AS value"
        " FROM waves WHERE n < 1000 ORDER BY n",
    )
    await page.click("#sql-run")
    await page.wait_for_function(
        "() => !document.getElementById('sql-run').disabled"
        " && document.getElementById('sql-status').textContent.includes(' row(s) in ')"
    )
    chart = page.locator("#sql-chart")
    assert await page.input_value("#chart-x") == "0" and await page.input_value("#chart-y") == "1"
    assert await chart.get_attribute("data-points") == "1000"
    assert await chart.get_attribute("data-drawn-rows") == "1000"
    assert await chart.get_attribute("data-x-min") == "0"
    assert await chart.get_attribute("data-x-max") == "999"


async def test_a_slow_run_is_canceled_from_the_page(
    api: str, writer: str, browser: WatchedBrowser, tmp_path: Path
) -> None:
    page = await logged_in(browser, api, writer)
    await page.goto(f"{api}/ui/sql")
    # a billion row combinations: seconds before its one row, Cancel comes long before. (The
    # API and query service answer an aborted request only once they have a first byte to
    # send: a query canceled before it has one runs to its end, or its time limit, server-side.
    # Kept short here, so the stack's stop does not wait for it.)
    slow = (
        "SELECT sum(a.n * b.n) AS s FROM waves a, waves b, waves c"
        " WHERE c.n < 40 AND a.n + b.n + c.n > 0"
    )
    await page.fill("#sql-text", slow)
    await page.click("#sql-run")
    await page.wait_for_function("() => !document.getElementById('sql-cancel').disabled")
    await page.click("#sql-cancel")
    await page.wait_for_selector("#sql-status.error")
    assert await page.text_content("#sql-status") == "canceled before any row arrived"
    await page.wait_for_selector("#run-history td.canceled")
    assert not await page.locator("#sql-run").is_disabled()
