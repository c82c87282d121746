"""UDF bundle admin: build a Lambda-style zip (TypeScript compiled at build time, dependencies
vendored), upload it content-addressed, list what is registered."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import tempfile
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from trace_platform.db.sql import q
from trace_platform.domain.bundle import (
    MAX_BUNDLE_BYTES,
    BundleRejected,
    bundle_id_for,
    check_entrypoint,
    check_zip_entries,
)
from trace_platform.domain.errors import ValidationError
from trace_platform.ports import ObjectStore

_SKIP = {"__pycache__", ".git", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
_TS_SOURCES = (".ts", ".mts", ".js", ".mjs")


def _files(root: Path, skip: set[str]) -> Iterator[Path]:
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in skip for part in rel.parts) or path.is_symlink():
            continue
        if path.is_file():
            yield path


def deterministic_zip(files: list[tuple[str, bytes]]) -> bytes:
    """Same content → same bytes → same sha256 (fixed timestamps, sorted, fixed modes)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
            info.external_attr = 0o100644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


def find_esbuild(configured: str | None = None) -> str:
    from trace_platform.toolchain import ESBUILD, find_tool

    for c in (configured, find_tool(ESBUILD), shutil.which("esbuild")):
        if c and Path(c).is_file():
            return c
    raise ValidationError(
        "esbuild not found: run `trace tools install` (a source checkout: `make install`)"
        " or set TRACE_ESBUILD"
    )


def build_bundle(source: Path, language: str, entrypoint: str, esbuild: str | None = None) -> bytes:
    """Build the zip bytes for a bundle directory; raises ValidationError with the reason."""
    if not source.is_dir():
        raise ValidationError(f"{source} is not a directory")
    try:
        module, _func = check_entrypoint(entrypoint)
    except BundleRejected as exc:
        raise ValidationError(exc.reason) from None
    if language == "python":
        files = [(p.relative_to(source).as_posix(), p.read_bytes()) for p in _files(source, _SKIP)]
        wanted = {module.replace(".", "/") + ".py", module.replace(".", "/") + "/__init__.py"}
        if not wanted & {name for name, _ in files}:
            raise ValidationError(f"entrypoint module {module!r} not found in {source}")
        return deterministic_zip(files)
    if language == "node":
        rel = module.replace(".", "/")
        entry = next(
            (
                source / base / (rel + ext)
                for base in (".", "src")
                for ext in _TS_SOURCES
                if (source / base / (rel + ext)).is_file()
            ),
            None,
        )
        if entry is None:
            raise ValidationError(f"entrypoint module {module!r} (.ts/.js) not found in {source}")
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / (rel + ".mjs")
            # Bundling vendors every dependency into one file: nothing is installed at run time.
            proc = subprocess.run(
                [
                    find_esbuild(esbuild),
                    str(entry.resolve()),
                    "--bundle",
                    "--platform=node",
                    "--format=esm",
                    "--target=node20",
                    "--log-level=error",
                    f"--outfile={out}",
                ],
                capture_output=True,
                text=True,
                timeout=120,
                cwd=source.resolve(),
            )
            if proc.returncode != 0:
                raise ValidationError("TypeScript/JavaScript build failed:\n" + proc.stderr.strip())
            return deterministic_zip([(rel + ".mjs", out.read_bytes())])
    raise ValidationError("language must be python or node")


@dataclass(frozen=True)
class RegisteredBundle:
    bundle_id: uuid.UUID
    sha256: str
    size_bytes: int
    storage_uri: str
    created: bool


def inspect_bundle(data: bytes, language: str, entrypoint: str) -> None:
    """Everything the runner will check, checked at upload so bad bundles never register."""
    if not data or len(data) > MAX_BUNDLE_BYTES:
        raise ValidationError(f"bundle must be 1 byte to {MAX_BUNDLE_BYTES >> 20} MiB")
    try:
        module, _ = check_entrypoint(entrypoint)
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            names = {i.filename for i in check_zip_entries(zf.infolist())}
    except BundleRejected as exc:
        raise ValidationError(exc.reason) from None
    except zipfile.BadZipFile:
        raise ValidationError("not a zip file") from None
    rel = module.replace(".", "/")
    wanted = (
        {rel + ".py", rel + "/__init__.py"} if language == "python" else {rel + ".mjs", rel + ".js"}
    )
    if not wanted & names:
        raise ValidationError(f"entrypoint module {module!r} is not in the bundle")


async def register_bundle(
    pool: asyncpg.Pool,
    store: ObjectStore,
    data: bytes,
    language: str,
    entrypoint: str,
    org_id: uuid.UUID,
) -> RegisteredBundle:
    if language not in ("python", "node"):
        raise ValidationError("language must be python or node")
    inspect_bundle(data, language, entrypoint)
    sha = hashlib.sha256(data).hexdigest()
    uri = store.uri_for(f"bundles/{sha}.zip")  # content-addressed: never overwritten
    if not await store.exists(uri):
        await store.put_bytes(uri, data)
    bundle_id = bundle_id_for(org_id, sha, language, entrypoint)
    inserted = await pool.fetchval(
        q("bundles", "insert_bundle"), bundle_id, org_id, sha, language, entrypoint, len(data), uri
    )
    return RegisteredBundle(bundle_id, sha, len(data), uri, inserted is not None)
