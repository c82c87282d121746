"""Capability token verification fails closed (SPEC §5)."""

import base64
import hmac
import json
import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from trace_platform.adapters.local_keys import LocalKeyRing, WorkerTokens, generate_es256_pem
from trace_platform.domain.capability import CapabilityClaims, build_claims, is_within_prefixes
from trace_platform.domain.errors import AuthError, ConfigError

SECRET_A = "a" * 40
SECRET_B = "b" * 40
ROOT = "file:///srv/trace/objects"


def ring(
    current: dict[str, Any], nxt: dict[str, Any] | None = None, issuer: str = "iss-1"
) -> LocalKeyRing:
    doc: dict[str, Any] = {"issuer": issuer, "current": current}
    if nxt:
        doc["next"] = nxt
    return LocalKeyRing.from_document(doc)


HS_A = {"kid": "a", "alg": "HS256", "secret": SECRET_A}
HS_B = {"kid": "b", "alg": "HS256", "secret": SECRET_B}


def claims(**over: Any) -> Any:
    c = build_claims(
        issuer="iss-1",
        task_id=uuid.uuid4(),
        attempt=1,
        org_id=uuid.uuid4(),
        ttl_seconds=60,
        store_root=ROOT,
    )
    return c.model_copy(update=over) if over else c


def raw_token(payload: dict[str, Any], key: Any, alg: str = "HS256", kid: str | None = "a") -> str:
    headers = {"kid": kid} if kid is not None else {}
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def test_round_trip_and_attempt_scoped_write_prefix() -> None:
    r = ring(HS_A)
    c = claims()
    out = r.verify(r.sign(c))
    assert out == c
    assert out.s3.write_prefixes == [f"{ROOT}/buffers/{c.task_id}/1/"]
    assert out.sub == f"task:{c.task_id}" and out.aud == "trace.task"


def test_token_signed_with_next_key_is_accepted_during_overlap() -> None:
    verifier = ring(HS_A, HS_B)
    signer_after_rotation = ring(HS_B)
    assert verifier.verify(signer_after_rotation.sign(claims())).attempt == 1
    # and once the next key is gone from the ring, its tokens are refused
    with pytest.raises(AuthError):
        ring(HS_A).verify(signer_after_rotation.sign(claims()))


def test_tampered_signature_is_rejected() -> None:
    r = ring(HS_A)
    tok = r.sign(claims())
    head, body, sig = tok.split(".")
    forged_body = json.loads(base64.urlsafe_b64decode(body + "=="))
    forged_body["attempt"] = 2
    body2 = base64.urlsafe_b64encode(json.dumps(forged_body).encode()).rstrip(b"=").decode()
    for bad in (f"{head}.{body2}.{sig}", f"{head}.{body}.{sig[:-2]}xx", f"{head}.{body}."):
        with pytest.raises(AuthError):
            r.verify(bad)


def test_alg_none_is_rejected() -> None:
    payload = claims().model_dump(mode="json")
    tok = jwt.encode(payload, None, algorithm="none", headers={"kid": "a"})  # type: ignore[arg-type]
    with pytest.raises(AuthError):
        ring(HS_A).verify(tok)


def test_expired_token_is_rejected() -> None:
    now = time.time() - 3600
    c = build_claims(
        issuer="iss-1",
        task_id=uuid.uuid4(),
        attempt=1,
        org_id=uuid.uuid4(),
        ttl_seconds=60,
        store_root=ROOT,
        now=now,
    )
    r = ring(HS_A)
    with pytest.raises(AuthError, match="expired"):
        r.verify(r.sign(c))


@pytest.mark.parametrize("field,value", [("aud", "other.aud"), ("iss", "someone-else")])
def test_wrong_audience_or_issuer_is_rejected(field: str, value: str) -> None:
    payload = claims().model_dump(mode="json")
    payload[field] = value
    with pytest.raises(AuthError):
        ring(HS_A).verify(raw_token(payload, SECRET_A))


def test_unknown_or_missing_kid_is_rejected() -> None:
    payload = claims().model_dump(mode="json")
    for kid in ("nope", None):
        with pytest.raises(AuthError):
            ring(HS_A).verify(raw_token(payload, SECRET_A, kid=kid))


@pytest.mark.parametrize(
    "missing", ["org_id", "task_id", "attempt", "datasets", "s3", "jti", "sub"]
)
def test_missing_required_claim_is_rejected(missing: str) -> None:
    payload = claims().model_dump(mode="json")
    del payload[missing]
    with pytest.raises(AuthError):
        ring(HS_A).verify(raw_token(payload, SECRET_A))


