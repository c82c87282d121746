"""Node tools Trace runs but does not ship in the wheel: esbuild (TypeScript UDF bundles) and
anvil (the local devnet of the demo). A source checkout has them under `tools/` (`make
install`); an installed package gets them with `trace tools install`, which runs npm into a
directory of the user's (`~/.local/share/trace/tools`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from trace_platform.domain.errors import ConfigError

TOOL_PACKAGES = {"esbuild": "0.25.12", "@foundry-rs/anvil": "1.7.1"}
ESBUILD = "node_modules/.bin/esbuild"
ANVIL = "node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"


def user_tools_dir() -> Path:
    return Path.home() / ".local" / "share" / "trace" / "tools"


def tool_dirs() -> list[Path]:
    """Where tools are looked for, in order: ./tools, the user's tools, the source checkout."""
    dirs = [Path.cwd() / "tools", user_tools_dir()]
    checkout = Path(__file__).resolve().parents[2] / "tools"
    if (checkout / "package.json").is_file():
        dirs.append(checkout)
    return dirs


def find_tool(relative: str) -> str | None:
    for d in tool_dirs():
        path = d / relative
        if path.is_file() and path.stat().st_size > 0:
            return str(path)
    return None


def install_tools(target: Path | None = None) -> Path:
    """npm-install the tools into `target` (default: the user's tools directory)."""
    npm = shutil.which("npm")
    if npm is None:
        raise ConfigError("npm not found: install Node.js 18+ (with npm), then run this again")
    target = target or user_tools_dir()
    target.mkdir(parents=True, exist_ok=True)
    specs = [f"{name}@{version}" for name, version in TOOL_PACKAGES.items()]
    done = subprocess.run(
        [npm, "install", "--prefix", str(target), "--no-audit", "--no-fund", "--silent", *specs],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ConfigError(f"npm install failed: {tail[0][:300]}")
    return target
