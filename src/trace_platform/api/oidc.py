"""OIDC bearer JWTs for the user API (SPEC §13), verified as strictly as capability tokens:
an asymmetric algorithm from an allowlist (never `none`, never HS*), a `kid` found in the
issuer's JWKS, `iss` and `aud` equal to the configured ones, `exp`, `iat` and `sub` present,
the role claim one of reader|writer|admin. The JWKS comes from a file or an https URL
(fetched with a timeout and cached; an unknown `kid` refreshes it at most once a minute)."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import jwt

from trace_platform.config import Settings
from trace_platform.domain.errors import AuthError, ForbiddenError
from trace_platform.ops.users import ROLES, User
from trace_platform.ports import LITE_ORG_ID

ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "PS256"]
LEEWAY_SECONDS = 30
REFRESH_SECONDS = 60.0
_NS = uuid.UUID("7d1c0d36-4b1e-4f57-9b5b-2b7a3c1f0e11")


class OidcVerifier:
    def __init__(self, settings: Settings) -> None:
        assert settings.oidc_issuer and settings.oidc_audience and settings.oidc_jwks
        self.issuer = settings.oidc_issuer
        self.audience = settings.oidc_audience
        self.source = settings.oidc_jwks
        self.role_claim = settings.oidc_role_claim
        self.org_claim = settings.oidc_org_claim
        self.keys: dict[str, Any] = {}
        self.loaded_at = 0.0

    def _load(self) -> None:
        if self.source.startswith("https://") or self.source.startswith("http://"):
            import urllib.request

            with urllib.request.urlopen(self.source, timeout=5) as resp:  # noqa: S310
                doc = json.loads(resp.read(1 << 20))
        else:
            doc = json.loads(Path(self.source).read_text())
        keys = {}
        for jwk in doc.get("keys", []):
            if jwk.get("kid") and jwk.get("kty") in ("RSA", "EC"):
                keys[jwk["kid"]] = jwt.PyJWK(jwk).key
        self.keys, self.loaded_at = keys, time.monotonic()

    def key_for(self, kid: str) -> Any:
        if kid not in self.keys and time.monotonic() - self.loaded_at > REFRESH_SECONDS:
            try:
                self._load()
            except (OSError, ValueError, jwt.PyJWKError):
                raise AuthError("the issuer's JWKS is unavailable") from None
        key = self.keys.get(kid)
        if key is None:
            raise AuthError("token signed with an unknown key")
        return key

    def verify(self, token: str) -> User:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed bearer token") from None
        if header.get("alg") not in ALGORITHMS or not isinstance(header.get("kid"), str):
            raise AuthError("token algorithm or key id not accepted")
        try:
            claims = jwt.decode(
                token,
                self.key_for(header["kid"]),
                algorithms=[header["alg"]],
                audience=self.audience,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise AuthError(f"token rejected ({type(exc).__name__})") from None
        role = claims.get(self.role_claim)
        if role not in ROLES:
            raise ForbiddenError(f"token carries no {self.role_claim} of {'|'.join(ROLES)}")
        org = claims.get(self.org_claim)
        try:
            org_id = uuid.UUID(str(org)) if org is not None else LITE_ORG_ID
        except ValueError:
            raise AuthError(f"{self.org_claim} is not an org id") from None
        sub = str(claims["sub"])[:200]
        return User(uuid.uuid5(_NS, f"{self.issuer}:{sub}"), org_id, f"oidc:{sub}", role)