@pytest.mark.parametrize(
    "field,value",
    [
        ("attempt", "1"),
        ("attempt", 0),
        ("task_id", "not-a-uuid"),
        ("datasets", "all"),
        ("s3", {"write_prefixes": ["s3://"], "admin": True}),
        ("sub", "task:someone-else"),
    ],
)
def test_malformed_claims_are_rejected(field: str, value: Any) -> None:
    payload = claims().model_dump(mode="json")
    payload[field] = value
    with pytest.raises(AuthError):
        ring(HS_A).verify(raw_token(payload, SECRET_A))


def test_unknown_extra_claim_is_rejected() -> None:
    payload = claims().model_dump(mode="json")
    payload["role"] = "admin"
    with pytest.raises(AuthError):
        ring(HS_A).verify(raw_token(payload, SECRET_A))


def test_es256_round_trip_and_jwks() -> None:
    pem = generate_es256_pem()
    r = ring({"kid": "es", "alg": "ES256", "private_key_pem": pem}, HS_B)
    c = claims()
    assert r.verify(r.sign(c)) == c
    keys = r.jwks()["keys"]
    assert [k["kid"] for k in keys] == ["es"]  # symmetric secrets are never published
    assert keys[0]["kty"] == "EC" and keys[0]["crv"] == "P-256" and "d" not in keys[0]


