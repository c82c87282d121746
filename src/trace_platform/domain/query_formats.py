"""Which format a user's query is answered in: a `format` field wins over `Accept`, which
is negotiated as RFC 9110 §12.5.1 says (q-values, wildcards, q=0 refuses a type).

JSON (`{columns, rows, truncated}`, at most MAX_JSON_ROWS rows) is the default; Arrow IPC
stream, CSV and Parquet are bodies of bytes up to TRACE_QUERY_MAX_EXPORT_ROWS rows."""

from __future__ import annotations

from dataclasses import dataclass

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


class NotAcceptable(TraceError):
    status = 406
    code = "not_acceptable"


@dataclass(frozen=True)
class MediaRange:
    """One member of an `Accept` header: `type/subtype` (either may be `*`), whether it
    carries media-type parameters (`text/csv;header=present`: more specific than
    `text/csv`), its weight `q` (0..1) and its place in the header."""

    type: str
    subtype: str
    has_params: bool
    q: float
    position: int

    def matches(self, media_type: str) -> bool:
        kind, _, sub = media_type.partition("/")
        return self.type in ("*", kind) and self.subtype in ("*", sub)

    @property
    def specificity(self) -> int:
        """`*/*` < `type/*` < `type/subtype` < `type/subtype;param=value`."""
        if self.type == "*":
            return 0
        if self.subtype == "*":
            return 1
        return 3 if self.has_params else 2


def parse_accept(header: str) -> list[MediaRange]:
    """The media ranges of an `Accept` header, in the order given. A member that is not a
    media range (no `/`, `*/subtype`) or whose weight is not a qvalue (`0`..`1`, at most
    three decimals) is left out, as one a server cannot understand."""
    ranges = []
    for position, member in enumerate(_split_unquoted(header, ",")):
        media, *params = [p.strip() for p in _split_unquoted(member, ";")]
        kind, slash, sub = media.lower().partition("/")
        if not slash or not kind or not sub or (kind == "*" and sub != "*"):
            continue
        q: float | None = 1.0
        media_params = False
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":  # the weight; what follows are extensions
                q = _qvalue(value.strip())
                break
            media_params = media_params or bool(param)
        if q is not None:
            ranges.append(MediaRange(kind, sub, media_params, q, position))
    return ranges


def negotiate(accept: str | None) -> str:
    """The format an `Accept` header asks for: each offered media type gets the weight of
    the most specific range that matches it; the highest weight wins, ties going to the
    range the client named first, then to FORMATS' order (JSON first). No header, or an
    empty one: JSON. Nothing acceptable (every match at q=0, or no match): NotAcceptable."""
    if accept is None or not accept.strip():
        return "json"
    ranges = parse_accept(accept)
    best: tuple[float, int, int] | None = None
    chosen = None
    for order, fmt in enumerate(FORMATS):
        matching = [r for r in ranges if r.matches(MEDIA_TYPES[fmt])]
        if not matching:
            continue
        top = max(matching, key=lambda r: (r.specificity, -r.position))
        if top.q <= 0:
            continue
        rank = (-top.q, top.position, order)
        if best is None or rank < best:
            best, chosen = rank, fmt
    if chosen is None:
        raise NotAcceptable(
            f"Accept names no answer format; offered: {', '.join(MEDIA_TYPES.values())}"
        )
    return chosen


def choose_format(field: str | None, accept: str | None) -> str:
    """The answer's format: `field` when given (one of FORMATS, else 400), else what
    `Accept` negotiates (`negotiate`)."""
    if field is not None:
        if field not in FORMATS:
            raise ValidationError(f"format must be one of {', '.join(FORMATS)}")
        return field
    return negotiate(accept)


def _qvalue(text: str) -> float | None:
    """RFC 9110 `qvalue`: `0`, `0.d`, `0.dd`, `0.ddd`, `1`, `1.0`... (None: not one)."""
    whole, dot, decimals = text.partition(".")
    if whole not in ("0", "1") or len(decimals) > 3 or not (decimals.isdigit() or not dot):
        return None
    if dot and not decimals:
        return None
    value = float(text)
    return value if value <= 1 else None


def _split_unquoted(text: str, sep: str) -> list[str]:
    """`text` split at `sep` outside quoted strings (a parameter's value may hold one)."""
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in text:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


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
