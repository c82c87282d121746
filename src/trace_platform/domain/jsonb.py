"""Free-form JSON that Postgres `jsonb` can store: every such body field goes through here.

`jsonb` refuses the NUL character, and orjson (which encodes our `jsonb` values) refuses
unpaired surrogates and integers beyond 64 bits, all of which a JSON parser accepts.
Checked at the edge, they are a 422 with a reason instead of a database error.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from pydantic import AfterValidator


def storable(value: Any, what: str = "value") -> bytes:
    """`value` encoded as it will be stored, or ValueError naming what is wrong."""
    try:
        raw = orjson.dumps(value)
    except orjson.JSONEncodeError:
        raise ValueError(
            f"{what} must be JSON with integers within 64 bits and no unpaired surrogates"
        ) from None
    if b"\\u0000" in raw:
        raise ValueError(f"{what} may not contain NUL characters (\\u0000)")
    return raw


def _object(value: dict[str, Any]) -> dict[str, Any]:
    storable(value, "the object")
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_object)]
"""A JSON object body field that `jsonb` can store."""


def _text(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text may not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text may not contain unpaired surrogates") from None
    return value


JsonText = Annotated[str, AfterValidator(_text)]
"""A string body field that `jsonb` and `text` columns can store."""
