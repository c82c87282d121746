"""The sandbox of untrusted code (UDF handlers in the runner, DuckDB executors in the query
service): bubblewrap namespaces (no network, own PID space, a filesystem view
holding only the system runtime read-only, the bundle read-only and a private work dir),
an unprivileged uid, rlimits and a clean environment.

The runner refuses to run with fewer isolation features than this unless
TRACE_RUNNER_ALLOW_WEAK_SANDBOX=1 (then: clean env, rlimits and its own cwd only).
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

SHIM_DIR = Path(__file__).resolve().parent / "shims"
NODE = "/usr/bin/node"


@dataclass(frozen=True)
class Limits:
    wall_seconds: float = 60.0
    cpu_seconds: int = 60
    memory_mb: int = 1024
    open_files: int = 64
    file_size_mb: int = 64
    processes: int = 32
    output_bytes: int = 64 * 1024  # stdout/stderr kept per stream; the rest is drained


@dataclass(frozen=True)
class Isolation:
    bwrap: str | None
    drop_uid: bool
    features: dict[str, bool] = field(default_factory=dict)

    @property
    def strong(self) -> bool:
        return all(self.features.values())


def detect_isolation() -> Isolation:
    bwrap = shutil.which("bwrap")
    is_root = os.geteuid() == 0
    has_setpriv = Path("/usr/bin/setpriv").exists()
    features = {
        "network_namespace": bwrap is not None,
        "pid_namespace": bwrap is not None,
        "filesystem_view": bwrap is not None,
        # Not root already, or root that can drop to an unprivileged uid inside the sandbox.
        "unprivileged_uid": (not is_root) or (bwrap is not None and has_setpriv),
        "rlimits": True,
        "clean_environment": True,
    }
    return Isolation(bwrap, is_root and has_setpriv and bwrap is not None, features)


SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/bin")


def namespaces(network: bool = False) -> list[str]:
    """bwrap namespace options: own PID/IPC/UTS/cgroup spaces, killed with its parent, no
    controlling terminal, and no network unless asked for."""
    args = [] if network else ["--unshare-net"]
    return [
        *args,
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
    ]


def system_binds() -> list[str]:
    """The system runtime, read-only (what a dynamically linked interpreter needs)."""
    args = ["--ro-bind", "/usr", "/usr"]
    for d in SYSTEM_DIRS[1:]:
        args += ["--ro-bind-try", d, d]
    return args


def ro_bind_same_path(path: str) -> list[str]:
    """Bind `path` read-only at the same place (interpreters find their libraries by absolute
    path). bwrap would create the missing parents 0700, unreadable to the unprivileged uid:
    create them 0755 first. Paths under the system directories are already there."""
    if any(path == d or path.startswith(d + "/") for d in SYSTEM_DIRS):
        return []
    args: list[str] = []
    for parent in reversed(Path(path).parents):
        if str(parent) != "/":
            args += ["--perms", "0755", "--dir", str(parent)]
    return [*args, "--ro-bind", path, path]


def drop_privileges(uid: int) -> list[str]:
    """setpriv prefix: an unprivileged uid/gid, no groups, no capabilities, no new privileges."""
    return [
        "/usr/bin/setpriv",
        f"--reuid={uid}",
        f"--regid={uid}",
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ]


def python_runtime() -> tuple[str, str]:
    """(prefix to expose read-only, interpreter) — the real interpreter, not a venv shim."""
    prefix = sys.base_prefix
    exe = Path(prefix) / "bin" / f"python{sys.version_info.major}.{sys.version_info.minor}"
    return prefix, str(exe)


def handler_command(language: str, limits: Limits, shim_dir: str = "/shim") -> list[str]:
    if language == "python":
        _, exe = python_runtime()
        return [exe, "-I", "-S", "-B", f"{shim_dir}/python_shim.py"]
    heap = max(64, limits.memory_mb // 2)
    return [
        NODE,
        f"--max-old-space-size={heap}",
        "--disallow-code-generation-from-strings",
        f"{shim_dir}/node_shim.mjs",
    ]


def sandbox_command(
    iso: Isolation, language: str, bundle_dir: Path, work_dir: Path, limits: Limits, uid: int
) -> list[str]:
    if iso.bwrap is None:
        return handler_command(language, limits, str(SHIM_DIR))  # weak mode: real paths
    inner = handler_command(language, limits)
    cmd = [
        iso.bwrap,
        *namespaces(),
        *system_binds(),
        "--ro-bind",
        str(bundle_dir),
        "/bundle",
        "--ro-bind",
        str(SHIM_DIR),
        "/shim",
        "--bind",
        str(work_dir),
        "/work",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--tmpfs",
        "/tmp",  # noqa: S108 - a fresh tmpfs inside the sandbox, not the host's /tmp
        "--chdir",
        "/work",
        "--clearenv",
        "--setenv",
        "HOME",
        "/work",
        "--setenv",
        "TMPDIR",
        "/tmp",  # noqa: S108 - the sandbox's own tmpfs
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "LANG",
        "C.UTF-8",
    ]
    if language == "python":
        prefix, _ = python_runtime()
        cmd += ro_bind_same_path(prefix)
    if iso.drop_uid:
        cmd += drop_privileges(uid)
    return cmd + inner


def apply_limits(limits: Limits) -> None:
    """Called in the child before exec (inherited by bwrap and the handler)."""
    mb = 1024 * 1024
    resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits.memory_mb * mb, limits.memory_mb * mb))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits.open_files, limits.open_files))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_mb * mb, limits.file_size_mb * mb))
    resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
