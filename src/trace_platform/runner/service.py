"""One invocation: fetch and verify the bundle, unpack it safely, run the handler in the
sandbox, stream its records to a JSONL batch, upload it through an upload URL, publish,
complete. The runner holds the capability token and nothing else of the platform's."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import signal
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from trace_platform.client import Lease, TaskClient
from trace_platform.domain.alert_events import alert_of, block_numbers, rows_to_events
from trace_platform.domain.bundle import (
    MAX_BUNDLE_BYTES,
    BundleRejected,
    InvocationPayload,
    check_zip_entries,
)
from trace_platform.domain.errors import ConflictError, TraceError
from trace_platform.domain.lifecycle import FatalTaskError, Outcome
from trace_platform.domain.udf_schema import RowViolation, SchemaError, rows_to_parquet
from trace_platform.logs import get_logger
from trace_platform.sandbox import Isolation, Limits, apply_limits, sandbox_command

log = get_logger(__name__)

MAX_BATCH_BYTES = 256 << 20
MAX_MESSAGE_BYTES = 16 << 20
STDERR_TAIL = 4000


@dataclass
class RunOutcome:
    outcome: Outcome
    error: str | None = None
    records: int = 0
    batch_path: Path | None = None
    stdout: bytes = b""
    stderr: bytes = b""
    notes: list[str] = field(default_factory=list)
    collected: list[Any] | None = None  # alert rules, DAG jobs: rows, checked afterwards
    outputs: dict[str, Any] | None = None  # a DAG range's partition, reported at completion


class Capture:
    """Keeps the first `limit` bytes of a stream and drains the rest (so the child never
    blocks on a full pipe), counting what was dropped."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.dropped = 0

    async def drain(self, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(1 << 16):
            room = self.limit - len(self.data)
            if room > 0:
                self.data += chunk[:room]
            self.dropped += max(0, len(chunk) - max(room, 0))

    def text(self) -> str:
        out = self.data.decode(errors="replace")
        return out + (f"\n[... {self.dropped} bytes truncated]" if self.dropped else "")


class DispatcherChannel:
    """One attempt's task-scoped calls (the capability token is the runner's only
    credential) through the shared task client."""

    def __init__(self, client: TaskClient, inv: InvocationPayload) -> None:
        self.client = client
        self.session = client.session
        self.inv = inv
        self.lease = Lease(
            inv.task_id,
            inv.attempt,
            str(inv.lease_token),
            inv.lease_expires_at,
            inv.capability_token,
            inv.work_payload,
        )

    async def call(self, path: str, **body: Any) -> dict[str, Any]:
        """Raises ConflictError when the attempt is no longer current (stop, change nothing)."""
        return await self.client.task_call(self.lease, path, **body)


async def fetch_bundle(session: aiohttp.ClientSession, url: str, dest: Path) -> str:
    """Stream the bundle to `dest`; returns its sha256. Bounded in size."""
    digest = hashlib.sha256()
    size = 0
    async with session.get(url) as resp:
        if resp.status != 200:
            raise BundleRejected(f"bundle download failed with HTTP {resp.status}")
        with dest.open("wb") as fh:
            async for chunk in resp.content.iter_chunked(1 << 16):
                size += len(chunk)
                if size > MAX_BUNDLE_BYTES:
                    raise BundleRejected("bundle is larger than allowed")
                digest.update(chunk)
                fh.write(chunk)
    return digest.hexdigest()


def unpack_bundle(archive: Path, target: Path) -> None:
    """Unpack after checking every entry; files land read-only for the handler."""
    try:
        with zipfile.ZipFile(archive) as zf:
            entries = check_zip_entries(zf.infolist())
            for info in entries:
                dest = target.joinpath(*info.filename.rstrip("/").split("/"))
                if not dest.resolve().is_relative_to(target.resolve()):
                    raise BundleRejected("bundle has an unsafe path")
                if info.is_dir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, dest.open("wb") as out:
                    written = 0
                    while chunk := src.read(1 << 16):
                        written += len(chunk)
                        if written > info.file_size:  # a lying header (zip bomb)
                            raise BundleRejected("bundle entry is larger than declared")
                        out.write(chunk)
    except zipfile.BadZipFile:
        raise BundleRejected("bundle is not a valid zip") from None
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def _high_fd(fd: int) -> int:
    """Move a pipe end above the fds the child will use (3, 4) so dup2 cannot clobber it."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class Runner:
    def __init__(
        self,
        dispatcher_url: str,
        isolation: Isolation,
        limits: Limits,
        uid: int = 65534,
        query_url: str | None = None,
    ) -> None:
        self.dispatcher_url = dispatcher_url
        self.isolation = isolation
        self.limits = limits
        self.uid = uid
        self.query_url = query_url

    async def run(self, inv: InvocationPayload) -> str:
        """Run one invocation end to end; returns the outcome it reported (or 'fenced')."""
        ids = {"task_id": str(inv.task_id), "attempt": inv.attempt}
        log.info("runner.invocation", isolation=self.isolation.features, **ids)
        timeout = aiohttp.ClientTimeout(total=120, connect=5)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            channel = DispatcherChannel(
                TaskClient(self.dispatcher_url, query_url=self.query_url, session=session), inv
            )
            with tempfile.TemporaryDirectory(prefix="trace-run-") as tmp:
                root = Path(tmp)
                root.chmod(0o711)
                try:
                    outcome = await self._execute(session, channel, inv, root)
                    return await self._report(session, channel, outcome)
                except ConflictError as exc:
                    log.warning("runner.fenced", reason=exc.detail, **ids)
                    return "fenced"

    async def _execute(
        self,
        session: aiohttp.ClientSession,
        channel: DispatcherChannel,
        inv: InvocationPayload,
        root: Path,
    ) -> RunOutcome:
        archive = root / "bundle.zip"
        bundle_dir = root / "bundle"
        bundle_dir.mkdir()
        try:
            sha = await fetch_bundle(session, inv.bundle_url, archive)
            if sha != inv.bundle_sha256:
                return RunOutcome(
                    Outcome.FATAL_ERROR,
                    "bundle sha256 does not match the registered bundle; refusing to run it",
                )
            await asyncio.to_thread(unpack_bundle, archive, bundle_dir)
        except BundleRejected as exc:
            return RunOutcome(Outcome.FATAL_ERROR, f"bundle rejected: {exc.reason}")
        except aiohttp.ClientError as exc:
            return RunOutcome(
                Outcome.RETRYABLE_ERROR, f"bundle download failed: {type(exc).__name__}"
            )
        archive.unlink()
        work = root / "work"
        work.mkdir(mode=0o700)
        if self.isolation.drop_uid:
            os.chown(work, self.uid, self.uid)
        heartbeat = asyncio.create_task(self._heartbeat(channel, inv))
        try:
            result = await self._sandboxed(inv, bundle_dir, work, root / "batch.jsonl", channel)
            alert = alert_of(inv.work_payload)
            if alert is not None and result.outcome == Outcome.SUCCESS:
                result = await self._alert_events(channel, alert, result)
            if inv.dag is not None and result.outcome == Outcome.SUCCESS:
                result = await self._dag_partition(session, channel, inv.dag, result)
            return result
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConflictError):
                await heartbeat

    async def _alert_events(
        self, channel: DispatcherChannel, alert: dict[str, Any], run: RunOutcome
    ) -> RunOutcome:
        """An alert rule's result rows become alert_events rows, keyed like a SQL rule's:
        (alert, identity columns, the block's hash, read through the dispatcher)."""
        rows = run.collected or []
        try:
            numbers = block_numbers(rows)
            headers: dict[int, tuple[str, int] | None] = {}
            if numbers:
                answer = await channel.call("block-headers", numbers=numbers)
                for n, h in answer.get("headers", {}).items():
                    headers[int(n)] = (str(h[0]), int(h[1])) if h else None
            events = rows_to_events(alert, rows, headers)
        except FatalTaskError as exc:
            return RunOutcome(Outcome.FATAL_ERROR, str(exc), stdout=run.stdout, stderr=run.stderr)
        except ConflictError:
            raise
        except (TraceError, aiohttp.ClientError, TimeoutError) as exc:
            error = f"block headers unavailable: {exc}"[:500]
            return RunOutcome(Outcome.RETRYABLE_ERROR, error, stdout=run.stdout, stderr=run.stderr)
        assert run.batch_path is not None
        with run.batch_path.open("wb") as fh:
            for event in events:
                fh.write(orjson.dumps(event) + b"\n")
        run.records, run.collected = len(events), None
        return run

    async def _dag_partition(
        self,
        session: aiohttp.ClientSession,
        channel: DispatcherChannel,
        dag: dict[str, Any],
        run: RunOutcome,
    ) -> RunOutcome:
        """A DAG UDF job's rows, checked here (trusted code, not the bundle) against the
        job's schema and unique_key, become one Parquet file in the attempt's output prefix,
        reported at completion; the dispatcher commits it. A violation fails the attempt for
        good, naming the row and column, and nothing is written."""
        rows, run.collected = run.collected or [], None
        columns = dag.get("schema")
        if not isinstance(columns, list) or not all(
            isinstance(c, list) and len(c) == 2 and all(isinstance(x, str) for x in c)
            for c in columns
        ):
            return RunOutcome(Outcome.FATAL_ERROR, "the DAG job's task has no schema")
        schema = {c: t for c, t in columns}  # in the declared order: the file's columns
        try:
            data, facts = await asyncio.to_thread(
                rows_to_parquet, rows, schema, dag.get("unique_key") or ()
            )
        except (RowViolation, SchemaError) as exc:
            error = f"the handler's rows break the job's schema: {exc}"[:2000]
            return RunOutcome(Outcome.FATAL_ERROR, error, stdout=run.stdout, stderr=run.stderr)
        try:
            upload = await channel.call(
                "upload-url",
                name="part-000.parquet",
                size_bytes=len(data),
                target="output",
            )
            async with session.put(
                upload["url"], data=data, headers={"Content-Type": "application/octet-stream"}
            ) as r:
                status = r.status
        except ConflictError:
            raise
        except (TraceError, aiohttp.ClientError, TimeoutError) as exc:
            error = f"partition upload failed: {type(exc).__name__}"
            return RunOutcome(Outcome.RETRYABLE_ERROR, error, stdout=run.stdout, stderr=run.stderr)
        if status not in (200, 201, 204):
            error = f"partition upload failed: HTTP {status}"
            return RunOutcome(Outcome.RETRYABLE_ERROR, error, stdout=run.stdout, stderr=run.stderr)
        report = {
            "uri": upload["batch_uri"],
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            **facts,
        }
        run.records = facts["rows"]
        run.outputs = {
            "dag": {
                "start": dag.get("start"),
                "end": dag.get("end"),
                "files": [report],
                "rows": facts["rows"],
                "bytes": len(data),
            }
        }
        return run

    async def _heartbeat(self, channel: DispatcherChannel, inv: InvocationPayload) -> None:
        expires = datetime.fromisoformat(inv.lease_expires_at).timestamp()
        interval = max(0.5, (expires - time.time()) / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await channel.call("heartbeat")
            except ConflictError:
                raise
            except (TraceError, aiohttp.ClientError, TimeoutError) as exc:
                log.warning("runner.heartbeat_failed", error=type(exc).__name__)

    async def _sandboxed(
        self,
        inv: InvocationPayload,
        bundle_dir: Path,
        work: Path,
        batch_path: Path,
        channel: DispatcherChannel,
    ) -> RunOutcome:
        weak = self.isolation.bwrap is None
        cmd = sandbox_command(self.isolation, inv.language, bundle_dir, work, self.limits, self.uid)
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        child_in, child_out = _high_fd(to_child_r), _high_fd(from_child_w)
        limits = self.limits

        def before_exec() -> None:
            os.dup2(child_out, 3)
            os.dup2(child_in, 4)
            apply_limits(limits)

        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={} if not weak else {"PATH": "/usr/bin:/bin", "HOME": str(work)},
            cwd=str(work),
            preexec_fn=before_exec,
            pass_fds=(3, 4),
            start_new_session=True,
        )
        os.close(child_in)
        os.close(child_out)
        out_cap, err_cap = Capture(limits.output_bytes), Capture(limits.output_bytes)
        assert proc.stdout is not None and proc.stderr is not None
        drains = [
            asyncio.create_task(out_cap.drain(proc.stdout)),
            asyncio.create_task(err_cap.drain(proc.stderr)),
        ]
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_MESSAGE_BYTES)
        transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(from_child_r, "rb", 0)
        )
        writer_file = os.fdopen(to_child_w, "wb", 0)
        init = {
            "event": inv.work_payload,
            "entrypoint": inv.entrypoint,
            "context": {"task_id": str(inv.task_id), "attempt": inv.attempt},
            "bundle_dir": str(bundle_dir) if weak else "/bundle",
        }
        result = RunOutcome(Outcome.RETRYABLE_ERROR, batch_path=batch_path)
        if alert_of(inv.work_payload) is not None or inv.dag is not None:
            result.collected = []
        try:
            await asyncio.to_thread(writer_file.write, orjson.dumps(init) + b"\n")
            protocol = self._protocol(reader, writer_file, batch_path, result, channel)
            await asyncio.wait_for(protocol, timeout=limits.wall_seconds)
        except TimeoutError:
            result.outcome = Outcome.RETRYABLE_ERROR
            result.error = f"handler timed out after {limits.wall_seconds:g}s and was killed"
        except (ValueError, asyncio.LimitOverrunError):
            result.outcome = Outcome.FATAL_ERROR
            result.error = "handler sent a malformed or oversized message"
        finally:
            with contextlib.suppress(OSError):
                writer_file.close()  # EOF on the handler's channel: a finished shim exits
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout=2)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            transport.close()
            with contextlib.suppress(OSError):
                writer_file.close()
            await asyncio.wait(drains, timeout=5)
        result.stdout, result.stderr = bytes(out_cap.data), err_cap.text().encode()
        if result.outcome != Outcome.SUCCESS and result.error is None:
            code = proc.returncode
            why = f"killed by signal {-code}" if code and code < 0 else f"exit code {code}"
            result.error = f"handler ended without a result ({why}; memory or CPU limit?)"
        return result

    async def _protocol(
        self,
        reader: asyncio.StreamReader,
        writer: Any,
        batch_path: Path,
        result: RunOutcome,
        channel: DispatcherChannel,
    ) -> None:
        size = 0
        with batch_path.open("wb") as batch:
            while line := await reader.readline():
                msg = orjson.loads(line)
                kind = msg.get("type") if isinstance(msg, dict) else None
                if kind == "records":
                    rows = msg.get("rows")
                    if not isinstance(rows, list):
                        raise ValueError("records must be a list")
                    for row in rows:
                        data = orjson.dumps(row) + b"\n"
                        size += len(data)
                        if size > MAX_BATCH_BYTES:
                            result.outcome, result.error = (
                                Outcome.FATAL_ERROR,
                                "handler output too large",
                            )
                            return
                        if result.collected is not None:
                            result.collected.append(row)
                        else:
                            batch.write(data)
                    result.records += len(rows)
                elif kind == "query":
                    answer = await self._query(channel, msg)
                    await asyncio.to_thread(writer.write, orjson.dumps(answer) + b"\n")
                elif kind == "log":
                    log.info(
                        "udf.log",
                        level=str(msg.get("level"))[:10],
                        message=str(msg.get("message"))[:2000],
                    )
                elif kind == "error":
                    result.outcome = (
                        Outcome.FATAL_ERROR if msg.get("fatal") else Outcome.RETRYABLE_ERROR
                    )
                    result.error = str(msg.get("error"))[:2000]
                    return
                elif kind == "done":
                    result.outcome = Outcome.SUCCESS
                    return
                else:
                    raise ValueError("unknown message")

    async def _query(self, channel: DispatcherChannel, msg: dict[str, Any]) -> dict[str, Any]:
        if not self.query_url:
            return {"ok": False, "error": "no query service is configured"}
        try:
            result = await channel.client.query(
                channel.lease, msg.get("dataset_id"), msg.get("sql"), msg.get("limit", 1000)
            )
        except (aiohttp.ClientError, TimeoutError) as exc:
            return {"ok": False, "error": f"query service unreachable ({type(exc).__name__})"}
        except TraceError as exc:
            return {"ok": False, "error": f"{exc.status} {exc.code}: {exc.detail}"[:500]}
        return {"ok": True, "result": result}

    async def _report(
        self, session: aiohttp.ClientSession, channel: DispatcherChannel, run: RunOutcome
    ) -> Outcome:
        if (
            run.outcome == Outcome.SUCCESS
            and run.records
            and run.batch_path is not None
            and run.outputs is None
        ):
            upload = await channel.call(
                "upload-url",
                name="batch-0000.jsonl",
                content_type="application/jsonl",
                size_bytes=run.batch_path.stat().st_size,
            )
            with run.batch_path.open("rb") as fh:
                async with session.put(
                    upload["url"], data=fh, headers={"Content-Type": "application/octet-stream"}
                ) as r:
                    if r.status not in (200, 201, 204):
                        run = RunOutcome(
                            Outcome.RETRYABLE_ERROR, f"batch upload failed: HTTP {r.status}"
                        )
            if run.outcome == Outcome.SUCCESS:
                await channel.call(
                    "buffer-publish", batch_uri=upload["batch_uri"], record_count=run.records
                )
        error = None
        if run.outcome != Outcome.SUCCESS:
            tail = run.stderr.decode(errors="replace")[-STDERR_TAIL:]
            error = run.error or "handler failed"
            if tail.strip():
                error += "\n--- stderr (tail) ---\n" + tail
        outputs = None
        if run.outcome == Outcome.SUCCESS:
            outputs = run.outputs or {"records": run.records}
        await channel.call("complete", outcome=run.outcome, error_message=error, outputs=outputs)
        log.info(
            "runner.completed",
            task_id=str(channel.inv.task_id),
            attempt=channel.inv.attempt,
            outcome=run.outcome,
            records=run.records,
            error=(run.error or "")[:300] or None,
        )
        return run.outcome


def read_payload(raw: bytes) -> InvocationPayload:
    return InvocationPayload.model_validate_json(raw)
