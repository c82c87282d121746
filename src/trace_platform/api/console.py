"""The web console at `/ui` (SPEC §13): server-rendered pages (Jinja2, autoescaped) that call
the operations layer like the `/v1/*` routes do, a 4 KB script that refreshes each page's
live part in place and calls `/v1/*` for actions, and no asset from anywhere but here.

Why this stack: pages render in one round trip from the database (fast on millions of
tasks, nothing to build, no bundle to ship), autoescaping makes every value inert by
default, and the only script is ours, so a strict Content-Security-Policy holds.

Login takes an API key and sets a session cookie (`HttpOnly`, `SameSite=Strict`, signed,
expiring); the key is checked once and never stored in the browser. Every state change
needs the session's CSRF token (`X-CSRF-Token`); the login form has its own double-submit
token. A revoked user's session ends at its next request.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import quote

import asyncpg
import orjson
from fastapi import FastAPI, Request
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.responses import HTMLResponse, RedirectResponse, Response

from trace_platform.domain.errors import AuthError, ForbiddenError, NotFoundError, TraceError
from trace_platform.ops import alerts as alert_ops
from trace_platform.ops import chains as chain_ops
from trace_platform.ops import tasks as task_ops
from trace_platform.ops import users as user_ops
from trace_platform.ops.users import User

SESSION_COOKIE = "trace_session"
LOGIN_COOKIE = "trace_login"
SESSION_SECONDS = 12 * 3600
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SAMPLE_SECONDS = 2.0
HISTORY = 300  # samples kept per org (10 minutes at one per 2 s)

_env = Environment(
    loader=PackageLoader("trace_platform.api", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["json"] = lambda v: orjson.dumps(v, default=str, option=orjson.OPT_INDENT_2).decode()


def _sign(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def session_value(secret: str, user_id: uuid.UUID, now: float | None = None) -> str:
    expires = int((now or time.time()) + SESSION_SECONDS)
    return f"{user_id}.{expires}.{_sign(secret, f'session:{user_id}:{expires}')}"


def csrf_token(secret: str, session: str) -> str:
    return _sign(secret, f"csrf:{session}")


async def session_user(request: Request, pool: asyncpg.Pool, secret: str) -> User | None:
    value = request.cookies.get(SESSION_COOKIE)
    if not value:
        return None
    try:
        user_id, expires, sig = value.split(".")
        uid = uuid.UUID(user_id)
        if int(expires) < time.time():
            return None
    except ValueError:
        return None
    if not hmac.compare_digest(sig, _sign(secret, f"session:{uid}:{expires}")):
        return None
    return await user_ops.user_by_id(pool, uid)


async def check_csrf(request: Request, secret: str) -> None:
    session = request.cookies.get(SESSION_COOKIE, "")
    sent = request.headers.get("x-csrf-token", "")
    if not session or not sent or not hmac.compare_digest(sent, csrf_token(secret, session)):
        raise ForbiddenError("missing or wrong CSRF token")


class Samples:
    """Per org: task counts and queue depths sampled at most every SAMPLE_SECONDS, with a
    short history for the charts (throughput = completed per second between samples). A
    stale sample is served while a fresh one is taken in the background, so no page waits
    for the count (an index-only scan: ~150 ms at a million tasks) after the first."""

    def __init__(self) -> None:
        self.by_org: dict[uuid.UUID, list[dict[str, Any]]] = {}
        self.refreshing: dict[uuid.UUID, asyncio.Task[None]] = {}

    async def _take(self, pool: asyncpg.Pool, org_id: uuid.UUID) -> None:
        history = self.by_org.setdefault(org_id, [])
        counts = await task_ops.task_counts(pool, org_id)
        depths = await task_ops.queue_depths(pool)
        now = time.time()
        rate = 0.0
        if history:
            prev = history[-1]
            done = counts.get("completed", 0) - prev["counts"].get("completed", 0)
            rate = max(0, done) / max(1e-3, now - prev["at"])
        history.append({"at": now, "counts": counts, "depths": depths, "rate": rate})
        del history[:-HISTORY]

    async def _refresh(self, pool: asyncpg.Pool, org_id: uuid.UUID) -> None:
        from trace_platform.db.pool import DB_ERRORS

        try:
            await self._take(pool, org_id)
        except DB_ERRORS:  # the last sample stays; the next page view tries again
            return

    async def current(self, pool: asyncpg.Pool, org_id: uuid.UUID) -> dict[str, Any]:
        history = self.by_org.get(org_id)
        if not history:
            await self._take(pool, org_id)
            return self.by_org[org_id][-1]
        if time.time() - history[-1]["at"] >= SAMPLE_SECONDS and org_id not in self.refreshing:
            task = asyncio.create_task(self._refresh(pool, org_id))
            self.refreshing[org_id] = task
            task.add_done_callback(lambda _t: self.refreshing.pop(org_id, None))
        return history[-1]

    def series(self, org_id: uuid.UUID) -> dict[str, list[float]]:
        h = self.by_org.get(org_id, [])[-60:]
        return {
            "rate": [s["rate"] for s in h],
            "depth": [float(sum(s["depths"].values())) for s in h],
        }


def sparkline(values: list[float], width: int = 360, height: int = 60) -> str:
    """An inline SVG polyline (rendered server-side: no chart library)."""
    if len(values) < 2:
        return ""
    top = max(values) or 1.0
    step = width / (len(values) - 1)
    points = " ".join(
        f"{i * step:.1f},{height - 4 - (v / top) * (height - 8):.1f}" for i, v in enumerate(values)
    )
    return (
        f'<svg class="spark" viewBox="0 0 {width} {height}" width="{width}" height="{height}"'
        f' role="img"><polyline fill="none" stroke="currentColor" stroke-width="2"'
        f' points="{points}"/></svg>'
    )


def install_console(
    app: FastAPI,
    state: dict[str, Any],
    secret: str,
    authenticate: Callable[[Request], Awaitable[User]],
) -> None:
    samples = Samples()

    def page(request: Request, template: str, user: User | None, **ctx: Any) -> HTMLResponse:
        session = request.cookies.get(SESSION_COOKIE, "")
        html = _env.get_template(template).render(
            user=user,
            csrf=csrf_token(secret, session) if session else "",
            fragment=request.query_params.get("fragment") == "1",
            path=request.url.path,
            **ctx,
        )
        return HTMLResponse(
            html,
            headers={
                "Content-Security-Policy": CSP,
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store",
            },
        )

    async def viewer(request: Request) -> User | RedirectResponse:
        try:
            return await authenticate(request)
        except AuthError:
            return RedirectResponse("/ui/login?next=" + quote(request.url.path), status_code=303)

    @app.get("/ui/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        kinds = {"console.js": "text/javascript", "console.css": "text/css"}
        if name not in kinds:
            raise NotFoundError("no such asset")
        data = resources.files("trace_platform.api").joinpath("static", name).read_bytes()
        return Response(data, media_type=kinds[name], headers={"Cache-Control": "max-age=300"})

    @app.get("/ui/login", include_in_schema=False)
    async def login_form(request: Request) -> Response:
        token = secrets.token_urlsafe(24)
        resp = page(request, "login.html", None, login_token=token, error=None)
        resp.set_cookie(
            LOGIN_COOKIE, token, httponly=True, samesite="strict", max_age=600, path="/ui"
        )
        return resp

    @app.post("/ui/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await request.form()
        key, token = str(form.get("api_key", "")), str(form.get("login_token", ""))
        cookie = request.cookies.get(LOGIN_COOKIE, "")
        if not token or not cookie or not hmac.compare_digest(token, cookie):
            raise ForbiddenError("missing or wrong CSRF token")
        user = await user_ops.authenticate(state["pool"], key.strip())
        if user is None:
            fresh = secrets.token_urlsafe(24)
            resp = page(
                request, "login.html", None, login_token=fresh, error="unknown or revoked API key"
            )
            resp.status_code = 401
            resp.set_cookie(
                LOGIN_COOKIE, fresh, httponly=True, samesite="strict", max_age=600, path="/ui"
            )
            return resp
        target = str(form.get("next", "/ui"))
        if not target.startswith("/ui") or target.startswith("//"):
            target = "/ui"
        done = RedirectResponse(target, status_code=303)
        secure = request.url.scheme == "https"
        done.set_cookie(
            SESSION_COOKIE,
            session_value(secret, user.user_id),
            httponly=True,
            samesite="strict",
            secure=secure,
            max_age=SESSION_SECONDS,
            path="/",
        )
        done.delete_cookie(LOGIN_COOKIE, path="/ui")
        return done

    @app.post("/ui/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        await check_csrf(request, secret)
        resp = RedirectResponse("/ui/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    Loader = Callable[[User], Awaitable[dict[str, Any]]]

    async def render(request: Request, template: str, load: Loader) -> Response:
        """Log-in redirect, the page's data for this user, the page (or its error)."""
        user = await viewer(request)
        if isinstance(user, Response):
            return user
        try:
            ctx = await load(user)
        except TraceError as exc:  # not found, a bad filter or cursor: one line, no trace
            return page(request, "error.html", user, error=exc.detail)
        return page(request, template, user, **ctx)

    def pool() -> asyncpg.Pool:
        p: asyncpg.Pool = state["pool"]  # created in the app's lifespan
        return p

    @app.get("/ui", include_in_schema=False)
    async def overview(request: Request) -> Response:
        async def load(user: User) -> dict[str, Any]:
            sample = await samples.current(pool(), user.org_id)
            series = samples.series(user.org_id)
            return {
                "counts": sample["counts"],
                "depths": sample["depths"],
                "rate": sample["rate"],
                "rate_chart": sparkline(series["rate"]),
                "depth_chart": sparkline(series["depth"]),
                "chains": await chain_ops.chain_status(pool(), user.org_id, None),
            }

        return await render(request, "overview.html", load)

    @app.get("/ui/tasks", include_in_schema=False)
    async def tasks(request: Request) -> Response:
        status = request.query_params.get("status") or None
        cursor = request.query_params.get("cursor") or None

        async def load(user: User) -> dict[str, Any]:
            result = await task_ops.list_tasks(pool(), user.org_id, status, cursor, 50)
            return {
                "result": result,
                "status": status,
                "cursor": cursor,
                "statuses": task_ops.TASK_STATUSES,
            }

        return await render(request, "tasks.html", load)

    @app.get("/ui/tasks/{task_id}", include_in_schema=False)
    async def task(request: Request, task_id: uuid.UUID) -> Response:
        async def load(user: User) -> dict[str, Any]:
            return {"t": await task_ops.show_task(pool(), user.org_id, task_id)}

        return await render(request, "task.html", load)

    @app.get("/ui/chains", include_in_schema=False)
    async def chains(request: Request) -> Response:
        async def load(user: User) -> dict[str, Any]:
            return {"chains": await chain_ops.chain_status(pool(), user.org_id, None)}

        return await render(request, "chains.html", load)

    @app.get("/ui/datasets", include_in_schema=False)
    async def datasets(request: Request) -> Response:
        async def load(user: User) -> dict[str, Any]:
            return {"datasets": await task_ops.list_org_datasets(pool(), user.org_id)}

        return await render(request, "datasets.html", load)

    @app.get("/ui/datasets/{name}", include_in_schema=False)
    async def dataset(request: Request, name: str) -> Response:
        async def load(user: User) -> dict[str, Any]:
            return {"ds": await task_ops.show_dataset(pool(), user.org_id, name)}

        return await render(request, "dataset.html", load)

    @app.get("/ui/alerts", include_in_schema=False)
    async def alerts(request: Request) -> Response:
        async def load(user: User) -> dict[str, Any]:
            return {"alerts": await alert_ops.list_alerts(pool(), user.org_id)}

        return await render(request, "alerts.html", load)

    @app.get("/ui/alerts/{name}", include_in_schema=False)
    async def alert(request: Request, name: str) -> Response:
        async def load(user: User) -> dict[str, Any]:
            org, data = user.org_id, state["data"]
            return {
                "a": await alert_ops.show_alert(pool(), data, org, name),
                "events": await alert_ops.alert_events(pool(), data, org, name, 50),
                "deliveries": await alert_ops.alert_deliveries(pool(), data, org, name, None, 50),
            }

        return await render(request, "alert.html", load)

    @app.get("/ui/dlq", include_in_schema=False)
    async def dlq(request: Request) -> Response:
        async def load(user: User) -> dict[str, Any]:
            return {"messages": await task_ops.list_dlq(pool(), user.org_id, 200)}

        return await render(request, "dlq.html", load)
