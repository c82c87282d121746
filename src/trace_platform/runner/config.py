"""The runner's own configuration: the few TRACE_* variables its invoker gives it (the Lite
invoker's clean environment, or the Lambda function's configuration). The runner is the
untrusted side and never loads the platform's `Settings`, which name databases, keys and
the object store; the names and defaults here are those of `config.SETTINGS` (a unit test
holds them equal)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass


class RunnerConfigError(ValueError):
    """A runner variable that does not parse (the runner exits 2 naming it)."""


@dataclass(frozen=True)
class RunnerConfig:
    dispatcher_url: str = "http://127.0.0.1:8080"
    port: int = 8080
    query_url: str | None = None
    runner_timeout_seconds: float = 60.0
    runner_memory_mb: int = 1024
    runner_uid: int = 65534
    runner_concurrency: int = 4
    runner_allow_weak_sandbox: bool = False
    log_level: str = "info"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RunnerConfig:
        env = os.environ if env is None else env
        base = cls()

        def get(name: str) -> str | None:
            value = env.get(f"TRACE_{name.upper()}")
            return value if value not in (None, "") else None

        def number(name: str, kind: type[int] | type[float]) -> int | float:
            raw = get(name)
            if raw is None:
                return getattr(base, name)  # type: ignore[no-any-return]
            try:
                return kind(raw)
            except ValueError:
                raise RunnerConfigError(f"TRACE_{name.upper()} must be a {kind.__name__}") from None

        dispatcher = get("dispatcher_url")
        if dispatcher is None:  # as `Settings.resolved_dispatcher_url`: this host's port
            host = get("host") or "127.0.0.1"
            host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
            dispatcher = f"http://{host}:{int(number('port', int))}"
        weak = (get("runner_allow_weak_sandbox") or "").lower() in ("1", "true", "yes", "on")
        return cls(
            dispatcher_url=dispatcher.rstrip("/"),
            query_url=get("query_url"),
            runner_timeout_seconds=float(number("runner_timeout_seconds", float)),
            runner_memory_mb=int(number("runner_memory_mb", int)),
            runner_uid=int(number("runner_uid", int)),
            runner_concurrency=int(number("runner_concurrency", int)),
            runner_allow_weak_sandbox=weak,
            log_level=get("log_level") or base.log_level,
        )
