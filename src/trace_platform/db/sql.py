"""Named SQL: each statement lives in a `.sql` file under `-- name: <name>`, loaded by name."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def parse_named_sql(text: str) -> dict[str, str]:
    """Split a file into {name: statement}. Text before the first name is ignored."""
    parts = _NAME.split(text)
    out: dict[str, str] = {}
    for i in range(1, len(parts), 2):
        name, body = parts[i], parts[i + 1].strip()
        if name in out:
            raise ValueError(f"duplicate SQL name {name!r}")
        out[name] = body.rstrip(";")
    return out


@cache
def queries(group: str) -> dict[str, str]:
    """The named statements of `db/sql/<group>.sql`."""
    text = resources.files("trace_platform.db").joinpath("sql", f"{group}.sql").read_text()
    return parse_named_sql(text)


def q(group: str, name: str) -> str:
    try:
        return queries(group)[name]
    except KeyError:
        raise KeyError(f"no SQL named {name!r} in {group}.sql") from None
