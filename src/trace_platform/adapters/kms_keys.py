"""KMS-held ES256 keys for the capability-token key ring (SPEC §5, AWS profile).

A ring entry `{"kid": "...", "alg": "ES256", "kms_key_id": "<key id, ARN or alias>"}` names an
asymmetric KMS key (`ECC_NIST_P256`, `SIGN_VERIFY`). Its public key is fetched once when the
ring loads, so verification (dispatcher, query service) never calls KMS and JWKS publishes it;
signing sends the JWS signing input to KMS (`ECDSA_SHA_256`) and the private key never leaves
KMS. Endpoint, region and credentials come from boto3's chain (`AWS_ENDPOINT_URL_KMS`).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import load_der_public_key

from trace_platform.domain.errors import ConfigError

RAW_MESSAGE_LIMIT = 4096  # KMS signs raw messages up to this size; larger ones as a digest


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class KmsKey:
    """The signing half of a KMS-held ES256 key."""

    def __init__(self, key_id: str, client: Any = None) -> None:
        if client is None:
            import boto3

            client = boto3.client("kms")
        self.key_id = key_id
        self._kms = client

    def public_key(self) -> ec.EllipticCurvePublicKey:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            reply = self._kms.get_public_key(KeyId=self.key_id)
        except (BotoCoreError, ClientError) as exc:
            raise ConfigError(
                f"KMS key {self.key_id}: cannot read its public key ({exc})"
            ) from None
        spec = reply.get("KeySpec") or reply.get("CustomerMasterKeySpec")
        if spec != "ECC_NIST_P256" or reply.get("KeyUsage") != "SIGN_VERIFY":
            raise ConfigError(
                f"KMS key {self.key_id}: ES256 needs an ECC_NIST_P256 SIGN_VERIFY key"
            )
        key = load_der_public_key(reply["PublicKey"])
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise ConfigError(f"KMS key {self.key_id}: not an EC public key")
        return key

    def sign_jws(self, header: dict[str, Any], claims: dict[str, Any]) -> str:
        """A compact JWS (ES256) whose signature KMS computes."""
        encode = json.JSONEncoder(separators=(",", ":")).encode
        signing_input = (
            _b64url(encode(header).encode()) + "." + _b64url(encode(claims).encode())
        ).encode()
        if len(signing_input) <= RAW_MESSAGE_LIMIT:
            message, kind = signing_input, "RAW"
        else:
            message, kind = hashlib.sha256(signing_input).digest(), "DIGEST"
        der = self._kms.sign(
            KeyId=self.key_id,
            Message=message,
            MessageType=kind,
            SigningAlgorithm="ECDSA_SHA_256",
        )["Signature"]
        r, s = decode_dss_signature(der)  # JWS wants raw r || s, 32 bytes each
        return signing_input.decode() + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
