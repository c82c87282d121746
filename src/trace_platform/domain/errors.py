"""One exception hierarchy; each class maps to one HTTP status and error code."""

from __future__ import annotations

from typing import Any


class TraceError(Exception):
    """Base of every error Trace raises on purpose."""

    status: int = 500
    code: str = "internal"

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "detail": self.detail, **self.extra}


class ConfigError(TraceError):
    code = "config"


class ValidationError(TraceError):
    status = 400
    code = "invalid_request"


class AuthError(TraceError):
    status = 401
    code = "unauthorized"


class ForbiddenError(TraceError):
    status = 403
    code = "forbidden"


class NotFoundError(TraceError):
    status = 404
    code = "not_found"


class ConflictError(TraceError):
    status = 409
    code = "conflict"


class NotClaimedError(ConflictError):
    code = "not_claimed"

    def __init__(self, reason: str) -> None:
        super().__init__(f"task is not claimable: {reason}", reason=reason)


class StaleFenceError(ConflictError):
    code = "stale_fence"


class OverloadedError(TraceError):
    status = 429
    code = "overloaded"


class UnavailableError(TraceError):
    """A dependency (an RPC node, a database) is not answering: try again later."""

    status = 503
    code = "unavailable"


class LoopDied(TraceError):
    """A background loop of a process ended with an unexpected error: the process stops (so
    `trace up` restarts it) instead of running on without it."""

    code = "loop_died"
