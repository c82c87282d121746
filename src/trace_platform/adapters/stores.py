"""Choose the ObjectStore adapter from settings."""

from __future__ import annotations

from pathlib import Path

from trace_platform.adapters.local_keys import load_worker_tokens
from trace_platform.adapters.local_store import LocalObjectStore, ObjectUrlSigner, derive_url_secret
from trace_platform.config import Settings
from trace_platform.domain.errors import ConfigError
from trace_platform.ports import ObjectStore


def object_store_from_settings(settings: Settings) -> ObjectStore:
    url = settings.resolved_object_store_url
    if url.startswith("file://"):
        secret = derive_url_secret(load_worker_tokens(settings).current)
        signer = ObjectUrlSigner(secret, settings.resolved_dispatcher_url)
        return LocalObjectStore(Path(url[len("file://") :]), signer)
    if url.startswith("s3://"):
        from trace_platform.adapters.s3_store import S3ObjectStore

        return S3ObjectStore(url, endpoint_url=settings.s3_endpoint_url)
    raise ConfigError("TRACE_OBJECT_STORE_URL must start with file:// or s3://")
