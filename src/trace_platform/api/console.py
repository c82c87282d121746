"""The web console at `/ui` (SPEC §13): server-rendered pages (Jinja2, autoescaped) that call
the operations layer like the `/v1/*` routes do, a 4 KB script that refreshes each page's
live part in place and calls `/v1/*` for actions, the SQL page's script (`sql.js`: query runs,
pages, saved queries, downloads, charts drawn by uPlot, vendored under `static/vendor/`), and
no asset from anywhere but here.

Why this stack: pages render in one round trip from the database (fast on millions of
tasks, nothing to build, no bundle to ship), autoescaping makes every value inert by
default, and the only script is ours, so a strict Content-Security-Policy holds.

Login takes an API key and sets a session cookie (`HttpOnly`, `SameSite=Strict`, signed,
expiring); the key is checked once and never stored in the browser. Every state change
needs the session's CSRF token (`X-CSRF-Token`); the login form has its own double-submit
token. A revoked user's session ends at its next request.
"""

from __future__ import annotations

import hmac
import secrets
import uuid
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import quote

import orjson
from fastapi import APIRouter, Request
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.responses import HTMLResponse, RedirectResponse, Response

from trace_platform.api.auth import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    SESSION_SECONDS,
    api_state,
    authenticate,
    check_csrf,
    csrf_token,
    session_value,
)
from trace_platform.api.samples import Samples, sparkline
from trace_platform.domain.dag_graph import layout as dag_layout
from trace_platform.domain.errors import AuthError, ForbiddenError, NotFoundError, TraceError
from trace_platform.ops import alerts as alert_ops
from trace_platform.ops import chains as chain_ops
from trace_platform.ops import dag_lineage
from trace_platform.ops import dags as dag_ops
from trace_platform.ops import datasets as dataset_ops
from trace_platform.ops import dlq as dlq_ops
from trace_platform.ops import tasks as task_ops
from trace_platform.ops import users as user_ops
from trace_platform.ops.env import OpsEnv
from trace_platform.ops.users import User

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
ASSETS = {
    "console.js": "text/javascript",
    "console.css": "text/css",
    "sql.js": "text/javascript",
    "arrow_stream.js": "text/javascript",  # the SQL page's reader of a streamed Arrow answer
    # uPlot 1.6.32 (MIT, vendor/uPlot.LICENSE), from npm: the SQL page's charts, offline
    "vendor/uPlot.iife.min.js": "text/javascript",
    "vendor/uPlot.min.css": "text/css",
}

