"""Local key ring (Lite TokenSigner): HS256 secrets or ES256 PEM keys, current + next (+ previous).

Sign with `current`; accept `current`, `next` and `previous`, so keys rotate with no downtime:
add the new key as `next`, wait for every verifier to load it, promote it to `current`
(the old one becomes `previous`), and drop `previous` once tokens signed with it expired.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from pydantic import ValidationError as PydanticValidationError

from trace_platform.config import Settings
from trace_platform.domain.capability import AUDIENCE, CapabilityClaims
from trace_platform.domain.errors import AuthError, ConfigError

ALLOWED_ALGS = ("HS256", "ES256")
LEEWAY_SECONDS = 5
REQUIRED_CLAIMS = ("iss", "aud", "sub", "exp", "iat", "jti")
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")  # unpadded base64url


@dataclass(frozen=True)
class RingKey:
    kid: str
    alg: str
    signing_key: Any  # bytes (HS256) or EllipticCurvePrivateKey (ES256)
    verify_key: Any  # bytes (HS256) or EllipticCurvePublicKey (ES256)

    def public_jwk(self) -> dict[str, Any] | None:
        if self.alg != "ES256":
            return None  # a symmetric secret is never published
        jwk: dict[str, Any] = ECAlgorithm.to_jwk(self.verify_key, as_dict=True)
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig"})
        return jwk


def _parse_key(spec: Any, base_dir: Path | None, role: str) -> RingKey:
    if not isinstance(spec, dict):
        raise ConfigError(f"task key ring: '{role}' must be an object")
    kid, alg = spec.get("kid"), spec.get("alg")
    if not isinstance(kid, str) or not kid:
        raise ConfigError(f"task key ring: '{role}.kid' must be a non-empty string")
    if alg not in ALLOWED_ALGS:
        raise ConfigError(f"task key ring: '{role}.alg' must be one of {', '.join(ALLOWED_ALGS)}")
    if isinstance(spec.get("kms_key_id"), str):
        if alg != "ES256":
            raise ConfigError(f"task key ring: '{role}' KMS keys are ES256")
        from trace_platform.adapters.kms_keys import KmsKey

        try:
            kms = KmsKey(spec["kms_key_id"])
            public = kms.public_key()
        except ImportError:  # boto3 is part of the [aws] extra
            raise ConfigError("task key ring: KMS keys need the [aws] extra (boto3)") from None
        return RingKey(kid, alg, kms, public)
    if alg == "HS256":
        secret = spec.get("secret")
        if not isinstance(secret, str) or len(secret.encode()) < 32:
            raise ConfigError(f"task key ring: '{role}.secret' must be at least 32 bytes")
        raw = secret.encode()
        return RingKey(kid, alg, raw, raw)
    pem = spec.get("private_key_pem")
    if pem is None and isinstance(spec.get("private_key_path"), str):
        path = Path(spec["private_key_path"])
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        try:
            pem = path.read_text()
        except OSError:
            raise ConfigError(f"task key ring: cannot read '{role}.private_key_path'") from None
    if not isinstance(pem, str):
        raise ConfigError(f"task key ring: '{role}' needs private_key_pem or private_key_path")
    try:
        private = serialization.load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"task key ring: '{role}' private key is not a PEM key") from None
    if not isinstance(private, ec.EllipticCurvePrivateKey) or private.curve.name != "secp256r1":
        raise ConfigError(f"task key ring: '{role}' ES256 needs a P-256 EC key")
    return RingKey(kid, alg, private, private.public_key())


DEFAULT_ISSUER = "trace-dispatcher"


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


class LocalKeyRing:
    """TokenSigner over a key ring: local HS256/ES256 keys, or ES256 keys held in KMS (only the
    signature is computed there). Keys are parsed once; verification is always local."""

    def __init__(self, issuer: str, current: RingKey, accepted: list[RingKey]) -> None:
        self.issuer = issuer
        self.current = current
        self._keys: dict[str, RingKey] = {}
        self._signers: dict[str, tuple[Any, Any, bytes]] = {}
        for key in [current, *accepted]:
            if key.kid in self._keys:
                raise ConfigError(f"task key ring: duplicate kid {key.kid!r}")
            self._keys[key.kid] = key
        # The encoded header this ring writes, for each HS256 key: a token carrying exactly
        # that header is checked by `_verify_own` (no PyJWT); any other goes through PyJWT.
        self._own_headers: dict[str, bytes] = {}  # encoded header -> the key's secret
        for key in self._keys.values():
            if key.alg == "HS256" and isinstance(key.verify_key, bytes):
                _, prepared, header = self._local_signer(key)
                self._own_headers[header.decode()] = prepared

    @classmethod
    def from_document(
        cls, doc: Any, base_dir: Path | None = None, default_issuer: str = DEFAULT_ISSUER
    ) -> LocalKeyRing:
        if not isinstance(doc, dict):
            raise ConfigError("task key ring must be a JSON object")
        issuer = doc.get("issuer", default_issuer)
        if not isinstance(issuer, str) or not issuer:
            raise ConfigError("task key ring: 'issuer' must be a non-empty string")
        if "current" not in doc:
            raise ConfigError("task key ring: 'current' key is required")
        current = _parse_key(doc["current"], base_dir, "current")
        accepted = [
            _parse_key(doc[role], base_dir, role) for role in ("next", "previous") if doc.get(role)
        ]
        return cls(issuer, current, accepted)

    @property
    def kids(self) -> list[str]:
        return list(self._keys)

    @property
    def signs_remotely(self) -> bool:
        """True when the current key lives in KMS (each signature is a network call)."""
        return not isinstance(self.current.signing_key, (bytes, ec.EllipticCurvePrivateKey))

    def sign(self, claims: CapabilityClaims) -> str:
        key = self.current
        if self.signs_remotely:
            header = {"alg": key.alg, "kid": key.kid, "typ": "JWT"}
            token: str = key.signing_key.sign_jws(header, claims.model_dump(mode="json"))
            return token
        # PyJWT's algorithm signs; the key is prepared and the header encoded once per key
        # (jwt.encode redoes both per token: half a claim's cost in the dispatcher). The
        # token is an ordinary compact JWS that jwt.decode verifies.
        algorithm, prepared, encoded_header = self._local_signer(key)
        signing_input = (
            encoded_header + b"." + _b64url(orjson.dumps(claims.model_dump(mode="json")))
        )
        signature: bytes = algorithm.sign(signing_input, prepared)
        return (signing_input + b"." + _b64url(signature)).decode()

    def _local_signer(self, key: RingKey) -> tuple[Any, Any, bytes]:
        """(PyJWT algorithm, prepared key, encoded header) of a local key, made once."""
        found = self._signers.get(key.kid)
        if found is None:
            algorithm = jwt.get_algorithm_by_name(key.alg)
            header = orjson.dumps({"alg": key.alg, "kid": key.kid, "typ": "JWT"})
            found = (algorithm, algorithm.prepare_key(key.signing_key), _b64url(header))
            self._signers[key.kid] = found
        return found

    async def sign_async(self, claims: CapabilityClaims) -> str:
        """Local keys sign inline (microseconds); KMS signs off the event loop."""
        if self.signs_remotely:
            return await asyncio.to_thread(self.sign, claims)
        return self.sign(claims)

    def verify(self, token: str) -> CapabilityClaims:
        if not token or len(token) > 16384:
            raise AuthError("missing or malformed capability token")
        raw = self._verify_own(token)
        if raw is None:
            raw = self._verify_jwt(token)
        try:
            claims = CapabilityClaims.model_validate(raw)
            claims.check_subject()
        except (PydanticValidationError, ValueError):
            raise AuthError("capability token claims are missing or malformed") from None
        if claims.iat > time.time() + LEEWAY_SECONDS:
            raise AuthError("capability token issued in the future")
        return claims

    def _verify_own(self, token: str) -> dict[str, Any] | None:
        """The claims of an HS256 token in exactly the form this ring signs (its own encoded
        header, unpadded base64url segments) whose signature and registered claims pass
        every check `_verify_jwt` makes; None for anything else, which PyJWT then decides
        (and refuses, with its reason). PyJWT checks each character of a segment in Python
        (~0.1 ms for a token of a few grants: most of a rule query's cost in the query
        service); this does the same checks in C."""
        head, _, rest = token.partition(".")
        secret = self._own_headers.get(head)
        if secret is None:
            return None
        body, _, signature = rest.partition(".")
        if not (_SEGMENT.fullmatch(body) and _SEGMENT.fullmatch(signature)):
            return None
        try:
            sig = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
            expected = hmac.digest(secret, f"{head}.{body}".encode(), "sha256")
            if not hmac.compare_digest(sig, expected):
                return None
            raw = orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except (binascii.Error, ValueError):
            return None
        if not isinstance(raw, dict) or any(raw.get(c) is None for c in REQUIRED_CLAIMS):
            return None
        exp, iat, now = raw["exp"], raw["iat"], time.time()
        if (
            type(exp) is not int  # bool is not an integer claim here
            or type(iat) is not int
            or exp <= now - LEEWAY_SECONDS
            or iat > now + LEEWAY_SECONDS
            or "nbf" in raw
            or raw["iss"] != self.issuer
            or raw["aud"] != AUDIENCE
            or not isinstance(raw["sub"], str)
            or not isinstance(raw["jti"], str)
        ):
            return None
        return raw

    def _verify_jwt(self, token: str) -> dict[str, Any]:
        """The claims of a token PyJWT verifies with the ring's key its header names (the
        algorithm fixed by the key), or AuthError saying why not."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError("malformed capability token") from None
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise AuthError("capability token names an unknown key")
        # The algorithm is fixed by the key, never taken from the token.
        if header.get("alg") != key.alg:
            raise AuthError("capability token algorithm does not match its key")
        try:
            raw = jwt.decode(
                token,
                key.verify_key,
                algorithms=[key.alg],
                audience=AUDIENCE,
                issuer=self.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": ["iss", "aud", "sub", "exp", "iat", "jti"], "strict_aud": True},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError("capability token expired") from None
        except jwt.PyJWTError:
            raise AuthError("capability token is invalid") from None
        return dict(raw)

    def jwks(self) -> dict[str, Any]:
        keys = [jwk for k in self._keys.values() if (jwk := k.public_jwk()) is not None]
        return {"keys": keys}


class VerifiedTokens:
    """A key ring that remembers tokens it signed or verified, until they expire: a task's
    handler sends the same token with every query, and the dispatcher is sent back every
    token it minted (heartbeats, completions: a worker's batch of 128 completions carries
    128 of them), while a signature check costs more than the rest of such a call (~90 us
    for HS256 here). Only the exact token string is remembered; failures never are; expiry
    is checked on every use with the ring's leeway. A ring whose keys change is reloaded
    with its process, and this memory with it."""

    def __init__(self, ring: LocalKeyRing, size: int = 4096) -> None:
        self.ring = ring
        self.size = size
        self._claims: dict[str, CapabilityClaims] = {}

    @property
    def issuer(self) -> str:
        return self.ring.issuer

    @property
    def kids(self) -> list[str]:
        return self.ring.kids

    def jwks(self) -> dict[str, Any]:
        return self.ring.jwks()

    def sign(self, claims: CapabilityClaims) -> str:
        token = self.ring.sign(claims)
        self._remember_minted(token, claims)
        return token

    async def sign_async(self, claims: CapabilityClaims) -> str:
        token = await self.ring.sign_async(claims)
        self._remember_minted(token, claims)
        return token

    def _remember_minted(self, token: str, claims: CapabilityClaims) -> None:
        """Only claims the ring's own check would pass (its issuer and audience, issued
        by now; expiry is checked on every use): minting never widens what verification
        accepts."""
        if (
            claims.iss == self.ring.issuer
            and claims.aud == AUDIENCE
            and claims.iat <= time.time() + LEEWAY_SECONDS
        ):
            self._remember(token, claims)

    def verify(self, token: str) -> CapabilityClaims:
        claims = self._claims.get(token)
        if claims is not None:
            if time.time() < claims.exp + LEEWAY_SECONDS:
                return claims
            del self._claims[token]
        claims = self.ring.verify(token)
        self._remember(token, claims)
        return claims

    def _remember(self, token: str, claims: CapabilityClaims) -> None:
        if len(self._claims) >= self.size:
            now = time.time()
            self._claims = {t: c for t, c in self._claims.items() if now < c.exp}
            if len(self._claims) >= self.size * 3 // 4:  # still mostly valid: drop the oldest
                drop = len(self._claims) - self.size // 2
                for old in list(self._claims)[:drop]:
                    del self._claims[old]
        self._claims[token] = claims


def generate_es256_pem() -> str:
    private = ec.generate_private_key(ec.SECP256R1())
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _write_secret_file(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(content)
    try:
        os.link(tmp, path)  # first writer wins when two processes start together
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def load_key_ring(settings: Settings) -> LocalKeyRing:
    """Key ring from TRACE_TASK_KEYS (path or inline JSON), else the Lite ring under TRACE_HOME."""
    spec = settings.task_keys
    if spec:
        text, base = spec, None
        if not spec.lstrip().startswith("{"):
            path = Path(spec)
            try:
                text, base = path.read_text(), path.parent
            except OSError:
                raise ConfigError(
                    "TRACE_TASK_KEYS is neither inline JSON nor a readable file"
                ) from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError:
            raise ConfigError("TRACE_TASK_KEYS is not valid JSON") from None
        return _with_issuer(LocalKeyRing.from_document(doc, base, settings.issuer), settings)
    path = settings.home.resolve() / "secrets" / "task_keys.json"
    if not path.exists():
        doc = {
            "issuer": settings.issuer,
            "current": {
                "kid": "lite-" + secrets.token_hex(4),
                "alg": "HS256",
                "secret": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
            },
        }
        _write_secret_file(path, json.dumps(doc, indent=2))
    ring = LocalKeyRing.from_document(json.loads(path.read_text()), path.parent, settings.issuer)
    return _with_issuer(ring, settings)


def _with_issuer(ring: LocalKeyRing, settings: Settings) -> LocalKeyRing:
    """One source of truth for `iss`: the ring's issuer. TRACE_ISSUER names the issuer of a
    ring that has none (and of generated rings); set to something else it is a conflict that
    would make every minted token fail its own verification, so it stops the start."""
    if settings.issuer not in (DEFAULT_ISSUER, ring.issuer):
        raise ConfigError(
            f"TRACE_ISSUER ({settings.issuer!r}) differs from the key ring's issuer"
            f" ({ring.issuer!r}); remove one of them or make them equal"
        )
    return ring


@dataclass(frozen=True)
class WorkerTokens:
    """The trusted worker credential: current and (during rotation) next are accepted."""

    current: str
    next: str | None = None

    def accepts(self, presented: str | None) -> bool:
        if not presented:
            return False
        ok = hmac.compare_digest(presented.encode(), self.current.encode())
        if self.next:
            ok |= hmac.compare_digest(presented.encode(), self.next.encode())
        return ok


def load_worker_tokens(settings: Settings) -> WorkerTokens:
    if settings.worker_token:
        return WorkerTokens(settings.worker_token, settings.worker_token_next)
    path = settings.home.resolve() / "secrets" / "worker_token"
    if not path.exists():
        _write_secret_file(path, secrets.token_urlsafe(32))
    return WorkerTokens(path.read_text().strip(), settings.worker_token_next)
