"""Users and API keys (SPEC §13): create (the key is shown once, stored as a hash), list,
revoke, and authenticate a key. Roles: reader < writer < admin."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from trace_platform.db.sql import q
from trace_platform.domain.errors import ConflictError, NotFoundError, ValidationError
from trace_platform.ops.env import OpsEnv, from_row

ROLES = ("reader", "writer", "admin")
KEY_PREFIX = "trk_"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,127}$"


@dataclass(frozen=True)
class UserRow:
    user_id: uuid.UUID
    name: str
    role: str
    key_prefix: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class NewUser:
    """A created user; `api_key` is shown this once (only its hash is stored)."""

    user_id: uuid.UUID
    org_id: uuid.UUID
    name: str
    role: str
    key_prefix: str
    created_at: datetime
    api_key: str


@dataclass(frozen=True)
class Revoked:
    user_id: uuid.UUID
    name: str
    revoked_at: datetime


@dataclass(frozen=True)
class User:
    user_id: uuid.UUID
    org_id: uuid.UUID
    name: str
    role: str

    def can(self, role: str) -> bool:
        return ROLES.index(self.role) >= ROLES.index(role)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


async def create_user(env: OpsEnv, org_id: uuid.UUID, name: str, role: str) -> NewUser:
    """The user with its API key. The key is returned once; only its hash is stored."""
    import re

    if role not in ROLES:
        raise ValidationError(f"role must be one of {', '.join(ROLES)}")
    if not re.match(NAME_PATTERN, name):
        raise ValidationError("name: letters, digits and _.@- (at most 128), starting alphanumeric")
    key = new_key()
    row = await env.state.fetchrow(
        q("users", "insert_user"), uuid.uuid4(), org_id, name, role, hash_key(key), key[:10]
    )
    if row is None:
        raise ConflictError(f"a user named {name!r} exists in this org")
    return from_row(NewUser, row, api_key=key)


async def list_users(env: OpsEnv, org_id: uuid.UUID) -> list[UserRow]:
    return [from_row(UserRow, r) for r in await env.state.fetch(q("users", "list_users"), org_id)]


async def revoke_user(env: OpsEnv, org_id: uuid.UUID, name: str) -> Revoked:
    row = await env.state.fetchrow(q("users", "revoke_user"), org_id, name)
    if row is None:
        raise NotFoundError(f"no active user named {name!r}")
    return from_row(Revoked, row)


async def authenticate(pool: asyncpg.Pool, key: str) -> User | None:
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    row = await pool.fetchrow(q("users", "user_by_key"), hash_key(key))
    if row is None:
        return None
    return User(row["user_id"], row["org_id"], row["name"], row["role"])


async def user_by_id(pool: asyncpg.Pool, user_id: uuid.UUID) -> User | None:
    row = await pool.fetchrow(q("users", "user_by_id"), user_id)
    if row is None:
        return None
    return User(row["user_id"], row["org_id"], row["name"], row["role"])
