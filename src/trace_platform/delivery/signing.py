"""Standard Webhooks signatures (https://www.standardwebhooks.com): receivers verify with an
off-the-shelf library (`standardwebhooks` on PyPI and npm).

A channel's secret lives in the environment of the delivery process, in the variable its spec
names (`secret_env`), never in a database. The variable holds one `whsec_<base64>` secret, or
several separated by spaces during a rotation: every one of them signs each delivery.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections.abc import Mapping

PREFIX = "whsec_"


class SecretError(ValueError):
    """The secret is missing or malformed; the message names the variable, never the value."""


def parse_secrets(value: str, variable: str) -> list[bytes]:
    keys = []
    for part in value.split():
        if not part.startswith(PREFIX):
            raise SecretError(f"{variable}: every secret must start with {PREFIX}")
        try:
            key = base64.b64decode(part[len(PREFIX) :], validate=True)
        except (binascii.Error, ValueError):
            raise SecretError(f"{variable}: a secret is not valid base64 after {PREFIX}") from None
        if len(key) < 16:
            raise SecretError(f"{variable}: a secret must decode to at least 16 bytes")
        keys.append(key)
    if not keys:
        raise SecretError(f"{variable} is empty")
    return keys


def secrets_from_env(variable: str, environ: Mapping[str, str] | None = None) -> list[bytes]:
    value = (environ if environ is not None else os.environ).get(variable)
    if value is None:
        raise SecretError(f"{variable} is not set in the delivery process's environment")
    return parse_secrets(value, variable)


def signature_header(msg_id: str, timestamp: int, body: bytes, keys: list[bytes]) -> str:
    """`v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>` per key, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(k, signed, hashlib.sha256).digest()).decode()
        for k in keys
    )


def new_secret() -> str:
    """A fresh `whsec_` secret (for `trace alert secret` and tests)."""
    return PREFIX + base64.b64encode(os.urandom(32)).decode()
