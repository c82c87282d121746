"""Who is calling the user API, and may they: API keys and OIDC bearer JWTs, the console's
session cookie and its CSRF token, roles, and per-user rate limits (SPEC §13).

Order per request: authenticate (401) -> rate limit (429) -> role (403) -> CSRF on a
cookie-authenticated state change (403). A revoked key is refused on its next request
(no cache); a console session ends at its user's revocation.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from trace_platform.api.oidc import OidcVerifier
from trace_platform.config import Settings
from trace_platform.domain.errors import AuthError, ForbiddenError, OverloadedError
from trace_platform.ops import users as user_ops
from trace_platform.ops.env import OpsEnv
from trace_platform.ops.users import User

SESSION_COOKIE = "trace_session"
LOGIN_COOKIE = "trace_login"
SESSION_SECONDS = 12 * 3600


class RateLimiter:
    """A token bucket per API key (per user): `rate` requests/s, bursts of `burst`."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, burst
        self.buckets: dict[uuid.UUID, tuple[float, float]] = {}

    def take(self, key: uuid.UUID) -> float:
        """0 when allowed, else the seconds until a request would be."""
        now = time.monotonic()
        tokens, last = self.buckets.get(key, (float(self.burst), now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1:
            self.buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate
        self.buckets[key] = (tokens - 1, now)
        return 0.0


class RateLimited(OverloadedError):
    code = "rate_limited"


@dataclass
class ApiState:
    """The user API process's state: settings, the session secret, the limiter, the OIDC
    verifier, and the operations environment (set by the lifespan)."""

    settings: Settings
    secret: str
    limiter: RateLimiter
    oidc: OidcVerifier | None = None
    env_: OpsEnv | None = field(default=None)

    @property
    def env(self) -> OpsEnv:
        if self.env_ is None:
            raise RuntimeError("the API is not started")  # only before the lifespan ran
        return self.env_


def api_state(request: Request) -> ApiState:
    state: ApiState = request.app.state.api
    return state


def _sign(secret: str, message: str) -> str:
    return hmac.new(secret.encode(), message.encode(), hashlib.sha256).hexdigest()


def session_value(secret: str, user_id: uuid.UUID, now: float | None = None) -> str:
    expires = int((now or time.time()) + SESSION_SECONDS)
    return f"{user_id}.{expires}.{_sign(secret, f'session:{user_id}:{expires}')}"


def csrf_token(secret: str, session: str) -> str:
    return _sign(secret, f"csrf:{session}")


async def session_user(request: Request, state: ApiState) -> User | None:
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
    if not hmac.compare_digest(sig, _sign(state.secret, f"session:{uid}:{expires}")):
        return None
    return await user_ops.user_by_id(state.env.state, uid)


def check_csrf(request: Request, secret: str) -> None:
    session = request.cookies.get(SESSION_COOKIE, "")
    sent = request.headers.get("x-csrf-token", "")
    if not session or not sent or not hmac.compare_digest(sent, csrf_token(secret, session)):
        raise ForbiddenError("missing or wrong CSRF token")


async def authenticate(request: Request) -> User:
    """The user of a request: a Bearer API key or JWT, else the console's session cookie."""
    state = api_state(request)
    header = request.headers.get("authorization", "")
    user: User | None = None
    if header:
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise AuthError("Authorization must be 'Bearer <API key>'")
        key = key.strip()
        if state.oidc is not None and not key.startswith(user_ops.KEY_PREFIX):
            user = state.oidc.verify(key)
        else:
            user = await user_ops.authenticate(state.env.state, key)
    else:
        user = await session_user(request, state)
    if user is None:
        raise AuthError("missing, unknown or revoked API key")
    wait = state.limiter.take(user.user_id)
    if wait:
        rate = state.settings.api_rate_per_second
        raise RateLimited(f"rate limit of {rate:g} requests/s exceeded", retry_after=round(wait, 3))
    return user


@dataclass(frozen=True)
class Ctx:
    """What a route gets: the user and the operations environment."""

    user: User
    env: OpsEnv

    @property
    def org(self) -> uuid.UUID:
        return self.user.org_id


def role(needed: str) -> Callable[[Request], Awaitable[Ctx]]:
    async def dep(request: Request) -> Ctx:
        state = api_state(request)
        user = await authenticate(request)
        if not user.can(needed):
            raise ForbiddenError(f"this needs the {needed} role (you are {user.role})")
        if request.method not in ("GET", "HEAD") and not request.headers.get("authorization"):
            check_csrf(request, state.secret)
        return Ctx(user, state.env)

    return dep


Reader = Annotated[Ctx, Depends(role("reader"))]
Writer = Annotated[Ctx, Depends(role("writer"))]
Admin = Annotated[Ctx, Depends(role("admin"))]
