"""Capability tokens signed by an ES256 key held in KMS (a real KMS-protocol server on
loopback, moto's): verification is local with the fetched public key, rotation works across
local and KMS keys, misconfigured keys are clear errors, and a dispatcher signs with it."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import jwt
import pytest

from tests.conftest import free_port, start_dispatcher
from tests.helpers import claim, create_tasks, worker_headers
from tests.integration.test_object_stores import aws_env, s3_endpoint  # noqa: F401 - fixtures
from trace_platform.adapters.local_keys import LocalKeyRing, generate_es256_pem
from trace_platform.config import Settings
from trace_platform.domain.capability import build_claims
from trace_platform.domain.errors import AuthError, ConfigError


@pytest.fixture(scope="module")
def kms(s3_endpoint: str) -> Iterator[object]:  # noqa: F811 - moto serves every service
    old = os.environ.get("AWS_ENDPOINT_URL_KMS")
    os.environ["AWS_ENDPOINT_URL_KMS"] = s3_endpoint
    yield boto3.client("kms")
    if old is None:
        os.environ.pop("AWS_ENDPOINT_URL_KMS", None)
    else:
        os.environ["AWS_ENDPOINT_URL_KMS"] = old


def new_key(kms: object, spec: str = "ECC_NIST_P256", usage: str = "SIGN_VERIFY") -> str:
    meta = kms.create_key(KeySpec=spec, KeyUsage=usage)["KeyMetadata"]  # type: ignore[attr-defined]
    return str(meta["KeyId"])


def claims() -> object:
    return build_claims(
        issuer="trace-dispatcher",
        task_id=uuid.uuid4(),
        attempt=1,
        org_id=uuid.uuid4(),
        ttl_seconds=300,
        store_root="file:///tmp/objects",
    )


def test_kms_signed_tokens_verify_locally(kms: object) -> None:
    key_id = new_key(kms)
    ring = LocalKeyRing.from_document(
        {"current": {"kid": "kms-1", "alg": "ES256", "kms_key_id": key_id}}
    )
    assert ring.signs_remotely
    c = claims()
    token = ring.sign(c)  # type: ignore[arg-type]
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "ES256", "kid": "kms-1", "typ": "JWT"}
    assert ring.verify(token) == c
    # The JWKS carries KMS's public key: a verifier with no AWS access checks the token.
    (jwk,) = ring.jwks()["keys"]
    public = jwt.PyJWK(jwk).key
    decoded = jwt.decode(token, public, algorithms=["ES256"], audience="trace.task")
    assert decoded["task_id"] == c.task_id  # type: ignore[attr-defined]


def test_a_tampered_kms_token_is_refused(kms: object) -> None:
    ring = LocalKeyRing.from_document(
        {"current": {"kid": "kms-2", "alg": "ES256", "kms_key_id": new_key(kms)}}
    )
    head, body, sig = ring.sign(claims()).split(".")  # type: ignore[arg-type]
    payload = json.loads(base64.urlsafe_b64decode(body + "=="))
    payload["attempt"] = 2
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    with pytest.raises(AuthError):
        ring.verify(f"{head}.{forged}.{sig}")


def test_rotation_between_a_local_key_and_a_kms_key(kms: object) -> None:
    local = {"kid": "local-1", "alg": "ES256", "private_key_pem": generate_es256_pem()}
    remote = {"kid": "kms-3", "alg": "ES256", "kms_key_id": new_key(kms)}
    before = LocalKeyRing.from_document({"current": local, "next": remote})
    after = LocalKeyRing.from_document({"current": remote, "previous": local})
    assert before.verify(after.sign(claims()))  # type: ignore[arg-type]
    assert after.verify(before.sign(claims()))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "usage", "alg", "message"),
    [
        ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT", "ES256", "ECC_NIST_P256"),
        ("RSA_2048", "SIGN_VERIFY", "ES256", "ECC_NIST_P256"),
        ("ECC_NIST_P256", "SIGN_VERIFY", "HS256", "KMS keys are ES256"),
    ],
)
def test_unsuitable_kms_keys_are_clear_config_errors(
    kms: object, spec: str, usage: str, alg: str, message: str
) -> None:
    doc = {"current": {"kid": "k", "alg": alg, "kms_key_id": new_key(kms, spec, usage)}}
    with pytest.raises(ConfigError) as err:
        LocalKeyRing.from_document(doc)
    assert message in err.value.detail


def test_an_unknown_kms_key_is_a_clear_config_error(kms: object) -> None:
    doc = {"current": {"kid": "k", "alg": "ES256", "kms_key_id": str(uuid.uuid4())}}
    with pytest.raises(ConfigError) as err:
        LocalKeyRing.from_document(doc)
    assert "cannot read its public key" in err.value.detail


async def test_a_dispatcher_signs_claims_with_its_kms_key(
    settings: Settings, kms: object, tmp_path: Path
) -> None:
    key_id = new_key(kms)
    ring = {
        "issuer": "trace-dispatcher",
        "current": {"kid": "kms-d", "alg": "ES256", "kms_key_id": key_id},
    }
    # TRACE_ISSUER at its default: the ring's issuer is the one the tokens carry.
    s = settings.replace(task_keys=json.dumps(ring), port=free_port(), issuer="trace-dispatcher")
    proc = await start_dispatcher(s, tmp_path)
    try:
        (tid,) = await create_tasks(
            s.state_database_url or "", 1, payload={"operator": "noop"}, wake=False
        )
        async with httpx.AsyncClient(base_url=proc.url or "", timeout=10) as http:
            r = await claim(http, tid)
            assert r.status_code == 200, r.text
            token = r.json()["capability_token"]
            jwks = (await http.get("/internal/jwks/task", headers=worker_headers())).json()
        assert jwt.get_unverified_header(token)["kid"] == "kms-d"
        public = jwt.PyJWK(jwks["keys"][0]).key
        decoded = jwt.decode(token, public, algorithms=["ES256"], audience="trace.task")
        assert decoded["task_id"] == str(tid)
        assert decoded["iss"] == "trace-dispatcher"
    finally:
        proc.stop()
