"""UDF bundles and their invocation (SPEC §8): the payload shared by dispatcher and runner,
entrypoint rules, and the safety rules of unpacking a zip we did not write."""

from __future__ import annotations

import re
import stat
import uuid
import zipfile
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

Language = Literal["python", "node"]
MAX_BUNDLE_BYTES = 64 << 20
MAX_UNPACKED_BYTES = 256 << 20
MAX_FILES = 5000
_ENTRY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\.[A-Za-z_][A-Za-z0-9_]*$")
_BUNDLE_NS = uuid.UUID("0b9f3f3e-6f5c-4c5e-9d8a-6a1f7a0e2b77")


class BundleRejected(ValueError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvocationPayload(BaseModel):
    """What the dispatcher hands the runner: one attempt, its token, and where the code is."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    task_id: uuid.UUID
    attempt: int = Field(ge=1)
    lease_token: uuid.UUID
    lease_expires_at: str
    capability_token: str
    bundle_url: str = Field(validation_alias=AliasChoices("bundle_url", "bundle_presigned_url"))
    bundle_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    language: Language
    entrypoint: str
    work_payload: dict[str, Any]
    # A DAG UDF job's range (SPEC §19): the runner checks the handler's rows against
    # `schema` (and `unique_key`) and writes them as the partition; absent for other tasks.
    dag: dict[str, Any] | None = None


def check_entrypoint(entrypoint: str) -> tuple[str, str]:
    """`module.path.function` → (module path, function)."""
    if not _ENTRY.match(entrypoint) or len(entrypoint) > 200:
        raise BundleRejected("entrypoint must look like module.function (e.g. handler.handler)")
    module, _, func = entrypoint.rpartition(".")
    return module, func


def bundle_id_for(org_id: uuid.UUID, sha256: str, language: str, entrypoint: str) -> uuid.UUID:
    return uuid.uuid5(_BUNDLE_NS, f"{org_id}:{sha256}:{language}:{entrypoint}")


def check_zip_entries(
    infos: Iterable[zipfile.ZipInfo],
    max_files: int = MAX_FILES,
    max_unpacked: int = MAX_UNPACKED_BYTES,
) -> list[zipfile.ZipInfo]:
    """Reject anything that could write outside the target or exhaust the disk: absolute
    paths, `..`, backslashes, links and devices, too many files, too many bytes."""
    entries = list(infos)
    if len(entries) > max_files:
        raise BundleRejected(f"bundle has more than {max_files} files")
    total = 0
    seen: set[str] = set()
    for info in entries:
        name = info.filename
        parts = name.rstrip("/").split("/")
        if (
            not name
            or name.startswith("/")
            or "\\" in name
            or "\x00" in name
            or ":" in parts[0]
            or any(p in ("", ".", "..") for p in parts)
        ):
            raise BundleRejected("bundle has an unsafe path")
        kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver set no type
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            raise BundleRejected("bundle may hold only regular files and directories")
        if name in seen:
            raise BundleRejected("bundle has a duplicate path")
        seen.add(name)
        total += info.file_size
        if total > max_unpacked:
            raise BundleRejected(f"bundle unpacks to more than {max_unpacked >> 20} MiB")
    return entries
