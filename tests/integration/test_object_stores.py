"""One object-store suite, run against the local directory store and a real S3-protocol
server on loopback (moto's standalone server, started by the test)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import boto3
import pytest

from tests.conftest import free_port, wait_until
from trace_platform.adapters.local_store import LocalObjectStore, ObjectUrlSigner
from trace_platform.adapters.s3_store import S3ObjectStore
from trace_platform.domain.errors import ForbiddenError, NotFoundError, ValidationError
from trace_platform.ports import ObjectStore


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
        except OSError:
            return False
        return True

    import asyncio

    asyncio.run(wait_until(up, 30, 0.1, "moto server"))
    yield url
    proc.terminate()
    proc.wait(10)


def new_bucket(endpoint: str, prefix: str = "b") -> str:
    """A new, empty bucket at the S3 `endpoint`: its name (`prefix` and 8 random hex)."""
    bucket = prefix + os.urandom(4).hex()
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(scope="module", autouse=True)
def aws_env() -> Iterator[None]:
    old = {
        k: os.environ.get(k)
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1"
    )
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ObjectStore:
    if request.param == "local":
        return LocalObjectStore(
            tmp_path / "objects", ObjectUrlSigner(b"k" * 32, "http://127.0.0.1:1")
        )
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = new_bucket(endpoint)
    return S3ObjectStore(f"s3://{bucket}/trace", endpoint_url=endpoint)


async def chunks(n: int, size: int) -> AsyncIterator[bytes]:
    for i in range(n):
        yield bytes([i % 251]) * size


async def test_put_and_get_round_trip(store: ObjectStore) -> None:
    uri = store.uri_for("buffers/t/1/a.jsonl")
    info = await store.put_bytes(uri, b"hello\n")
    assert info.size == 6 and info.uri == uri
    assert await store.get_bytes(uri) == b"hello\n"
    assert await store.exists(uri)
    await store.delete(uri)
    assert not await store.exists(uri)
    await store.delete(uri)  # deleting a missing object is fine


async def test_streaming_put_and_get_of_a_multi_part_object(store: ObjectStore) -> None:
    uri = store.uri_for("big/object.bin")
    info = await store.put_stream(uri, chunks(20, 1 << 20))  # 20 MiB: several S3 parts
    assert info.size == 20 << 20
    total, first = 0, None
    async for c in store.open_stream(uri, chunk_size=1 << 20):
        first = first if first is not None else c[:1]
        total += len(c)
    assert total == 20 << 20 and first == b"\x00"


async def test_missing_object_is_not_found(store: ObjectStore) -> None:
    with pytest.raises(NotFoundError):
        await store.get_bytes(store.uri_for("nope/x"))


@pytest.mark.parametrize(
    "key", ["../x", "a/../../x", "/abs", "a//b", "a/./b", "a\\b", "", "a?b", "%2e%2e/x"]
)
async def test_bad_keys_are_rejected(store: ObjectStore, key: str) -> None:
    with pytest.raises(ValidationError):
        store.uri_for(key)


async def test_uris_outside_the_root_are_forbidden(store: ObjectStore) -> None:
    for uri in ("file:///etc/passwd", "s3://other-bucket/x", store.root + "x/y", store.root):
        with pytest.raises((ForbiddenError, ValidationError)):
            await store.get_bytes(uri)


async def test_presigned_urls_are_object_scoped(store: ObjectStore) -> None:
    uri = store.uri_for("buffers/t/1/p.jsonl")
    url = store.presign(uri, "PUT", 60)
    assert "p.jsonl" in url and ("sig=" in url or "Signature" in url)
    with pytest.raises(ValidationError):
        store.presign(uri, "DELETE", 60)


async def test_s3_presigned_put_and_get_work_over_http(s3_endpoint: str) -> None:
    bucket = new_bucket(s3_endpoint)
    store = S3ObjectStore(f"s3://{bucket}", endpoint_url=s3_endpoint)
    uri = store.uri_for("buffers/t/1/x.jsonl")
    req = urllib.request.Request(
        store.presign(uri, "PUT", 60),
        data=b"line\n",
        method="PUT",
        headers={"Content-Type": "application/octet-stream"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(store.presign(uri, "GET", 60), timeout=10) as resp:
        assert resp.read() == b"line\n"
    assert await store.get_bytes(uri) == b"line\n"


def test_local_signed_urls_check_method_key_and_expiry() -> None:
    signer = ObjectUrlSigner(b"s" * 32, "http://h")
    url = signer.url("PUT", "a/b", 60)
    from urllib.parse import parse_qs, urlsplit

    qs = parse_qs(urlsplit(url).query)
    exp, sig = qs["exp"][0], qs["sig"][0]
    signer.check("PUT", "a/b", exp, sig)
    for method, key, e, s in (
        ("GET", "a/b", exp, sig),
        ("PUT", "a/c", exp, sig),
        ("PUT", "a/b", str(int(exp) + 1), sig),
        ("PUT", "a/b", "1", sig),
        ("PUT", "a/b", None, None),
        ("PUT", "a/b", exp, sig[:-1] + ("B" if sig[-1] == "A" else "A")),
    ):
        with pytest.raises(ForbiddenError):
            signer.check(method, key, e, s)
