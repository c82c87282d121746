#!/usr/bin/env bash
# Rebuild token.json (ABI + bytecode of Token.sol) with solc-js from tools/ (npm ci --prefix tools).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
tools="${1:-$here/../../../../tools}"
cd "$here"
node compile.mjs "$(cd "$tools" && pwd)" Token.sol Token > token.json
echo "wrote $here/token.json"
