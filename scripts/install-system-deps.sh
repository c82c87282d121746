#!/usr/bin/env bash
# System packages Trace needs beyond PyPI/npm: bubblewrap (the UDF sandbox), node, and
# chromium (browser tests of the console).
set -euo pipefail
need=()
command -v bwrap >/dev/null || need+=(bubblewrap)
command -v node >/dev/null || need+=(nodejs npm)
# The console's browser tests drive Debian's chromium with Playwright (its own download cannot work here).
command -v chromium >/dev/null || need+=(chromium)
[ ${#need[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
  echo "warning: missing ${need[*]}; install them (e.g. sudo apt-get install ${need[*]})" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || {
  apt-get update -qq >/dev/null && apt-get install -y -qq "${need[@]}" >/dev/null
}
