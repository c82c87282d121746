"""S3 ObjectStore over boto3, for AWS S3 and any S3-compatible endpoint.

boto3 is synchronous; calls run in threads. Uploads stream as multipart (8 MiB parts) and
downloads stream by chunks, so no object is held whole in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from trace_platform.domain.errors import ConfigError, ForbiddenError, NotFoundError, ValidationError
from trace_platform.ports import ObjectInfo

PART_SIZE = 8 << 20


def parse_s3_url(url: str) -> tuple[str, str]:
    if not url.startswith("s3://"):
        raise ConfigError("S3 object store URL must look like s3://bucket/prefix")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    if not bucket:
        raise ConfigError("S3 object store URL needs a bucket")
    return bucket, prefix.strip("/")


class S3ObjectStore:
    def __init__(self, url: str, endpoint_url: str | None = None, client: Any = None) -> None:
        self.bucket, self.prefix = parse_s3_url(url)
        if client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:
                raise ConfigError(
                    "the S3 object store needs `pip install 'trace-platform[aws]'`"
                ) from None
            client = boto3.client(
                "s3",
                endpoint_url=endpoint_url,
                config=Config(
                    signature_version="s3v4",
                    retries={"max_attempts": 5, "mode": "standard"},
                    connect_timeout=5,
                    read_timeout=60,
                ),
            )
        self._s3 = client
        self._root = f"s3://{self.bucket}" + (f"/{self.prefix}" if self.prefix else "")

    @property
    def root(self) -> str:
        return self._root

    def uri_for(self, key: str) -> str:
        from trace_platform.adapters.local_store import validate_key

        return f"{self._root}/{validate_key(key)}"

    def _object_key(self, uri: str) -> str:
        from trace_platform.adapters.local_store import validate_key

        prefix = self._root + "/"
        if not uri.startswith(prefix):
            raise ForbiddenError("object URI is outside the store")
        rel = validate_key(uri[len(prefix) :])
        return f"{self.prefix}/{rel}" if self.prefix else rel

    async def _upload_part(
        self, key: str, upload_id: str, number: int, body: bytes
    ) -> dict[str, Any]:
        resp = await asyncio.to_thread(
            self._s3.upload_part,
            Bucket=self.bucket,
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            Body=body,
        )
        return {"PartNumber": number, "ETag": resp["ETag"]}

    async def put_stream(self, uri: str, chunks: AsyncIterator[bytes]) -> ObjectInfo:
        key = self._object_key(uri)
        buf = bytearray()
        size = 0
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            async for chunk in chunks:
                buf += chunk
                size += len(chunk)
                while len(buf) >= PART_SIZE:
                    if upload_id is None:
                        created = await asyncio.to_thread(
                            self._s3.create_multipart_upload, Bucket=self.bucket, Key=key
                        )
                        upload_id = created["UploadId"]
                    part, buf = bytes(buf[:PART_SIZE]), buf[PART_SIZE:]
                    parts.append(await self._upload_part(key, upload_id, len(parts) + 1, part))
            if upload_id is None:
                await asyncio.to_thread(
                    self._s3.put_object, Bucket=self.bucket, Key=key, Body=bytes(buf)
                )
            else:
                if buf:
                    parts.append(
                        await self._upload_part(key, upload_id, len(parts) + 1, bytes(buf))
                    )
                await asyncio.to_thread(
                    self._s3.complete_multipart_upload,
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                )
        except BaseException:
            if upload_id is not None:
                await asyncio.to_thread(
                    self._s3.abort_multipart_upload, Bucket=self.bucket, Key=key, UploadId=upload_id
                )
            raise
        return ObjectInfo(uri, size)

    async def put_bytes(self, uri: str, data: bytes) -> ObjectInfo:
        key = self._object_key(uri)
        await asyncio.to_thread(self._s3.put_object, Bucket=self.bucket, Key=key, Body=data)
        return ObjectInfo(uri, len(data))

    async def open_stream(self, uri: str, chunk_size: int = 1 << 20) -> AsyncIterator[bytes]:
        key = self._object_key(uri)
        try:
            resp = await asyncio.to_thread(self._s3.get_object, Bucket=self.bucket, Key=key)
        except self._s3.exceptions.NoSuchKey:
            raise NotFoundError("object not found") from None
        body = resp["Body"]
        try:
            while chunk := await asyncio.to_thread(body.read, chunk_size):
                yield chunk
        finally:
            body.close()

    async def get_bytes(self, uri: str) -> bytes:
        return b"".join([c async for c in self.open_stream(uri)])

    async def exists(self, uri: str) -> bool:
        key = self._object_key(uri)
        try:
            await asyncio.to_thread(self._s3.head_object, Bucket=self.bucket, Key=key)
        except self._s3.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    async def delete(self, uri: str) -> None:
        key = self._object_key(uri)
        await asyncio.to_thread(self._s3.delete_object, Bucket=self.bucket, Key=key)

    def presign(self, uri: str, method: str, expires_seconds: int) -> str:
        op = {"GET": "get_object", "PUT": "put_object"}.get(method)
        if op is None:
            raise ValidationError("method must be GET or PUT")
        url: str = self._s3.generate_presigned_url(
            op,
            Params={"Bucket": self.bucket, "Key": self._object_key(uri)},
            ExpiresIn=expires_seconds,
        )
        return url
