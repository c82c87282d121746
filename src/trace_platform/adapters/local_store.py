"""Local-directory ObjectStore (`file://` URIs) and the HMAC-signed URLs the dispatcher serves.

Objects are written to a temporary file and renamed into place, so a reader never sees a
half-written object. Paths are resolved and must stay inside the root (no `..`, no symlinks out).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, urlencode

from trace_platform.domain.errors import ForbiddenError, NotFoundError, ValidationError
from trace_platform.ports import ObjectInfo

MAX_KEY_LENGTH = 1024


class ObjectUrlSigner:
    """Signs (method, key, expiry) with a secret; the URL grants that method on that key only."""

    def __init__(self, secret: bytes, base_url: str) -> None:
        self._secret = secret
        self.base_url = base_url.rstrip("/")

    def _sig(self, method: str, key: str, expires: int) -> str:
        msg = f"{method}\n{key}\n{expires}".encode()
        digest = hmac.new(self._secret, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def url(self, method: str, key: str, expires_seconds: int) -> str:
        expires = int(time.time()) + expires_seconds
        query = urlencode({"exp": expires, "sig": self._sig(method, key, expires)})
        return f"{self.base_url}/objects/{quote(key)}?{query}"

    def check(self, method: str, key: str, expires: str | None, sig: str | None) -> None:
        if not expires or not sig or not expires.isdigit():
            raise ForbiddenError("object URL is not signed")
        if int(expires) < time.time():
            raise ForbiddenError("object URL expired")
        if not hmac.compare_digest(sig, self._sig(method, key, int(expires))):
            raise ForbiddenError("object URL signature does not match")


def derive_url_secret(worker_token: str) -> bytes:
    return hmac.new(worker_token.encode(), b"trace-object-url-v1", hashlib.sha256).digest()


def validate_key(key: str) -> str:
    parts = key.split("/")
    if (
        not key
        or len(key) > MAX_KEY_LENGTH
        or key.startswith("/")
        or any(p in ("", ".", "..") for p in parts)
        or any(c in key for c in ("\\", "\x00", "?", "#", "%"))
    ):
        raise ValidationError("invalid object key")
    return key


class LocalObjectStore:
    def __init__(self, root_dir: Path, url_signer: ObjectUrlSigner | None = None) -> None:
        self.root_dir = root_dir.resolve()
        with contextlib.suppress(FileExistsError):  # private when we create it
            self.root_dir.mkdir(parents=True, mode=0o700)
        self._root = "file://" + str(self.root_dir)
        self.url_signer = url_signer

    @property
    def root(self) -> str:
        return self._root

    def uri_for(self, key: str) -> str:
        return f"{self._root}/{validate_key(key)}"

    def key_of(self, uri: str) -> str:
        prefix = self._root + "/"
        if not uri.startswith(prefix):
            raise ForbiddenError("object URI is outside the store")
        return validate_key(uri[len(prefix) :])

    def path_of(self, uri: str) -> Path:
        path = (self.root_dir / self.key_of(uri)).resolve()
        if not path.is_relative_to(self.root_dir):
            raise ForbiddenError("object path escapes the store")
        return path

    async def put_stream(self, uri: str, chunks: AsyncIterator[bytes]) -> ObjectInfo:
        path = self.path_of(uri)
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
        fh = await asyncio.to_thread(tmp.open, "wb")
        size = 0
        try:
            async for chunk in chunks:
                size += len(chunk)
                await asyncio.to_thread(fh.write, chunk)
            await asyncio.to_thread(fh.flush)
        except BaseException:
            fh.close()
            tmp.unlink(missing_ok=True)
            raise
        fh.close()
        # Readable by the unprivileged query executors, whatever the umask: they see only the
        # files bound into their sandbox, and the store's root directory is private (0700).
        await asyncio.to_thread(os.chmod, tmp, 0o644)
        await asyncio.to_thread(os.replace, tmp, path)
        return ObjectInfo(uri, size)

    async def put_bytes(self, uri: str, data: bytes) -> ObjectInfo:
        async def one() -> AsyncIterator[bytes]:
            yield data

        return await self.put_stream(uri, one())

    async def open_stream(self, uri: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        path = self.path_of(uri)
        try:
            fh = await asyncio.to_thread(path.open, "rb")
        except FileNotFoundError:
            raise NotFoundError("object not found") from None
        try:
            while chunk := await asyncio.to_thread(fh.read, chunk_size):
                yield chunk
        finally:
            fh.close()

    async def get_bytes(self, uri: str) -> bytes:
        parts = [c async for c in self.open_stream(uri)]
        return b"".join(parts)

    async def exists(self, uri: str) -> bool:
        return await asyncio.to_thread(self.path_of(uri).is_file)

    async def delete(self, uri: str) -> None:
        await asyncio.to_thread(self.path_of(uri).unlink, True)

    def presign(self, uri: str, method: str, expires_seconds: int) -> str:
        if self.url_signer is None:
            raise ValidationError("this store has no URL signer configured")
        if method not in ("GET", "PUT"):
            raise ValidationError("method must be GET or PUT")
        return self.url_signer.url(method, self.key_of(uri), expires_seconds)
