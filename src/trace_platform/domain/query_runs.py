"""Query runs (SPEC §21): the decisions about a run, with no I/O.

A run is a user's query executed by the query service in the background; its result is one
object under `results/{org}/{run_id}/`. A run is known by the sha256 of its SQL, never by the
text. Its status moves `queued → running → succeeded | failed | canceled`, each step a
compare-and-swap on the row (a cancel wins over a finish that comes after it).

In Lite, the result's short-lived URL is one the user API serves: HMAC-signed over the org,
the run and the expiry, so it cannot be pointed at another run or outlive its expiry."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from trace_platform.domain.errors import ConflictError, ForbiddenError

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "canceled",
)
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELED)
LIVE = (QUEUED, RUNNING)
EXTENSIONS = {"json": "json", "arrow": "arrows", "csv": "csv", "parquet": "parquet"}
RESULT_URL_SECONDS = 900  # a result's URL lives 15 minutes (never past the result's expiry)
RESULT_ROUTE = "/query-results"  # where the user API serves a Lite result


class IdempotencyConflict(ConflictError):
    code = "idempotency_conflict"


class RunFinished(ConflictError):
    code = "run_finished"


def result_key(org_id: uuid.UUID, run_id: uuid.UUID, fmt: str) -> str:
    """The object key of a run's result: `results/{org}/{run_id}/result.{ext}`."""
    return f"results/{org_id}/{run_id}/result.{EXTENSIONS[fmt]}"


@dataclass(frozen=True)
class PriorRun:
    """The run an idempotency key already names."""

    run_id: uuid.UUID
    sql_sha256: str
    fmt: str
    saved_query: str | None = None
    params_sha256: str | None = None


def params_hash(params: Sequence[str] | None) -> str | None:
    """The sha256 of a saved query's bound parameter values (their canonical text, in `$k`
    order), recorded instead of the values; None for a run of plain SQL (no values)."""
    if params is None:
        return None
    canonical = json.dumps(list(params), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def reuse_run(
    prior: PriorRun,
    sql_sha256: str,
    fmt: str,
    saved_query: str | None = None,
    params_sha256: str | None = None,
) -> uuid.UUID:
    """The same key with the same SQL (by hash), parameter values (by hash), saved query and
    format is the same run; with anything else it is a 409: a key names one request."""
    if (
        prior.sql_sha256 != sql_sha256
        or prior.fmt != fmt
        or prior.saved_query != saved_query
        or prior.params_sha256 != params_sha256
    ):
        raise IdempotencyConflict(
            "this idempotency_key names another run (different SQL, parameter values or format)"
        )
    return prior.run_id


def check_cancel(status: str) -> None:
    """Only a queued or running run can be canceled."""
    if status not in LIVE:
        raise RunFinished(
            f"the run is {status}: only a queued or running run can be canceled", status=status
        )


def derive_result_secret(worker_token: str) -> bytes:
    """The key of Lite result URLs, derived from the platform's worker token (its own label:
    an object URL's signature is never a result URL's)."""
    return hmac.new(worker_token.encode(), b"trace-query-result-url-v1", hashlib.sha256).digest()


def result_signature(secret: bytes, org_id: uuid.UUID, run_id: uuid.UUID, expires: int) -> str:
    msg = f"GET\n{org_id}\n{run_id}\n{expires}".encode()
    digest = hmac.new(secret, msg, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def check_result_signature(
    secret: bytes,
    run_id: uuid.UUID,
    org: str | None,
    expires: str | None,
    sig: str | None,
    now: float,
) -> uuid.UUID:
    """The org a result URL was signed for; 403 when it is unsigned, expired or tampered
    with (any of org, run, expiry or signature changed)."""
    if not org or not expires or not sig or not expires.isdigit() or len(sig) > 64:
        raise ForbiddenError("result URL is not signed")
    try:
        org_id = uuid.UUID(org)
    except ValueError:
        raise ForbiddenError("result URL is not signed") from None
    if int(expires) < now:
        raise ForbiddenError("result URL expired")
    if not hmac.compare_digest(sig, result_signature(secret, org_id, run_id, int(expires))):
        raise ForbiddenError("result URL signature does not match")
    return org_id
