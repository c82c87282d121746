"""RPC pool endpoints as configured (SPEC §16): parsed from `TRACE_RPC_POOL_<NAME>_URLS`.

    TRACE_RPC_POOL_MAIN_URLS="https://a.example/KEY;weight=3;name=alchemy,https://b.example;role=head"

Entries are comma-separated; each is a URL followed by optional `;weight=N` (1..1000, the
endpoint's share of ranges), `;role=archive|head` (archive endpoints take ranges only, head
endpoints the head only; the default takes both), `;rps=N` (a ceiling of requests per second
Trace never exceeds there) and `;name=LABEL`. The single-URL form `..._URL` is one entry.

A URL may carry an API key, so it exists only here and in the process that calls it: an
endpoint is shown everywhere by its label (the configured name, else `ep-` and 8 hex digits of
the URL's sha256), and parse errors name the entry's position, never its text.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from trace_platform.domain.errors import ConfigError

ROLES = ("any", "archive", "head")
LABEL = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,39}$")
MAX_ENDPOINTS = 32


@dataclass(frozen=True)
class Endpoint:
    pool: str
    label: str
    url: str = field(repr=False)
    weight: int = 1
    role: str = "any"
    rps: float | None = None  # the configured ceiling (None: only what the endpoint allows)

    def serves_ranges(self) -> bool:
        return self.role in ("any", "archive")

    def serves_head(self) -> bool:
        return self.role in ("any", "head")


def endpoint_label(url: str) -> str:
    return "ep-" + hashlib.sha256(url.encode()).hexdigest()[:8]


def parse_endpoints(pool: str, raw: str) -> tuple[Endpoint, ...]:
    """Endpoints of one pool from its variable's value (ConfigError naming the entry by its
    position when one is malformed)."""
    entries = [e.strip() for e in raw.split(",") if e.strip()]
    if not entries:
        raise ConfigError(f"RPC pool {pool!r}: no endpoint configured")
    if len(entries) > MAX_ENDPOINTS:
        raise ConfigError(f"RPC pool {pool!r}: at most {MAX_ENDPOINTS} endpoints")
    out: list[Endpoint] = []
    for i, entry in enumerate(entries, 1):
        url, *options = (p.strip() for p in entry.split(";"))
        where = f"RPC pool {pool!r}, endpoint {i}"
        if not re.match(r"^(https?|wss?)://[^\s/]+", url):
            raise ConfigError(f"{where}: not an http(s) or ws(s) URL")
        values: dict[str, str] = {}
        for option in options:
            key, sep, value = option.partition("=")
            if not sep or key not in ("weight", "role", "rps", "name") or key in values:
                raise ConfigError(f"{where}: options are ;weight=N ;role=R ;rps=N ;name=LABEL")
            values[key] = value.strip()
        try:
            weight = int(values.get("weight", "1"))
            rps = float(values["rps"]) if "rps" in values else None
        except ValueError:
            raise ConfigError(f"{where}: weight and rps must be numbers") from None
        if not 1 <= weight <= 1000 or (rps is not None and not 0 < rps <= 1e6):
            raise ConfigError(f"{where}: weight must be 1..1000 and rps above 0")
        role = values.get("role", "any")
        if role not in ROLES:
            raise ConfigError(f"{where}: role must be one of {', '.join(ROLES)}")
        label = values.get("name") or endpoint_label(url)
        if not LABEL.match(label):
            raise ConfigError(f"{where}: name must match {LABEL.pattern}")
        out.append(Endpoint(pool, label, url, weight, role, rps))
    labels = [e.label for e in out]
    if len(set(labels)) != len(labels):
        raise ConfigError(f"RPC pool {pool!r}: two endpoints share a label (or a URL)")
    if not any(e.serves_ranges() for e in out) or not any(e.serves_head() for e in out):
        raise ConfigError(f"RPC pool {pool!r}: needs an endpoint for ranges and one for the head")
    return tuple(out)
