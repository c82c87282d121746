#!/usr/bin/env bash
# Rebuild pools.json (Factory: ABI + bytecode; Pair: ABI) of Pools.sol with solc-js from tools/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tools="$(cd "${1:-$here/../../../../tools}" && pwd)"
cd "$here"
factory="$(node compile.mjs "$tools" Pools.sol Factory)"
pair="$(node compile.mjs "$tools" Pools.sol Pair)"
printf '{"factory":%s,"pair":%s}\n' "$factory" "$pair" > pools.json
echo "wrote $here/pools.json"
