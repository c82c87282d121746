"""`python -m trace_platform.runner`: the runner process.

Default: read one invocation payload from stdin and run it.
`--serve`: a fork server for the Lite invoker. It pays the imports once, then for each
`{"id", "payload"}` line on stdin forks a child that runs that one invocation (the handler
itself is always a fresh exec inside the sandbox) and answers `{"id", "code"}` on stdout
when the child ends. It holds no secret: it starts with the runner's clean environment.
"""

from __future__ import annotations

import os
import selectors
import sys

import orjson

from trace_platform import logs
from trace_platform.runner.app import run_runner
from trace_platform.runner.config import RunnerConfig, RunnerConfigError


def _serve(settings: RunnerConfig) -> int:
    children: dict[int, str] = {}
    sel = selectors.DefaultSelector()
    stdin = sys.stdin.buffer
    sel.register(stdin, selectors.EVENT_READ)
    out = sys.stdout.buffer
    open_input = True
    while open_input or children:
        if open_input and sel.select(timeout=0.01):
            line = stdin.readline()
            if not line:
                open_input = False
                continue
            request = orjson.loads(line)
            payload = orjson.dumps(request["payload"])
            pid = os.fork()
            if pid == 0:  # child: one invocation, then gone
                sel.close()
                code = 1
                try:
                    code = run_runner(settings, payload)
                finally:
                    os._exit(code)
            children[pid] = str(request["id"])
        elif not open_input:
            import time

            time.sleep(0.01)
        while children:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            req_id = children.pop(pid, None)
            if req_id is not None:
                out.write(
                    orjson.dumps({"id": req_id, "code": os.waitstatus_to_exitcode(status)}) + b"\n"
                )
                out.flush()
    return 0


def main() -> int:
    try:
        settings = RunnerConfig.from_env()
    except RunnerConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    logs.configure("runner", settings.log_level)
    if "--serve" in sys.argv[1:]:
        return _serve(settings)
    return run_runner(settings, sys.stdin.buffer.read())


if __name__ == "__main__":
    sys.exit(main())
