"""`python -m trace_platform.runner`: the runner process.

Default: read one invocation payload from stdin and run it.
`--serve`: a fork server for the Lite invoker. It pays the imports once, then for each
`{"id", "payload"}` line on stdin forks a child that runs that one invocation (the handler
itself is always a fresh exec inside the sandbox) and answers `{"id", "code"}` on stdout
when the child ends. It holds no secret: it starts with the runner's clean environment.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import sys

import orjson

from trace_platform import logs
from trace_platform.runner.app import run_runner
from trace_platform.runner.config import RunnerConfig, RunnerConfigError


def _serve(settings: RunnerConfig) -> int:
    children: dict[int, str] = {}
    sel = selectors.DefaultSelector()
    stdin = sys.stdin.fileno()
    sel.register(stdin, selectors.EVENT_READ)
    # A child's exit wakes the loop through a pipe (SIGCHLD), so it sleeps until there is
    # a request or an exit to answer instead of polling.
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    sel.register(wake_r, selectors.EVENT_READ)
    out = sys.stdout.buffer
    pending = b""  # requests read but not yet started (one per line)
    open_input = True
    while open_input or children:
        ready = {key.fd for key, _ in sel.select(timeout=1.0)}
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                os.read(wake_r, 4096)
        if open_input and stdin in ready:
            data = os.read(stdin, 1 << 16)
            if not data:
                open_input = False
                sel.unregister(stdin)
            pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if not line.strip():
                continue
            request = orjson.loads(line)
            payload = orjson.dumps(request["payload"])
            pid = os.fork()
            if pid == 0:  # child: one invocation, then gone
                sel.close()
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.close(wake_r)
                os.close(wake_w)
                code = 1
                try:
                    code = run_runner(settings, payload)
                finally:
                    os._exit(code)
            children[pid] = str(request["id"])
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