_env = Environment(
    loader=PackageLoader("trace_platform.api", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["json"] = lambda v: orjson.dumps(v, default=str, option=orjson.OPT_INDENT_2).decode()
# The DAG page's lineage graph: a DagStatus laid out as SVG geometry (dag_graph.html).
_env.filters["dag_graph"] = lambda d: dag_layout(
    [(j.job, [(i.kind, i.name) for i in j.inputs]) for j in d.jobs]
)

router = APIRouter(include_in_schema=False)
Loader = Callable[[User, OpsEnv], Awaitable[dict[str, Any]]]


def page(request: Request, template: str, user: User | None, **ctx: Any) -> HTMLResponse:
    session = request.cookies.get(SESSION_COOKIE, "")
    secret = api_state(request).secret
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


async def render(request: Request, template: str, load: Loader) -> Response:
    """Log-in redirect, the page's data for this user, the page (or its error)."""
    try:
        user = await authenticate(request)
    except AuthError:
        back = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/ui/login?next=" + quote(back), status_code=303)
    try:
        ctx = await load(user, api_state(request).env)
    except TraceError as exc:  # not found, a bad filter or cursor: one line, no trace
        return page(request, "error.html", user, error=exc.detail)
    return page(request, template, user, **ctx)


def _next_page(target: object) -> str:
    """Where a log-in leads: a console page of this site (path and query), else /ui."""
    text = str(target or "/ui")
    if not text.startswith("/ui") or text.startswith("//") or "\\" in text:
        return "/ui"
    return text


def _login_page(
    request: Request, error: str | None, status: int = 200, next_url: object = None
) -> Response:
    token = secrets.token_urlsafe(24)
    target = _next_page(next_url or request.query_params.get("next"))
    resp = page(request, "login.html", None, login_token=token, error=error, next_url=target)
    resp.status_code = status
    resp.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", max_age=600, path="/ui")
    return resp


@router.get("/ui/static/{name:path}")
async def static(name: str) -> Response:
    if name not in ASSETS:
        raise NotFoundError("no such asset")
    data = resources.files("trace_platform.api").joinpath("static", name).read_bytes()
    return Response(data, media_type=ASSETS[name], headers={"Cache-Control": "max-age=300"})


@router.get("/ui/login")
async def login_form(request: Request) -> Response:
    return _login_page(request, None)


@router.post("/ui/login")
async def login(request: Request) -> Response:
    state = api_state(request)
    form = await request.form()
    key, token = str(form.get("api_key", "")), str(form.get("login_token", ""))
    cookie = request.cookies.get(LOGIN_COOKIE, "")
    if not token or not cookie or not hmac.compare_digest(token, cookie):
        raise ForbiddenError("missing or wrong CSRF token")
    user = await user_ops.authenticate(state.env.state, key.strip())
    if user is None:
        return _login_page(request, "unknown or revoked API key", 401, form.get("next"))
    done = RedirectResponse(_next_page(form.get("next")), status_code=303)
    done.set_cookie(
        SESSION_COOKIE,
        session_value(state.secret, user.user_id),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=SESSION_SECONDS,
        path="/",
    )
    done.delete_cookie(LOGIN_COOKIE, path="/ui")
    return done


@router.post("/ui/logout")
async def logout(request: Request) -> Response:
    check_csrf(request, api_state(request).secret)
    resp = RedirectResponse("/ui/login", status_code=303)
    resp.delete_cookie(SESSION_COOKIE, path="/")
    return resp


def samples_of(request: Request) -> Samples:
    found: Samples = request.app.state.samples
    return found


@router.get("/ui")
async def overview(request: Request) -> Response:
    samples = samples_of(request)

    async def load(user: User, env: OpsEnv) -> dict[str, Any]:
        sample = await samples.current(env, user.org_id)
        series = samples.series(user.org_id)
        return {
            "counts": sample["counts"],
            "depths": sample["depths"],
            "rate": sample["rate"],
            "rate_chart": sparkline(series["rate"]),
            "depth_chart": sparkline(series["depth"]),
            "statuses": task_ops.TASK_STATUSES,
            "chains": await chain_ops.chain_status(env, user.org_id, None),
        }

    return await render(request, "overview.html", load)


@router.get("/ui/tasks")
async def tasks(request: Request) -> Response:
    status = request.query_params.get("status") or None
    cursor = request.query_params.get("cursor") or None

    async def load(user: User, env: OpsEnv) -> dict[str, Any]:
        result = await task_ops.list_tasks(env, user.org_id, status, cursor, 50)
        return {
            "result": result,
            "status": status,
            "cursor": cursor,
            "statuses": task_ops.TASK_STATUSES,
        }

    return await render(request, "tasks.html", load)


@router.get("/ui/tasks/{task_id}")
async def task(request: Request, task_id: uuid.UUID) -> Response:
    async def load(user: User, env: OpsEnv) -> dict[str, Any]:
        return {"t": await task_ops.show_task(env, user.org_id, task_id)}

    return await render(request, "task.html", load)


@router.get("/ui/chains")
async def chains(request: Request) -> Response:
    async def load(user: User, env: OpsEnv) -> dict[str, Any]:
        return {"chains": await chain_ops.chain_status(env, user.org_id, None)}

    return await render(request, "chains.html", load)


@router.get("/ui/dags")
async def dags(request: Request) -> Response:
    async def load(user: User, env: OpsEnv) -> dict[str, Any]:
        return {"dags": await dag_ops.all_dag_status(env, user.org_id)}

    return await render(request, "dags.html", load)


@router.get("/ui/dags/{dag}/jobs/{job}")
async def dag_job(request: Request, dag: str, job: str) -> Response:
    """A job's live partitions (100 a page, after range start `after`) with their lineage;
    `generation`: the job row a building or kept generation reads as."""
    after, gen = request.query_params.get("after"), request.query_params.get("generation")

    async def load(user: User, env: OpsEnv) -> dict[str, Any]:
        a = int(after) if after and after.lstrip("-").isdigit() else None
        g = int(gen) if gen and gen.isdigit() else None
        return {"p": await dag_lineage.job_partitions(env, user.org_id, dag, job, g, a)}

    return await render(request, "dag_job.html", load)


@router.get("/ui/datasets")
async def datasets(request: Request) -> Response:
    async def load(user: User, env: OpsEnv) -> dict[str, Any]:
        return {"datasets": await dataset_ops.list_datasets(env, user.org_id)}

    return await render(request, "datasets.html", load)


@router.get("/ui/datasets/{name}")
async def dataset(request: Request, name: str) -> Response:
    async def load(user: User, env: OpsEnv) -> dict[str, Any]:
        return {"ds": await dataset_ops.show_dataset(env, user.org_id, name)}

    return await render(request, "dataset.html", load)


@router.get("/ui/sql")
async def sql_page(request: Request) -> Response:
    job = request.query_params.get("job") or None

    async def load(user: User, env: OpsEnv) -> dict[str, Any]:
        relations = await dataset_ops.relations_as_user(env, user.org_id, user.user_id, job)
        names = {n for r in relations for n in r.names}
        facts = next((f for f in ("erc20_transfers", "logs", "transactions") if f in names), None)
        first = relations[0].names[0] if relations else None
        joins = facts if "blocks" in names else None
        return {
            "relations": relations,
            "job": job,
            "join": joins,
            "first": first,
            "can_write": user.can("writer"),  # saving a query needs the writer role
        }

    return await render(request, "sql.html", load)


@router.get("/ui/alerts")
async def alerts(request: Request) -> Response:
    async def load(user: User, env: OpsEnv) -> dict[str, Any]:
        return {"alerts": await alert_ops.list_alerts(env, user.org_id)}

    return await render(request, "alerts.html", load)


@router.get("/ui/alerts/{name}")
async def alert(request: Request, name: str) -> Response:
    async def load(user: User, env: OpsEnv) -> dict[str, Any]:
        org = user.org_id
        return {
            "a": await alert_ops.show_alert(env, org, name),
            "events": await alert_ops.alert_events(env, org, name, 50),
            "deliveries": await alert_ops.alert_deliveries(env, org, name, None, 50),
        }

    return await render(request, "alert.html", load)


@router.get("/ui/dlq")
async def dlq(request: Request) -> Response:
    async def load(user: User, env: OpsEnv) -> dict[str, Any]:
        return {"messages": await dlq_ops.list_dlq(env, user.org_id, 200)}

    return await render(request, "dlq.html", load)