def test_hs_es_confusion_is_rejected() -> None:
    """A token 'signed' with HS256 using the ES public key as secret must not pass."""
    pem = generate_es256_pem()
    r = ring({"kid": "es", "alg": "ES256", "private_key_pem": pem})
    public_pem = (
        serialization.load_pem_private_key(pem.encode(), None)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    import hashlib
    import hmac

    payload = claims().model_dump(mode="json")
    header = {"alg": "HS256", "kid": "es", "typ": "JWT"}
    seg = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    signing_input = f"{seg(header)}.{seg(payload)}"
    sig = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    tok = signing_input + "." + base64.urlsafe_b64encode(sig).rstrip(b"=").decode()
    with pytest.raises(AuthError):
        r.verify(tok)


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"current": {"kid": "a", "alg": "none", "secret": SECRET_A}},
        {"current": {"kid": "a", "alg": "HS256", "secret": "short"}},
        {"current": {"kid": "", "alg": "HS256", "secret": SECRET_A}},
        {"current": {"kid": "a", "alg": "ES256", "private_key_pem": "not a pem"}},
        {"current": HS_A, "next": HS_A},
    ],
)
def test_bad_key_ring_documents_are_config_errors(doc: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        LocalKeyRing.from_document(doc)


def test_garbage_tokens_are_401() -> None:
    r = ring(HS_A)
    for bad in ("", "abc", "a.b.c", "Bearer x", "." * 5, "x" * 20000):
        with pytest.raises(AuthError):
            r.verify(bad)


def test_worker_tokens_accept_current_and_next_only() -> None:
    w = WorkerTokens("cur", "nxt")
    assert w.accepts("cur") and w.accepts("nxt")
    assert not w.accepts("") and not w.accepts(None) and not w.accepts("cur ")


@pytest.mark.parametrize(
    "uri,ok",
    [
        (f"{ROOT}/buffers/t/1/b.jsonl", True),
        (f"{ROOT}/buffers/t/1/sub/b.jsonl", True),
        (f"{ROOT}/buffers/t/1/", False),
        (f"{ROOT}/buffers/t/1/../2/b.jsonl", False),
        (f"{ROOT}/buffers/t/1/./b.jsonl", False),
        (f"{ROOT}/buffers/t/1//b.jsonl", False),
        (f"{ROOT}/buffers/t/10/b.jsonl", False),
        (f"{ROOT}/buffers/t/1/b.jsonl?x=1", False),
        (f"{ROOT}/buffers/t/1/%2e%2e/b", False),
        ("s3://bucket/buffers/t/1/b.jsonl", False),
        ("", False),
    ],
)
def test_write_prefix_containment(uri: str, ok: bool) -> None:
    assert is_within_prefixes(uri, [f"{ROOT}/buffers/t/1/"]) is ok


def test_remembered_tokens_are_exact_strings_and_expire() -> None:
    from trace_platform.adapters.local_keys import VerifiedTokens

    memo = VerifiedTokens(ring(HS_A), size=8)
    c = claims()
    token = memo.sign(c)
    assert memo.verify(token) == c  # minted here: known without a second check
    head, body, sig = token.split(".")
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    with pytest.raises(AuthError):
        memo.verify(f"{head}.{body}.{flipped}")  # one character off: the full check, refused
    with pytest.raises(AuthError):
        memo.verify(memo.sign(claims(iss="someone-else")))  # minting remembers, never widens
    old = claims(iat=int(time.time()) - 120, exp=int(time.time()) - 60)
    stale = memo.sign(old)
    with pytest.raises(AuthError, match="expired"):
        memo.verify(stale)  # remembered, yet expired
    for _ in range(20):  # past its size it forgets the oldest and still answers
        memo.sign(claims())
    assert memo.verify(token) == c


def _verdict(r: LocalKeyRing, token: str) -> Any:
    try:
        return r.verify(token)
    except AuthError as exc:
        return ("refused", exc.detail)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_token_in_the_rings_own_form_is_verified_without_pyjwt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    r = ring(HS_A, HS_B)
    c = claims()
    mine, rotated = r.sign(c), ring(HS_B).sign(c)  # current key and the accepted next one

    def no_pyjwt(*_: Any, **__: Any) -> Any:
        raise AssertionError("PyJWT was asked")

    monkeypatch.setattr(jwt, "decode", no_pyjwt)
    monkeypatch.setattr(jwt, "get_unverified_header", no_pyjwt)
    assert r.verify(mine) == c
    assert r.verify(rotated) == c


def _variants() -> list[tuple[str, str]]:
    """Tokens around the ring's own form: each either passes every check or breaks one."""
    now = int(time.time())
    good = claims().model_dump(mode="json")
    head = _b64(b'{"alg":"HS256","kid":"a","typ":"JWT"}')

    def own(payload: Any, secret: str = SECRET_A, header: str = head) -> str:
        body = _b64(json.dumps(payload).encode())
        sig = hmac.digest(secret.encode(), f"{header}.{body}".encode(), "sha256")
        return f"{header}.{body}.{_b64(sig)}"

    def changed(**over: Any) -> dict[str, Any]:
        return {**good, **over}

    tok = own(good)
    h, b, s = tok.split(".")
    out = [
        ("good", tok),
        ("other key's secret under kid a", own(good, SECRET_B)),
        ("unknown key's secret", own(good, "c" * 40)),
        ("expired", own(changed(exp=now - 60))),
        ("expired within the leeway", own(changed(exp=now - 2))),
        ("issued in the future", own(changed(iat=now + 60))),
        ("float exp", own(changed(exp=now + 60.5))),
        ("string exp", own(changed(exp=str(now + 60)))),
        ("bool iat", own(changed(iat=True))),
        ("not before, passed", own(changed(nbf=now - 60))),
        ("not before, to come", own(changed(nbf=now + 60))),
        ("wrong issuer", own(changed(iss="someone-else"))),
        ("wrong audience", own(changed(aud="other.aud"))),
        ("audience list", own(changed(aud=["trace.task"]))),
        ("no jti", own({k: v for k, v in good.items() if k != "jti"})),
        ("null sub", own(changed(sub=None))),
        ("not an object", own([good])),
        ("padded body", f"{h}.{b}{'=' * (-len(b) % 4)}.{s}"),
        ("padded signature", f"{h}.{b}.{s}="),
        ("junk in body", f"{h}.{b[:-1]}!.{s}"),
        ("four segments", f"{tok}.{s}"),
        ("no signature", f"{h}.{b}."),
        ("tampered body", f"{h}.{_b64(json.dumps(changed(attempt=2)).encode())}.{s}"),
        ("other header order", own(good, header=_b64(b'{"kid":"a","alg":"HS256","typ":"JWT"}'))),
    ]
    return out


@pytest.mark.parametrize("name", [name for name, _ in _variants()])
def test_the_own_form_check_decides_exactly_as_pyjwt(name: str) -> None:
    """Whatever the fast check of the ring's own form decides, PyJWT alone decides the same
    (the same claims, or the same refusal)."""
    token = dict(_variants())[name]
    r = ring(HS_A, HS_B)
    fast = _verdict(r, token)
    r._own_headers = {}  # the ring without its own-form check: PyJWT for every token
    assert fast == _verdict(r, token)
    # PyJWT's own leniencies (padding after the signature, another header order) pass
    # through its path; nbf is not a claim the token model knows.
    if name in ("good", "expired within the leeway", "padded signature", "other header order"):
        assert isinstance(fast, CapabilityClaims), fast
    else:
        assert isinstance(fast, tuple), fast
