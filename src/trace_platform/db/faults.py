"""What a database error says, so that an answer carries its meaning (SPEC §4): a database
that is away is not the same as a statement it refused because of what a request held.

By SQLSTATE class (PostgreSQL, appendix A) and asyncpg's client-side errors:

- `unavailable` (retry later): the connection lost or refused (08, client-side), the server
  shutting down or the call canceled (57), out of resources (53), I/O (58), FATAL;
- `busy` (the same call may pass on a retry): serialization failure, deadlock (40), a lock
  not available (55P03);
- `conflict` (with stored data): a unique or exclusion violation, a missing referenced row
  (23505, 23P01, 23503);
- `input` (the request is wrong): a value refused (22, or one asyncpg could not encode),
  another constraint (23), a statement repeating a row (21), too large (54);
- `internal` (a fault of ours): anything else — a syntax error, an undefined table, a
  trigger's exception.
"""

from __future__ import annotations

import re
from typing import Literal

import asyncpg
from asyncpg import exceptions as pg
from asyncpg.exceptions._base import DataError as ArgumentError  # asyncpg could not encode it

from trace_platform.db.pool import DB_ERRORS

DbFault = Literal["unavailable", "busy", "conflict", "input", "internal"]

_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    pg.PostgresConnectionError,
    pg.OperatorInterventionError,
    pg.InsufficientResourcesError,
    pg.PostgresSystemError,
    pg.FatalPostgresError,
    pg.InternalClientError,
)
_BUSY = (pg.TransactionRollbackError, pg.LockNotAvailableError)
_CONFLICT = (pg.UniqueViolationError, pg.ExclusionViolationError, pg.ForeignKeyViolationError)
_INPUT = (
    pg.DataError,
    ArgumentError,
    pg.IntegrityConstraintViolationError,
    pg.CardinalityViolationError,
    pg.ProgramLimitExceededError,
)


def database_fault(exc: BaseException) -> DbFault | None:
    """The fault a database error stands for; None when `exc` is not a database error."""
    if not isinstance(exc, DB_ERRORS):
        return None
    if isinstance(exc, _UNAVAILABLE):
        return "unavailable"
    if isinstance(exc, _BUSY):
        return "busy"
    if isinstance(exc, _CONFLICT):
        return "conflict"
    if isinstance(exc, _INPUT):
        return "input"
    if isinstance(exc, asyncpg.InterfaceError):
        return "unavailable"  # the connection closed under the call
    return "internal"


def condition(exc: BaseException) -> str:
    """The error's condition in words (`CardinalityViolationError` → `cardinality
    violation`), never its message: a message may quote a value of the request."""
    name = type(exc).__name__.removesuffix("Error") or type(exc).__name__
    return re.sub(r"(?<!^)(?=[A-Z])", " ", name).lower()
