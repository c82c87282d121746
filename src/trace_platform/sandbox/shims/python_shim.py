"""Runs inside the sandbox: loads the handler from /bundle, talks to the runner over fds 3/4.

Protocol (JSON lines): runner → shim on fd 4, shim → runner on fd 3.
"""

import importlib
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from trace_udf import FatalError, QueryError

_OUT = os.fdopen(3, "w", buffering=1, encoding="utf-8")
_IN = os.fdopen(4, "r", encoding="utf-8")
CHUNK = 500


def _send(msg):
    _OUT.write(json.dumps(msg, default=str, separators=(",", ":")) + "\n")
    _OUT.flush()


class _Logger:
    def _log(self, level, message):
        _send({"type": "log", "level": level, "message": str(message)[:2000]})

    def info(self, message):
        self._log("info", message)

    def warning(self, message):
        self._log("warning", message)

    def error(self, message):
        self._log("error", message)


class Context:
    FatalError = FatalError
    QueryError = QueryError

    def __init__(self, meta):
        self.task_id = meta["task_id"]
        self.attempt = meta["attempt"]
        self.log = _Logger()
        self._next_id = 0

    def query(self, dataset_id, sql=None, limit=1000):
        """Read granted relations through the query service (the runner adds the token):
        `query(SQL)` or `query(SQL, LIMIT)` reads them by name (`blocks`, `logs`, ...),
        `query(DATASET_ID, SQL)` also reads that dataset as `dataset`."""
        if sql is None or (isinstance(sql, int) and not isinstance(sql, bool)):
            limit = sql if sql is not None else limit
            dataset_id, sql = None, dataset_id
        self._next_id += 1
        _send(
            {
                "type": "query",
                "id": self._next_id,
                "dataset_id": None if dataset_id is None else str(dataset_id),
                "sql": sql,
                "limit": limit,
            }
        )
        answer = json.loads(_IN.readline())
        if not answer.get("ok"):
            raise QueryError(answer.get("error", "query failed"))
        return answer["result"]


def main():
    init = json.loads(_IN.readline())
    sys.path.insert(0, init.get("bundle_dir", "/bundle"))
    module_name, _, func_name = init["entrypoint"].rpartition(".")
    try:
        handler = getattr(importlib.import_module(module_name), func_name)
        result = handler(init["event"], Context(init["context"]))
        if type(result).__name__ == "coroutine":  # async def handler: asyncio only when used
            import asyncio

            result = asyncio.run(result)
        if result is None:
            result = []
        if not isinstance(result, list):
            raise FatalError("handler must return a list of records (or None)")
        for i in range(0, len(result), CHUNK):
            _send({"type": "records", "rows": result[i : i + CHUNK]})
        _send({"type": "done"})
    except BaseException as exc:  # every failure is reported; the runner decides the outcome
        fatal = isinstance(exc, FatalError) or type(exc).__name__ == "FatalError"
        import traceback

        traceback.print_exc(file=sys.stderr)
        _send({"type": "error", "fatal": fatal, "error": f"{type(exc).__name__}: {exc}"[:2000]})


main()
