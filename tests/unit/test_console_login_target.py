"""Where a console log-in leads: the page asked for (path and query) on this site, never
anywhere else (an open redirect would make the log-in page a phishing relay)."""

from __future__ import annotations

import pytest

from trace_platform.api.console import _next_page


@pytest.mark.parametrize(
    "asked",
    ["/ui", "/ui/tasks?state=failed", "/ui/dags/dex/jobs/pool_volume?generation=2&after=10"],
)
def test_a_console_page_of_this_site_is_where_the_log_in_leads(asked: str) -> None:
    assert _next_page(asked) == asked


@pytest.mark.parametrize(
    "asked",
    [
        None,
        "",
        "https://evil.example/ui",
        "//evil.example/ui",
        "/\\evil.example",
        "/ui\\..\\evil",
        "/api/v1/users",
        "javascript:alert(1)",
        " /ui",
    ],
)
def test_anything_else_leads_to_the_console_home(asked: str | None) -> None:
    assert _next_page(asked) == "/ui"
