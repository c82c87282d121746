"""Saved queries' typed parameters (SPEC §21): `{{ name: TYPE }}` in a saved query's SQL.

A placeholder is replaced, by this trusted code, with `CAST($k AS TYPE)` — a prepared-
statement parameter, never a value — and the caller's values are checked against their
declared types here and handed to DuckDB as the parameters' values. A value therefore can
never change the statement: every run of a saved query executes the same SQL text (the
audit's sha256 is the same whatever the values), and a value that does not fit its type is
a 400 naming the parameter before anything runs.

Syntax: `{{ name: TYPE }}` declares a parameter at its first use (later uses may say
`{{ name }}`); `{{ name: TYPE = default }}` gives it a default. Placeholders inside string
literals, quoted identifiers and comments are text, not parameters. The SQL may not hold
prepared-statement parameters of its own (`$1`, `$name`, `?`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from trace_platform.domain.errors import ValidationError

MAX_PARAMETERS = 32
MAX_VALUE_CHARS = 10_000
NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
QUERY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_INSIDE = re.compile(
    r"^\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*"
    r"(?::\s*(?P<type>[A-Za-z]+)\s*)?"
    r"(?:=\s*(?P<default>[^{}]*?)\s*)?$"
)
_INT_RANGES: dict[str, tuple[int, int]] = {
    "INTEGER": (-(2**31), 2**31 - 1),
    "BIGINT": (-(2**63), 2**63 - 1),
    "UBIGINT": (0, 2**64 - 1),
    "HUGEINT": (-(2**127), 2**127 - 1),
    "UHUGEINT": (0, 2**128 - 1),
}
TYPES = (*_INT_RANGES, "DOUBLE", "VARCHAR", "BOOLEAN", "DATE", "TIMESTAMP", "TIMESTAMPTZ")
_INT_TEXT = re.compile(r"^[+-]?[0-9]{1,40}$")


class ParameterError(ValidationError):
    """A saved query's parameter is declared wrongly, missing, unknown or of the wrong type
    (400); the message names the parameter, never its value."""

    code = "bad_parameter"


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    default: str | None = None  # canonical text (already checked against `type`)


@dataclass(frozen=True)
class Template:
    """A saved query's SQL made runnable: `sql` holds `CAST($k AS TYPE)` where the k-th
    parameter (1-based, in `parameters` order) was written."""

    sql: str
    parameters: tuple[Parameter, ...]


def check_query_name(name: str) -> str:
    if not QUERY_NAME.match(name):
        raise ValidationError(
            "a saved query's name is 1-128 letters, digits, '_', '.' or '-' (first a letter"
            " or digit)"
        )
    return name


def _segments(sql: str) -> list[tuple[str, str]]:
    """The SQL cut into (kind, text): `code`; `text` for string literals ('...', $tag$...$tag$),
    quoted identifiers and comments; `param` for the inside of a `{{ ... }}` placeholder in
    code. Raises on an unclosed placeholder or a raw prepared-statement parameter in code."""
    out: list[tuple[str, str]] = []
    i, start, n = 0, 0, len(sql)
    while i < n:
        c = sql[i]
        end, kind = -1, "text"
        if sql.startswith("{{", i):
            close = sql.find("}}", i + 2)
            if close < 0:
                raise ParameterError("a parameter placeholder '{{' is not closed with '}}'")
            end, kind = close + 2, "param"
        elif c in "'\"":
            end = i + 1
            while end < n:
                if sql[end] == c:
                    if end + 1 < n and sql[end + 1] == c:  # '' or "" inside
                        end += 2
                        continue
                    break
                end += 1
            end += 1
        elif sql.startswith("--", i):
            nl = sql.find("\n", i)
            end = n if nl < 0 else nl
        elif sql.startswith("/*", i):
            close = sql.find("*/", i + 2)
            end = n if close < 0 else close + 2
        elif c == "$":
            tag = re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$", sql[i:])
            if tag is not None:
                close = sql.find(tag.group(0), i + len(tag.group(0)))
                end = n if close < 0 else close + len(tag.group(0))
            elif re.match(r"\$[A-Za-z0-9_]", sql[i:]):
                raise ParameterError(
                    "the SQL may not hold prepared-statement parameters ($1, $name):"
                    " write {{ name: TYPE }}"
                )
        elif c == "?":
            raise ParameterError(
                "the SQL may not hold prepared-statement parameters (?): write {{ name: TYPE }}"
            )
        if end < 0:
            i += 1
            continue
        if i > start:
            out.append(("code", sql[start:i]))
        out.append((kind, sql[i + 2 : end - 2] if kind == "param" else sql[i:end]))
        start = i = end
    if n > start:
        out.append(("code", sql[start:n]))
    return out


def parse_template(sql: str) -> Template:
    """The runnable form of a saved query's SQL; ParameterError when a placeholder is
    malformed, of an unknown type, declared twice with different types, never typed, or
    its default does not fit its type."""
    declared: dict[str, Parameter] = {}
    order: list[str] = []
    pieces: list[str | tuple[str]] = []  # SQL text, or (name,) where a parameter goes
    for kind, text in _segments(sql):
        pieces.append((_declare(text, declared, order),) if kind == "param" else text)
    for name in order:
        if not declared[name].type:
            raise ParameterError(
                f"parameter {name!r} has no type: declare it once as {{{{ {name}: TYPE }}}}"
                f" ({', '.join(TYPES)})"
            )
    runnable = "".join(
        p if isinstance(p, str) else f"CAST(${order.index(p[0]) + 1} AS {declared[p[0]].type})"
        for p in pieces
    )
    return Template(runnable, tuple(declared[n] for n in order))


def _declare(inside: str, declared: dict[str, Parameter], order: list[str]) -> str:
    found = _INSIDE.match(inside)
    if found is None or not NAME.match(found["name"]):
        raise ParameterError(
            "a parameter placeholder is {{ name }}, {{ name: TYPE }} or {{ name: TYPE = default }}"
            " (name: lower-case letters, digits, '_')"
        )
    name = found["name"]
    kind = (found["type"] or "").upper()
    if kind and kind not in TYPES:
        raise ParameterError(f"parameter {name!r}: type must be one of {', '.join(TYPES)}")
    default_text = found["default"]
    if default_text is not None and not kind:
        raise ParameterError(f"parameter {name!r}: a default needs a type ({{{{ {name}: TYPE = ...")
    old = declared.get(name)
    if old is None:
        if len(order) >= MAX_PARAMETERS:
            raise ParameterError(f"a saved query has at most {MAX_PARAMETERS} parameters")
        order.append(name)
        old = Parameter(name, "")
    if kind and old.type and old.type != kind:
        raise ParameterError(f"parameter {name!r} is declared as {old.type} and as {kind}")
    if default_text is not None and old.default is not None:
        raise ParameterError(f"parameter {name!r} has its default given twice")
    new_type = kind or old.type
    default = old.default
    if default_text is not None:
        raw = default_text
        if len(raw) >= 2 and raw[0] == raw[-1] == "'":
            raw = raw[1:-1]
        default = coerce(Parameter(name, new_type), raw)
    declared[name] = Parameter(name, new_type, default)
    return name


def coerce(param: Parameter, value: Any) -> str:
    """A value as the canonical text DuckDB casts to the parameter's type (`CAST($k AS
    TYPE)` cannot fail on it), or ParameterError naming the parameter (never its value).
    Text from a command line and JSON scalars are both accepted."""
    kind = param.type
    wrong = ParameterError(f"parameter {param.name!r} must be {_described(kind)}")
    if value is None or isinstance(value, (list, dict)):
        raise wrong
    if kind in _INT_RANGES:
        if isinstance(value, (bool, float)):
            raise wrong
        if isinstance(value, str):
            if not _INT_TEXT.match(value.strip()):
                raise wrong
            value = int(value.strip())
        if not isinstance(value, int):
            raise wrong
        lo, hi = _INT_RANGES[kind]
        if not lo <= value <= hi:
            raise ParameterError(f"parameter {param.name!r} is out of {kind}'s range")
        return str(value)
    if kind == "DOUBLE":
        if isinstance(value, bool):
            raise wrong
        try:
            number = float(value.strip()) if isinstance(value, str) else float(value)
        except (ValueError, TypeError):
            raise wrong from None
        if not math.isfinite(number):
            raise wrong
        return repr(number)
    if kind == "BOOLEAN":
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower()
        raise wrong
    if not isinstance(value, str):
        raise wrong
    if kind == "VARCHAR":
        if len(value) > MAX_VALUE_CHARS or "\x00" in value:
            raise ParameterError(
                f"parameter {param.name!r} is longer than {MAX_VALUE_CHARS} characters"
                " or holds a NUL"
            )
        return value
    return _temporal(param, kind, value.strip(), wrong)


def _temporal(param: Parameter, kind: str, text: str, wrong: ParameterError) -> str:
    try:
        if kind == "DATE":
            return date.fromisoformat(text).isoformat()
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise wrong from None
    if kind == "TIMESTAMP" and moment.tzinfo is not None:
        raise ParameterError(f"parameter {param.name!r} is a TIMESTAMP: give no time zone")
    if kind == "TIMESTAMPTZ" and moment.tzinfo is None:
        raise ParameterError(f"parameter {param.name!r} is a TIMESTAMPTZ: give a time zone")
    return moment.isoformat(sep=" ")


def _described(kind: str) -> str:
    return {
        "DOUBLE": "a DOUBLE (a finite number)",
        "BOOLEAN": "a BOOLEAN (true or false)",
        "VARCHAR": "a VARCHAR (text)",
        "DATE": "a DATE (YYYY-MM-DD)",
        "TIMESTAMP": "a TIMESTAMP (YYYY-MM-DD HH:MM:SS)",
        "TIMESTAMPTZ": "a TIMESTAMPTZ (YYYY-MM-DD HH:MM:SS+HH:MM)",
    }.get(kind, f"an integer ({kind})")


def bind_values(template: Template, values: dict[str, Any]) -> list[str]:
    """The parameters' values in `$k` order: each given value checked against its type, a
    default where none is given; ParameterError for a missing or unknown one."""
    known = {p.name for p in template.parameters}
    for name in values:
        if name not in known:
            raise ParameterError(f"unknown parameter {str(name)[:64]!r}")
    out: list[str] = []
    for param in template.parameters:
        if param.name in values:
            out.append(coerce(param, values[param.name]))
        elif param.default is not None:
            out.append(param.default)
        else:
            raise ParameterError(f"parameter {param.name!r} is missing")
    return out
