"""Which format a user's query is answered in: a `format` field wins over `Accept`.

JSON (`{columns, rows, truncated}`, at most MAX_JSON_ROWS rows) is the default; Arrow IPC
stream, CSV and Parquet are bodies of bytes up to TRACE_QUERY_MAX_EXPORT_ROWS rows."""

from __future__ import annotations

from trace_platform.domain.errors import TraceError, ValidationError

FORMATS = ("json", "arrow", "csv", "parquet")
MEDIA_TYPES = {
    "json": "application/json",
    "arrow": "application/vnd.apache.arrow.stream",
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
}
MAX_JSON_ROWS, DEFAULT_JSON_ROWS = 10_000, 1000
TRUNCATED_HEADER = "X-Trace-Truncated"  # on a body of bytes: "true" when rows were left out
_BY_MEDIA_TYPE = {m: f for f, m in MEDIA_TYPES.items()} | {
    "*/*": "json",
    "application/*": "json",
    "text/*": "csv",
}


class NotAcceptable(TraceError):
    status = 406
    code = "not_acceptable"


def choose_format(field: str | None, accept: str | None) -> str:
    """The answer's format: `field` when given (one of FORMATS, else 400), else the first
    media type of `Accept` that names one (parameters and q-values aside; none at all, or
    a wildcard: JSON); an Accept naming none of them is 406."""
    if field is not None:
        if field not in FORMATS:
            raise ValidationError(f"format must be one of {', '.join(FORMATS)}")
        return field
    if not accept or not accept.strip():
        return "json"
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in _BY_MEDIA_TYPE:
            return _BY_MEDIA_TYPE[media]
    raise NotAcceptable(
        f"Accept names no answer format; offered: {', '.join(MEDIA_TYPES.values())}"
    )


def check_limit(fmt: str, limit: int | None) -> int | None:
    """The row limit to ask for: JSON at most MAX_JSON_ROWS (default DEFAULT_JSON_ROWS); an
    export format as asked (None: the service's own cap)."""
    if fmt == "json":
        if limit is not None and limit > MAX_JSON_ROWS:
            raise ValidationError(
                f"limit: a JSON answer holds at most {MAX_JSON_ROWS:,} rows "
                "(ask format arrow, csv or parquet for more)"
            )
        return DEFAULT_JSON_ROWS if limit is None else limit
    return limit


class AnswerCut(TraceError):
    """A streamed answer that must not be taken for complete: it reached
    TRACE_QUERY_MAX_EXPORT_ROWS with rows left, or it failed after its first bytes went out.
    Raised inside a body that has started, it aborts the chunked body (no terminating chunk,
    the connection closed); `rest`: the bytes held back, for an answer still small enough to
    be sent whole with `X-Trace-Truncated: true`."""

    status = 500
    code = "answer_cut"

    def __init__(self, detail: str, rest: bytes = b"") -> None:
        super().__init__(detail)
        self.rest = rest
